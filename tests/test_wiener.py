"""runtime/wiener.py: the Wiener post-filter keeps sources that do not overlap in
time-frequency (exactly with a mask alone, within norbert's regularisation with EM), brings
leaky estimates closer to the truth, and keeps every shape (evaluate.py --wiener:
tests/test_evaluate.py)."""
import numpy as np
import pytest

from runtime.metrics import signal_to_distortion
from runtime.wiener import WienerSettings, wiener_filter

RATE = 22050


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
    # 4.7e-3, 1.3e-3 and 3.4e-3 at most on these 0.3-0.5 amplitude tones (over 40 dB SDR).
    (WienerSettings(1), 6e-3), (WienerSettings(2, 2048), 6e-3), (WienerSettings(1, soft_mask=True), 6e-3)])
def test_sources_apart_in_frequency_pass_through_unchanged(settings, tolerance):
    truth = sources()
    mix = truth["vocals"] + truth["accompaniment"]
    refined = wiener_filter(mix, truth, settings)
    for source, audio in truth.items():
        assert refined[source].shape == audio.shape and refined[source].dtype == np.float32
        middle = slice(settings.n_fft, -settings.n_fft)  # away from the STFT's first and last frames
        assert np.abs(refined[source][middle] - audio[middle]).max() < tolerance
        assert signal_to_distortion(audio[middle], refined[source][middle]) > 40


def test_leaky_estimates_come_out_closer_to_the_truth():
    truth = sources()
    mix = truth["vocals"] + truth["accompaniment"]
    leaky = {"vocals": truth["vocals"] + 0.4 * truth["accompaniment"],
             "accompaniment": truth["accompaniment"] + 0.4 * truth["vocals"]}
    refined = wiener_filter(mix, leaky, WienerSettings(1))
    for source in truth:
        before = signal_to_distortion(truth[source], leaky[source])
        after = signal_to_distortion(truth[source], refined[source])
        assert after > before + 5, (source, before, after)  # measured: vocals 7.1 -> 13.7 dB
