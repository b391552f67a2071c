"""The waveform losses: L1 and MSE, and the band-limited handling of songs recorded at a lower rate."""
import keras
import numpy as np
import pytest
import soxr

from training.losses import band_limited, compile_losses, low_pass, waveform_loss

RATE = 22050
LENGTH = 22277  # the small Wave-U-Net's training crop


def _noise(seed: int, channels: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, (LENGTH, channels)).astype("float32")


def _recorded_at_16k(seed: int) -> np.ndarray:
    """Full-band noise as a 16 kHz recording played at 22.05 kHz: empty above 8 kHz."""
    low = np.random.default_rng(seed).normal(0, 0.1, (LENGTH * 16000 // RATE + 1, 2)).astype("float32")
    return soxr.resample(low, 16000, RATE)[:LENGTH].astype("float32")


def _sine(hz: float) -> np.ndarray:
    t = np.arange(LENGTH) / RATE
    return np.stack([np.sin(2 * np.pi * hz * t)] * 2, axis=1).astype("float32") * 0.1


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_only_targets_empty_above_the_edge_count_as_band_limited():
    batch = np.stack([_recorded_at_16k(0), _noise(1), np.zeros((LENGTH, 2), "float32"), _sine(440.0)])
    # A pure 440 Hz tone is empty above 8 kHz too; through the Hann window its crop edges do not leak there.
    assert _numpy(band_limited(batch, 8000, RATE)).tolist() == [True, False, False, True]


def test_low_pass_removes_the_band_above_the_edge_and_keeps_the_band_below():
    batch = np.stack([_sine(1000.0), _sine(9000.0)])
    filtered = _numpy(low_pass(batch, 8000, RATE))
    middle = slice(LENGTH // 4, 3 * LENGTH // 4)  # an ideal filter rings at the crop's hard edges
    assert np.max(np.abs(filtered[0, middle] - batch[0, middle])) < 1e-3 * 0.1
    assert np.max(np.abs(filtered[1, middle])) < 1e-3 * 0.1


def test_an_error_in_a_targets_empty_band_costs_nothing_and_in_a_full_band_target_its_mse():
    error = _sine(9000.0)  # all of it above the 8 kHz edge
    targets = np.stack([_recorded_at_16k(2), _noise(3)])
    predictions = targets + error[None]
    plain = _numpy(waveform_loss("mse")(targets, predictions))
    limited = _numpy(waveform_loss("mse", 8000, RATE)(targets, predictions))
    np.testing.assert_allclose(plain, [np.mean(error ** 2)] * 2, rtol=1e-5)
    assert limited[0] < 1e-4 * plain[0]  # the 16 kHz song: only ringing at the crop edges is left
    np.testing.assert_allclose(limited[1], plain[1], rtol=1e-5)  # the full-band song: unchanged


def test_an_error_below_the_edge_costs_the_same_with_or_without_the_band_limit():
    error = _sine(1000.0)
    targets = np.stack([_recorded_at_16k(4)])
    limited = _numpy(waveform_loss("mse", 8000, RATE)(targets, targets + error[None]))
    np.testing.assert_allclose(limited, [np.mean(error ** 2)], rtol=2e-3)


def test_l1_is_the_mean_absolute_error_per_example():
    targets, predictions = np.stack([_noise(5), _noise(6)]), np.stack([_noise(7), _noise(8)])
    np.testing.assert_allclose(_numpy(waveform_loss("l1")(targets, predictions)),
                               np.mean(np.abs(predictions - targets), axis=(1, 2)), rtol=1e-5)


def test_bad_loss_settings_are_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        waveform_loss("huber")
    with pytest.raises(ValueError, match="half the model's sample rate"):
        waveform_loss("mse", 12000, RATE)
    with pytest.raises(ValueError, match="waveform models"):
        compile_losses({"vocals": keras.losses.SparseCategoricalCrossentropy()}, "l1")
    unchanged = {"vocals": "mse", "accompaniment": "mse"}
    assert compile_losses(unchanged) is unchanged
