"""What every architecture declares to the code that trains, runs and exports it (the
``Architecture`` record), the names of the sources every model separates, and the
precisions models compute in. No TensorFlow (nor Keras, until a model is built) here:
training under JAX reads it too. ``models.registry`` lists the architectures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# What every model separates a mix into; the accompaniment is everything but the vocals.
SOURCES = ("vocals", "accompaniment")


@dataclass(frozen=True)
class Architecture:
    configs: dict  # named configs
    default_config: str
    config_from_dict: Callable  # (the run directory's "model" dict) -> config
    build: Callable  # (config, input_length=None) -> keras.Model
    input_length_for: Callable  # (config, output_length) -> (input_length, output_length)
    chunk_plan: Callable  # (config, chunk_output_length) -> models.framing.ChunkPlan
    training_presets: dict  # config name -> train.py settings that replace its defaults
    losses: Callable  # (config) -> the Keras loss of each model output, for compile()
    inference_head: Callable  # the model's outputs -> {"vocals", "accompaniment"} waveforms (keras.ops)
    # Variants of the architecture (train.py --variant); the first is the default, and
    # config "<name>-<variant>" is config "<name>" as another variant.
    variants: tuple = ()
    # (config) -> None, or a function (mix, targets) -> (model inputs, model targets) that
    # turns the pipeline's batches into what the training model takes (keras.ops).
    training_batch: Callable = lambda config: None
    # (config) -> None for a model whose one pass separates (``inference_head(model(windows))``),
    # else a function (model, windows) -> sources, e.g. autoregressive generation.
    generator: Callable = lambda config: None
    # (keras model, config) -> None, or a factory (batch) -> an executor that runs the model
    # on a stream, each layer's samples computed once (``push(mix [batch, n, channels])``
    # -> ready outputs per source; ``ready(received)`` -> outputs given so far), e.g.
    # ``models.waveunet_streaming``. Live streams use it instead of recomputing windows.
    # With model None: whether the config has one.
    incremental: Callable = lambda model, config: None
    # (config) -> how many samples right of the input's centre the outputs sit (less lookahead).
    output_shift: Callable = lambda config: 0
    # (config) -> whether the accompaniment is the model input minus the vocals at every
    # output sample, in float32 (a difference output): what follows the model then
    # transforms and resamples only the vocals (``runtime.chunking``, ``runtime.wiener``).
    sums_to_input: Callable = lambda config: False
    # (config) -> the validation metric that picks the best checkpoint and stops early.
    checkpoint_metric: Callable = lambda config: "val_loss"

    def config_name(self, name: str, variant: str | None) -> str:
        """The named config as ``variant`` (the default variant: the name itself)."""
        if variant is None or variant == self.variants[0]:
            return name
        if variant not in self.variants:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(self.variants)}")
        return f"{name}-{variant}"

    def separates_in_one_pass(self, config) -> bool:
        """Whether each output sample is a fixed function of a finite window around it
        (no sampling decoder): then a stream separated chunk by chunk with that window's
        lookahead equals offline separation, delayed (``runtime.streaming``)."""
        return self.generator(config) is None

    def run_windows(self, model, config, windows) -> dict:
        """Chunk-plan windows ``[n, input_length, channels]`` -> {"vocals", "accompaniment"}
        ``[n, output_length, channels]``: what separation runs on every chunk."""
        generate = self.generator(config)
        if generate is not None:
            return generate(model, windows)
        return self.inference_head(model(windows, training=False))


# Keras dtype policy of each precision a model trains or runs in: bfloat16 computes in
# bfloat16 with float32 weights (faster on GPUs and on CPUs with AVX512-BF16/AMX).
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def build_in_precision(build, config, precision: str):
    """``build(config)`` under the Keras dtype policy for ``precision``, leaving the global policy as it was."""
    import keras

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        return build(config)
    finally:
        keras.config.set_dtype_policy(previous_policy)
