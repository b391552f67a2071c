"""The one resampling rule of separation, in numpy (no TensorFlow: the client imports it).

Every path that separates a song at a rate that is not the model's resamples it with
this rule: the numpy path (``runtime.chunking.SongSeparation``: separate.py,
evaluate.py, the web page, bench) here, block by block, and the exported graph
(``runtime.saved_model_graph.resample_tf``: ``separate_audio``, so REST and
``serve.client``) in TensorFlow, window for window the same arithmetic. So both give
the model the same samples and the accompaniment the same round-trip remainder.

The rule: a band-limited FFT resampler, applied in windows so that a song of any
length streams through it in bounded memory.

- Window lengths come from the rates' greatest common divisor g: a window is W
  "units" of from_rate/g input samples, which are to_rate/g output samples, so
  both lengths are exact (no time stretch, for any pair of integer rates). W is
  the smallest power of two of at least ``MIN_WINDOW_SECONDS`` (W/g seconds), so
  the FFT lengths are powers of two times the rates' odd parts: between 44.1 and
  22.05 kHz, 2**19 and 2**18 samples (11.9 s), the fastest lengths an FFT has.
- Each window keeps its centre: W/``CONTEXT_DIVISOR`` units of context on both
  sides (0.74 s at 44.1 kHz), the kept segments tiling the output, the first
  window starting one context before the song (silence there and after its end).
- Each window goes through a single-precision FFT at the input rate, its spectrum
  is cut or zero-extended to the output rate's bins, and an inverse FFT at the
  output rate gives the window at that rate.
- The spectrum is weighted by a raised-cosine band edge: 1 up to ``1 - ROLLOFF`` of
  the lower rate's Nyquist frequency, falling to 0 at it. A smooth edge makes the
  resampler's impulse response decay as 1/t**3, so the window edges (at least
  0.6 s from every kept sample) do not show: against a resampler over the whole
  song, the difference is at float rounding. A brick-wall edge would leak about
  1/t and show there.
- Equal rates are left alone.

The output has ``ceil(length * to_rate / from_rate)`` samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np
import scipy.fft

MIN_WINDOW_SECONDS = 10
CONTEXT_DIVISOR = 16  # context on each side: 1/16 of the window (the kept segment is 7/8 of it)
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


@dataclass(frozen=True)
class WindowPlan:
    """The windows of the rule between two rates (``resample_tf`` computes the same in TF)."""
    from_rate: int
    to_rate: int
    divisor: int  # gcd of the rates: one unit is from_rate/divisor input, to_rate/divisor output samples
    units: int  # a window, in units: a power of two

    @classmethod
    def between(cls, from_rate: int, to_rate: int) -> "WindowPlan":
        divisor = gcd(int(from_rate), int(to_rate))
        units = 1
        while units < MIN_WINDOW_SECONDS * divisor:
            units *= 2
        return cls(int(from_rate), int(to_rate), divisor, units)

    @property
    def context_units(self) -> int:
        return self.units // CONTEXT_DIVISOR

    def input_samples(self, units: int) -> int:
        return units * (self.from_rate // self.divisor)

    def output_samples(self, units: int) -> int:
        return units * (self.to_rate // self.divisor)

    @property
    def segment_units(self) -> int:
        return self.units - 2 * self.context_units

    def gain(self) -> np.ndarray:
        """float32 weight of each input bin that reaches the output (with the rates' ratio,
        which keeps amplitudes): the band edge at the bins' frequencies, k * divisor / units Hz."""
        bins = min(self.input_samples(self.units), self.output_samples(self.units)) // 2 + 1
        frequencies = np.arange(bins) * (self.divisor / self.units)
        return (band_gain(frequencies, self.from_rate, self.to_rate) * (self.to_rate / self.from_rate)).astype(np.float32)


def resample_window(window: np.ndarray, plan: WindowPlan, gain: np.ndarray) -> np.ndarray:
    """A whole window ``[plan.input_samples(plan.units), channels]`` at the output rate,
    all of it (the caller keeps its centre); ``gain`` is ``plan.gain()``."""
    # float32 in, complex64 out; the channels' transforms on every core (workers=-1)
    spectrum = scipy.fft.rfft(window, axis=0, workers=-1)
    weighted = spectrum[:len(gain)]
    weighted *= gain[:, None]
    # irfft zero-extends the spectrum to the output's bins itself
    return scipy.fft.irfft(weighted, n=plan.output_samples(plan.units), axis=0, workers=-1)


class _BufferedResampler:
    """What both forms of the rule share: the block's samples counted and buffered (equal
    rates pass through); ``_ready(last)`` returns the output samples they complete."""

    def resample_chunk(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.asarray(block, np.float32)
        self.received += len(block)
        if self.from_rate == self.to_rate:
            self.emitted += len(block)
            return block
        self.buffer = np.concatenate([self.buffer, block])
        return self._ready(last)


class ResampleStream(_BufferedResampler):
    """The rule over a song fed block by block; the same samples as ``resample`` on the
    whole song, whatever the blocks. ``resample_chunk(block, last)`` returns what is
    ready (whole segments until ``last``, then the rest), as soxr's streams do."""

    def __init__(self, from_rate: int, to_rate: int, channels: int):
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        self.plan = WindowPlan.between(self.from_rate, self.to_rate)
        self.gain = self.plan.gain()
        self.buffer = np.zeros((self.plan.input_samples(self.plan.context_units), channels), np.float32)
        self.received = self.emitted = 0

    def _segment(self) -> np.ndarray:
        plan = self.plan
        window_length = plan.input_samples(plan.units)
        window = self.buffer[:window_length]
        if len(window) < window_length:  # the song's end: silence after it
            window = np.pad(window, [(0, window_length - len(window)), (0, 0)])
        start = plan.output_samples(plan.context_units)
        self.buffer = self.buffer[plan.input_samples(plan.segment_units):]
        return resample_window(window, plan, self.gain)[start:start + plan.output_samples(plan.segment_units)]

    def _ready(self, last: bool) -> np.ndarray:
        window_length = self.plan.input_samples(self.plan.units)
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


# ---------------------------------------------------------------- the rule as a short filter, for live streams

# For live streams the rule's impulse response is cut this many periods of its band
# edge's width from its centre (25 ms between 44.1 and 22.05 kHz, 70 ms at 8 kHz):
# each resampling then waits that long for its lookahead. The raised-cosine edge makes
# the response fall as 1/t**3, so against the windowed FFT form the cut leaves an
# error under 1e-5 on full-scale noise at every rate pair, far less on music.
LIVE_HALF_WIDTH_EDGE_PERIODS = 14
# Above this many filter taps over all phases (rates whose ratio reduces to a large
# numerator, e.g. 44101 -> 22050), live resampling is refused: its table would not fit.
MAX_LIVE_TAPS = 8_000_000


def impulse_response(seconds: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """The rule's continuous impulse response, as a weight per input sample: the inverse
    Fourier transform of ``band_gain`` (a raised-cosine spectrum), divided by ``from_rate``."""
    nyquist = min(from_rate, to_rate) / 2
    edge = (1 - ROLLOFF) * nyquist
    width, span = nyquist - edge, nyquist + edge
    seconds = np.asarray(seconds, np.float64)
    envelope_denominator = 1 - (2 * width * seconds) ** 2
    singular = np.abs(envelope_denominator) < 1e-9  # the removable singularity: its limit is pi/4
    envelope = np.where(singular, np.pi / 4,
                        np.cos(np.pi * width * seconds) / np.where(singular, 1.0, envelope_denominator))
    return span * np.sinc(span * seconds) * envelope / from_rate


class LiveResampleStream(_BufferedResampler):
    """The rule as a finite filter for live streams: ``resample_chunk`` returns every
    output sample whose lookahead (``LIVE_HALF_WIDTH_EDGE_PERIODS``) has arrived, so a
    stream waits ``lookahead_seconds`` at most, whatever its blocks (``ResampleStream``
    waits for whole 8-second segments). Equal rates pass through."""

    def __init__(self, from_rate: int, to_rate: int, channels: int):
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        edge_width = ROLLOFF * min(self.from_rate, self.to_rate) / 2
        self.half_taps = int(np.ceil(LIVE_HALF_WIDTH_EDGE_PERIODS / edge_width * self.from_rate))
        self.phases = self.to_rate // gcd(self.from_rate, self.to_rate)
        if self.from_rate != self.to_rate and self.phases * 2 * self.half_taps > MAX_LIVE_TAPS:
            raise ValueError(f"live resampling from {self.from_rate} to {self.to_rate} Hz would need "
                             f"{self.phases} filter phases; use a common sample rate (e.g. 44100 or 48000 Hz)")
        # Output sample m sits at input position m * from / to = n0 + r / to (r = m * from mod to,
        # a multiple of the rates' gcd): its taps are inputs n0 - half_taps + 1 .. n0 + half_taps.
        step = self.to_rate // self.phases
        offsets = np.arange(-self.half_taps + 1, self.half_taps + 1)
        remainders = np.arange(self.phases)[:, None] * step
        self.weights = (impulse_response((remainders - offsets[None] * self.to_rate) / (self.from_rate * self.to_rate),
                                         self.from_rate, self.to_rate).astype(np.float32)
                        if self.from_rate != self.to_rate else None)
        # buffer[0] is input sample `self.first`; the song is preceded by silence.
        self.buffer = np.zeros((self.half_taps, channels), np.float32)
        self.first = -self.half_taps
        self.received = self.emitted = 0

    @property
    def lookahead_seconds(self) -> float:
        """How far past an output sample's time its last tap lies (0 for equal rates)."""
        return 0.0 if self.from_rate == self.to_rate else self.half_taps / self.from_rate

    def _polyphase(self, rows: np.ndarray, starts: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Outputs ``rows`` by one correlation per (phase, input phase, channel): rows of one
        phase have windows ``hop`` inputs apart, so splitting the input and the taps ``hop``
        ways makes each a plain correlation, without copying the overlapping windows."""
        hop = self.from_rate // (self.to_rate // self.phases)  # input samples between rows of one phase
        out = np.zeros((len(rows), self.buffer.shape[1]), np.float32)
        for p in range(self.phases):
            selected = np.flatnonzero(phase == p)
            if len(selected) == 0:
                continue
            first, count = starts[selected[0]], len(selected)
            for offset in range(hop):
                taps = self.weights[p, offset::hop]
                signal = self.buffer[first + offset::hop][:count + len(taps) - 1]
                for channel in range(self.buffer.shape[1]):
                    out[selected, channel] += np.correlate(signal[:, channel], taps, mode="valid")
        return out

    def _outputs(self, stop: int, pieces: list, max_rows: int = 4096) -> None:
        while self.emitted < stop:  # in pieces, so that a long block costs bounded memory
            m = np.arange(self.emitted, min(stop, self.emitted + max_rows))
            n0, remainder = np.divmod(m * self.from_rate, self.to_rate)
            starts = n0 - self.half_taps + 1 - self.first
            phase = remainder // (self.to_rate // self.phases)
            if self.phases * self.from_rate // (self.to_rate // self.phases) <= 16:  # e.g. 44.1 <-> 22.05 kHz
                pieces.append(self._polyphase(m, starts, phase))
            else:  # many phases: gather each output's window (a copy) and weigh it with its phase's taps
                channels_first = np.ascontiguousarray(self.buffer.T)  # windows along contiguous memory: BLAS-fast
                windows = np.lib.stride_tricks.sliding_window_view(channels_first, 2 * self.half_taps, axis=1)
                taps = self.weights[phase]
                pieces.append(np.matmul(windows[:, starts].transpose(1, 0, 2), taps[:, :, None])[..., 0])
            self.emitted = int(m[-1]) + 1
        next_start = (self.emitted * self.from_rate) // self.to_rate - self.half_taps + 1
        drop = max(0, next_start - self.first)
        self.buffer, self.first = self.buffer[drop:], self.first + drop

    def _ready(self, last: bool) -> np.ndarray:
        if last:  # silence after the song
            self.buffer = np.pad(self.buffer, [(0, self.half_taps), (0, 0)])
            stop = output_length(self.received, self.from_rate, self.to_rate)
        else:  # m is ready once input n0(m) + half_taps has arrived
            stop = max(self.emitted, -(-((self.received - self.half_taps) * self.to_rate) // self.from_rate))
        pieces = []
        self._outputs(stop, pieces)
        return np.concatenate(pieces) if pieces else np.zeros((0, self.buffer.shape[1]), np.float32)
