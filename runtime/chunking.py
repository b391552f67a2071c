"""Running a separator over whole songs or streams: the one framing implementation
that separate.py, evaluate.py, export and the server share.

Each architecture's ``chunk_plan`` cuts a song into chunks whose kept outputs
tile it while each chunk's input carries the context on both sides: the result
is the same as one pass over the whole song, with bounded memory and no seams.
"""
from __future__ import annotations

import argparse

import numpy as np
from threadpoolctl import ThreadpoolController

from models.architecture import SOURCES
from models.framing import ChunkPlan
from runtime.channels import channel_rule, into_model, out_of_model
from runtime.resampling import ResampleStream, resample
from runtime.separator import Separator

_ONE_BLAS_THREAD = ThreadpoolController()


class SampleFifo:
    """Samples waiting to be matched with samples that another path produces later."""

    def __init__(self, channels: int):
        self.data = np.zeros((0, channels), np.float32)

    def push(self, samples: np.ndarray) -> None:
        self.data = np.concatenate([self.data, samples])

    def pop(self, count: int) -> np.ndarray:
        taken, self.data = self.data[:count], self.data[count:]
        return taken


class PlanWindows:
    """The one cutting of a song's model-rate samples into a chunk plan's model windows:
    ``plan.lead`` samples of silence before the song (the first kept output's context),
    windows ``plan.stride`` apart, and at the end (``last``) the last ones completed with
    silence until every sample's output is covered. ``_ChunkRunner`` runs the model on
    them as they come; the catalog pipeline (``pipelines.catalog``) batches them across
    songs. Holds only what the next window still needs."""

    def __init__(self, plan: ChunkPlan, channels: int):
        self.plan, self.channels = plan, channels
        self.buffer = np.zeros((plan.lead, channels), np.float32)
        self.received = self.covered = 0

    def push(self, samples: np.ndarray, last: bool = False):
        """Takes the samples now and returns an iterator of ``(window, kept)`` for the windows
        they complete, each cut when the one before has been used: ``window`` is
        ``[plan.input_length, channels]``, ``kept`` how many of its kept outputs
        (``kept_outputs``) are the song's (``plan.stride``, fewer in the last window)."""
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += len(samples)
        return self._windows(last)

    def _windows(self, last: bool):
        while len(self.buffer) >= self.plan.input_length:
            yield self._next()
        while last and self.covered < self.received:
            shortfall = self.plan.input_length - len(self.buffer)
            self.buffer = np.pad(self.buffer, [(0, max(0, shortfall)), (0, 0)])
            yield self._next()

    def _next(self) -> tuple[np.ndarray, int]:
        window = self.buffer[:self.plan.input_length]
        self.buffer = self.buffer[self.plan.stride:]
        kept = min(self.plan.stride, self.received - self.covered)
        self.covered += kept
        return window, kept


def kept_outputs(estimates: dict, plan: ChunkPlan, kept: int) -> dict:
    """A window's model outputs -> the ``kept`` samples of each source that tile the song."""
    return {source: estimate[plan.keep_from:plan.keep_from + plan.stride][:kept]
            for source, estimate in estimates.items()}


def join_outputs(pieces: list, channels: int) -> dict:
    """Consecutive windows' kept outputs (``kept_outputs``) -> each source's samples in order."""
    return {source: np.concatenate([p[source] for p in pieces]) if pieces else np.zeros((0, channels), np.float32)
            for source in SOURCES}


class _ChunkRunner:
    """Model-rate samples in, separated model-rate samples out, one chunk plan at a time.

    Holds only the current chunk's input: the context before the song is silence,
    and at the end the last chunk is completed with silence (``PlanWindows``)."""

    def __init__(self, separator: Separator, plan: ChunkPlan, channels: int, progress=None):
        self.separator, self.plan, self.progress = separator, plan, progress
        self.complementary = separator.sums_to_input  # its accompaniment: its input minus its vocals
        self.windows = PlanWindows(plan, channels)
        # A chunk runs once the input for its last output has arrived.
        self.delay = plan.input_length - plan.lead - 1

    def push(self, samples: np.ndarray, last: bool = False) -> dict:
        pieces = []
        for window, kept in self.windows.push(samples, last):
            pieces.append(kept_outputs(self.separator.separate_window(window), self.plan, kept))
            if self.progress is not None:
                self.progress(kept)
        return join_outputs(pieces, self.windows.channels)


class _IncrementalRunner:
    """What ``_ChunkRunner`` gives, from a stream executor (``Separator.incremental``) that
    computes each layer's samples once: the work per sample of one pass over the song,
    however small the blocks. The executor sees the song after ``plan.lead`` samples of
    silence, as the first chunk does, so its outputs start at the song's first sample."""

    def __init__(self, separator: Separator, plan: ChunkPlan, channels: int):
        self.rule = channel_rule(channels, separator.channels)
        self.complementary = separator.sums_to_input  # its accompaniment: its input minus its vocals
        self.executor = separator.incremental(len(self.rule))  # one stream per model pass
        self.lead, self.flush = plan.lead, plan.input_length
        self.received = self.emitted = 0
        self.channels = channels
        self._run(np.zeros((plan.lead, channels), np.float32))
        # The longest wait between a sample's arrival and its output: the readiness
        # repeats with the decimation grid, which one chunk's input covers twice over.
        self.delay = max(received - self.executor.ready(self.lead + received)
                         for received in range(2 * plan.input_length))

    def _run(self, samples: np.ndarray) -> dict:
        with _ONE_BLAS_THREAD.limit(limits=1, user_api="blas"):  # small matrices: threads only contend
            outputs = self.executor.push(into_model(samples[None], self.rule))
        return {source: out_of_model(output, self.rule)[0] for source, output in outputs.items()}

    def push(self, samples: np.ndarray, last: bool = False) -> dict:
        self.received += len(samples)
        estimates = self._run(samples)
        if last:  # silence after the song until every sample has its output
            tail = self._run(np.zeros((self.flush, self.channels), np.float32))
            estimates = {source: np.concatenate([estimates[source], tail[source]]) for source in SOURCES}
        done = min(len(estimates["vocals"]), self.received - self.emitted)
        self.emitted += done
        return {source: estimate[:done] for source, estimate in estimates.items()}


class SongSeparation:
    """Separates one song fed block by block at its own rate and channel count.

    ``push`` returns whatever separated audio is ready, at the input's rate, the
    same for both sources; memory holds about one chunk, whatever the song's
    length, and the outputs end with exactly as many samples as were pushed. The
    song is resampled to the model's rate and the sources back by the one
    resampling rule, the exported graph's too (``runtime.resampling``, streamed:
    identical to resampling the whole song); the accompaniment is the input plus
    what the model added to its input, resampled back. So what the round trip
    through the model's rate loses goes to the accompaniment: for a lower-rate
    model the band above its Nyquist frequency, which it never hears, and the band
    edge below it; for a higher-rate one the input's band edge. So the outputs keep
    the input's full bandwidth, and a difference-output model's sources add up to
    the input."""

    def __init__(self, separator: Separator, sample_rate: int, channels: int, chunk_seconds: float = 30.0,
                 progress=None, *, chunk_output_length: int | None = None, resample_stream=ResampleStream,
                 incremental: bool = False, wiener=None):
        """``chunk_output_length`` (model samples) overrides ``chunk_seconds``;
        ``resample_stream``: the form of the resampling rule (live streams take
        ``runtime.resampling.LiveResampleStream``, which waits less); ``incremental``:
        run the model's stream executor where it has one (small blocks) instead of
        chunks (whole songs: long chunks waste little); ``wiener``: the Wiener post-filter's
        ``runtime.wiener.WienerSettings`` (None: off), on the model's outputs at its rate
        with the model input, before they go back to the song's rate."""
        model_rate = separator.sample_rate
        self.plan = separator.chunk_plan(chunk_output_length or max(1, int(chunk_seconds * model_rate)))
        self.runner = (_IncrementalRunner(separator, self.plan, channels)
                       if incremental and separator.incremental is not None
                       else _ChunkRunner(separator, self.plan, channels, progress))
        if wiener is not None and wiener.active:
            from runtime.wiener import WienerRunner
            self.runner = WienerRunner(self.runner, wiener, model_rate, channels)
        self.resampled = sample_rate != model_rate
        # Sources that add up to the model input (a difference-output model's, the mask post-filter's):
        # only the vocals go back, the accompaniment is the input minus them (the same sum, half the
        # resampling).
        self.complementary = getattr(self.runner, "complementary", False)

        def stream(from_rate, to_rate):
            return resample_stream(from_rate, to_rate, channels)

        if self.resampled:
            self.to_model = stream(sample_rate, model_rate)
            # vocals and (accompaniment - model input) side by side: one resampling back for both
            self.back = resample_stream(model_rate, sample_rate, (1 if self.complementary else 2) * channels)
            # the model input for "accompaniment - model input" (complementary sources need none)
            self.model_input_awaiting_estimates = None if self.complementary else SampleFifo(channels)
            self.input_awaiting_back = SampleFifo(channels)

    def push(self, block: np.ndarray, last: bool = False) -> dict:
        block = np.asarray(block, np.float32)
        if not self.resampled:
            return self.runner.push(block, last=last)
        model_input = self.to_model.resample_chunk(block, last=last)
        self.input_awaiting_back.push(block)
        if not self.complementary:
            self.model_input_awaiting_estimates.push(model_input)
        estimates = self.runner.push(model_input, last=last)
        # The accompaniment is the input plus what the model added to its input, resampled
        # back: what the round trip through the model's rate loses (the band above its
        # Nyquist frequency, the band edge) stays in the accompaniment.
        if self.complementary:  # what the model added to its input is minus its vocals
            to_back = estimates["vocals"]
        else:
            added = estimates["accompaniment"] - self.model_input_awaiting_estimates.pop(len(estimates["accompaniment"]))
            to_back = np.concatenate([estimates["vocals"], added], axis=1)
        back = self.back.resample_chunk(to_back, last=last)
        if last:  # the resampling back may end a sample short of the input or beyond it
            back = fit_length(back, len(self.input_awaiting_back.data))
        channels = block.shape[1]
        vocals = back[:, :channels]
        song = self.input_awaiting_back.pop(len(back))
        return {"vocals": vocals, "accompaniment": song - vocals if self.complementary else song + back[:, channels:]}


def separate_song(separator: Separator, audio: np.ndarray, sample_rate: int, chunk_seconds: float = 30.0,
                  progress=None, wiener=None) -> dict:
    """Separates a whole song held in memory; sources have exactly the input's shape."""
    estimates = SongSeparation(separator, sample_rate, audio.shape[1], chunk_seconds, progress,
                               wiener=wiener).push(audio, last=True)
    return {s: fit_length(e, len(audio)) for s, e in estimates.items()}


def positive_seconds(text: str) -> float:
    """argparse type for a duration that must be above zero (``--chunk-seconds``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def fit_length(signal: np.ndarray, length: int) -> np.ndarray:
    """Cuts or zero-pads to ``length`` samples (resampling may round by a sample)."""
    return np.pad(signal[:length], [(0, max(0, length - len(signal))), (0, 0)])


# ---------------------------------------------------------------- a song around a model run elsewhere


def song_to_model(audio: np.ndarray, sample_rate: int, model_rate: int) -> np.ndarray:
    """A whole song as ``SongSeparation`` gives it to the model: at the model's rate by the
    one resampling rule (the same samples as its stream, whatever the blocks). The song
    before the model, for a path that runs the model elsewhere (``song_from_model``)."""
    if sample_rate == model_rate:
        return np.asarray(audio, np.float32)
    return resample(audio, sample_rate, model_rate)


class _Ready:
    """What a runner or a resampling stream of ``SongSeparation`` would give for the whole
    song, computed elsewhere: given back once, for the whole song (``last``)."""

    def __init__(self, result, length: int):
        self.result, self.length = result, length

    def _take(self, samples: np.ndarray, last: bool):
        if not last or len(samples) != self.length:
            raise ValueError(f"ready for the whole song of {self.length} samples at once, "
                             f"not {len(samples)}{'' if last else ' before its end'}")
        return self.result

    def push(self, samples: np.ndarray, last: bool = False) -> dict:  # as a runner: model outputs
        return self._take(samples, last)

    def resample_chunk(self, block: np.ndarray, last: bool = False) -> np.ndarray:  # as the stream to the model
        return self._take(block, last)


def song_from_model(separator: Separator, audio: np.ndarray, sample_rate: int, model_input: np.ndarray,
                    outputs: dict, wiener=None) -> dict:
    """A whole song's final sources from the model's outputs on its windows, computed
    elsewhere (e.g. batched across songs): ``outputs`` are ``join_outputs`` of every
    window's ``kept_outputs``, as long as ``model_input`` (``song_to_model``'s). The rest
    is ``SongSeparation``'s own path after the model (the post-filter ``wiener``, if any;
    the sources back at the song's rate, what the round trip loses in the accompaniment),
    so the result is ``separate_song``'s with the same ``wiener``. ``separator`` needs only
    its rate, channels and chunk plan: no model is run here."""
    model_rate = separator.sample_rate
    lengths = {source: len(output) for source, output in outputs.items()}
    if set(lengths.values()) != {len(model_input)}:
        raise ValueError(f"outputs of {lengths} model samples for a model input of {len(model_input)}")

    def resample_stream(from_rate, to_rate, channels):
        if (from_rate, to_rate) == (sample_rate, model_rate):  # to the model's rate: song_to_model did it
            return _Ready(model_input, len(audio))
        return ResampleStream(from_rate, to_rate, channels)

    separation = SongSeparation(separator, sample_rate, audio.shape[1], resample_stream=resample_stream,
                                wiener=wiener)
    # The chunk runner gives way to the outputs, inside whatever SongSeparation put around it (a post-filter).
    holder = separation
    while not isinstance(holder.runner, _ChunkRunner):
        holder = holder.runner
    holder.runner = _Ready(outputs, len(model_input))
    estimates = separation.push(audio, last=True)
    return {source: fit_length(estimate, len(audio)) for source, estimate in estimates.items()}
