"""runtime/wiener.py: the Wiener post-filter keeps sources that do not overlap in
time-frequency (exactly with a mask alone, within norbert's regularisation with EM), brings
leaky estimates closer to the truth, keeps every shape, gives the same samples however the
song is cut into blocks, and is norbert's filter (on a real preview where ../shared has
them). The graph's filter: tests/test_export.py; evaluate.py --wiener: tests/test_evaluate.py."""
from pathlib import Path

import numpy as np
import pytest

from runtime.metrics import signal_to_distortion
from runtime.wiener import (WienerSettings, WienerStream, default_fft, expectation_maximization, first_estimates,
                            norbert_filter, settings_from_args, wiener_filter)

RATE = 22050
PREVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "musdb18-train-previews"


def sources(seconds: float = 2.0) -> dict:
    """A 'voice' and an 'accompaniment' of tones far apart in frequency, stereo: their STFTs
    share no bin above the window's sidelobes."""
    t = np.arange(int(seconds * RATE)) / RATE

    def tones(*pairs):
        return sum(amplitude * np.sin(2 * np.pi * frequency * t) for frequency, amplitude in pairs)

    voice, accompaniment = tones((880, 0.3), (1320, 0.2)), tones((110, 0.3), (5000, 0.2))
    return {"vocals": np.stack([voice, 0.8 * voice], 1).astype(np.float32),
            "accompaniment": np.stack([accompaniment, -accompaniment], 1).astype(np.float32)}


@pytest.mark.parametrize("settings,tolerance", [
    (WienerSettings(0, soft_mask=True), 1e-4),  # a mask alone: exact
    # EM regularises the mixture's covariance (norbert adds sqrt(eps) of float32 to it): measured
    # 2.3e-3, 2.5e-3 and 2.3e-3 at most on these 0.3-0.5 amplitude tones (over 40 dB SDR).
    (WienerSettings(1), 6e-3), (WienerSettings(2, 4096), 6e-3), (WienerSettings(1, soft_mask=True), 6e-3)])
def test_sources_apart_in_frequency_pass_through_unchanged(settings, tolerance):
    truth = sources()
    mix = truth["vocals"] + truth["accompaniment"]
    refined = wiener_filter(mix, truth, settings, RATE)
    n_fft = settings.fft_size(RATE)
    for source, audio in truth.items():
        assert refined[source].shape == audio.shape and refined[source].dtype == np.float32
        middle = slice(n_fft, -n_fft)  # away from the STFT's first and last frames
        assert np.abs(refined[source][middle] - audio[middle]).max() < tolerance
        assert signal_to_distortion(audio[middle], refined[source][middle]) > 40


def test_leaky_estimates_come_out_closer_to_the_truth():
    truth = sources()
    mix = truth["vocals"] + truth["accompaniment"]
    leaky = {"vocals": truth["vocals"] + 0.4 * truth["accompaniment"],
             "accompaniment": truth["accompaniment"] + 0.4 * truth["vocals"]}
    refined = wiener_filter(mix, leaky, WienerSettings.parse("em1"), RATE)
    for source in truth:
        before = signal_to_distortion(truth[source], leaky[source])
        after = signal_to_distortion(truth[source], refined[source])
        assert after > before + 5, (source, before, after)  # measured: vocals 7.1 -> 13.7 dB


@pytest.mark.parametrize("variant", ["mask", "em1", "mask+em1", "em2"])
def test_noisy_estimates_come_out_closer_to_the_truth(variant):
    """Estimates with white noise (a mask cannot take out a leak proportional to the other
    source: it shares the mixture in the ratio of the magnitudes): measured 7.3 -> 27.2 dB
    (vocals, mask), 39.2 (em1)."""
    truth = sources()
    mix = truth["vocals"] + truth["accompaniment"]
    rng = np.random.default_rng(0)
    noisy = {source: (audio + 0.1 * rng.standard_normal(audio.shape)).astype(np.float32)
             for source, audio in truth.items()}
    refined = wiener_filter(mix, noisy, WienerSettings.parse(variant), RATE)
    for source in truth:
        before = signal_to_distortion(truth[source], noisy[source])
        after = signal_to_distortion(truth[source], refined[source])
        assert after > before + 15, (source, before, after)


def test_variants_parse_name_and_default_size():
    assert [WienerSettings.parse(text).name for text in ("off", "0", "mask", "em1", "2", "mask+em1")] == \
        ["off", "off", "mask", "em1", "em2", "mask+em1"]
    assert WienerSettings.parse("mask") == WienerSettings(0, soft_mask=True)
    for bad in ("em0", "mask+", "-1", "soft", "em"):
        with pytest.raises(ValueError):
            WienerSettings.parse(bad)
    assert (default_fft(22050), default_fft(44100), default_fft(48000), default_fft(8000)) == (8192, 16384, 16384, 4096)
    # evaluate.py's older --wiener-soft-mask: emN -> mask+emN, nothing -> mask
    assert settings_from_args(None, None, soft_mask=True).name == "mask"
    assert settings_from_args(WienerSettings.parse("1"), 4096, soft_mask=True) == WienerSettings(1, 4096, True)
    assert settings_from_args(None, None) is None
    settings = WienerSettings(1, 1024, True, 50, 20)
    assert WienerSettings.from_dict(settings.to_dict(RATE)) == settings
    assert WienerSettings.from_dict(WienerSettings(0).to_dict(RATE)) is None and WienerSettings.from_dict(None) is None


def cut_and_filtered(stream: WienerStream, mix: np.ndarray, estimates: dict, seed: int) -> dict:
    """The song through ``stream`` in random blocks, the mixture's and the estimates' cut apart."""
    rng = np.random.default_rng(seed)
    length, pieces, at_mix, at_estimates = len(mix), [], 0, 0
    while at_mix < length or at_estimates < length:
        mix_block = mix[at_mix:at_mix + int(rng.integers(1, 40000))]
        count = int(rng.integers(0, 40000))
        estimate_block = {source: audio[at_estimates:at_estimates + count] for source, audio in estimates.items()}
        at_mix, at_estimates = at_mix + len(mix_block), at_estimates + len(estimate_block["vocals"])
        pieces.append(stream.push(mix_block, estimate_block, last=at_mix >= length and at_estimates >= length))
    return {source: np.concatenate([piece[source] for piece in pieces]) for source in estimates}


@pytest.mark.parametrize("variant", ["mask", "em1", "mask+em2"])
def test_a_chunked_long_song_equals_one_pass_in_bounded_memory(variant):
    """A minute of song in random blocks (EM blocks of 100 frames, 52 of them): the same
    samples as one push of the whole song (measured: 6e-8 at most), and the stream never
    holds much more than an EM block and its context."""
    rng = np.random.default_rng(1)
    length = 60 * RATE + 123
    mix = (0.1 * rng.standard_normal((length, 2))).astype(np.float32)
    estimates = {"vocals": (0.6 * mix + 0.02 * rng.standard_normal((length, 2))).astype(np.float32)}
    estimates["accompaniment"] = (mix - estimates["vocals"] + 0.02 * rng.standard_normal((length, 2))).astype(np.float32)
    parsed = WienerSettings.parse(variant)
    settings = WienerSettings(parsed.iterations, 1024, parsed.soft_mask, em_block=100, em_context=30)
    whole = wiener_filter(mix, estimates, settings, RATE)
    stream = WienerStream(settings, RATE, 2)
    peak = {"frames": 0, "samples": 0}
    push = stream.push

    def watched(*args, **kwargs):
        result = push(*args, **kwargs)
        peak["frames"] = max(peak["frames"], len(stream.spectra))
        peak["samples"] = max(peak["samples"], len(stream.samples), len(stream.added))
        return result

    stream.push = watched
    chunked = cut_and_filtered(stream, mix, estimates, seed=2)
    for source in estimates:
        assert whole[source].shape == chunked[source].shape == (length, 2)
        assert np.abs(whole[source] - chunked[source]).max() < 1e-6
    assert peak["frames"] <= 100 + 2 * 30 + 40000 // 256 + 1  # a block, its context and one push's frames
    assert peak["samples"] <= 2 * 40000 + 1024


@pytest.mark.parametrize("variant", ["mask", "em1", "mask+em1"])
def test_estimates_that_add_up_need_only_the_mixture_and_vocals_transformed(variant):
    """A difference-output model's accompaniment is its input minus its vocals: the stream then
    transforms only those two (``estimates_add_up``) and gives the same samples (measured: 8.9e-8
    at most); the mask's sources add up to the mixture (its accompaniment is the mixture minus
    the masked vocals) to float32 rounding (3e-8)."""
    rng = np.random.default_rng(5)
    length = 3 * RATE + 17
    mix = (0.2 * rng.standard_normal((length, 2))).astype(np.float32)
    vocals = (0.5 * mix + 0.05 * rng.standard_normal((length, 2))).astype(np.float32)
    estimates = {"vocals": vocals, "accompaniment": mix - vocals}
    parsed = WienerSettings.parse(variant)
    settings = WienerSettings(parsed.iterations, 1024, parsed.soft_mask, em_block=40, em_context=10)
    general = wiener_filter(mix, estimates, settings, RATE)
    shortcut = wiener_filter(mix, estimates, settings, RATE, estimates_add_up=True)
    for source in estimates:
        assert shortcut[source].shape == (length, 2)
        assert np.abs(shortcut[source] - general[source]).max() < 1e-6
    if settings.complementary:
        assert np.abs(shortcut["vocals"] + shortcut["accompaniment"] - mix).max() < 1e-6


@pytest.fixture(scope="module")
def preview():
    """A real MUSDB18 validation preview at 22.05 kHz, and leaky estimates of its sources."""
    if not PREVIEWS.is_dir():
        pytest.skip("needs ../shared/data/musdb18-train-previews")
    from data_pipeline.datasets import get_tracks, load_track

    track = get_tracks("musdb", "valid", data_root=PREVIEWS)[0]
    audio = load_track(track, RATE)
    leaky = {"vocals": 0.8 * audio["vocals"] + 0.15 * audio["accompaniment"],
             "accompaniment": 0.9 * audio["accompaniment"] + 0.2 * audio["vocals"]}
    return audio, leaky


def test_the_mask_is_norberts_on_a_real_preview(preview):
    audio, leaky = preview
    settings = WienerSettings.parse("mask")
    mine, norberts = wiener_filter(audio["mixture"], leaky, settings, RATE), norbert_filter(
        audio["mixture"], leaky, settings, RATE)
    for source in leaky:  # measured: 1.2e-7
        assert np.abs(mine[source] - norberts[source]).max() < 1e-5


@pytest.mark.parametrize("variant", ["em1", "mask+em1", "em2"])
def test_em_is_norberts_on_a_real_preview(preview, variant):
    """The EM step on the same spectra with covariances over the whole song: norbert's to
    float32 rounding (measured: 4.0e-5 of the loudest bin at most, in a few ill-conditioned
    bins); the stream's waveforms (the 7 s preview is 302 frames: two EM blocks, the first
    with the whole song as its context) norbert's within 5.3e-6 (measured; the preview peaks
    at 0.82)."""
    import librosa
    import norbert

    audio, leaky = preview
    settings = WienerSettings.parse(variant)
    n_fft = settings.fft_size(RATE)

    def stft(signal):
        return librosa.stft(signal.T, n_fft=n_fft, hop_length=n_fft // 4).transpose(2, 1, 0)

    mixture = stft(audio["mixture"])
    estimates = np.stack([stft(leaky[source]) for source in ("vocals", "accompaniment")], -1)
    scale = max(1, np.abs(mixture).max() / 10)
    mine = expectation_maximization(mixture, first_estimates(mixture, estimates, settings.soft_mask),
                                    settings.iterations, scale)
    norberts = norbert.wiener(np.abs(estimates), mixture.copy(), settings.iterations, settings.soft_mask)
    assert np.abs(mine - norberts).max() < 1e-4 * np.abs(norberts).max()
    streamed = wiener_filter(audio["mixture"], leaky, settings, RATE)
    reference = norbert_filter(audio["mixture"], leaky, settings, RATE)
    for source in leaky:
        assert np.abs(streamed[source] - reference[source]).max() < 1e-4
