"""Several training runs side by side inside a fixed wall-clock budget, for a GPU
lent for minutes (KERAS_BACKEND=jax; TensorFlow is not needed):

    KERAS_BACKEND=jax python -m training.gpu_campaign --data-root data/musdb-22k --out results \\
        --minutes 8 --run w24="--model-set num_initial_filters=24" --run w16=""

or the chosen recipe on a pack of ``training.gpu_pack`` (MUSDB18 + MIR-1K, remixed across
the two, pitch-shifted, the last kept checkpoints averaged) at two widths and two seeds:

    KERAS_BACKEND=jax python -m training.gpu_campaign --pack gpu-pack --recipe --widths 24,16 \\
        --seeds 0,1 --average 4 --out results --minutes 9

It first times a few steps of the first run, then gives every run the number of
steps that fits the time left (the half-cosine schedule needs its length up front),
runs them at once on the same accelerator, stops any still going at the deadline,
and writes each run's config, best weights in float16 (runtime.float16_run, as
``export.py --float16-run`` writes them: checked to separate within 1e-3 of the
float32 weights; every tool loads them) and metrics under ``--out/NAME``; with
``--average K`` also the average of each run's last K validations' weights
(``training.average``) under ``--out/NAME-avg``.
Flags common to every run go after ``--``; ``--dry-run`` prints the commands.
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
BASE_FLAGS = ["--arch", "waveunet", "--batch-size", "16", "--patience", "1000"]
# The recipe chosen for a pack (issue 28): MUSDB18 and MIR-1K half and half, half the examples'
# accompaniment from the other dataset, a 0.25-0.5 s segment pitch-shifted by up to half a
# semitone, and a learning rate that trained 16000 steps on a GPU without diverging (1e-3 did not).
RECIPE = ["--mix-weights", "0.5,0.5", "--cross-dataset-probability", "0.5", "--pitch-shift", "0.5",
          "--learning-rate", "3e-4"]
PACK_PARTS = ("musdb-22k", "mir-1k")  # training.gpu_pack's folders, read as --dataset folder and mir-1k


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


def data_flags(data_root: str | None = None, pack: str | None = None) -> list[str]:
    """train.py's dataset flags: one folder dataset, or a pack's MUSDB18 part (which holds the
    validation songs that pick each checkpoint) with its MIR-1K part when the pack has one."""
    if data_root:
        return ["--dataset", "folder", "--data-root", data_root]
    musdb, mir1k = (Path(pack) / part for part in PACK_PARTS)
    if not musdb.is_dir():
        raise FileNotFoundError(f"{pack}: no {PACK_PARTS[0]}/ (write the pack with python -m training.gpu_pack)")
    if not mir1k.is_dir():
        return ["--dataset", "folder", "--data-root", str(musdb)]
    return ["--dataset", "folder+mir-1k", "--data-root", str(musdb), "--data-root", str(mir1k),
            "--select-on", "folder"]


def grid_runs(widths: list[int], seeds: list[int]) -> dict[str, list[str]]:
    """One run per width and seed: ``w24-s0`` is ``--model-set num_initial_filters=24 --seed 0``."""
    return {f"w{width}-s{seed}": ["--model-set", f"num_initial_filters={width}", "--seed", str(seed)]
            for width in widths for seed in seeds}


def save_seconds(runs: int, average: int) -> float:
    """Kept after the runs for writing their float16 weights (and averaging their checkpoints)."""
    return (40.0 if average else 20.0) * runs


def _train_command(run_dir: Path, data: list[str], flags: list[str]) -> list[str]:
    return [sys.executable, "train.py", *BASE_FLAGS, *data, "--run-dir", str(run_dir), *flags]


def _average(run_dir: Path, destination: Path, last: int) -> str:
    """The average of the run's newest ``last`` kept checkpoints, written in float16 to ``destination``."""
    from runtime.run_directory import RunDirectory
    from training.average import average_run

    kept = RunDirectory(run_dir).snapshots()
    if not kept:
        return "no kept checkpoints"
    averaged = run_dir.parent / f"{run_dir.name}-avg"
    average_run(run_dir, averaged, last=min(last, len(kept)))
    steps = RunDirectory(averaged).read_config().training["weight_average"]["steps"]
    return f"steps {', '.join(map(str, steps))}: " + _save_float16(averaged, destination)


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
        _train_command(scratch / "timing", args.data, [*flags, "--lr-schedule", "constant",
                                                             "--steps", str(2 * args.timing_steps),
                                                             "--validate-every", str(args.timing_steps)]),
        capture_output=True, text=True)
    step_seconds = seconds_per_step(timing.stdout + timing.stderr)
    seconds_left = deadline - time.monotonic() - args.reserve_seconds - save_seconds(runs, args.average)
    print(f"timed {step_seconds * 1e3:.1f} ms/step alone; {seconds_left:.0f} s left", flush=True)
    return steps_that_fit(seconds_left, step_seconds, runs, args.overlap)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: distinct non-negative integers")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-root", help="a folder dataset (see data_pipeline.to_folder)")
    data.add_argument("--pack", help="a pack of python -m training.gpu_pack (MUSDB18 [+ MIR-1K])")
    parser.add_argument("--out", required=True, help="where each run's float16 run directory goes")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget for everything")
    parser.add_argument("--run", action="append", metavar="NAME=FLAGS",
                        help="a run and its own train.py flags; repeat for runs side by side")
    parser.add_argument("--widths", type=_int_list, metavar="N,N",
                        help="instead of --run: one run per width (num_initial_filters) and seed")
    parser.add_argument("--seeds", type=_int_list, default=[0], metavar="N,N",
                        help="with --widths: the seeds (default 0)")
    parser.add_argument("--recipe", action="store_true",
                        help="every run trains the chosen recipe: " + " ".join(RECIPE))
    parser.add_argument("--average", type=int, default=0, metavar="K",
                        help="keep each run's last K validations' weights and save their average too, as "
                             "NAME-avg (training.average; default 0: off)")
    parser.add_argument("--dry-run", action="store_true", help="print the train.py commands and stop")
    parser.add_argument("--steps", type=int,
                        help="steps per run, when an earlier campaign measured them (skips the timing)")
    parser.add_argument("--timing-steps", type=int, default=40, help="steps per timed epoch (two are run)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="share of a concurrent run's work assumed free on the accelerator (default 0.5)")
    parser.add_argument("--reserve-seconds", type=float, default=60,
                        help="kept for starting and compiling the runs, beside 20 s a run for saving its "
                             "weights (40 with --average) (default 60)")
    args, common = parser.parse_known_args(argv)
    deadline = time.monotonic() + 60 * args.minutes
    before = common[:common.index("--")] if "--" in common else common
    if before:
        parser.error(f"unrecognized arguments: {' '.join(before)} (train.py's own flags go after --)")
    common = [flag for flag in common if flag != "--"]
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.average < 0:
        parser.error("--average must not be negative")
    if bool(args.run) == bool(args.widths):
        parser.error("name the runs: --run NAME=FLAGS (repeatable) or --widths N,N [--seeds N,N]")
    extra = [*(RECIPE if args.recipe else []), *(["--keep-checkpoints", str(args.average)] if args.average else [])]
    runs = {}
    if args.widths:
        runs = {name: flags + extra + common for name, flags in grid_runs(args.widths, args.seeds).items()}
    for spec in args.run or ():
        name, _, flags = spec.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name.endswith("-avg"):
            parser.error(f"run name {name!r}: letters, digits, '-' and '_' only, not ending in -avg")
        if name in runs:
            parser.error(f"run name {name!r} given twice")
        runs[name] = shlex.split(flags) + extra + common
    try:
        args.data = data_flags(args.data_root, args.pack)
    except FileNotFoundError as error:
        parser.error(str(error))
    scratch = Path(tempfile.mkdtemp(prefix="gpu-campaign-"))
    if args.dry_run:
        for name, flags in runs.items():
            print(f"{name}: {shlex.join(_train_command(scratch / name, args.data, flags))}")
        shutil.rmtree(scratch)
        return 0

    if args.steps:
        steps = args.steps
    else:
        steps = _steps_from_timing(args, scratch, next(iter(runs.values())), deadline, len(runs))
    validate_every = max(1, steps // 8)
    print(f"{steps} steps per run, validating every {validate_every}", flush=True)
    if steps < (1 if args.steps else 8):
        print("too little time left for a run", file=sys.stderr)
        return 1

    environment = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / len(runs):.2f}")
    processes = {}
    for name, flags in runs.items():
        with open(scratch / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
            processes[name] = subprocess.Popen(
                _train_command(scratch / name, args.data,
                               [*flags, "--steps", str(steps), "--validate-every", str(validate_every)]),
                stdout=log, stderr=subprocess.STDOUT, env=environment)
    saving = save_seconds(len(runs), args.average)
    for name, process in processes.items():
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic() - saving))
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
        if args.average:
            try:
                averaged = _average(scratch / name, Path(args.out) / f"{name}-avg", args.average)
            except (OSError, ValueError, ImportError) as error:
                averaged = f"not averaged: {error}"
            print(f"{name}-avg: {averaged}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
