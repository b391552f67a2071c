"""Resuming a run exactly where it stopped, whatever killed it.

Keras' BackupAndRestore restores the weights, the optimizer and the epoch. A run
also has state in its callbacks: the best validation loss that ``best.keras`` must
beat, and early stopping's patience count. ``ResumableBackup`` keeps those in the
same backup, keeps the previous backup beside the newest (``double_checkpoint``)
and falls back to it when the newest cannot be read, and lets a worker that must
not write into the run directory restore from it all the same.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import keras

WEIGHTS_FILE = "latest.weights.h5"
METADATA_FILE = "training_metadata.json"
PREVIOUS_SUFFIX = ".bkp"  # Keras' name for the previous backup


def _read_metadata(path: Path) -> dict:
    return json.loads(path.read_text())


def backup_progress(backup_dir) -> dict:
    """``{"epoch", "step"}`` a resumed run will start from (zeros with no backup);
    the previous backup's when the newest metadata is unreadable."""
    backup_dir = Path(backup_dir)
    for path in (backup_dir / METADATA_FILE, backup_dir / (METADATA_FILE + PREVIOUS_SUFFIX)):
        try:
            metadata = _read_metadata(path)
            return {"epoch": metadata["epoch"], "step": metadata.get("step", 0)}
        except (OSError, ValueError, KeyError):
            continue
    return {"epoch": 0, "step": 0}


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore with two generations, tolerant of a half-written newest
    one, that also carries the state of ``ModelCheckpoint(save_best_only)`` and
    ``EarlyStopping`` across a restart.

    ``restore_dir`` is where the state is read from (default: ``backup_dir``): the
    non-chief workers of a multi-worker run write their backups elsewhere but
    restore the chief's."""

    def __init__(self, backup_dir, best_checkpoint: keras.callbacks.ModelCheckpoint,
                 early_stopping: keras.callbacks.EarlyStopping, restore_dir=None):
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        self.best_checkpoint, self.early_stopping = best_checkpoint, early_stopping
        self.restore_dir = Path(restore_dir or backup_dir)
        self._restored_callback_state = None

    def on_train_begin(self, logs=None):
        newest = self.restore_dir / WEIGHTS_FILE, self.restore_dir / METADATA_FILE
        previous = [path.with_name(path.name + PREVIOUS_SUFFIX) for path in newest]
        try:
            self._restore_from(*newest)
        except (OSError, ValueError, KeyError) as error:  # a kill while the newest backup was being written
            if not previous[0].exists():
                raise
            print(f"The newest backup in {self.restore_dir} is unreadable ({error}); "
                  f"resuming from the previous one")
            with tempfile.TemporaryDirectory() as scratch:  # Keras loads weights only from a *.weights.h5 name
                weights = Path(scratch) / WEIGHTS_FILE
                shutil.copyfile(previous[0], weights)
                self._restore_from(weights, previous[1])

    def _restore_from(self, weights: Path, metadata_path: Path):
        if not weights.exists():
            return
        metadata = _read_metadata(metadata_path) if metadata_path.exists() else {"epoch": 0}
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(weights))
        self.model._initial_epoch = metadata["epoch"]
        self._current_epoch = metadata["epoch"]
        self._restored_callback_state = metadata.get("callbacks")

    def on_epoch_begin(self, epoch, logs=None):
        # EarlyStopping resets itself in on_train_begin, after this callback's, so
        # its state goes back in here, before the first resumed epoch.
        state, self._restored_callback_state = self._restored_callback_state, None
        if state:
            self.best_checkpoint.best = state["best"]
            self.early_stopping.best = state["early_stopping_best"]
            self.early_stopping.wait = state["early_stopping_wait"]
            self.early_stopping.best_epoch = state["early_stopping_best_epoch"]

    def _save_model(self):
        super()._save_model()
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "step": optimizer_step(self.model),
            "callbacks": {
                "best": _plain(self.best_checkpoint.best),
                "early_stopping_best": _plain(self.early_stopping.best),
                "early_stopping_wait": self.early_stopping.wait,
                "early_stopping_best_epoch": self.early_stopping.best_epoch,
            },
        }
        metadata_path = Path(self._training_metadata_path)
        staging = metadata_path.with_name(metadata_path.name + ".partial")
        staging.write_text(json.dumps(metadata))
        os.replace(staging, metadata_path)


def optimizer_step(model) -> int:
    """Optimizer steps taken so far, on any backend."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _plain(value):
    """A callback's best value as JSON: a float, or None before the first validation."""
    return None if value is None else float(value)


class KeepSnapshots(keras.callbacks.Callback):
    """At each validation, saves the model's weights as ``checkpoints/step-NNNNNNN.weights.h5``
    (``RunDirectory.snapshot``) and deletes all but the newest ``keep``: the checkpoints that
    ``python -m training.average`` averages (stochastic weight averaging). Placed before an
    EMA swap, it keeps the raw weights that training goes on from."""

    def __init__(self, run_directory, keep: int):
        super().__init__()
        self.run_directory, self.keep = run_directory, keep

    def on_epoch_end(self, epoch, logs=None):
        path = self.run_directory.snapshot(optimizer_step(self.model))
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name("partial-" + path.name)  # a kill mid-write leaves no snapshot-looking file
        self.model.save_weights(str(staging))
        os.replace(staging, path)
        snapshots = list(self.run_directory.snapshots().values())
        for old in snapshots[:-self.keep]:
            old.unlink()


class StopAtStep(keras.callbacks.Callback):
    """Ends training after exactly ``steps`` optimizer steps; the epoch cut short
    still validates and checkpoints."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_step(self.model) >= self.steps:
            self.model.stop_training = True

