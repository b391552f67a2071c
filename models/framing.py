"""How a fully convolutional separator is run on a song piece by piece.

A ``ChunkPlan`` says which input window a model call needs and which of its
output samples to keep, so that the kept outputs tile the song and equal what
one pass over the whole song would give: chunks start on the model's time grid
(e.g. multiples of 2**levels for a decimating U-Net), and every kept output
sample sees its full receptive field."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    input_length: int  # samples per model call
    output_offset: int  # input index of the model's first output sample
    output_length: int  # output samples per model call
    keep_from: int  # first output sample kept (same-padding models drop unreliable edges)
    stride: int  # output samples kept per call: how far consecutive chunks move

    def __post_init__(self):
        if not 0 < self.stride <= self.output_length - self.keep_from:
            raise ValueError(f"inconsistent chunk plan {self}")

    @property
    def lead(self) -> int:
        """Input samples needed before the first kept output sample."""
        return self.output_offset + self.keep_from

    @property
    def overhead(self) -> float:
        """Input samples computed per kept output sample."""
        return self.input_length / self.stride


# The TensorFlow side imports TensorFlow only when called: JAX hosts import ChunkPlan.


def frame_tf(waveform, plan: ChunkPlan):
    """``[time, channels]`` -> the model-input windows ``[num_chunks, input_length, channels]``.

    Laid out as ``runtime.chunking._ChunkRunner`` does: ``plan.lead`` zeros of context
    before the song, windows ``plan.stride`` apart, the last completed with zeros,
    as many as it takes for the kept outputs to cover every sample (none for an
    empty song). Graph-safe for a ``time`` unknown until run time."""
    import tensorflow as tf

    length = tf.shape(waveform)[0]
    num_chunks = (length + plan.stride - 1) // plan.stride
    padded_length = (num_chunks - 1) * plan.stride + plan.input_length
    padded = tf.pad(waveform, [[plan.lead, padded_length - plan.lead - length], [0, 0]])
    return tf.signal.frame(padded, plan.input_length, plan.stride, axis=0)


def stitch_tf(outputs, plan: ChunkPlan, length):
    """The kept samples of ``frame_tf``'s chunks' outputs ``[num_chunks, output_length,
    channels]``, in order and cut to the song's ``length``: ``[length, channels]``."""
    import tensorflow as tf

    kept = outputs[:, plan.keep_from:plan.keep_from + plan.stride]
    return tf.reshape(kept, tf.concat([[-1], tf.shape(kept)[2:]], axis=0))[:length]
