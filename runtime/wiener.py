"""The Wiener post-filter (issue 28): Open-Unmix's multichannel Wiener filter
(``norbert.wiener``'s algorithm) on the separator's outputs, at the model's rate, in
single precision, streamed: ``WienerStream`` takes the model input and the model's
estimates block by block and gives the refined estimates back once the STFT frames
that cover them are done, in bounded memory, whatever the song's length.

Variants (``WienerSettings.parse``, the ``--wiener`` of separate.py, evaluate.py,
export.py and bench/separate.py):

    off        no post-filter
    mask       a soft mask: each source's STFT magnitude over the sum of the sources'
               magnitudes (per channel; norbert's ``softmask`` of the magnitudes: a
               ratio mask), times the mixture's STFT. Frame-local. The two masks add
               up to one (to EPS), so only the vocals are masked and inverted; the
               accompaniment is the mixture minus them (``complementary``: norbert's
               to float rounding where the sources' magnitudes cover the mixture's,
               as a difference-output model's always do), half the inverse STFTs.
    emN        N EM iterations of the multichannel Wiener filter, started from each
               source's magnitudes with the mixture's phase (``N``: the same)
    mask+emN   N EM iterations started from the soft mask

Measured on the 14 MUSDB18 validation previews with norbert on whole songs at 44.1 kHz
(docs/results/wiener-variants.json): the mask alone was the best (vocals 4.41 dB median
SDR against 4.22 for the model alone; em1 4.27, em2 3.74, mask+em1 4.26).

The STFT is librosa's (periodic Hann window, hop a quarter of it, centred with zeros
outside the song), computed frame by frame as the samples arrive. Its default size is
371 ms of the model's rate, 8192 points at the shipped model's 22.05 kHz
(``default_fft``): of 1024, 2048, 4096 and 8192 points under the mask, each doubling
raised vocals and accompaniment SDR on the validation previews (4.34, 4.41, 4.47, 4.52
dB vocals median) and on the sets that chose nothing (Falcon 69: 0.79, 0.84, 0.87 dB
from 2048 up; of MIR-1K's 89 validation clips, 80 better at 4096 than at 2048 and 81
at 8192; 16384 points is flat against 8192). The
model's estimates are noisy from frame to frame; longer frames average their
magnitudes over more of the song before the mask divides them. Open-Unmix uses 4096
points at 44.1 kHz (93 ms).

EM is local in time: norbert estimates each source's spatial covariance (a 2x2 matrix
per frequency bin) over the whole song; here over a block of ``em_block`` frames (300,
as Open-Unmix's own separator, ``wiener_win_len``) and ``em_context`` frames on each
side (100), and only the block's own frames are kept. A song shorter than one block
plus its context gets norbert's whole-song covariance; a longer one gets a covariance
that follows its stereo image over time, the same however it is cut into blocks (the
block grid is fixed from the song's first frame). norbert also scales the mixture so
that its loudest bin is 10 (its regularisation, sqrt(eps) of float32, is relative to
that); here the loudest bin of the block with its context (a fixed scale instead cost
0.5 dB of SDR on a preview: the regularisation matters).

``norbert_filter`` keeps the whole-song norbert reference (tests/test_wiener.py
measures this module against it).
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.signal

from models.architecture import SOURCES

EPS = float(np.finfo(np.float32).eps)  # norbert's eps for single precision
REFERENCE_FFT = 8192, 22050  # 371 ms: the best size under the mask (the module's docstring)
FFT_SIZES = (512, 1024, 2048, 4096, 8192, 16384)  # what --wiener-fft offers
FRAMES_AT_ONCE = 256  # STFT frames computed and masked together (bounds the intermediates' memory)


def default_fft(sample_rate: int) -> int:
    """The power of two nearest (in ratio) to 8192 points at 22.05 kHz, in time: 16384
    at 44.1 and 48 kHz, 8192 at 16 kHz, 4096 at 8 kHz."""
    points, rate = REFERENCE_FFT
    return 2 ** round(math.log2(points * sample_rate / rate))


@dataclass(frozen=True)
class WienerSettings:
    iterations: int = 1  # EM iterations; 0 keeps the first estimates
    n_fft: int | None = None  # hop: a quarter of it; None: default_fft of the model's rate
    soft_mask: bool = False  # first estimates: the soft mask, not the magnitudes with the mixture's phase
    em_block: int = 300  # frames per EM block (its spatial covariances)
    em_context: int = 100  # frames on each side of a block that its covariances also take

    @property
    def active(self) -> bool:
        return self.iterations > 0 or self.soft_mask

    @property
    def complementary(self) -> bool:
        """The refined sources add up to the mixture: the mask alone, whose accompaniment is
        the mixture minus the masked vocals (the module's docstring)."""
        return self.soft_mask and not self.iterations

    @property
    def refined_sources(self) -> tuple[str, ...]:
        """The sources the filter computes (the rest is the mixture minus them)."""
        return SOURCES[:1] if self.complementary else SOURCES

    @property
    def name(self) -> str:
        """``off``, ``mask``, ``emN`` or ``mask+emN`` (``parse`` reads it back)."""
        if not self.active:
            return "off"
        em = f"em{self.iterations}" if self.iterations else ""
        return "+".join(part for part in ("mask" if self.soft_mask else "", em) if part)

    @classmethod
    def parse(cls, text: str, n_fft: int | None = None) -> "WienerSettings":
        """``off``/``0``, ``mask``, ``emN``/``N`` or ``mask+emN``; ValueError otherwise."""
        match = re.fullmatch(r"(off)|(mask)|(?:(mask)\+)?em(\d+)|(\d+)", text.strip())
        if match is None:
            raise ValueError(f"--wiener takes off, mask, emN or mask+emN (N EM iterations), not {text!r}")
        off, mask, mask_then, em, bare = match.groups()
        iterations = int(em or bare or 0)
        if em is not None and iterations == 0:
            raise ValueError(f"--wiener {text}: N of emN must be 1 or more (off, or mask, for none)")
        return cls(iterations, n_fft, soft_mask=bool(mask or mask_then))

    def fft_size(self, sample_rate: int) -> int:
        return self.n_fft or default_fft(sample_rate)

    def describe(self, sample_rate: int | None = None) -> str:
        if not self.active:
            return "no Wiener post-filter"
        start = "soft mask" if self.soft_mask else "magnitudes with the mixture phase"
        em = (f", then {self.iterations} EM iteration(s) (covariances over {self.em_block}-frame blocks "
              f"+ {self.em_context} frames on each side)" if self.iterations else "")
        size = (f"{self.fft_size(sample_rate)}-point" if sample_rate else
                f"{self.n_fft}-point" if self.n_fft else "default-size")
        return f"Wiener post-filter {self.name}: {start}{em}, {size} STFT at the model's rate"

    def to_dict(self, sample_rate: int) -> dict:
        """As the model's facts record it (``from_dict`` reads it back)."""
        return {"wiener": self.name, "n_fft": self.fft_size(sample_rate), "hop": self.fft_size(sample_rate) // 4,
                "window": "hann (periodic)", "em_block": self.em_block, "em_context": self.em_context,
                "precision": "float32"}

    @classmethod
    def from_dict(cls, raw: dict | None) -> "WienerSettings | None":
        if not raw:
            return None
        settings = cls.parse(raw["wiener"], raw.get("n_fft"))
        return cls(settings.iterations, settings.n_fft, settings.soft_mask, raw.get("em_block", 300),
                   raw.get("em_context", 100)) if settings.active else None


def wiener_option(text: str) -> WienerSettings:
    """argparse type of --wiener."""
    try:
        return WienerSettings.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def em_iterations(text: str) -> int:
    """argparse type of a bare number of EM iterations, 0 or more (bench/separate.py's --wiener)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of iterations, 0 or more, not {text!r}")
    return int(text)


def add_wiener_arguments(parser: argparse.ArgumentParser, default_help: str) -> None:
    """--wiener and --wiener-fft, the same in every tool."""
    parser.add_argument("--wiener", type=wiener_option, metavar="VARIANT",
                        help="post-filter the model's outputs with the multichannel Wiener filter at the model's "
                             "rate: off, mask (a soft mask of the mixture: the best on the validation previews), "
                             "emN (N EM iterations from the outputs' magnitudes with the mixture's phase) or "
                             f"mask+emN (N EM iterations from the mask); a bare N is emN (0: off). {default_help}")
    parser.add_argument("--wiener-fft", type=int, choices=FFT_SIZES,
                        help="the Wiener filter's STFT size at the model's rate (hop: a quarter of it; default: "
                             "371 ms, 8192 points at 22.05 kHz: the best of 1024-8192 on real songs; Open-Unmix "
                             "uses 93 ms)")


def settings_from_args(wiener: WienerSettings | None, n_fft: int | None,
                       soft_mask: bool = False) -> WienerSettings | None:
    """--wiener, --wiener-fft (and evaluate.py's older --wiener-soft-mask, which turns emN into
    mask+emN and off into mask) -> the settings, None when off; None for --wiener not given."""
    if wiener is None and not soft_mask:
        return None
    wiener = wiener or WienerSettings(0)
    return WienerSettings(wiener.iterations, n_fft or wiener.n_fft, wiener.soft_mask or soft_mask,
                          wiener.em_block, wiener.em_context)


def model_wiener(separator, wiener: WienerSettings | None, n_fft: int | None,
                 soft_mask: bool = False) -> WienerSettings | None:
    """What a tool's --wiener/--wiener-fft (and evaluate.py's --wiener-soft-mask) choose for
    ``separator``: what they say, else the model's own (``Separator.wiener``: an export's,
    from its facts); None for off."""
    chosen = settings_from_args(wiener, n_fft, soft_mask)
    if chosen is None:
        chosen = getattr(separator, "wiener", None)
        if chosen is not None and n_fft:
            chosen = WienerSettings(chosen.iterations, n_fft, chosen.soft_mask, chosen.em_block, chosen.em_context)
    return chosen if chosen is not None and chosen.active else None


# ---------------------------------------------------------------- the filter on spectra


def hann(n_fft: int) -> np.ndarray:
    return scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)


def soft_masked(magnitude: np.ndarray, total: np.ndarray, mixture: np.ndarray) -> np.ndarray:
    """A source's soft mask (its share of the sources' summed magnitudes) on the mixture's STFT."""
    return magnitude / (EPS + total) * mixture


def complementary_sources(settings: "WienerSettings | None", model_sums_to_input: bool) -> bool:
    """Whether a separation's accompaniment is its model input minus its vocals, so only
    the vocals need resampling back: the post-filter's rule where there is one (the mask
    alone), else the model's (``Separator.sums_to_input``). runtime.chunking and the
    exported graph both follow it."""
    if settings is not None and settings.active:
        return settings.complementary
    return model_sums_to_input


def first_estimates(mixture: np.ndarray, estimates: np.ndarray, soft_mask: bool,
                    sources: int = len(SOURCES), axis: int = -1) -> np.ndarray:
    """``mixture`` ``[frames, bins, channels]`` and the estimates' STFTs ``[..., sources]``
    (or any layout, the sources on ``axis`` of the estimates) -> the first estimates
    (norbert.wiener before EM) of the first ``sources``: the soft mask of the magnitudes,
    or the magnitudes with the mixture's phase."""
    magnitudes = np.abs(estimates)
    kept = magnitudes[(slice(None),) * (axis % magnitudes.ndim) + (slice(0, sources),)]
    mixture = np.expand_dims(mixture, axis)
    if soft_mask:
        return soft_masked(kept, magnitudes.sum(axis, keepdims=True), mixture)
    return kept * np.exp(1j * np.angle(mixture)).astype(np.complex64)


def _inverse(c: np.ndarray) -> np.ndarray:
    """Inverses of ``[..., n, n]`` matrices: closed forms for 1x1 and 2x2 (as norbert)."""
    n = c.shape[-1]
    if n == 1:
        return 1 / c
    if n == 2:
        det = c[..., 0, 0] * c[..., 1, 1] - c[..., 0, 1] * c[..., 1, 0]
        inverse = np.stack([np.stack([c[..., 1, 1], -c[..., 0, 1]], -1),
                            np.stack([-c[..., 1, 0], c[..., 0, 0]], -1)], -2)
        return inverse / det[..., None, None]
    return np.linalg.inv(c)


def expectation_maximization(mixture: np.ndarray, estimates: np.ndarray, iterations: int,
                             scale: float) -> np.ndarray:
    """norbert.expectation_maximization over all the frames given (one block): ``mixture``
    ``[frames, bins, channels]``, first estimates ``[frames, bins, channels, sources]``
    complex64, both divided by ``scale`` for the regularisation (as norbert.wiener) and
    multiplied back. Each iteration: each source's power ``v`` (mean over channels) and
    spatial covariance ``R`` (per bin, over the frames, weighted by ``v``), the mixture's
    covariance ``sum v R`` (+ sqrt(eps) I), and each source's posterior mean ``v R C^-1 x``."""
    x = (mixture / scale).astype(np.complex64)
    y = (estimates / scale).astype(np.complex64)
    channels = x.shape[-1]
    if channels == 2:
        return _stereo_em(x, y, iterations) * np.float32(scale)
    regularisation = np.float32(np.sqrt(EPS)) * np.eye(channels, dtype=np.complex64)
    for _ in range(iterations):
        power = np.mean(np.abs(y) ** 2, axis=2)  # [frames, bins, sources]
        # [bins, sources, channels, channels]: sum over frames of y y^H, over eps + sum of v
        covariance = np.einsum("fbis,fbjs->bsij", y, y.conj()) / (EPS + power.sum(0))[..., None, None]
        mix_covariance = np.einsum("fbs,bsij->fbij", power.astype(np.complex64), covariance) + regularisation
        z = np.einsum("fbij,fbj->fbi", _inverse(mix_covariance), x)  # C^-1 x
        y = power[:, :, None, :] * np.einsum("bsij,fbj->fbis", covariance, z)
    return (y * scale).astype(np.complex64)


def _stereo_em(x: np.ndarray, y: np.ndarray, iterations: int) -> np.ndarray:
    """``expectation_maximization``'s iterations for two channels, the 2x2 Hermitian matrices
    written out (real diagonals, one complex off-diagonal): the same arithmetic, fewer
    operations."""
    regularisation = np.float32(np.sqrt(EPS))
    x0, x1 = x[:, :, 0, None], x[:, :, 1, None]  # [frames, bins, 1]
    for _ in range(iterations):
        y0, y1 = y[:, :, 0], y[:, :, 1]  # [frames, bins, sources]
        p0, p1 = y0.real ** 2 + y0.imag ** 2, y1.real ** 2 + y1.imag ** 2
        power = (p0 + p1) / 2
        total = EPS + power.sum(0)  # [bins, sources]
        r00, r11 = p0.sum(0) / total, p1.sum(0) / total
        r01 = (y0 * y1.conj()).sum(0) / total
        c00 = (power * r00).sum(-1, keepdims=True) + regularisation  # [frames, bins, 1]
        c11 = (power * r11).sum(-1, keepdims=True) + regularisation
        c01 = (power * r01).sum(-1, keepdims=True)
        det = c00 * c11 - (c01.real ** 2 + c01.imag ** 2)
        z0 = (c11 * x0 - c01 * x1) / det
        z1 = (c00 * x1 - c01.conj() * x0) / det
        y = np.stack([power * (r00 * z0 + r01 * z1), power * (r01.conj() * z0 + r11 * z1)], axis=2)
    return y.astype(np.complex64)


def em_scale(mixture: np.ndarray) -> float:
    """norbert.wiener's scale of a block's mixture spectra: its loudest bin brought to 10
    (never up), which the regularisation is relative to."""
    return max(1.0, float(np.abs(mixture).max(initial=0)) / 10)


# ---------------------------------------------------------------- streamed


class WienerStream:
    """The post-filter on a song fed block by block at the model's rate: ``push(mixture,
    estimates)`` with the model input and the separator's estimates for the same samples
    (``[n, channels]`` each, float32, blocks of any lengths, the two may come in different
    blocks) returns the refined estimates for the samples now final; after ``last`` every
    sample has come back. One push of the whole song (``wiener_filter``) and any cutting of
    it give the same samples (to float32 rounding of the FFTs). Memory: the samples of a
    frame, the frames of an EM block with its context, and the overlap-add's tail.

    ``estimates_add_up``: the accompaniment estimate is the mixture minus the vocals one (a
    difference-output model's, ``Separator.sums_to_input``), so its STFT is the mixture's
    minus the vocals': only those two are computed."""

    def __init__(self, settings: WienerSettings, sample_rate: int, channels: int, estimates_add_up: bool = False):
        self.settings, self.channels = settings, channels
        self.transformed = SOURCES[:1] if estimates_add_up else SOURCES  # the estimates whose STFT is computed
        self.n_fft = settings.fft_size(sample_rate)
        self.hop = self.n_fft // 4
        self.window = hann(self.n_fft)
        self.refined = settings.refined_sources
        half = self.n_fft // 2
        # Samples from padded position `self.start` (the song starts at `half`): mixture, then each source transformed.
        self.samples = np.zeros((half, channels * (1 + len(self.transformed))), np.float32)
        self.mixture_waiting = np.zeros((0, channels), np.float32)  # arrived before their estimates
        self.estimates_waiting = np.zeros((0, channels * len(self.transformed)), np.float32)
        self.start = 0
        self.received = 0  # song samples with both mixture and estimates
        self.frames_done = 0  # frames computed (STFT)
        # EM: spectra of frames from `self.block_first` on ([frames, bins, channels, 1 + sources])
        self.spectra = np.zeros((0, self.n_fft // 2 + 1, channels, 1 + len(SOURCES)), np.complex64)
        self.spectra_first = 0
        self.next_block = 0
        # Overlap-add from padded position `self.out_start`: sum of windowed frames, and of the window squared
        # (with room for every frame of a push: one copy per push, not one per block of frames)
        self.added = np.zeros((0, channels * len(self.refined)), np.float32)
        # complementary: the mixture of the samples not yet given back, which the accompaniment is taken from
        self.mixture_unemitted = np.zeros((0, channels), np.float32)
        self.weights = np.zeros(0, np.float32)
        self.out_start = 0
        self.frames_added = 0
        self.emitted = 0
        # The most samples after a sample that must arrive before it is final: the frames covering
        # it (n_fft), and for EM the rest of its block and the context after it.
        self.delay = self.n_fft + (self.hop * (settings.em_block + settings.em_context - 1) if settings.iterations else 0)

    # -- input

    def push(self, mixture: np.ndarray, estimates: dict, last: bool = False) -> dict:
        self.mixture_waiting = _appended(self.mixture_waiting, np.asarray(mixture, np.float32))
        self.estimates_waiting = _appended(
            self.estimates_waiting, np.concatenate([np.asarray(estimates[s], np.float32) for s in self.transformed], 1))
        count = min(len(self.mixture_waiting), len(self.estimates_waiting))
        if last and len(self.mixture_waiting) != len(self.estimates_waiting):
            raise ValueError(f"the song ends with {len(self.mixture_waiting)} mixture samples and "
                             f"{len(self.estimates_waiting)} estimate samples unmatched")
        kept = len(self.samples)
        samples = np.empty((kept + count, self.samples.shape[1]), np.float32)  # one copy of the new samples
        samples[:kept] = self.samples
        samples[kept:, :self.channels] = self.mixture_waiting[:count]
        samples[kept:, self.channels:] = self.estimates_waiting[:count]
        self.samples = samples
        if self.settings.complementary:
            self.mixture_unemitted = _appended(self.mixture_unemitted, self.mixture_waiting[:count])
        self.mixture_waiting, self.estimates_waiting = self.mixture_waiting[count:], self.estimates_waiting[count:]
        self.received += count
        self._frames(last)
        return self._emit(last)

    def _frames(self, last: bool) -> None:
        """The STFT of every frame whose samples have all arrived (at the end: every frame)."""
        half = self.n_fft // 2
        total = 1 + self.received // self.hop if last else None  # librosa's frame count
        if last:  # the zeros after the song that the last frames reach
            needed = (total - 1) * self.hop + self.n_fft - (self.start + len(self.samples))
            self.samples = np.concatenate([self.samples, np.zeros((max(0, needed), self.samples.shape[1]), np.float32)])
        available = (self.start + len(self.samples) - self.n_fft) // self.hop + 1  # frames whose samples are here
        if not last:
            # only samples of the song so far (not the zeros after its end)
            available = min(available, (half + self.received - self.n_fft) // self.hop + 1)
        remaining = max(0, (total if last else available) - self.frames_done)
        self._reserve(self.frames_done + remaining)  # every frame this push computes may be added
        while True:  # at most FRAMES_AT_ONCE frames at a time: the intermediates stay small
            count = min(remaining, FRAMES_AT_ONCE)
            remaining -= count
            if count:
                offset = self.frames_done * self.hop - self.start
                frames = np.lib.stride_tricks.sliding_window_view(
                    self.samples[offset:offset + (count - 1) * self.hop + self.n_fft], self.n_fft, axis=0)[::self.hop]
                # windowed into C order, each frame contiguous ("K" order would follow the samples' layout)
                windowed = np.multiply(frames, self.window, out=np.empty(frames.shape, np.float32))
                spectra = scipy.fft.rfft(windowed, axis=-1, workers=-1)  # [frames, columns, bins]
                self.frames_done += count
                drop = self.frames_done * self.hop - self.start
                self.samples, self.start = self.samples[drop:], self.start + drop
                self._refine(spectra, last and not remaining, total)
            elif last:
                self._refine(np.zeros((0, self.samples.shape[1], self.n_fft // 2 + 1), np.complex64), True, total)
            if not remaining:
                return

    def _refine(self, spectra: np.ndarray, last: bool, total: int | None) -> None:
        """The next frames' spectra ``[frames, columns, bins]`` (the mixture's channels, then
        each transformed source's) refined and overlap-added, or kept for their EM block."""
        settings = self.settings
        count, bins = len(spectra), self.n_fft // 2 + 1
        spectra = spectra.reshape(count, 1 + len(self.transformed), self.channels, bins)
        added_up = len(self.transformed) < len(SOURCES)
        if added_up and settings.complementary:  # the mask of the vocals, from |V| and |X - V|
            mixture, vocals = spectra[:, 0], spectra[:, 1]
            magnitude = np.abs(vocals)
            self._add(soft_masked(magnitude, magnitude + np.abs(mixture - vocals), mixture))
            return
        if added_up:  # the accompaniment's: the mixture's minus the vocals'
            spectra = np.concatenate([spectra, (spectra[:, 0] - spectra[:, 1])[:, None]], axis=1)
        if not settings.iterations:  # frame-local, in the STFT's own layout
            refined = first_estimates(spectra[:, 0], spectra[:, 1:], settings.soft_mask, len(self.refined), axis=1)
            self._add(refined.reshape(count, -1, bins))
            return
        # EM's layout: [frames, bins, channels, mixture and sources]
        self.spectra = np.concatenate([self.spectra, spectra.transpose(0, 3, 2, 1)])
        block, context = settings.em_block, settings.em_context
        frames_here = self.spectra_first + len(self.spectra)
        while True:
            begin, end = self.next_block * block, (self.next_block + 1) * block
            if begin >= (total if last else frames_here):
                break
            if not last and end + context > frames_here:
                break
            lo = max(0, begin - context) - self.spectra_first
            hi = min(end + context, frames_here) - self.spectra_first
            part = self.spectra[lo:hi]
            refined = expectation_maximization(part[..., 0], first_estimates(part[..., 0], part[..., 1:],
                                                                             settings.soft_mask),
                                               settings.iterations, em_scale(part[..., 0]))
            keep_from = begin - self.spectra_first - lo
            kept = refined[keep_from:keep_from + (min(end, frames_here) - begin)]
            self._add(kept.transpose(0, 3, 2, 1).reshape(len(kept), self.channels * len(SOURCES), -1))
            self.next_block += 1
            drop = max(0, self.next_block * block - context - self.spectra_first)
            self.spectra, self.spectra_first = self.spectra[drop:], self.spectra_first + drop

    # -- output

    def _add(self, columns: np.ndarray) -> None:
        """Overlap-adds the next refined frames ``[frames, columns, bins]`` (each refined
        source's channels in turn)."""
        count = len(columns)
        if not count:
            return
        first = self.frames_added
        frames = scipy.fft.irfft(columns, n=self.n_fft, axis=-1, workers=-1)  # [frames, columns, n_fft]
        frames *= self.window
        self._reserve(first + count)
        # hop = n_fft / 4: frame k's j-th quarter lands on hop-long piece k + j
        at = first * self.hop - self.out_start
        pieces = frames.transpose(0, 2, 1).reshape(count, 4, self.hop, -1)
        added = self.added[at:at + (count + 3) * self.hop].reshape(count + 3, self.hop, -1)
        weights = self.weights[at:at + (count + 3) * self.hop].reshape(count + 3, self.hop)
        squared = (self.window ** 2).reshape(4, self.hop)
        for quarter in range(4):
            added[quarter:quarter + count] += pieces[:, quarter]
            weights[quarter:quarter + count] += squared[quarter]
        self.frames_added += count

    def _reserve(self, frames: int) -> None:
        """Room in the overlap-add for the first ``frames`` frames of the song."""
        end = (frames - 1) * self.hop + self.n_fft - self.out_start
        if end > len(self.added):
            added, weights = np.zeros((end, self.added.shape[1]), np.float32), np.zeros(end, np.float32)
            added[:len(self.added)], weights[:len(self.weights)] = self.added, self.weights
            self.added, self.weights = added, weights

    def _emit(self, last: bool) -> dict:
        half = self.n_fft // 2
        # Final: padded positions before the next frame's start (every frame covering them is added).
        added_end = (self.frames_added - 1) * self.hop + self.n_fft - self.out_start if self.frames_added else 0
        final = added_end if last else self.frames_added * self.hop - self.out_start
        final = min(final, half + self.received - self.out_start)  # never the zeros after the song
        skip = max(0, half - self.out_start)  # the padding before the song
        final = max(final, skip)  # nothing of the song final yet: keep everything
        ready = self.added[skip:final]
        weights = self.weights[skip:final]
        ready = ready / np.where(weights > np.finfo(np.float32).tiny, weights, 1)[:, None]  # as librosa
        drop = final if final > skip else 0
        self.added, self.weights, self.out_start = self.added[drop:], self.weights[drop:], self.out_start + drop
        self.emitted += len(ready)
        sources = {source: ready[:, index * self.channels:(index + 1) * self.channels]
                   for index, source in enumerate(self.refined)}
        if self.settings.complementary:
            mixture, self.mixture_unemitted = self.mixture_unemitted[:len(ready)], self.mixture_unemitted[len(ready):]
            sources["accompaniment"] = mixture - sources["vocals"]
        return sources


def _appended(waiting: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``new`` after the samples ``waiting`` (``new`` itself, no copy, when none wait)."""
    return np.concatenate([waiting, new]) if len(waiting) else new


def wiener_filter(mix: np.ndarray, estimates: dict, settings: WienerSettings, sample_rate: int,
                  estimates_add_up: bool = False) -> dict:
    """The post-filter on a whole song at the model's rate in one push: ``mix`` and each
    estimate ``[time, channels]`` float32 -> the same shapes (``WienerStream``)."""
    stream = WienerStream(settings, sample_rate, np.shape(mix)[1], estimates_add_up)
    return stream.push(mix, estimates, last=True)


class WienerRunner:
    """A ``runtime.chunking`` runner (model-rate samples in, estimates out) with the
    post-filter after it: its estimates refined with the model input of the same samples,
    so the samples come back later (``delay``) and in the same order."""

    def __init__(self, runner, settings: WienerSettings, sample_rate: int, channels: int):
        self.runner = runner
        self.stream = WienerStream(settings, sample_rate, channels, getattr(runner, "complementary", False))
        self.waiting = np.zeros((0, channels), np.float32)  # model input whose estimates have not come
        self.delay = getattr(runner, "delay", 0) + self.stream.delay
        # Its accompaniment is its input minus its vocals (runtime.chunking resamples only the vocals back).
        self.complementary = complementary_sources(settings, getattr(runner, "complementary", False))

    def push(self, samples: np.ndarray, last: bool = False) -> dict:
        estimates = self.runner.push(samples, last=last)
        self.waiting = np.concatenate([self.waiting, np.asarray(samples, np.float32)])
        count = len(estimates["vocals"])
        mixture, self.waiting = self.waiting[:count], self.waiting[count:]
        return self.stream.push(mixture, estimates, last=last)


# ---------------------------------------------------------------- the whole-song reference


def norbert_filter(mix: np.ndarray, estimates: dict, settings: WienerSettings, sample_rate: int) -> dict:
    """norbert.wiener on the whole song (covariances over all its frames, its own scale):
    the reference ``WienerStream`` is measured against."""
    import librosa
    import norbert

    n_fft = settings.fft_size(sample_rate)

    def stft(audio):
        return librosa.stft(np.asarray(audio, np.float32).T, n_fft=n_fft, hop_length=n_fft // 4).transpose(2, 1, 0)

    mixture = stft(mix)
    magnitudes = np.stack([np.abs(stft(estimates[source])) for source in SOURCES], axis=-1)
    # norbert scales its mixture argument in place: it gets a copy.
    refined = norbert.wiener(magnitudes, mixture.copy(), iterations=settings.iterations,
                             use_softmask=settings.soft_mask)
    return {source: librosa.istft(refined[..., index].transpose(2, 1, 0), hop_length=n_fft // 4,
                                  n_fft=n_fft, length=len(mix)).T.astype(np.float32)
            for index, source in enumerate(SOURCES)}
