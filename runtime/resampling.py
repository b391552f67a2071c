"""The one resampling rule of separation, in numpy (no TensorFlow: the client imports it).

Every path that separates a song at a rate that is not the model's resamples it with
this rule: the numpy path (``runtime.chunking.SongSeparation``: separate.py,
evaluate.py, the web page, bench) here, block by block, and the exported graph
(``runtime.saved_model_graph.resample_tf``: ``separate_audio``, so REST and
``serve.client``) in TensorFlow, window for window the same arithmetic. So both give
the model the same samples and the accompaniment the same round-trip remainder.

The rule: a band-limited FFT resampler, applied in windows so that a song of any
length streams through it in bounded memory.

- The song is cut into windows of ``SEGMENT_SECONDS`` + 2 x ``CONTEXT_SECONDS``
  seconds, ``SEGMENT_SECONDS`` apart, the first starting ``CONTEXT_SECONDS`` before
  the song (silence there and after the song's end).
- Each window goes through an FFT at the input rate, its spectrum is cut or
  zero-extended to the output rate's bins, and an inverse FFT at the output rate
  gives the window at that rate; the centre ``SEGMENT_SECONDS`` are kept. Windows
  are whole seconds long, so both lengths are exact multiples of their rates (no
  time stretch, for any pair of integer rates).
- The spectrum is weighted by a raised-cosine band edge: 1 up to ``1 - ROLLOFF`` of
  the lower rate's Nyquist frequency, falling to 0 at it. A smooth edge makes the
  resampler's impulse response decay as 1/t**3, so the window edges
  (``CONTEXT_SECONDS`` away from every kept sample) do not show: against a resampler
  over the whole song, the difference is at float rounding. A brick-wall edge would
  leak about 1/t and show there.
- Equal rates are left alone.

The output has ``ceil(length * to_rate / from_rate)`` samples.
"""
from __future__ import annotations

import numpy as np

SEGMENT_SECONDS = 8  # kept per window
CONTEXT_SECONDS = 1  # on both sides of the kept part
ROLLOFF = 0.05  # the band edge's width, as a fraction of the lower rate's Nyquist frequency


def output_length(length: int, from_rate: int, to_rate: int) -> int:
    return -(-length * to_rate // from_rate)


def band_gain(frequencies: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """The weight of each frequency (Hz): 1 in the pass band, a raised cosine to 0 at
    the lower rate's Nyquist frequency, 0 above it. ``resample_tf`` computes the same."""
    nyquist = min(from_rate, to_rate) / 2
    edge = (1 - ROLLOFF) * nyquist
    position = np.clip((frequencies - edge) / (nyquist - edge), 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * position)


def resample_window(window: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """A whole window ``[SEGMENT_SECONDS + 2 * CONTEXT_SECONDS seconds at from_rate,
    channels]`` at ``to_rate``, all of it (the caller keeps its centre)."""
    seconds = SEGMENT_SECONDS + 2 * CONTEXT_SECONDS
    spectrum = np.fft.rfft(window, axis=0)
    bins = seconds * to_rate // 2 + 1
    kept = min(len(spectrum), bins)
    weighted = np.zeros((bins, window.shape[1]), spectrum.dtype)
    weighted[:kept] = spectrum[:kept] * band_gain(np.arange(kept) / seconds, from_rate, to_rate)[:, None]
    return (np.fft.irfft(weighted, n=seconds * to_rate, axis=0) * (to_rate / from_rate)).astype(np.float32)


class ResampleStream:
    """The rule over a song fed block by block; the same samples as ``resample`` on the
    whole song, whatever the blocks. ``resample_chunk(block, last)`` returns what is
    ready (whole segments until ``last``, then the rest), as soxr's streams do."""

    def __init__(self, from_rate: int, to_rate: int, channels: int):
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        self.buffer = np.zeros((CONTEXT_SECONDS * self.from_rate, channels), np.float32)
        self.received = self.emitted = 0

    def _segment(self) -> np.ndarray:
        window_length = (SEGMENT_SECONDS + 2 * CONTEXT_SECONDS) * self.from_rate
        window = self.buffer[:window_length]
        window = np.pad(window, [(0, window_length - len(window)), (0, 0)])
        start = CONTEXT_SECONDS * self.to_rate
        self.buffer = self.buffer[SEGMENT_SECONDS * self.from_rate:]
        return resample_window(window, self.from_rate, self.to_rate)[start:start + SEGMENT_SECONDS * self.to_rate]

    def resample_chunk(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.asarray(block, np.float32)
        self.received += len(block)
        if self.from_rate == self.to_rate:
            self.emitted += len(block)
            return block
        self.buffer = np.concatenate([self.buffer, block])
        window_length = (SEGMENT_SECONDS + 2 * CONTEXT_SECONDS) * self.from_rate
        pieces = []
        while len(self.buffer) >= window_length:
            pieces.append(self._segment())
        if last:
            total = output_length(self.received, self.from_rate, self.to_rate)
            while self.emitted + sum(map(len, pieces)) < total:
                pieces.append(self._segment())
            ready = total - self.emitted
        else:
            ready = sum(map(len, pieces))
        out = np.concatenate(pieces) if pieces else np.zeros((0, self.buffer.shape[1]), np.float32)
        out = out[:max(0, ready)]
        self.emitted += len(out)
        return out


def resample(signal: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``[time, channels]`` from one rate to the other by the rule: ``[ceil(time * to_rate / from_rate), channels]``."""
    return ResampleStream(from_rate, to_rate, signal.shape[1]).resample_chunk(signal, last=True)
