"""Training steps per second in float32 against bfloat16 mixed precision, side by side in one run.

    python -m bench.train_step [--config small] [--batch-size 8] [--steps 20] [--repeats 3]

Builds the named Wave-U-Net config as train.py does (``training.session.build_model``:
the same optimizer and losses, float32 weights; ``bfloat16`` computes in bfloat16),
then times ``--steps`` training steps on one batch of random crops of train.py's
crop size, in turns (float32, bfloat16, float32, ...) so that drift in the machine's
load hits both alike, and prints the best turn of each and their ratio. What decides
the ratio is the CPU: bfloat16 pays on AVX512-BF16 and AMX and is emulated
elsewhere, so the CPU line names which of them this machine has.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from models.registry import ARCHITECTURES  # noqa: E402
from runtime.cpu import this_cpu  # noqa: E402
from training.run_config import TRAINING_DEFAULTS  # noqa: E402
from training.session import build_model  # noqa: E402


def timed_steps(model, inputs, targets, steps: int) -> float:
    """Seconds per training step over ``steps`` steps on one batch (after the first call traced it)."""
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(inputs, targets)
    return (time.perf_counter() - start) / steps


def seconds_per_step(model_config, config_name: str, batch_size: int, steps: int, repeats: int) -> dict:
    """Precision -> the best of ``repeats`` turns' seconds per training step of ``model_config``."""
    architecture = ARCHITECTURES["waveunet"]
    input_length, output_length = architecture.input_length_for(model_config, model_config.num_frames)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-0.5, 0.5, (batch_size, input_length, model_config.channels)).astype("float32")
    models, batches = {}, {}
    for precision in ("float32", "bfloat16"):
        run = {"arch": "waveunet", "config_name": config_name, "model": model_config.to_dict(), "data": {},
               "training": {**TRAINING_DEFAULTS, "precision": precision}}
        model, _ = build_model(run, strategy=None)
        targets = {name: rng.uniform(-0.5, 0.5, (batch_size, output_length, model_config.channels))
                   .astype("float32") for name in model.output_names}
        model.train_on_batch(inputs, targets)  # traces the step
        models[precision], batches[precision] = model, targets

    best = dict.fromkeys(models, float("inf"))
    for _ in range(repeats):
        for precision, model in models.items():
            best[precision] = min(best[precision], timed_steps(model, inputs, batches[precision], steps))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", help="Wave-U-Net config (default: small)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed turn")
    parser.add_argument("--repeats", type=int, default=3, help="timed turns per precision; the best counts")
    args = parser.parse_args(argv)

    model_config = ARCHITECTURES["waveunet"].configs[args.config]
    best = seconds_per_step(model_config, args.config, args.batch_size, args.steps, args.repeats)
    input_length, _ = ARCHITECTURES["waveunet"].input_length_for(model_config, model_config.num_frames)
    print(f"CPU: {this_cpu().describe()}")
    print(f"Wave-U-Net {args.config}, batch {args.batch_size} of {input_length}-sample crops, "
          f"best of {args.repeats} turns of {args.steps} steps")
    print(f"{'precision':<10} {'steps/s':>8} {'vs float32':>11}")
    for precision, seconds in best.items():
        print(f"{precision:<10} {1 / seconds:8.2f} {best['float32'] / seconds:10.2f}x")


if __name__ == "__main__":
    main()
