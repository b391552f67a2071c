"""Average the weights of a run's kept checkpoints into a new run directory (stochastic
weight averaging over the end of a run):

    python -m training.average runs/RUN --last 5 --out runs/RUN-swa5
    python -m training.average runs/RUN --steps 300 350 400 --out runs/RUN-swa3
    python -m training.average --checkpoints runs/A runs/B/checkpoints/last.keras --out runs/AB-soup

The checkpoints are the ``checkpoints/step-NNNNNNN.weights.h5`` that ``train.py
--keep-checkpoints K`` keeps at each validation (``RunDirectory.snapshots``); ``--last 1``
turns one of them into a run directory of its own. The output is a run directory like
any other (``config.json`` from the run, with the averaged steps recorded under
``training.weight_average``, and ``checkpoints/best.keras``), so ``separate.py``,
``evaluate.py`` and ``export.py`` take it as ``--model``. Every weight is averaged
(the models here have no batch statistics to recompute).

``--checkpoints`` averages any checkpoints of one model shape instead: a run directory
stands for its best checkpoint (``RunDirectory.checkpoint``: best.keras, else last.keras,
else best.float16.npz), a file in a run's ``checkpoints/`` for itself; the config is the
first one's. Averaging two fine-tunes of one starting point (a "model soup") or a run's
best and last checkpoints costs nothing at separation time, unlike an output ensemble.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from models.registry import ARCHITECTURES, build_in_precision  # noqa: E402
from runtime.run_directory import RunDirectory  # noqa: E402


def choose_snapshots(run_dir, last: int | None = None, steps=None) -> dict[int, Path]:
    """The run's kept checkpoints to average, by step: the newest ``last``, or those at ``steps``."""
    kept = RunDirectory(run_dir).snapshots()
    if not kept:
        raise FileNotFoundError(f"{run_dir}: no kept checkpoints (checkpoints/step-*.weights.h5); train with "
                                f"train.py --keep-checkpoints K")
    if steps:
        missing = sorted(set(steps) - set(kept))
        if missing:
            raise ValueError(f"{run_dir} keeps no checkpoint at step {', '.join(map(str, missing))}; it keeps "
                             f"{', '.join(map(str, kept))}")
        return {step: kept[step] for step in sorted(set(steps))}
    if last is None or last < 1:
        raise ValueError("name the checkpoints: --last K (K >= 1) or --steps")
    if last > len(kept):
        raise ValueError(f"{run_dir} keeps {len(kept)} checkpoints ({', '.join(map(str, kept))}), not {last}")
    return dict(list(kept.items())[-last:])


def _load_checkpoint(model, path: Path) -> None:
    if path.suffix == ".npz":  # a shipped model's float16 copy: its run directory's loader reads it
        RunDirectory(path.parent.parent).load_weights(model)
    else:
        model.load_weights(str(path))


def average_weights(model, checkpoints) -> None:
    """Leaves ``model`` holding the mean, weight by weight (summed in float64), of the
    checkpoints loaded into it in turn."""
    total = None
    for path in checkpoints:
        _load_checkpoint(model, Path(path))
        weights = [np.asarray(w, dtype=np.float64) for w in model.get_weights()]
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    model.set_weights([(t / len(checkpoints)).astype(w.dtype) for t, w in zip(total, model.get_weights())])


def _checkpoint_of(item) -> tuple[RunDirectory, Path]:
    """A ``--checkpoints`` item: a run directory (its best checkpoint) or a file in a run's checkpoints/."""
    item = Path(item)
    if item.is_dir():
        return RunDirectory(item), RunDirectory(item).checkpoint()
    if not item.is_file():
        raise FileNotFoundError(f"{item}: neither a run directory nor a checkpoint file")
    return RunDirectory(item.parent.parent), item


def _check_out(out: RunDirectory, sources) -> None:
    if any(out.path.resolve() == source.path.resolve() for source in sources):
        raise ValueError(f"--out {out.path} is a run averaged from; name a new run directory")
    if out.checkpoints.exists() and any(out.checkpoints.iterdir()):
        raise FileExistsError(f"{out.path} already holds checkpoints")


def _write_average(run, checkpoints: list[Path], out: RunDirectory, recorded: dict) -> Path:
    architecture = ARCHITECTURES[run.arch]
    model = build_in_precision(architecture.build, architecture.config_from_dict(run.model), "float32")
    average_weights(model, checkpoints)
    out.write_config(dataclasses.replace(run, training={**(run.training or {}), "weight_average": recorded}))
    out.checkpoints.mkdir(parents=True, exist_ok=True)
    model.save(out.best_checkpoint)
    return out.best_checkpoint


def average_run(run_dir, out_dir, last: int | None = None, steps=None) -> Path:
    """Writes ``out_dir``: the run's config and the average of its chosen kept checkpoints as
    ``checkpoints/best.keras``; returns that checkpoint's path."""
    source, out = RunDirectory(run_dir), RunDirectory(out_dir)
    _check_out(out, [source])
    chosen = choose_snapshots(run_dir, last, steps)
    return _write_average(source.read_config(), list(chosen.values()), out,
                          {"run": str(run_dir), "steps": list(chosen)})


def average_checkpoints(items, out_dir) -> Path:
    """Writes ``out_dir``: the first item's run config and the average of the items' checkpoints
    (run directories: their best; files: themselves), which must be of one model shape."""
    found = [_checkpoint_of(item) for item in items]
    out = RunDirectory(out_dir)
    _check_out(out, [directory for directory, _ in found])
    run = found[0][0].read_config()
    for directory, _ in found[1:]:
        other = directory.read_config()
        if (other.arch, other.model) != (run.arch, run.model):
            raise ValueError(f"{directory.path}'s model is not {found[0][0].path}'s: they do not average")
    return _write_average(run, [path for _, path in found], out, {"checkpoints": [str(path) for _, path in found]})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="a run directory trained with --keep-checkpoints")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="K", help="average the run's newest K kept checkpoints")
    which.add_argument("--steps", type=int, nargs="+", metavar="STEP", help="average the run's kept checkpoints "
                                                                             "at these steps")
    which.add_argument("--checkpoints", nargs="+", metavar="PATH", help="instead of RUN: average these run "
                       "directories' best checkpoints and checkpoint files (one model shape)")
    parser.add_argument("--out", required=True, help="the new run directory")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.checkpoints is None):
        parser.error("name RUN with --last or --steps, or --checkpoints without RUN")
    try:
        if args.checkpoints:
            checkpoint = average_checkpoints(args.checkpoints, args.out)
        else:
            checkpoint = average_run(args.run, args.out, args.last, args.steps)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    recorded = RunDirectory(args.out).read_config().training["weight_average"]
    what = (f"of {args.run} (steps {', '.join(map(str, recorded['steps']))})" if "steps" in recorded
            else f"({', '.join(recorded['checkpoints'])})")
    print(f"Averaged {len(recorded.get('steps') or recorded['checkpoints'])} checkpoints {what} into {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
