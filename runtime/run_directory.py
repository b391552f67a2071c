"""The layout of a run directory, in one place; train, the runtime, bench and tests use it.

    config.json        the resolved configuration (the model can be rebuilt from it)
    checkpoints/       best.keras (lowest validation loss) and last.keras; a shipped
                       model may hold only best.float16.npz (its weights stored in
                       float16, loaded as float32: half the size)
    backup/            the resumable training state (training.checkpointing)
    logs/              TensorBoard event files, or CSV where TensorFlow is absent

Needs only Keras, so a run trained on any backend loads with every tool.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RunDirectory:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.keras"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.keras"

    @property
    def float16_checkpoint(self) -> Path:
        return self.checkpoints / "best.float16.npz"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def read_config(self) -> dict:
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.json)")
        return json.loads(self.config_file.read_text())

    def write_config(self, run: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(run, indent=2))

    def checkpoint(self) -> Path:
        """The best checkpoint, else the last one, else the float16 copy of the best."""
        candidates = (self.best_checkpoint, self.last_checkpoint, self.float16_checkpoint)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{self.path}: no checkpoints/best.keras, last.keras or best.float16.npz yet")
        return found

    def load_weights(self, model) -> Path:
        """Loads the best (else last, else float16) checkpoint into ``model``; returns its path."""
        checkpoint = self.checkpoint()
        try:
            if checkpoint == self.float16_checkpoint:
                _load_float16_weights(model, checkpoint)
            else:
                model.load_weights(checkpoint)
        except ValueError as error:
            raise ValueError(f"{checkpoint} does not match the model described by {self.config_file}: "
                             f"{error}") from None
        return checkpoint

    def save_float16_weights(self, model) -> Path:
        """Stores ``model``'s weights in float16 (``best.float16.npz``), keyed by their paths."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        weights = {f"{index:04d}:{weight.path}": np.asarray(weight.numpy(), np.float16)
                   for index, weight in enumerate(model.weights)}
        np.savez(self.float16_checkpoint, **weights)
        return self.float16_checkpoint


def _load_float16_weights(model, path: Path) -> None:
    with np.load(path) as stored:
        names = sorted(stored.files)
        expected = [f"{index:04d}:{weight.path}" for index, weight in enumerate(model.weights)]
        if names != expected:
            raise ValueError(f"it holds {len(names)} weights {names[:2]}..., the model has {len(expected)} "
                             f"{expected[:2]}...")
        arrays = [stored[name].astype(np.float32) for name in names]
    for weight, array in zip(model.weights, arrays):
        if tuple(weight.shape) != array.shape:
            raise ValueError(f"{weight.path} has shape {tuple(weight.shape)}, the file {array.shape}")
    model.set_weights(arrays)
