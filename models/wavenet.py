"""The non-causal WaveNet separator as a Keras 3 functional model (``keras.ops`` and
Keras layers only, so it trains on TensorFlow and JAX alike).

WaveNet (van den Oord et al., 2016) made non-causal for separation, as in the
denoising WaveNet of Rethage et al. (2018): a window of the mix centred on t
predicts the vocals at t (mix[0:100] -> vocals[50]).

    mix -> 1x1 conv -> stacks x layers_per_stack residual layers, dilations 1, 2, ..., 2**(layers_per_stack - 1):
               tanh(dilated conv) * sigmoid(dilated conv) -> 1x1 skip, and 1x1 residual + the layer's input
        -> sum of skips -> ReLU -> 1x1 -> ReLU -> 1x1 -> per sample and channel: 256 mu-law class logits
           (``head="classification"``) or a tanh waveform (``head="regression"``)
    accompaniment = centre-cropped mix - vocals

Convolutions are 'valid' with an odd kernel, so every layer trims the same number
of samples from both ends: the output is centred in the input and shorter by
``receptive_field(config) - 1``. Any output length fits; no padding ever reaches
a kept output, so chunked separation equals one pass.

**Heads.** Classification (the default, WaveNet's): sparse categorical
cross-entropy of the logits against the mu-law class of the target vocals, which
the loss encodes itself from the waveform target train.py gives. The estimate is
the decoded *expectation* of the predicted distribution, not its argmax: the
mean of a distribution minimises its expected squared error, which is what SDR
scores, it varies smoothly from sample to sample (an argmax jumps between the
modes of an uncertain prediction and always carries the 8-bit quantisation
noise), and it is differentiable. The model outputs logits and the softmax is
applied in the loss (``from_logits``, numerically stable) and in the inference
head. Regression: a tanh output trained with MSE.

**Stereo** (``channels=2``): both channels in, both out. The first 1x1 convolution
sees the two channels together, so the network can use where a sound sits in
the stereo field (lead vocals are mostly in the centre) — a cue a model that
folds channels into the batch could not hear; the last 1x1 gives 256 logits for
each channel. Mono models take a downmix.

The model's outputs are ``{"vocals": logits [b, t, channels, 256] (classification)
or waveform [b, t, channels] (regression), "accompaniment": waveform}``;
``sources_from_outputs`` (the registry's inference head) turns them into waveforms.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
from keras import layers, ops

from models import mulaw
from models.framing import ChunkPlan
from models.layers import CenterCrop1D
from models.architecture import Architecture

DEFAULT_CONFIG = "small"
HEADS = ("classification", "regression")


@dataclass(frozen=True)
class WaveNetConfig:
    """Architecture of one non-causal WaveNet separator. Defaults are the CPU-sized "small"."""

    stacks: int = 1
    layers_per_stack: int = 10  # dilations 1, 2, ..., 2**(layers_per_stack - 1) in each stack
    residual_channels: int = 16
    skip_channels: int = 32  # also the width of the 1x1 after the skip sum
    kernel_size: int = 3  # odd, so each layer's field is symmetric about its output
    head: str = "classification"  # or "regression"
    # The mix through the mu-law curve (unquantised) before the first 1x1: quiet and loud songs reach
    # the gates at similar levels, on the scale of the classes the head predicts.
    compand_input: bool = True
    channels: int = 2  # 1 mono, 2 stereo
    sample_rate: int = 22050  # of the audio the model is trained on; the graph does not use it
    num_frames: int = 4096  # output length of a training example

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and at least 3 (a symmetric field), got {self.kernel_size}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if min(self.stacks, self.layers_per_stack, self.residual_channels, self.skip_channels, self.num_frames) < 1:
            raise ValueError("stacks, layers_per_stack, residual_channels, skip_channels and num_frames must be "
                             "positive")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "WaveNetConfig":
        return cls(**values)


CONFIGS: dict[str, WaveNetConfig] = {
    # Trains in about 6 minutes on a 2-core CPU (README): one stack of 10 layers (a 2047-sample
    # field, 93 ms) with 16 residual channels.
    "small": WaveNetConfig(),
    # The depth of the published WaveNets (3 stacks of dilations 1..512, 30 layers; a 0.28 s field)
    # with wider layers; for GPUs.
    "paper": WaveNetConfig(stacks=3, residual_channels=128, skip_channels=256, num_frames=16384),
}

TRAINING_PRESETS = {
    "small": {"steps": 600, "batch_size": 16, "learning_rate": 2e-3, "validate_every": 300},
    "paper": {"batch_size": 16, "learning_rate": 1e-4, "validate_every": 2000, "patience": 20},
}


# ---------------------------------------------------------------- length arithmetic


def dilations(config: WaveNetConfig) -> list[int]:
    return [2**layer for _ in range(config.stacks) for layer in range(config.layers_per_stack)]


def receptive_field(config: WaveNetConfig) -> int:
    """Input samples that one output sample depends on: 1 + (kernel_size - 1) * sum of dilations,
    centred on it (half of the rest on each side)."""
    return 1 + (config.kernel_size - 1) * sum(dilations(config))


def input_length_for(config: WaveNetConfig, output_length: int) -> tuple[int, int]:
    """``(input_length, output_length)``: every output length fits, with the field minus one more input."""
    if output_length < 1:
        raise ValueError(f"output_length must be positive, got {output_length}")
    return output_length + receptive_field(config) - 1, output_length


def chunk_plan(config: WaveNetConfig, chunk_output_length: int) -> ChunkPlan:
    """Chunks of ``chunk_output_length`` outputs, each input carrying half the field on both
    sides; no time grid (nothing decimates), so consecutive chunks move by a whole output."""
    input_length, output_length = input_length_for(config, chunk_output_length)
    return ChunkPlan(input_length, (receptive_field(config) - 1) // 2, output_length, 0, output_length)


# ---------------------------------------------------------------- model


register_serializable = keras.saving.register_keras_serializable(package="wavesep")


def expected_waveform(logits):
    """Class logits ``[..., 256]`` -> the waveform value expected under their softmax, in float32."""
    return mulaw.decode_expectation(ops.softmax(ops.cast(logits, "float32"), axis=-1))


@register_serializable
class MuLawExpectation(layers.Layer):
    """Class logits ``[..., 256]`` -> the waveform value expected under their softmax ``[...]``."""

    def call(self, logits):
        return expected_waveform(logits)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1]


@register_serializable
class MuLawCompand(layers.Layer):
    """Waveform -> its mu-law companded value (continuous, not quantised)."""

    def call(self, waveform):
        return mulaw.compand(waveform)


@register_serializable
def mulaw_cross_entropy(vocals, logits):
    """Cross-entropy of the class logits ``[b, t, channels, 256]`` against the mu-law
    classes of the target waveform ``[b, t, channels]`` (encoded here, since the
    training targets are waveforms)."""
    return keras.losses.sparse_categorical_crossentropy(mulaw.encode(vocals), logits, from_logits=True)


def _residual_layer(config: WaveNetConfig, features, dilation: int, name: str, last: bool):
    """One gated layer: returns (its output to the next layer, or None for the last; its skip)."""
    def dilated(activation, role):
        return layers.Conv1D(config.residual_channels, config.kernel_size, dilation_rate=dilation,
                             activation=activation, name=f"{role}_{name}")(features)

    gated = layers.Multiply(name=f"gated_{name}")([dilated("tanh", "filter"), dilated("sigmoid", "gate")])
    skip = layers.Conv1D(config.skip_channels, 1, name=f"skip_{name}")(gated)
    if last:  # its residual output would feed nothing
        return None, skip
    residual = layers.Conv1D(config.residual_channels, 1, name=f"residual_{name}")(gated)
    aligned = CenterCrop1D(name=f"crop_input_{name}")([features, residual])
    return layers.Add(name=f"residual_sum_{name}")([aligned, residual]), skip


def build_wavenet(config: WaveNetConfig, input_length: int | None = None, name: str = "wavenet") -> keras.Model:
    """Functional model: input "mix" ``[input_length, channels]`` -> ``{"vocals", "accompaniment"}``
    over ``input_length - receptive_field(config) + 1`` samples (see the module docstring).

    ``input_length=None`` builds a model for any input at least as long as the field."""
    mix = keras.Input(shape=(input_length, config.channels), name="mix")
    features = MuLawCompand(name="compand")(mix) if config.compand_input else mix
    features = layers.Conv1D(config.residual_channels, 1, name="input_conv")(features)
    skips = []
    all_dilations = dilations(config)
    for index, dilation in enumerate(all_dilations):
        stack, layer = divmod(index, config.layers_per_stack)
        features, skip = _residual_layer(config, features, dilation, f"{stack}_{layer}",
                                         last=index == len(all_dilations) - 1)
        skips.append(skip)
    # Each layer's skip is longer than the last one's by the fields of the layers after it.
    aligned = [CenterCrop1D(name=f"crop_skip_{index}")([skip, skips[-1]]) for index, skip in enumerate(skips[:-1])]
    hidden = layers.ReLU(name="skip_relu")(layers.Add(name="skip_sum")(aligned + skips[-1:]))
    hidden = layers.Conv1D(config.skip_channels, 1, activation="relu", name="hidden_conv")(hidden)
    return keras.Model(mix, _head(config, mix, hidden), name=name)


def _head(config: WaveNetConfig, mix, hidden) -> dict:
    """The output 1x1 and the sources. The waveform end (cropped mix, expectation,
    difference) computes in float32 whatever the model's precision, so a bfloat16
    model does not round the mix into the accompaniment."""
    if config.head == "classification":
        logits = layers.Conv1D(config.channels * mulaw.CLASSES, 1, name="logits_conv")(hidden)
        vocals = layers.Reshape((-1, config.channels, mulaw.CLASSES), name="vocals")(logits)
        vocals_waveform = MuLawExpectation(name="vocals_expectation", dtype="float32")(vocals)
    else:
        vocals = vocals_waveform = layers.Conv1D(config.channels, 1, activation="tanh", name="vocals")(hidden)
    aligned_mix = CenterCrop1D(name="crop_mix", dtype="float32")([mix, vocals_waveform])
    accompaniment = layers.Subtract(name="accompaniment", dtype="float32")([aligned_mix, vocals_waveform])
    return {"vocals": vocals, "accompaniment": accompaniment}


def losses(config: WaveNetConfig) -> dict:
    """The vocals' loss only: the accompaniment is the mix minus the vocals, so a loss
    on it would count the same error twice (for regression) or, through the
    expectation, add a second, different objective (for classification)."""
    vocals_loss = mulaw_cross_entropy if config.head == "classification" else "mse"
    return {"vocals": vocals_loss, "accompaniment": None}


def sources_from_outputs(outputs: dict) -> dict:
    """The model's outputs -> waveforms: class logits (rank 4) become their expected
    value (see the module docstring); a regression output is a waveform already."""
    vocals = outputs["vocals"]
    return {"vocals": expected_waveform(vocals) if len(vocals.shape) == 4 else vocals,
            "accompaniment": outputs["accompaniment"]}


ARCHITECTURE = Architecture(
    configs=CONFIGS,
    default_config=DEFAULT_CONFIG,
    config_from_dict=WaveNetConfig.from_dict,
    build=build_wavenet,
    input_length_for=input_length_for,
    chunk_plan=chunk_plan,
    training_presets=TRAINING_PRESETS,
    losses=losses,
    inference_head=sources_from_outputs,
)
