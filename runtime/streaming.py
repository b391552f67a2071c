"""Live separation: blocks of any size in, as many separated samples out, a fixed delay later.

A one-pass model sees a finite window around each output sample, so a stream
separated chunk by chunk equals offline separation of the same audio once it has
waited for that window's right side (the lookahead). ``StreamSeparation`` runs the
one chunked path (``runtime.chunking.SongSeparation``) with chunks as small as a
block and the resampling rule as a short filter, and delays its output by the fixed
``delay_samples`` its parts need at most, so every ``push`` returns exactly as many
samples as it was given:

    output[t] = offline[t - delay_samples]    (silence before the stream's start)

The delay, in input samples, is the sum of what each part waits for:

- the resampler into the model's rate: its filter's half width (none at the model's rate);
- the chunk runner: the model's lookahead plus one chunk's stride less a sample (a chunk
  runs once the input for its last output has arrived, and chunks start on the model's
  decimation grid);
- the resampler back: its half width.

The delay is the model's and the block size's, never the machine's: streams compute in
float32 (a bfloat16 model is refused), so a stream says the same delay on every CPU and
its output is float32 offline separation's.

A block is captured whole before it is pushed, and its output plays while the next one
is captured, so a sample's capture-to-playback latency is ``delay_samples`` plus one
block (``latency_seconds``), when each block's compute fits in the block's duration.
"""
from __future__ import annotations

import math

import numpy as np

from models.architecture import SOURCES
from runtime.chunking import SongSeparation, SampleFifo
from runtime.resampling import LiveResampleStream
from runtime.separator import Separator

# How much audio one push of a live stream may carry: bounds the work and memory of a block.
MAX_BLOCK_SECONDS = 1.0
# The highest sample rate a live stream may have (the server's uploads stop there too).
MAX_STREAM_RATE = 192_000


class StreamError(ValueError):
    """A stream this model cannot separate live, or a block it cannot take."""


class StreamSeparation:
    """Separates a live stream of ``channels`` channels at ``sample_rate``, block by block.

    ``block_size`` (input samples) sizes the chunks: the model runs about once per
    block of that size, and the delay grows with it. Blocks of other sizes are taken
    too (down to one sample). Memory and work per block stay constant however long the
    stream runs."""

    def __init__(self, separator: Separator, sample_rate: int, channels: int, block_size: int):
        if not separator.one_pass:
            raise StreamError(f"{separator.description} decodes by sampling, one sample after another: "
                              "live separation takes a one-pass model (Wave-U-Net, WaveNet, UMT Structure A)")
        if separator.precision != "float32":
            # Wave-U-Net's stream executor is float32 numpy: a bfloat16 model would take the
            # chunked path instead, which waits longer, so the delay would follow the CPU.
            raise StreamError(f"live streams compute in float32 (their delay and output are then the same "
                              f"on every machine): load the model in float32, not {separator.precision}")
        if channels not in (1, 2):
            raise StreamError(f"live streams are mono or stereo, not {channels} channels")
        if not 1000 <= sample_rate <= MAX_STREAM_RATE:
            raise StreamError(f"sample rate {sample_rate} Hz is outside 1000-{MAX_STREAM_RATE} Hz")
        self.max_block = int(MAX_BLOCK_SECONDS * sample_rate)
        if not 1 <= block_size <= self.max_block:
            raise StreamError(f"block size {block_size} samples is outside 1-{self.max_block} "
                              f"({MAX_BLOCK_SECONDS:g} s at {sample_rate} Hz)")
        self.sample_rate, self.channels, self.block_size = sample_rate, channels, block_size
        model_rate = separator.sample_rate
        try:
            self.song = SongSeparation(separator, sample_rate, channels,
                                       chunk_output_length=math.ceil(block_size * model_rate / sample_rate),
                                       resample_stream=LiveResampleStream, incremental=True)
        except ValueError as error:  # a rate the live resampler refuses
            raise StreamError(str(error)) from None
        plan = self.song.plan
        runner_delay = self.song.runner.delay  # model samples
        if self.song.resampled:
            into, back = self.song.to_model, self.song.back
            self.delay_samples = math.ceil(into.half_taps + (runner_delay + back.half_taps) * sample_rate / model_rate)
        else:
            self.delay_samples = runner_delay
        self.lookahead_seconds = (plan.input_length - plan.lead - plan.stride) / model_rate
        self.pending = {source: SampleFifo(channels) for source in SOURCES}
        for fifo in self.pending.values():
            fifo.push(np.zeros((self.delay_samples, channels), np.float32))

    @property
    def latency_seconds(self) -> float:
        """From a sample's capture to its playback: the delay plus one block of capture."""
        return (self.delay_samples + self.block_size) / self.sample_rate

    def describe(self) -> dict:
        """The stream's figures, as the pipe CLI and the WebSocket announce them."""
        return {"sample_rate": self.sample_rate, "channels": self.channels, "block_size": self.block_size,
                "delay_samples": self.delay_samples, "latency_ms": round(1000 * self.latency_seconds, 1),
                "lookahead_ms": round(1000 * self.lookahead_seconds, 1)}

    def push(self, block: np.ndarray) -> dict:
        """``[samples, channels]`` float32 -> {"vocals", "accompaniment"} of the same shape:
        the offline separation ``delay_samples`` earlier."""
        block = np.asarray(block, np.float32)
        if block.ndim != 2 or block.shape[1] != self.channels or len(block) > self.max_block:
            raise StreamError(f"a block is [1-{self.max_block} samples, {self.channels} channels], "
                              f"not {list(block.shape)}")
        for source, estimate in self.song.push(block).items():
            self.pending[source].push(estimate)
        if len(self.pending["vocals"].data) < len(block):  # the delay bounds every part's wait
            raise AssertionError(f"stream delay {self.delay_samples} too short: a bug")
        return {source: fifo.pop(len(block)) for source, fifo in self.pending.items()}

    def finish(self) -> dict:
        """The end of the stream: its last ``delay_samples`` separated samples (the song
        after the end is silence), so the whole output is the offline result delayed."""
        for source, estimate in self.song.push(np.zeros((0, self.channels), np.float32), last=True).items():
            self.pending[source].push(estimate)
        return {source: fifo.pop(self.delay_samples) for source, fifo in self.pending.items()}
