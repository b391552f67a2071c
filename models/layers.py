"""Custom Keras layers shared by the waveform separation models.

Every layer here is registered under the ``wavesep`` package, so models that use
them save to and load from ``.keras`` files. They all work on tensors shaped
``[batch, time, channels]`` with an unknown (``None``) time dimension, and say
their output shape through ``compute_output_shape`` so static lengths survive
model building.
"""
from __future__ import annotations

import keras
from keras import layers, ops

register = keras.saving.register_keras_serializable(package="wavesep")


def _center_crop(tensor, length, shift=0):
    """Keeps the middle ``length`` steps, moved ``shift`` steps right; an odd surplus
    loses its extra step at the end, as in f90's ``Utils.crop``."""
    start = (ops.shape(tensor)[1] - length) // 2 + shift
    return tensor[:, start:start + length, :]


def _interleave(originals, in_between, valid):
    """Time steps o0, b0, o1, b1, ...; ``valid`` drops the final in-between step,
    which has no right neighbour (n -> 2n - 1 instead of 2n)."""
    batch_time_2_channels = ops.stack([originals, in_between], axis=2)
    time, channels = ops.shape(originals)[1], ops.shape(originals)[2]
    interleaved = ops.reshape(batch_time_2_channels, (-1, 2 * time, channels))
    return interleaved[:, :-1, :] if valid else interleaved


def _upsampled_length(length, valid):
    if length is None:
        return None
    return 2 * length - 1 if valid else 2 * length


@register
class CenterCrop1D(layers.Layer):
    """``[x, reference]`` -> ``x`` centre-cropped along time to the length of ``reference``
    (moved ``shift`` steps right: a model whose outputs sit right of its input's centre)."""

    def __init__(self, shift: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.shift = shift

    def call(self, inputs):
        tensor, reference = inputs
        return _center_crop(tensor, ops.shape(reference)[1], self.shift)

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}

    def compute_output_shape(self, input_shape):
        tensor_shape, reference_shape = input_shape
        return (tensor_shape[0], reference_shape[1], tensor_shape[2])


@register
class CropConcat(layers.Layer):
    """``[skip, x]`` -> ``concat([centre_crop(skip), x])`` along channels.

    f90's ``crop_and_concat``: with valid convolutions the skip connection is
    longer than the upsampled path, so its centre is aligned with it (moved ``shift``
    steps right, where the path's outputs sit right of the skip's centre)."""

    def __init__(self, shift: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.shift = shift

    def call(self, inputs):
        skip, upsampled = inputs
        cropped = _center_crop(skip, ops.shape(upsampled)[1], self.shift)
        return ops.concatenate([cropped, upsampled], axis=-1)

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}

    def compute_output_shape(self, input_shape):
        skip_shape, upsampled_shape = input_shape
        channels = None if None in (skip_shape[2], upsampled_shape[2]) else skip_shape[2] + upsampled_shape[2]
        return (upsampled_shape[0], upsampled_shape[1], channels)


@register
class Decimate(layers.Layer):
    """Keeps every other time step, starting with the first: n -> ceil(n / 2)."""

    def call(self, inputs):
        return inputs[:, ::2, :]

    def compute_output_shape(self, input_shape):
        batch, time, channels = input_shape
        return (batch, None if time is None else (time + 1) // 2, channels)


@register
class LinearUpsample(layers.Layer):
    """Doubles the time resolution by inserting the mean of each pair of neighbours.

    Reproduces f90's ``tf.image.resize_bilinear``: with ``valid`` (context mode,
    ``align_corners=True``) n -> 2n - 1; otherwise n -> 2n and the last inserted
    step repeats the last input step, as TF1's legacy resize clamps at the edge."""

    def __init__(self, valid: bool, **kwargs):
        super().__init__(**kwargs)
        self.valid = valid

    def call(self, inputs):
        next_steps = ops.concatenate([inputs[:, 1:, :], inputs[:, -1:, :]], axis=1)
        return _interleave(inputs, 0.5 * (inputs + next_steps), self.valid)

    def compute_output_shape(self, input_shape):
        batch, time, channels = input_shape
        return (batch, _upsampled_length(time, self.valid), channels)

    def get_config(self):
        return {**super().get_config(), "valid": self.valid}


@register
class LearnedUpsample(layers.Layer):
    """f90's learned interpolation: inserts ``w * x[t] + (1 - w) * x[t + 1]`` between
    neighbours, with one weight ``w = sigmoid(logit)`` in [0, 1] per channel.

    ``valid``: n -> 2n - 1. Otherwise n -> 2n, and the last inserted step sees a
    zero right neighbour, like f90's width-2 'SAME' convolution."""

    def __init__(self, valid: bool, **kwargs):
        super().__init__(**kwargs)
        self.valid = valid

    def build(self, input_shape):
        # f90's tf.get_variable default: Glorot-uniform over a vector, so w starts near 0.5.
        self.logits = self.add_weight(shape=(input_shape[-1],), initializer="glorot_uniform", name="logits")

    def call(self, inputs):
        weights = ops.sigmoid(self.logits)
        next_steps = ops.concatenate([inputs[:, 1:, :], ops.zeros_like(inputs[:, :1, :])], axis=1)
        return _interleave(inputs, weights * inputs + (1.0 - weights) * next_steps, self.valid)

    def compute_output_shape(self, input_shape):
        batch, time, channels = input_shape
        return (batch, _upsampled_length(time, self.valid), channels)

    def get_config(self):
        return {**super().get_config(), "valid": self.valid}


def gated_activation(inputs):
    """``[..., 2c]`` -> tanh(first half) * sigmoid(second half): WaveNet's gated unit."""
    filters, gates = ops.split(inputs, 2, axis=-1)
    return ops.tanh(filters) * ops.sigmoid(gates)
