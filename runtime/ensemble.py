"""An output ensemble: several separators of the same framing (rate, channels, chunk plan)
as one ``Separator`` whose forward pass is the mean of theirs, window by window. It goes
through the same chunking, channel rule and post-filter as any single model
(``runtime.chunking``), and costs the sum of their forward passes: two models are about
half the speed of one. Used by ``evaluate.py --ensemble-with`` and ``bench/ensemble.py``
(docs/averaging.md)."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from runtime.separator import Separator

# Chunk output lengths at which the members' chunk plans must agree (short, typical, long).
PLAN_CHECK_LENGTHS = (1024, 22050, 661500)


def ensemble_separator(separators: Sequence[Separator]) -> Separator:
    """The members' outputs averaged; the first member's post-filter, precision and facts.
    Members must share sample rate, channels and chunk plans (e.g. the same architecture
    and config at another seed or width), so that each window means the same to all."""
    if not separators:
        raise ValueError("an ensemble needs at least one model")
    first = separators[0]
    for other in separators[1:]:
        if (other.sample_rate, other.channels) != (first.sample_rate, first.channels):
            raise ValueError(f"{other.source} runs at {other.sample_rate} Hz with {other.channels} channel(s), "
                             f"{first.source} at {first.sample_rate} Hz with {first.channels}: they do not ensemble")
        if not other.one_pass or any(other.chunk_plan(n) != first.chunk_plan(n) for n in PLAN_CHECK_LENGTHS):
            raise ValueError(f"{other.source} frames its chunks unlike {first.source}: they do not ensemble")
    if len(separators) == 1:
        return first

    def forward(mix: np.ndarray) -> dict:
        outputs = [separator.forward(mix) for separator in separators]
        return {source: np.mean([output[source] for output in outputs], axis=0, dtype=np.float32)
                for source in outputs[0]}

    # the mean's accompaniment is its input minus its vocals only where every member's is
    return replace(first, forward=forward, incremental=None,
                   sums_to_input=all(separator.sums_to_input for separator in separators),
                   source=" + ".join(separator.source for separator in separators),
                   description=f"ensemble of {len(separators)}: "
                               + " + ".join(separator.description for separator in separators))
