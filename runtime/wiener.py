"""The multichannel Wiener post-filter of Open-Unmix, through ``norbert``: the separated
sources' STFT magnitudes are taken as first estimates of their spectrograms (with the
mixture's phase, or as a soft mask of it), then refined by EM iterations of
``norbert.wiener`` on the (stereo) mixture, and brought back to waveforms.

Where it stands (issue 28): a measurement option of evaluate.py (``--wiener N``) that
runs on a whole song in memory; not yet in separate.py's chunked path, the page or the
exported graph."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import librosa
import norbert
import numpy as np

from models.architecture import SOURCES


@dataclass(frozen=True)
class WienerSettings:
    iterations: int = 1  # EM iterations; 0 keeps the first estimates
    n_fft: int = 4096  # hop: a quarter of it
    soft_mask: bool = False  # first estimates: a power-2 soft mask of the mixture, not the magnitudes with its phase

    def describe(self) -> str:
        return (f"Wiener post-filter: {self.iterations} EM iteration(s), {self.n_fft}-point STFT, "
                f"{'soft mask' if self.soft_mask else 'magnitudes with the mixture phase'}")


def em_iterations(text: str) -> int:
    """argparse type of --wiener: a whole number of EM iterations, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of iterations, 0 or more, not {text!r}")
    return int(text)


def _stft(audio: np.ndarray, n_fft: int) -> np.ndarray:
    """``[time, channels]`` -> ``[frames, bins, channels]`` complex64, as norbert takes it."""
    return librosa.stft(audio.T, n_fft=n_fft, hop_length=n_fft // 4).transpose(2, 1, 0)


def wiener_filter(mix: np.ndarray, estimates: dict, settings: WienerSettings) -> dict:
    """The sources refined: ``mix`` and each estimate ``[time, channels]`` float32 -> the same shapes."""
    mixture = _stft(np.asarray(mix, np.float32), settings.n_fft)
    magnitudes = np.stack([np.abs(_stft(np.asarray(estimates[source], np.float32), settings.n_fft))
                           for source in SOURCES], axis=-1)
    # norbert scales its mixture argument in place: it gets a copy.
    refined = norbert.wiener(magnitudes, mixture.copy(), iterations=settings.iterations,
                             use_softmask=settings.soft_mask)
    return {source: librosa.istft(refined[..., index].transpose(2, 1, 0), hop_length=settings.n_fft // 4,
                                  n_fft=settings.n_fft, length=len(mix)).T.astype(np.float32)
            for index, source in enumerate(SOURCES)}
