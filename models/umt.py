"""The Universal Music Translation network (Mor, Wolf, Polyak and Taigman, 2018) as a
separator, in two variants, as Keras 3 functional models (``keras.ops`` and Keras
layers only, so they train on TensorFlow and JAX alike). 16 kHz mono, like UMT.

**Encoder** (both variants; facebookresearch/music-translation's ``Encoder``): the mix
through the mu-law curve -> a width-3 convolution -> ``encoder_blocks`` x
``encoder_layers`` non-causal residual layers (dilations 1, 2, ..., 512 in each
block; each layer: ReLU(dilated width-3 conv) -> 1x1 -> + its input) -> 1x1 to
``latent_channels``.

**Structure A** (``variant="a"``, the default): the decoder is built like the
encoder (width-3 conv from the latent, residual dilated layers, 1x1) and ends in 256
mu-law class logits of the *accompaniment*; no pooling, no upsampling, no
confusion loss. Trained mix -> accompaniment (scaled by the remix gain f1, as the
labels are); vocals = mix - accompaniment. Every convolution is 'valid', so the
model is one non-causal field (``receptive_field``) centred on each output and
chunked separation equals one pass, as for the WaveNet separator. Fully parallel.

**Full** (``variant="full"``): the encoder's latent is average-pooled over
``pool_length`` samples (800 at 16 kHz, scaled with the rate), upsampled back by
repetition (nearest neighbour) and conditions a causal WaveNet decoder
(``decoder_blocks`` x ``decoder_layers``, kernel ``causal_kernel_size``; each layer
adds the latent through its own 1x1 before the gate, and so does the output
stage). The decoder reads the 8-bit mu-law accompaniment one sample back
(teacher forcing in training; its own samples at inference, ``models.generation``)
and outputs its 256 class logits. A domain classifier (``classifier_layers`` 1x1
convolutions of ``classifier_channels`` with ELU, averaged over time) reads the
pooled latent behind a gradient-reversal layer (Ganin and Lempitsky, 2015): it
learns to tell the domains apart while the encoder gets its gradient reversed and
scaled by ``confusion_weight`` (UMT's 1e-2), pushing the latent to carry no trace
of the domain. **Domains** (``domains="input-kind"``): every odd example of a
training batch is replaced by its accompaniment alone (mix = accompaniment, the
target unchanged), so the domain is "a mixture" vs "accompaniment only": a latent
that cannot tell whether vocals are present leaves the decoder nothing to render
them from. ``domains="none"`` trains without the classifier. The encoder pads
('same') here: each generated chunk starts afresh anyway (``models.generation``).

Inputs in both variants go through the mu-law curve unquantised (the encoder
loses nothing to 8-bit rounding); the full decoder's own input is quantised, since
at inference it reads back 8-bit samples. The estimate of the accompaniment is
the decoded expectation of the class distribution for Structure A (see
``models.wavenet``: the mean minimises the squared error SDR scores);
the full decoder samples (``models.generation``).
"""
from __future__ import annotations

import keras
from keras import layers, ops

from models import mulaw
from models.architecture import Architecture
from models.layers import CenterCrop1D, gated_activation
from models.umt_config import (  # noqa: F401 (the config's names are the model's, for its users)
    CONFIGS,
    DEFAULT_CONFIG,
    TRAINING_PRESETS,
    VARIANTS,
    UMTConfig,
    chunk_plan,
    decoder_field,
    dilations,
    encoder_field,
    input_length_for,
    pool_length,
    receptive_field,
)
from models.wavenet import MuLawCompand, MuLawExpectation, expected_waveform, mulaw_cross_entropy

# ---------------------------------------------------------------- layers


register_serializable = keras.saving.register_keras_serializable(package="wavesep")


@register_serializable
class GradientReversal(layers.Layer):
    """Identity forward; the gradient backward is multiplied by ``-scale`` (Ganin and Lempitsky).

    ``stop_gradient(x * (1 + s)) - s * x`` is ``x`` in value (up to rounding) and has
    derivative ``-s``, on every backend, with no custom gradient."""

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        return ops.stop_gradient(inputs * (1.0 + self.scale)) - self.scale * inputs

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@register_serializable
class MuLawLevels(layers.Layer):
    """Waveform -> the companded value of its nearest 8-bit mu-law level, ``class * 2 / 255 - 1``
    (music-translation's ``x / 255 - 0.5``, doubled): what the decoder reads back."""

    def call(self, waveform):
        return mulaw.level(mulaw.encode(waveform))


@register_serializable
class ShiftRight(layers.Layer):
    """``x[t - 1]`` at ``t``, silence (0) at the start: teacher forcing's one-sample delay."""

    def call(self, inputs):
        return ops.pad(inputs, [(0, 0), (1, 0), (0, 0)])[:, :-1, :]


# ---------------------------------------------------------------- model


def _residual_stack(features, blocks: int, layers_per_block: int, channels: int, kernel_size: int, padding: str,
                    name: str):
    """music-translation's ``DilatedResConv`` layers: x + 1x1(ReLU(dilated conv(x)))."""
    for index, dilation in enumerate(dilations(blocks, layers_per_block)):
        hidden = layers.Conv1D(channels, kernel_size, dilation_rate=dilation, padding=padding, activation="relu",
                               name=f"{name}_dilated_{index}")(features)
        # Zero-initialised, so every residual layer starts as the identity: without it 20 layers of
        # sums grow the activations until the first steps' losses exceed a uniform guess's.
        hidden = layers.Conv1D(channels, 1, kernel_initializer="zeros", name=f"{name}_mix_{index}")(hidden)
        aligned = CenterCrop1D(name=f"{name}_crop_{index}")([features, hidden])
        features = layers.Add(name=f"{name}_residual_{index}")([aligned, hidden])
    return features


def _encoder(config: UMTConfig, mix, padding: str):
    features = MuLawCompand(name="compand")(mix)
    features = layers.Conv1D(config.encoder_channels, config.encoder_kernel_size, padding=padding,
                             name="encoder_input_conv")(features)
    features = _residual_stack(features, config.encoder_blocks, config.encoder_layers, config.encoder_channels,
                               config.encoder_kernel_size, padding, "encoder")
    return layers.Conv1D(config.latent_channels, 1, name="latent")(features)


def _class_logits(config: UMTConfig, hidden):
    logits = layers.Conv1D(config.channels * mulaw.CLASSES, 1, name="logits_conv")(hidden)
    return layers.Reshape((-1, config.channels, mulaw.CLASSES), name="accompaniment")(logits)


def build_structure_a(config: UMTConfig, input_length: int | None = None, name: str = "umt_a") -> keras.Model:
    """Input "mix" ``[input_length, channels]`` -> {"accompaniment": logits ``[t, channels, 256]``,
    "vocals": centred mix - expected accompaniment}, ``t = input_length - receptive_field + 1``."""
    mix = keras.Input(shape=(input_length, config.channels), name="mix")
    latent = _encoder(config, mix, "valid")
    features = layers.Conv1D(config.decoder_channels, config.encoder_kernel_size, name="decoder_input_conv")(latent)
    features = _residual_stack(features, config.decoder_blocks, config.decoder_layers, config.decoder_channels,
                               config.encoder_kernel_size, "valid", "decoder")
    # The waveform end computes in float32, as in models.wavenet: a bfloat16 model does not round the mix.
    if config.head == "classification":
        accompaniment = _class_logits(config, features)
        expected = MuLawExpectation(name="accompaniment_expectation", dtype="float32")(accompaniment)
    else:
        correction = layers.Conv1D(config.channels, 1, kernel_initializer="zeros", dtype="float32",
                                   name="accompaniment_correction")(features)
        accompaniment = expected = layers.Add(name="accompaniment", dtype="float32")(
            [CenterCrop1D(name="crop_mix_for_correction", dtype="float32")([mix, correction]), correction])
    aligned_mix = CenterCrop1D(name="crop_mix", dtype="float32")([mix, expected])
    vocals = layers.Subtract(name="vocals", dtype="float32")([aligned_mix, expected])
    return keras.Model(mix, {"accompaniment": accompaniment, "vocals": vocals}, name=name)


def _decoder_layer(config: UMTConfig, features, condition, dilation: int, index: int, last: bool):
    """One causal gated layer, conditioned through its own 1x1: (residual output or None, skip)."""
    channels = config.decoder_channels
    dilated = layers.Conv1D(2 * channels, config.causal_kernel_size, dilation_rate=dilation, padding="causal",
                            name=f"decoder_dilated_{index}")(features)
    conditioned = layers.Add(name=f"decoder_conditioned_{index}")(
        [dilated, layers.Conv1D(2 * channels, 1, name=f"decoder_condition_{index}")(condition)])
    gated = GatedActivation(name=f"decoder_gate_{index}")(conditioned)
    skip = layers.Conv1D(config.skip_channels, 1, name=f"decoder_skip_{index}")(gated)
    if last:
        return None, skip
    residual = layers.Conv1D(channels, 1, name=f"decoder_residual_{index}")(gated)
    return layers.Add(name=f"decoder_residual_sum_{index}")([features, residual]), skip


@register_serializable
class GatedActivation(layers.Layer):
    """``gated_activation`` as a layer."""

    def call(self, inputs):
        return gated_activation(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


def build_full(config: UMTConfig, input_length: int | None = None, name: str = "umt_full") -> keras.Model:
    """Inputs "mix" and "accompaniment" (the teacher-forcing target, read one sample back),
    ``[t, channels]`` with ``t`` a multiple of the pool -> {"accompaniment": logits
    ``[t, channels, 256]``, and with domains "domain": logits ``[2]``}. Inference uses its
    layers through ``models.generation``."""
    pool = pool_length(config)
    mix = keras.Input(shape=(input_length, config.channels), name="mix")
    previous = keras.Input(shape=(input_length, config.channels), name="accompaniment_in")
    latent = _encoder(config, mix, "same")
    pooled = layers.AveragePooling1D(pool, strides=pool, name="latent_pool")(latent)
    condition = layers.UpSampling1D(pool, name="latent_upsample")(pooled)

    heard = ShiftRight(name="teacher_forcing_shift")(MuLawLevels(name="teacher_forcing_levels")(previous))
    features = layers.Conv1D(config.decoder_channels, config.causal_kernel_size, padding="causal",
                             name="decoder_input_conv")(heard)
    skips = [layers.Conv1D(config.skip_channels, 1, name="decoder_input_skip")(features)]
    all_dilations = dilations(config.decoder_blocks, config.decoder_layers)
    for index, dilation in enumerate(all_dilations):
        features, skip = _decoder_layer(config, features, condition, dilation, index,
                                        last=index == len(all_dilations) - 1)
        skips.append(skip)
    hidden = layers.ReLU(name="decoder_skip_relu")(layers.Add(name="decoder_skip_sum")(skips))
    hidden = layers.Conv1D(config.skip_channels, 1, name="decoder_hidden")(hidden)
    hidden = layers.Add(name="decoder_output_conditioned")(
        [hidden, layers.Conv1D(config.skip_channels, 1, name="decoder_output_condition")(condition)])
    outputs = {"accompaniment": _class_logits(config, layers.ReLU(name="decoder_output_relu")(hidden))}
    if config.domains != "none":
        hidden = GradientReversal(config.confusion_weight, name="gradient_reversal")(pooled)
        for index in range(config.classifier_layers):
            hidden = layers.Conv1D(config.classifier_channels, 1, activation="elu",
                                   name=f"classifier_{index}")(hidden)
        frame_logits = layers.Conv1D(2, 1, name="classifier_logits")(hidden)
        outputs["domain"] = layers.GlobalAveragePooling1D(name="domain", dtype="float32")(frame_logits)
    return keras.Model({"mix": mix, "accompaniment_in": previous}, outputs, name=name)


def build_umt(config: UMTConfig, input_length: int | None = None) -> keras.Model:
    return build_structure_a(config, input_length) if config.variant == "a" else build_full(config, input_length)


def losses(config: UMTConfig) -> dict:
    """Cross-entropy of the accompaniment's mu-law classes (the vocals are the mix minus it),
    and for the full variant the domain classifier's cross-entropy: the gradient
    reversal, not a loss weight, scales what reaches the encoder."""
    if config.variant == "a":
        return {"accompaniment": mulaw_cross_entropy if config.head == "classification" else "mse", "vocals": None}
    result = {"accompaniment": mulaw_cross_entropy}
    if config.domains != "none":
        result["domain"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return result


def training_batch(config: UMTConfig):
    """The full variant's batches as its training model takes them (Structure A: None, they
    are used as they come). ``keras.ops``, so the tf.data pipeline and the numpy loader share it."""
    if config.variant == "a":
        return None

    def full_batch(mix, targets):
        accompaniment = targets["accompaniment"]
        inputs = {"mix": mix, "accompaniment_in": accompaniment}
        if config.domains == "none":
            return inputs, {"accompaniment": accompaniment}
        # Odd examples hear their accompaniment alone: domain 1; the target is unchanged.
        accompaniment_only = ops.cast(ops.arange(ops.shape(mix)[0]) % 2, "int32")
        alone = ops.cast(accompaniment_only, mix.dtype)[:, None, None]
        inputs["mix"] = mix * (1.0 - alone) + accompaniment * alone
        return inputs, {"accompaniment": accompaniment, "domain": accompaniment_only}

    return full_batch


def checkpoint_metric(config: UMTConfig) -> str:
    """The accompaniment's validation loss: the domain classifier's (which the encoder works
    against) says nothing of how well the model separates."""
    return "val_loss" if config.variant == "a" else "val_accompaniment_loss"


def sources_from_outputs(outputs: dict) -> dict:
    """Structure A's outputs -> waveforms: the accompaniment (class logits, rank 4, become their
    expected value) and the vocals."""
    accompaniment = outputs["accompaniment"]
    return {"vocals": outputs["vocals"],
            "accompaniment": expected_waveform(accompaniment) if len(accompaniment.shape) == 4 else accompaniment}


def generator(config: UMTConfig):
    """Structure A separates in one pass (None). Full: (model, windows) -> sources by the encoder,
    then the incremental generator (``models.generation``, TensorFlow)."""
    if config.variant == "a":
        return None

    def generate(model, windows):
        from models import generation

        return generation.separate_windows(model, config, windows)

    return generate


ARCHITECTURE = Architecture(
    configs=CONFIGS,
    default_config=DEFAULT_CONFIG,
    config_from_dict=UMTConfig.from_dict,
    build=build_umt,
    input_length_for=input_length_for,
    chunk_plan=chunk_plan,
    training_presets=TRAINING_PRESETS,
    losses=losses,
    inference_head=sources_from_outputs,
    variants=VARIANTS,
    training_batch=training_batch,
    generator=generator,
    checkpoint_metric=checkpoint_metric,
)
