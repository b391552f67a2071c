"""A separation model as the chunked path sees it, wherever it came from: its forward
function on chunk windows, its rate, channels and chunk plan (``Separator``), and the
wrapper that makes one of a Keras model of any registered architecture."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from models.framing import ChunkPlan
from models.registry import ARCHITECTURES
from runtime.channels import channel_rule, into_model, out_of_model, passes


@dataclass(frozen=True)
class Separator:
    """A separation model as the framing sees it, wherever it came from (a Keras run
    directory, an exported SavedModel or an ONNX file)."""

    forward: Callable[[np.ndarray], dict]  # float32 [batch, time, channels] -> {"vocals", "accompaniment"} arrays
    sample_rate: int
    channels: int
    chunk_plan: Callable[[int], ChunkPlan]  # chunk output length -> the plan for calls of about that length
    source: str  # where the model was loaded from, for messages
    description: str  # what the model is (e.g. its architecture), for messages
    one_pass: bool = True  # no sampling decoder: can separate live (Architecture.separates_in_one_pass)
    incremental: Callable | None = None  # (batch) -> a stream executor (Architecture.incremental), if any
    precision: str = "float32"  # what the model computes in (a run directory's may be bfloat16)
    wiener: object = None  # the model's own Wiener post-filter (runtime.wiener.WienerSettings: an export's), if any
    sums_to_input: bool = False  # its accompaniment is its input minus its vocals (Architecture.sums_to_input)

    def passes(self, input_channels: int) -> int:
        """Model passes over a song: a mono model runs once per channel of a stereo song."""
        return passes(input_channels, self.channels)

    def separate_window(self, window: np.ndarray) -> dict:
        """One model call on ``[input_length, 1 or 2]`` -> sources ``[output_length, same channels]``,
        by the channel rule the exported graph follows too (``runtime.channels``): a mono
        model takes a stereo window as a batch of two mono ones; a stereo model takes a
        mono window on both channels and its outputs are averaged."""
        return {s: e[0] for s, e in self.separate_windows(window[None]).items()}

    def separate_windows(self, windows: np.ndarray) -> dict:
        """``separate_window`` on a batch ``[n, input_length, 1 or 2]`` of windows with the same
        channels (e.g. from several songs, ``pipelines.catalog``), in one model call ->
        sources ``[n, output_length, same channels]``."""
        rule = channel_rule(windows.shape[2], self.channels)
        estimates = self.forward(into_model(windows, rule))
        return {s: out_of_model(e, rule) for s, e in estimates.items()}


def keras_separator(model: keras.Model, arch: str, config, source: str) -> Separator:
    """Wraps a Keras model of a registered architecture: its forward pass, then its inference head."""
    architecture = ARCHITECTURES[arch]

    # A graph function frees intermediate tensors as it goes: about half the
    # peak memory of an eager call on long chunks.
    @tf.function(input_signature=[tf.TensorSpec([None, None, config.channels], tf.float32)])
    def graph_forward(mix):
        estimates = architecture.run_windows(model, config, mix)
        return {name: tf.cast(estimate, tf.float32) for name, estimate in estimates.items()}

    def forward(mix: np.ndarray) -> dict:
        return {s: keras.ops.convert_to_numpy(e) for s, e in graph_forward(mix).items()}

    return Separator(forward=forward, sample_rate=config.sample_rate, channels=config.channels,
                     chunk_plan=functools.partial(architecture.chunk_plan, config), source=source, description=arch,
                     one_pass=architecture.separates_in_one_pass(config),
                     incremental=architecture.incremental(model, config), sums_to_input=architecture.sums_to_input(config),
                     precision=model.dtype_policy.compute_dtype)
