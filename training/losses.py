"""The waveform losses Wave-U-Net trains with (training key ``loss``): f90's mean squared
error or the mean absolute error, and either one kept to the band a target was recorded in
(training key ``band_limit_hz``).

Why the band: MIR-1K is sampled at 16 kHz, so resampled to a 22.05 kHz model its songs are
empty above 8 kHz. A plain loss there teaches the model that nothing above 8 kHz is voice,
which is wrong for full-band songs. With ``band_limit_hz`` an example whose target is empty
above that frequency (less than ``EMPTY_BAND_RATIO`` of its energy there) is scored only
below it: the model's error in the empty band costs nothing, so only full-band songs teach
what lies there. Detected from the target itself, so no dataset needs a flag; a silent target
(e.g. a crop without singing) is full-band and scored as usual.

Written in ``keras.ops``: the same loss trains under TensorFlow and JAX."""
from __future__ import annotations

import math

from keras import ops

LOSSES = ("mse", "l1")
# Energy share above the band edge below which a target counts as band-limited (-100 dB).
# Measured on 160 Hann-windowed 1 s crops of each at 22.05 kHz, above 8 kHz: MIR-1K's stems
# resampled by soxr 1e-14, MUSDB18 previews' vocals at least 3e-5, accompaniment 4e-7.
EMPTY_BAND_RATIO = 1e-10
# Below this mean square a target is silent: not band-limited, whatever its spectrum.
SILENCE = 1e-8


def waveform_loss(kind: str, band_limit_hz: float | None = None, sample_rate: int | None = None):
    """The per-example loss ``(y_true, y_pred) -> [batch]`` for ``[batch, time, channels]`` waveforms."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
    if band_limit_hz is not None and not 0 < band_limit_hz < sample_rate / 2:
        raise ValueError(f"--band-limit {band_limit_hz:g} Hz must lie between 0 and half the model's sample rate "
                         f"({sample_rate / 2:g} Hz)")

    def loss(y_true, y_pred):
        error = y_pred - y_true
        if band_limit_hz is not None:
            limited = band_limited(y_true, band_limit_hz, sample_rate)[:, None, None]
            error = ops.where(limited, low_pass(error, band_limit_hz, sample_rate), error)
        penalty = ops.square(error) if kind == "mse" else ops.abs(error)
        return ops.mean(penalty, axis=(1, 2))

    loss.__name__ = kind if band_limit_hz is None else f"{kind}_below_{band_limit_hz:g}hz"
    return loss


def _spectrum(signal, fft_length: int):
    """rfft over time of ``[batch, time, channels]`` -> (real, imag) ``[batch, channels, bins]``."""
    return ops.rfft(ops.transpose(signal, (0, 2, 1)), fft_length=fft_length)


def _fft_length(length: int) -> int:
    return 2 ** math.ceil(math.log2(length))


def _below_edge(fft_length: int, band_limit_hz: float, sample_rate: int):
    bins = fft_length // 2 + 1
    edge = math.ceil(band_limit_hz * fft_length / sample_rate)
    return ops.cast(ops.arange(bins) < edge, "float32")


def band_limited(target, band_limit_hz: float, sample_rate: int):
    """``[batch]`` booleans: which targets have (almost) no energy above ``band_limit_hz``.
    Measured through a Hann window: a crop's hard edges would spread low-frequency energy
    over the whole spectrum at about the threshold."""
    target = ops.cast(target, "float32")
    length = ops.shape(target)[1]
    window = 0.5 - 0.5 * ops.cos(2 * math.pi * ops.arange(length, dtype="float32") / length)
    fft_length = _fft_length(length)
    real, imag = _spectrum(target * window[None, :, None], fft_length)
    power = ops.sum(ops.square(real) + ops.square(imag), axis=1)  # [batch, bins]
    below = _below_edge(fft_length, band_limit_hz, sample_rate)
    total = ops.sum(power, axis=1)
    above = ops.sum(power * (1 - below), axis=1)
    loud = ops.mean(ops.square(target), axis=(1, 2)) > SILENCE
    return ops.logical_and(loud, above < EMPTY_BAND_RATIO * total)


def low_pass(signal, band_limit_hz: float, sample_rate: int):
    """``signal`` with every frequency from ``band_limit_hz`` up removed (an ideal filter via the FFT)."""
    length = ops.shape(signal)[1]
    fft_length = _fft_length(length)
    real, imag = _spectrum(ops.cast(signal, "float32"), fft_length)
    below = _below_edge(fft_length, band_limit_hz, sample_rate)
    filtered = ops.irfft((real * below, imag * below), fft_length=fft_length)[:, :, :length]
    return ops.cast(ops.transpose(filtered, (0, 2, 1)), signal.dtype)


def compile_losses(architecture_losses: dict, kind: str = "mse", band_limit_hz: float | None = None,
                   sample_rate: int | None = None) -> dict:
    """The architecture's losses with its mean squared errors replaced as the training asks;
    other losses (mu-law classes) stay, and asking to change them is an error."""
    if kind == "mse" and band_limit_hz is None:
        return architecture_losses
    if any(loss != "mse" for loss in architecture_losses.values()):
        raise ValueError("--loss and --band-limit apply to waveform models (Wave-U-Net) only")
    return {output: waveform_loss(kind, band_limit_hz, sample_rate) for output in architecture_losses}
