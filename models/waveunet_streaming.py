"""A Wave-U-Net with context run on a stream, in numpy: every layer computes each of its
output samples once, as soon as the inputs it needs have arrived, and keeps only the
few samples the next ones need.

A chunked pass recomputes each chunk's whole input window (the shipped small model's
is 17 times the samples a 20 ms chunk keeps); here the work per sample is that of one
pass over the whole song, so a stream costs about what offline separation does.

Each stage follows its Keras layer (``models.waveunet``, ``models.layers``) on the
stream that one pass over the whole (zero-led) song would see: valid convolutions keep
their last ``kernel - 1`` inputs, decimation its phase, upsampling its last sample, and
crop-and-concat drops the fixed number of leading skip samples that the centre crop
drops (the same for every valid length). Float32 only; the result equals the Keras
model's within float rounding (``tests/test_streaming.py``).
"""
from __future__ import annotations

import numpy as np



def _empty(batch: int, channels: int) -> np.ndarray:
    return np.zeros((batch, 0, channels), np.float32)


_ACTIVATIONS = {
    "leaky_relu": lambda x: np.maximum(x, np.float32(0.2) * x),  # keras' default slope 0.2 (f90's), in place of where()
    "tanh": np.tanh,
    "linear": lambda x: x,
}


class _Conv:
    """A valid Conv1D and its activation: n inputs give n - (kernel - 1) outputs."""

    def __init__(self, layer, batch: int):
        kernel, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
        self.width, inputs, outputs = kernel.shape
        self.matrix = kernel.reshape(self.width * inputs, outputs)  # [tap * channel, out]: one matmul per block
        self.bias, self.activation = bias, _ACTIVATIONS[layer.get_config()["activation"]]
        self.tail = _empty(batch, inputs)

    def count(self, received: int) -> int:
        return max(0, received - (self.width - 1))

    def push(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 0:  # deep levels get a sample every 2**level inputs: most blocks bring none
            return _empty(x.shape[0], self.matrix.shape[1])
        x = np.concatenate([self.tail, x], axis=1)
        steps = x.shape[1] - (self.width - 1)
        if steps <= 0:
            self.tail = x
            return _empty(x.shape[0], self.matrix.shape[1])
        self.tail = x[:, steps:]
        windows = np.lib.stride_tricks.sliding_window_view(x, self.width, axis=1)[:, :steps]  # [b, t, c, tap]
        # A contiguous copy: the reshaped view's rows overlap, which sends matmul off BLAS (100x slower).
        columns = np.ascontiguousarray(windows.transpose(0, 1, 3, 2)).reshape(x.shape[0] * steps, -1)
        return self.activation(columns @ self.matrix + self.bias).reshape(x.shape[0], steps, -1)


class _Decimate:
    """Keeps the stream's even samples (``models.layers.Decimate`` on one pass)."""

    def __init__(self):
        self.received = 0

    @staticmethod
    def count(received: int) -> int:
        return (received + 1) // 2

    def push(self, x: np.ndarray) -> np.ndarray:
        kept = x[:, self.received % 2::2]
        self.received += x.shape[1]
        return kept


class _Upsample:
    """n -> 2n - 1: each sample, and between neighbours ``w * left + (1 - w) * right``
    (0.5 for ``LinearUpsample``, the learned weights for ``LearnedUpsample``), in the
    layers' arithmetic."""

    def __init__(self, layer):
        weights = layer.get_weights()
        self.weight = 1 / (1 + np.exp(-np.asarray(weights[0], np.float32))) if weights else None
        self.previous = None

    @staticmethod
    def count(received: int) -> int:
        return max(0, 2 * received - 1)

    def push(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 0:
            return x
        first = x[:, :1] if self.previous is None else x[:, :0]  # the stream's first sample has no left neighbour
        left = x[:, :-1] if self.previous is None else np.concatenate([self.previous, x[:, :-1]], axis=1)
        right = x[:, x.shape[1] - left.shape[1]:]
        if self.weight is None:
            between = np.float32(0.5) * (left + right)
        else:
            between = self.weight * left + (np.float32(1.0) - self.weight) * right
        self.previous = x[:, -1:]
        pairs = np.stack([between, right], axis=2).reshape(x.shape[0], -1, x.shape[2])
        return np.concatenate([first, pairs], axis=1)


class _Align:
    """Pairs two streams sample by sample once ``skip`` leading samples of the first are
    dropped: the centre crop of ``CropConcat``/``CenterCrop1D``, whose start is the same
    for every valid length."""

    def __init__(self, skip: int, batch: int, channels: tuple[int, int]):
        self.to_skip = skip
        self.waiting = [_empty(batch, channels[0]), _empty(batch, channels[1])]

    def count(self, first: int, second: int) -> int:
        return max(0, min(first - self.to_skip, second))

    def push(self, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dropped = min(self.to_skip, first.shape[1])
        self.to_skip -= dropped
        self.waiting = [np.concatenate([self.waiting[0], first[:, dropped:]], axis=1),
                        np.concatenate([self.waiting[1], second], axis=1)]
        ready = min(w.shape[1] for w in self.waiting)
        paired = tuple(w[:, :ready] for w in self.waiting)
        self.waiting = [w[:, ready:] for w in self.waiting]
        return paired


class WaveUNetStream:
    """The model over a stream of ``[batch, samples, channels]`` blocks (the batch: the
    channel rule's passes). ``push`` returns the outputs that are ready, per source; the
    stream's first output is the model's output for input sample ``lead`` of a one-pass
    run over the same samples."""

    def __init__(self, model, config, batch: int, crop_starts: tuple[list[int], int, int]):
        """``config``: the model's ``WaveUNetConfig``; ``crop_starts``: where its centre crops
        start (``models.waveunet.crop_starts``)."""
        if not config.context:
            raise ValueError("only a Wave-U-Net with context (valid convolutions) runs incrementally")
        self.config = config
        layer = model.get_layer
        self.down = [_Conv(layer(f"down_conv_{i}"), batch) for i in range(config.num_layers)]
        self.decimate = [_Decimate() for _ in range(config.num_layers)]
        self.bottleneck = _Conv(layer("bottleneck_conv"), batch)
        self.upsample = [_Upsample(layer(f"upsample_{i}")) for i in range(config.num_layers)]
        self.up = [_Conv(layer(f"up_conv_{i}"), batch) for i in range(config.num_layers)]
        skip_starts, mix_start, output_start = crop_starts
        filters = [config.num_initial_filters * (i + 1) for i in range(config.num_layers + 1)]
        self.concat = [_Align(skip_starts[i], batch, (filters[i], filters[i + 1])) for i in range(config.num_layers)]
        self.concat_mix = _Align(mix_start, batch, (config.channels, filters[0]))
        self.sources = ([config.predicted_source] if config.output_type == "difference"
                        else ["vocals", "accompaniment"])
        self.source_convs = {source: _Conv(layer(source), batch) for source in self.sources}
        # The difference output: the mix cropped to the outputs, minus the predicted source.
        self.mix_for_difference = _Align(output_start, batch, (config.channels, config.channels))

    def ready(self, received: int) -> int:
        """How many outputs the stream has given once ``received`` input samples have arrived."""
        skips, length = [], received
        for conv, decimate in zip(self.down, self.decimate):
            length = conv.count(length)
            skips.append(length)
            length = decimate.count(length)
        length = self.bottleneck.count(length)
        for level in reversed(range(self.config.num_layers)):
            length = self.up[level].count(self.concat[level].count(skips[level], self.upsample[level].count(length)))
        length = self.source_convs[self.sources[0]].count(self.concat_mix.count(received, length))
        if self.config.output_type == "difference":
            length = self.mix_for_difference.count(received, length)
        return length

    def push(self, mix: np.ndarray) -> dict:
        features, skips = mix, []
        for conv, decimate in zip(self.down, self.decimate):
            features = conv.push(features)
            skips.append(features)
            features = decimate.push(features)
        features = self.bottleneck.push(features)
        for level in reversed(range(self.config.num_layers)):
            skip, upsampled = self.concat[level].push(skips[level], self.upsample[level].push(features))
            features = self.up[level].push(np.concatenate([skip, upsampled], axis=2))
        aligned_mix, features = self.concat_mix.push(mix, features)
        features = np.concatenate([aligned_mix, features], axis=2)
        outputs = {source: conv.push(features) for source, conv in self.source_convs.items()}
        if self.config.output_type == "difference":
            predicted = self.config.predicted_source
            cropped_mix, outputs[predicted] = self.mix_for_difference.push(mix, outputs[predicted])
            derived = next(source for source in ("vocals", "accompaniment") if source != predicted)
            outputs[derived] = cropped_mix - outputs[predicted]
        return outputs
