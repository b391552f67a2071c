"""What both input pipelines share and can import without TensorFlow: the
model's crop geometry (the tf.data pipeline in
``pipeline.py``, the numpy loader in ``numpy_loader.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass(frozen=True)
class CropSpec:
    """Model geometry: samples in, samples out; the difference is context, split
    evenly (the extra sample, if odd, goes to the right), unless the outputs sit
    ``shift`` samples right of the centre (less context after them: a low-latency model)."""

    input_length: int
    output_length: int
    shift: int = 0

    def __post_init__(self):
        if not 0 < self.output_length <= self.input_length:
            raise ValueError(f"need 0 < output_length <= input_length, got {self}")
        if not 0 <= self.shift <= (self.input_length - self.output_length) // 2:
            raise ValueError(f"the shift must leave the outputs inside the input, got {self}")

    @property
    def context_left(self) -> int:
        return (self.input_length - self.output_length) // 2 + self.shift

    @property
    def context_right(self) -> int:
        return self.input_length - self.output_length - self.context_left

    def windows_to_cover(self, song_length):
        """How many consecutive outputs tile a song (the last one zero-padded);
        works on Python ints and on tensors."""
        return (song_length + self.output_length - 1) // self.output_length


def group_seed(seed: int, group: int) -> int:
    """The seed of one dataset's example stream inside a mix of datasets."""
    return int(np.random.SeedSequence([seed, group]).generate_state(1)[0])
