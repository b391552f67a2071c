"""Autoregressive decoding of UMT's full variant, in TensorFlow (it goes into the SavedModel).

The causal WaveNet decoder (``models.umt.build_full``) outputs the class distribution
of sample ``t`` from its own samples before ``t`` and the latent. Generating means
one decoder evaluation per sample:

- ``generate_naive`` recomputes the decoder over its whole receptive field (the last
  ``decoder_field`` samples) at every step, with the Keras layers themselves.
- ``generate_incremental`` is the fast WaveNet generation algorithm (Paine et al.,
  2016): every layer keeps a queue of its own past inputs, exactly the ones its
  dilated convolution reads again later, so a step costs one 1-sample evaluation
  per layer. The queues are circular buffers of ``(kernel - 1) * dilation`` entries
  updated in place (``tensor_scatter_nd_update``), and the conditioning 1x1s are
  applied once per pooled latent frame, not per sample.

Both run as a ``tf.while_loop`` over samples, batched over sequences, and sample the
same way: the Gumbel-max trick with noise drawn statelessly from (seed, step), so
for the same latent and seed they produce the same samples (``temperature=0``:
the most likely class). A sequence starts from silence, as the decoder's causal
zero padding does in training.

``separate_windows`` is what separation runs on chunk-plan windows of the full
variant: the encoder over the whole window, then every window cut into segments of
``segment_seconds`` generated side by side (one batch), so a long song is as many
short, parallel generations: the ``tf.while_loop`` runs ``segment`` steps, not the
song's length.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from models import mulaw
from models.layers import gated_activation
from models.umt_config import UMTConfig, decoder_field, dilations, pool_length

SEGMENT_SECONDS = 1.0


def sample_classes(logits, seed, step, temperature: float, streams=None):
    """``[batch, channels, 256]`` logits -> classes ``[batch, channels]``: Gumbel-max with
    noise from (seed, step, stream), so every generator draws the same sample from the
    same logits. ``streams`` ``[batch]`` (int32, default: each row its own) picks each row's
    noise: rows of one stream share it. Separation gives every segment of a window its
    place in the window, so its samples do not depend on how windows are batched."""
    if temperature == 0:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    shape = tf.shape(logits)
    streams = tf.range(shape[0]) if streams is None else streams
    stream_count = tf.reduce_max(streams) + 1
    seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    # Not under XLA: it draws other numbers for the same seeds (bench/generation.py --jit).
    uniform = tf.random.stateless_uniform(tf.concat([[stream_count], shape[1:]], 0), seeds, minval=1e-20,
                                          maxval=1.0)
    gumbel = -tf.math.log(-tf.math.log(tf.gather(uniform, streams)))
    return tf.argmax(logits / temperature + gumbel, axis=-1, output_type=tf.int32)


# ---------------------------------------------------------------- the model's parts


def encoder_model(model: keras.Model) -> keras.Model:
    """The full model's mix -> pooled latent ``[batch, frames, latent_channels]``."""
    return keras.Model(model.get_layer("mix").output, model.get_layer("latent_pool").output)


def decoder_model(model: keras.Model) -> keras.Model:
    """The full model's decoder as trained: (inputs it reads back ``[b, t, channels]``, one
    sample late; upsampled latent ``[b, t, latent]``) -> logits ``[b, t, channels, 256]``."""
    return keras.Model([model.get_layer("teacher_forcing_shift").output, model.get_layer("latent_upsample").output],
                       model.get_layer("accompaniment").output)


@dataclass(frozen=True)
class _Layer:
    dilation: int
    kernel: tf.Tensor  # [kernel_size, residual, 2 residual]
    bias: tf.Tensor
    residual: tuple | None  # (kernel [residual, residual], bias); None for the last layer
    skip: tuple  # (kernel [residual, skip], bias)


class DecoderWeights:
    """The decoder's weights as matrices for one-sample steps, and its conditioning
    1x1s stacked into one (applied once per latent frame)."""

    def __init__(self, model: keras.Model, config: UMTConfig):
        def weights(name):
            layer = model.get_layer(name)
            return tuple(tf.cast(w, tf.float32) for w in layer.weights)

        def pointwise(name):
            kernel, bias = weights(name)
            return kernel[0], bias

        self.kernel_size = config.causal_kernel_size
        self.channels = config.channels
        self.input_conv = weights("decoder_input_conv")
        self.input_skip = pointwise("decoder_input_skip")
        all_dilations = dilations(config.decoder_blocks, config.decoder_layers)
        count = len(all_dilations)
        self.layers = [
            _Layer(dilation=dilation, kernel=weights(f"decoder_dilated_{index}")[0],
                   bias=weights(f"decoder_dilated_{index}")[1],
                   residual=None if index == count - 1 else pointwise(f"decoder_residual_{index}"),
                   skip=pointwise(f"decoder_skip_{index}"))
            for index, dilation in enumerate(all_dilations)]
        self.hidden = pointwise("decoder_hidden")
        self.logits = pointwise("logits_conv")
        conditions = [pointwise(f"decoder_condition_{index}") for index in range(count)]
        conditions.append(pointwise("decoder_output_condition"))
        self.condition_sizes = [int(bias.shape[0]) for _, bias in conditions]
        self.condition_kernel = tf.concat([kernel for kernel, _ in conditions], axis=1)
        self.condition_bias = tf.concat([bias for _, bias in conditions], axis=0)

    def conditions(self, frames):
        """Pooled latent ``[b, frames, latent]`` -> each layer's conditioning and the output
        stage's, ``[b, frames, size]`` each."""
        projected = tf.einsum("bfl,lc->bfc", tf.cast(frames, tf.float32), self.condition_kernel) + self.condition_bias
        return tf.split(projected, self.condition_sizes, axis=-1)


def _queue_length(weights: DecoderWeights, dilation: int) -> int:
    return (weights.kernel_size - 1) * dilation


def _causal_step(queue, current, kernel, bias, dilation: int, step):
    """One output of a causal dilated convolution at ``step``: ``queue`` ``[(k - 1) d, b, c]``
    holds the input at ``step - (k - 1) d .. step - 1`` at positions ``mod (k - 1) d``."""
    kernel_size = int(kernel.shape[0])
    length = (kernel_size - 1) * dilation
    output = tf.matmul(current, kernel[-1]) + bias
    for tap in range(kernel_size - 1):  # kernel[tap] reads the input (k - 1 - tap) d steps back
        back = (kernel_size - 1 - tap) * dilation
        output += tf.matmul(tf.gather(queue, (step - back) % length), kernel[tap])
    queue = tf.tensor_scatter_nd_update(queue, [[step % length]], current[None])
    return queue, output


def _dense(x, kernel_bias):
    kernel, bias = kernel_bias
    return tf.matmul(x, kernel) + bias


def generate_incremental(weights: DecoderWeights, frames, pool: int, length, seed=0, temperature: float = 1.0,
                         streams=None):
    """Classes ``[b, length, channels]`` (int32) from the pooled latent ``frames`` ``[b, ≥ length / pool, latent]``
    with per-layer cached queues; ``length`` may be a run-time tensor. ``streams``: see ``sample_classes``."""
    frames = tf.convert_to_tensor(frames)
    batch = tf.shape(frames)[0]
    conditions = weights.conditions(frames)
    input_kernel, input_bias = weights.input_conv
    residual_channels = int(input_kernel.shape[-1])

    def zeros(queue_length, channels):
        return tf.zeros([queue_length, batch, channels])

    def step_fn(step, previous_level, input_queue, queues, outputs):
        frame = step // pool
        input_queue, features = _causal_step(input_queue, previous_level, input_kernel, input_bias, 1, step)
        skip = _dense(features, weights.input_skip)
        new_queues = []
        for layer, queue, condition in zip(weights.layers, queues, conditions):
            queue, dilated = _causal_step(queue, features, layer.kernel, layer.bias, layer.dilation, step)
            gated = gated_activation(dilated + condition[:, frame])
            skip += _dense(gated, layer.skip)
            if layer.residual is not None:
                features = features + _dense(gated, layer.residual)
            new_queues.append(queue)
        hidden = tf.nn.relu(_dense(tf.nn.relu(skip), weights.hidden) + conditions[-1][:, frame])
        logits = tf.reshape(_dense(hidden, weights.logits), [batch, weights.channels, mulaw.CLASSES])
        classes = sample_classes(logits, seed, step, temperature, streams)
        return step + 1, mulaw.level(classes), input_queue, new_queues, outputs.write(step, classes)

    initial = (tf.constant(0), tf.zeros([batch, weights.channels]),
               zeros(_queue_length(weights, 1), weights.channels),
               [zeros(_queue_length(weights, layer.dilation), residual_channels) for layer in weights.layers],
               tf.TensorArray(tf.int32, size=length))
    *_, outputs = tf.while_loop(lambda step, *_: step < length, step_fn, initial, parallel_iterations=1)
    return tf.transpose(outputs.stack(), [1, 0, 2])


def generate_naive(decoder: keras.Model, config: UMTConfig, frames, length, seed=0, temperature: float = 1.0,
                   streams=None, first_step: int = 0):
    """``generate_incremental``'s samples the slow way: each step runs the trained decoder
    (``decoder_model``) over the last ``decoder_field`` samples (fewer at the start, as
    its causal padding starts from silence) and keeps the last output.

    ``first_step`` > 0 starts later, over that many samples of silence (the frames must
    cover them too), and returns the ``length`` samples from there: with ``decoder_field
    - 1``, every step runs over the whole field (``bench/generation.py`` times that)."""
    frames = tf.convert_to_tensor(frames)
    batch = tf.shape(frames)[0]
    field = decoder_field(config)
    pool = pool_length(config)
    latent = tf.repeat(tf.cast(frames, tf.float32), pool, axis=1)  # the nearest-neighbour upsampling
    channels = config.channels

    def step_fn(step, levels, outputs):
        # levels[:, i] is the value the decoder reads at sample i: the level of sample i - 1.
        start = tf.maximum(step - field + 1, 0)
        window = levels[:, start:step + 1]
        logits = decoder([window, latent[:, start:step + 1]], training=False)[:, -1]
        classes = sample_classes(tf.cast(logits, tf.float32), seed, step, temperature, streams)
        levels = tf.concat([levels, mulaw.level(classes)[:, None]], axis=1)
        return step + 1, levels, outputs.write(step - first_step, classes)

    initial = (tf.constant(first_step), tf.zeros([batch, first_step + 1, channels]),
               tf.TensorArray(tf.int32, size=length))
    _, _, outputs = tf.while_loop(
        lambda step, *_: step < first_step + length, step_fn, initial, parallel_iterations=1,
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, channels]), tf.TensorShape(None)))
    return tf.transpose(outputs.stack(), [1, 0, 2])


def separate_windows(model: keras.Model, config: UMTConfig, windows, segment_seconds: float = SEGMENT_SECONDS,
                     seed: int = 0, temperature: float = 1.0) -> dict:
    """Chunk-plan windows ``[n, t, channels]`` (``t`` a multiple of the pool) -> {"vocals",
    "accompaniment"} ``[n, t, channels]``: the accompaniment generated, the vocals the rest
    of the mix. See the module docstring for the segments."""
    pool = pool_length(config)
    windows = tf.convert_to_tensor(windows, tf.float32)
    count, length = tf.shape(windows)[0], tf.shape(windows)[1]
    frames = tf.cast(encoder_model(model)(windows, training=False), tf.float32)
    frame_count = tf.shape(frames)[1]
    # Never longer than the window: a short window is one segment of its own length.
    segment_frames = tf.minimum(max(1, round(segment_seconds * config.sample_rate / pool)), frame_count)
    segments = (frame_count + segment_frames - 1) // segment_frames
    frames = tf.pad(frames, [[0, 0], [0, segments * segment_frames - frame_count], [0, 0]])
    frames = tf.reshape(frames, [count * segments, segment_frames, config.latent_channels])
    # Segment s of every window draws noise stream s.
    streams = tf.tile(tf.range(segments), [count])
    classes = generate_incremental(DecoderWeights(model, config), frames, pool, segment_frames * pool, seed,
                                   temperature, streams)
    accompaniment = tf.reshape(mulaw.decode(classes), [count, segments * segment_frames * pool, config.channels])
    accompaniment = accompaniment[:, :length]
    return {"vocals": windows - accompaniment, "accompaniment": accompaniment}
