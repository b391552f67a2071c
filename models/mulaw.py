"""8-bit mu-law companding (ITU-T G.711's curve with mu = 255, as in WaveNet) in ``keras.ops``.

A waveform in [-1, 1] is companded, ``f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)``,
and ``f`` is quantised uniformly to ``CLASSES`` = 256 levels: quiet samples get
fine steps and loud ones coarse steps, so 8 bits cover a wide dynamic range.
Class ``c`` decodes to the level ``f = 2 c / mu - 1``, expanded back with the
inverse curve. Rounding to the nearest level puts a decoded sample at most half
a level (1 / mu in ``f``) away, which at amplitude ``|x|`` is at most
``max_error(|x|)`` below. Written in ``keras.ops`` so models and losses use it
on any backend.
"""
from __future__ import annotations

import math

from keras import ops

MU = 255
CLASSES = MU + 1


def compand(x):
    """``f(x)``: [-1, 1] -> [-1, 1], continuous (inputs outside [-1, 1] are clipped)."""
    x = ops.clip(ops.cast(x, "float32"), -1.0, 1.0)
    # log(1 + y), not log1p: tf2onnx converts no Log1p, and at float32 the two differ by far
    # less than one mu-law step.
    return ops.sign(x) * ops.log(1.0 + MU * ops.abs(x)) / math.log1p(MU)


def expand(f):
    """The inverse of ``compand``."""
    f = ops.cast(f, "float32")
    return ops.sign(f) * (ops.power(1.0 + MU, ops.abs(f)) - 1.0) / MU


def encode(x):
    """Waveform -> int32 class in [0, 255], the nearest mu-law level."""
    return ops.cast(ops.round((compand(x) + 1.0) * (MU / 2)), "int32")


def level(classes):
    """Class in [0, 255] -> its level on the companded scale, ``class * 2 / 255 - 1``."""
    return ops.cast(classes, "float32") * (2.0 / MU) - 1.0


def decode(classes):
    """Class in [0, 255] -> the waveform value of its level."""
    return expand(level(classes))


def decode_expectation(probabilities):
    """Class probabilities ``[..., 256]`` -> the expected waveform value ``[...]``
    under them: the sum over classes of probability times decoded level."""
    levels = decode(ops.arange(CLASSES))
    return ops.sum(ops.cast(probabilities, "float32") * levels, axis=-1)


def max_error(amplitude: float) -> float:
    """Largest ``|decode(encode(x)) - x|`` for ``|x| = amplitude``: half a level in
    ``f`` expanded at that amplitude, ``(|x| + 1/mu) ((1 + mu)^(1/mu) - 1)``."""
    return (abs(amplitude) + 1.0 / MU) * ((1.0 + MU) ** (1.0 / MU) - 1.0)
