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
