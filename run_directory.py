"""The layout of a run directory, in one place; train, inference, bench and tests use it.

    config.json        the resolved configuration (the model can be rebuilt from it)
    checkpoints/       best.keras (lowest validation loss) and last.keras
    backup/            the resumable training state (training.checkpointing)
    logs/              TensorBoard event files, or CSV where TensorFlow is absent

Needs only Keras, so a run trained on any backend loads with every tool.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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
        """The best checkpoint, else the last one."""
        found = next((c for c in (self.best_checkpoint, self.last_checkpoint) if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{self.path}: no checkpoints/best.keras or last.keras yet")
        return found

    def load_weights(self, model) -> Path:
        """Loads the best (else last) checkpoint into ``model``; returns its path."""
        checkpoint = self.checkpoint()
        try:
            model.load_weights(checkpoint)
        except ValueError as error:
            raise ValueError(f"{checkpoint} does not match the model described by {self.config_file}: "
                             f"{error}") from None
        return checkpoint
