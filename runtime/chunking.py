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
from runtime.resampling import ResampleStream
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


class _ChunkRunner:
    """Model-rate samples in, separated model-rate samples out, one chunk plan at a time.

    Holds only the current chunk's input: the context before the song is silence,
    and at the end the last chunk is completed with silence."""

    def __init__(self, separator: Separator, plan: ChunkPlan, channels: int, progress=None):
        self.separator, self.plan, self.progress = separator, plan, progress
        self.buffer = np.zeros((plan.lead, channels), np.float32)
        self.received = self.emitted = 0
        # A chunk runs once the input for its last output has arrived.
        self.delay = plan.input_length - plan.lead - 1

    def _run_chunk(self) -> dict:
        window = self.buffer[:self.plan.input_length]
        kept = slice(self.plan.keep_from, self.plan.keep_from + self.plan.stride)
        estimates = self.separator.separate_window(window)
        self.buffer = self.buffer[self.plan.stride:]
        done = min(self.plan.stride, self.received - self.emitted)
        self.emitted += done
        if self.progress is not None:
            self.progress(done)
        return {source: estimate[kept][:done] for source, estimate in estimates.items()}

    def push(self, samples: np.ndarray, last: bool = False) -> dict:
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += len(samples)
        pieces = []
        while len(self.buffer) >= self.plan.input_length:
            pieces.append(self._run_chunk())
        while last and self.emitted < self.received:
            shortfall = self.plan.input_length - len(self.buffer)
            self.buffer = np.pad(self.buffer, [(0, max(0, shortfall)), (0, 0)])
            pieces.append(self._run_chunk())
        channels = self.buffer.shape[1]
        return {source: np.concatenate([p[source] for p in pieces]) if pieces else np.zeros((0, channels), np.float32)
                for source in SOURCES}


class _IncrementalRunner:
    """What ``_ChunkRunner`` gives, from a stream executor (``Separator.incremental``) that
    computes each layer's samples once: the work per sample of one pass over the song,
    however small the blocks. The executor sees the song after ``plan.lead`` samples of
    silence, as the first chunk does, so its outputs start at the song's first sample."""

    def __init__(self, separator: Separator, plan: ChunkPlan, channels: int):
        self.rule = channel_rule(channels, separator.channels)
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
                 incremental: bool = False):
        """``chunk_output_length`` (model samples) overrides ``chunk_seconds``;
        ``resample_stream``: the form of the resampling rule (live streams take
        ``runtime.resampling.LiveResampleStream``, which waits less); ``incremental``:
        run the model's stream executor where it has one (small blocks) instead of
        chunks (whole songs: long chunks waste little)."""
        model_rate = separator.sample_rate
        self.plan = separator.chunk_plan(chunk_output_length or max(1, int(chunk_seconds * model_rate)))
        self.runner = (_IncrementalRunner(separator, self.plan, channels)
                       if incremental and separator.incremental is not None
                       else _ChunkRunner(separator, self.plan, channels, progress))
        self.resampled = sample_rate != model_rate

        def stream(from_rate, to_rate):
            return resample_stream(from_rate, to_rate, channels)

        if self.resampled:
            self.to_model = stream(sample_rate, model_rate)
            # vocals and (accompaniment - model input) side by side: one resampling back for both
            self.back = resample_stream(model_rate, sample_rate, 2 * channels)
            self.model_input_awaiting_estimates = SampleFifo(channels)
            self.input_awaiting_back = SampleFifo(channels)

    def push(self, block: np.ndarray, last: bool = False) -> dict:
        block = np.asarray(block, np.float32)
        if not self.resampled:
            return self.runner.push(block, last=last)
        model_input = self.to_model.resample_chunk(block, last=last)
        self.input_awaiting_back.push(block)
        self.model_input_awaiting_estimates.push(model_input)
        estimates = self.runner.push(model_input, last=last)
        # The accompaniment is the input plus what the model added to its input, resampled
        # back: what the round trip through the model's rate loses (the band above its
        # Nyquist frequency, the band edge) stays in the accompaniment.
        added = estimates["accompaniment"] - self.model_input_awaiting_estimates.pop(len(estimates["accompaniment"]))
        back = self.back.resample_chunk(np.concatenate([estimates["vocals"], added], axis=1), last=last)
        if last:  # the resampling back may end a sample short of the input or beyond it
            back = fit_length(back, len(self.input_awaiting_back.data))
        channels = block.shape[1]
        return {"vocals": back[:, :channels], "accompaniment": self.input_awaiting_back.pop(len(back)) + back[:, channels:]}


def separate_song(separator: Separator, audio: np.ndarray, sample_rate: int, chunk_seconds: float = 30.0,
                  progress=None) -> dict:
    """Separates a whole song held in memory; sources have exactly the input's shape."""
    estimates = SongSeparation(separator, sample_rate, audio.shape[1], chunk_seconds, progress).push(audio, last=True)
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
