"""Speed cost of an output ensemble (runtime.ensemble, evaluate.py --ensemble-with): x realtime
of one model and of the ensemble of it with others, on the same 30 s stereo 44.1 kHz clip as
bench/separate.py, through the same chunked path (``separate_song``) with the same
post-filter, timed in interleaved rounds (best of ``--repeats``) so both see the same load.

    python -m bench.ensemble pretrained/waveunet-small-musdb runs/xd-control --wiener mask

Prints each row's x realtime and the ensemble's speed as a fraction of the first model's
(docs/averaging.md).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.separate import CLIP_RATE, best_of_interleaved  # noqa: E402
from runtime.chunking import separate_song  # noqa: E402
from runtime.ensemble import ensemble_separator  # noqa: E402
from runtime.loading import load_separator  # noqa: E402
from runtime.wiener import WienerSettings  # noqa: E402


def ensemble_speeds(models: list, clip: np.ndarray, repeats: int, wiener: str | None = None,
                    chunk_seconds: float = 30.0) -> dict:
    """x realtime of the first model alone and of the ensemble of all of them on ``clip``."""
    separators = [load_separator(model) for model in models]
    settings = None if wiener in (None, "off") else WienerSettings.parse(wiener)
    runs = {"one model": separators[0], f"ensemble of {len(separators)}": ensemble_separator(separators)}
    steps = {}
    for name, separator in runs.items():
        separate_song(separator, clip[: CLIP_RATE // 2], CLIP_RATE, chunk_seconds, wiener=settings)  # warm-up
        steps[name] = lambda separator=separator: separate_song(separator, clip, CLIP_RATE, chunk_seconds,
                                                                wiener=settings)
    seconds = best_of_interleaved(steps, repeats)
    return {name: len(clip) / CLIP_RATE / best for name, best in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="run directories (or exports) of the same framing; the first "
                                                  "is timed alone too")
    parser.add_argument("--wiener", default="off", help="post-filter of both rows (runtime.wiener; default: off)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best counts (default: 3)")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (default: 30)")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("name at least two models")
    clip = np.random.default_rng(0).uniform(-0.3, 0.3, (int(args.seconds * CLIP_RATE), 2)).astype(np.float32)
    speeds = ensemble_speeds(args.models, clip, args.repeats, args.wiener)
    one = speeds["one model"]
    for name, speed in speeds.items():
        print(f"{name:>14s}: {speed:6.2f}x realtime ({speed / one:.2f} of one model), post-filter {args.wiener}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
