"""Several training runs side by side inside a fixed wall-clock budget, for a GPU
lent for minutes (KERAS_BACKEND=jax; TensorFlow is not needed):

    KERAS_BACKEND=jax python -m training.gpu_campaign --data-root data/musdb-22k --out results \\
        --minutes 8 --run w24="--model-set num_initial_filters=24" --run w16=""

It first times a few steps of the first run, then gives every run the number of
steps that fits the time left (the half-cosine schedule needs its length up front),
runs them at once on the same accelerator, stops any still going at the deadline,
and writes each run's config, best weights in float16 (runtime.float16_run, as
``export.py --float16-run`` writes them: checked to separate within 1e-3 of the
float32 weights; every tool loads them) and metrics under ``--out/NAME``.
Flags common to every run go after ``--``.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_TIME = re.compile(r"- (\d+(?:\.\d+)?)(us|ms|s)/step")
UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
BASE_FLAGS = ["--arch", "waveunet", "--dataset", "folder", "--batch-size", "16", "--patience", "1000"]


def seconds_per_step(log: str) -> float:
    """The last Keras epoch line's time per step (later epochs exclude compilation)."""
    matches = STEP_TIME.findall(log)
    if not matches:
        raise RuntimeError(f"no 'N/step' figure in the training log:\n{log[-2000:]}")
    value, unit = matches[-1]
    return float(value) * UNIT_SECONDS[unit]


def steps_that_fit(seconds_left: float, step_seconds: float, runs: int, overlap: float) -> int:
    """Steps each of ``runs`` concurrent runs finishes in ``seconds_left``; ``overlap`` is
    how much of a second run's work the accelerator absorbs for free (0: none, 1: all)."""
    slowdown = 1 + (runs - 1) * (1 - overlap)
    return int(seconds_left / (step_seconds * slowdown))


def _train_command(run_dir: Path, data_root: str, flags: list[str]) -> list[str]:
    return [sys.executable, "train.py", *BASE_FLAGS, "--data-root", data_root, "--run-dir", str(run_dir), *flags]


def _save_float16(run_dir: Path, destination: Path) -> str:
    """Best weights in float16 (checked, without TensorFlow); returns what was written."""
    from runtime.float16_run import write_float16_run
    from runtime.run_directory import RunDirectory

    source, target = RunDirectory(run_dir), RunDirectory(destination)
    if not source.best_checkpoint.is_file():
        return "no checkpoint (stopped before its first validation)"
    difference = write_float16_run(run_dir, destination, log=lambda message: None)
    metrics = source.logs / "metrics.csv"
    if metrics.is_file():
        shutil.copy(metrics, destination / "metrics.csv")
    size = target.float16_checkpoint.stat().st_size / 1e6
    return (f"{target.float16_checkpoint} ({size:.1f} MB; separation vs the float32 weights: "
            f"max abs diff {difference:.2e})")


def _steps_from_timing(args, scratch: Path, flags: list[str], deadline: float, runs: int) -> int:
    """Times two short epochs of ``flags``' run and returns the steps that fit before ``deadline``."""
    timing = subprocess.run(
        _train_command(scratch / "timing", args.data_root, [*flags, "--lr-schedule", "constant",
                                                             "--steps", str(2 * args.timing_steps),
                                                             "--validate-every", str(args.timing_steps)]),
        capture_output=True, text=True)
    step_seconds = seconds_per_step(timing.stdout + timing.stderr)
    seconds_left = deadline - time.monotonic() - args.reserve_seconds
    print(f"timed {step_seconds * 1e3:.1f} ms/step alone; {seconds_left:.0f} s left", flush=True)
    return steps_that_fit(seconds_left, step_seconds, runs, args.overlap)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="a folder dataset (see data_pipeline.to_folder)")
    parser.add_argument("--out", required=True, help="where each run's float16 run directory goes")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget for everything")
    parser.add_argument("--run", action="append", required=True, metavar="NAME=FLAGS",
                        help="a run and its own train.py flags; repeat for runs side by side")
    parser.add_argument("--steps", type=int,
                        help="steps per run, when an earlier campaign measured them (skips the timing)")
    parser.add_argument("--timing-steps", type=int, default=40, help="steps per timed epoch (two are run)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="share of a concurrent run's work assumed free on the accelerator (default 0.5)")
    parser.add_argument("--reserve-seconds", type=float, default=75,
                        help="kept for compiling the runs and saving their weights (default 75)")
    args, common = parser.parse_known_args(argv)
    common = [flag for flag in common if flag != "--"]
    deadline = time.monotonic() + 60 * args.minutes
    runs = {}
    for spec in args.run:
        name, _, flags = spec.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            parser.error(f"run name {name!r}: letters, digits, '-' and '_' only")
        runs[name] = shlex.split(flags) + common
    scratch = Path(tempfile.mkdtemp(prefix="gpu-campaign-"))

    if args.steps:
        steps = args.steps
    else:
        steps = _steps_from_timing(args, scratch, next(iter(runs.values())), deadline, len(runs))
    validate_every = max(1, steps // 8)
    print(f"{steps} steps per run, validating every {validate_every}", flush=True)
    if steps < 8:
        print("too little time left for a run", file=sys.stderr)
        return 1

    environment = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / len(runs):.2f}")
    processes = {}
    for name, flags in runs.items():
        with open(scratch / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
            processes[name] = subprocess.Popen(
                _train_command(scratch / name, args.data_root,
                               [*flags, "--steps", str(steps), "--validate-every", str(validate_every)]),
                stdout=log, stderr=subprocess.STDOUT, env=environment)
    save_seconds = 20 * len(runs)
    for name, process in processes.items():
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic() - save_seconds))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            print(f"{name}: stopped at the deadline; its best checkpoint so far is kept", flush=True)
    for name in runs:
        log = (scratch / f"{name}.log").read_text(errors="replace")
        epochs = [line for line in log.splitlines() if "/step" in line]
        print(f"--- {name} ({len(epochs)} validations)", *epochs[-3:], sep="\n")
        try:
            saved = _save_float16(scratch / name, Path(args.out) / name)
        except (OSError, ValueError) as error:  # e.g. a checkpoint cut short by the deadline
            saved = f"not saved: {error}"
        print(f"{name}: {saved}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
