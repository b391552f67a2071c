"""The layout of a run directory, in one place; train, the runtime, bench and tests use it.

    config.json        the resolved configuration (the model can be rebuilt from it): a
                       ``RunConfig``, read by ``RunDirectory.read_config`` and written by
                       ``RunDirectory.write_config`` only
    checkpoints/       best.keras (lowest validation loss) and last.keras; a shipped
                       model may hold only best.float16.npz (its weights stored in
                       float16, loaded as float32: half the size; written by
                       runtime.float16_run, with the separation difference it was
                       checked to); with train.py --keep-checkpoints K also the
                       weights at each of the last K validations, step-NNNNNNN.weights.h5
                       (the raw weights training goes on from, also under --ema), which
                       ``python -m training.average`` averages into a new run directory
    backup/            the resumable training state (training.checkpointing)
    logs/              TensorBoard event files, or CSV where TensorFlow is absent

Needs only Keras, so a run trained on any backend loads with every tool.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# config.json's keys, in the order they are written.
CONFIG_KEYS = ("arch", "config_name", "model", "data", "training", "post_filter")
# best.float16.npz's entry beside the weights: the max abs difference of the separation
# with them from the float32 weights' (absent from files written before it was recorded).
FLOAT16_CHECK_KEY = "check:max_abs_difference"
# checkpoints/step-0000400.weights.h5: the weights kept at a validation (--keep-checkpoints).
SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX = "step-", ".weights.h5"


@dataclass(frozen=True)
class RunConfig:
    """A run's config.json: the architecture's name, the named config (``config_name``, e.g.
    ``small``), the architecture's config (``model``, its ``to_dict()``, from which the model
    is rebuilt), the training data (``data``: dataset, data_root, mix_weights, select_on,
    cache_dir, synthetic_songs) and the training settings (``training``: steps, batch_size,
    learning_rate, ..., init_from) and the post-filter its separations take by default
    (``post_filter``: a ``runtime.wiener`` variant name such as ``mask``; absent: none). A run made by hand (a test's, a benchmark's) may lack
    ``config_name``, ``data`` and ``training``; they are then None and left out of the file.

    ``run["training"]`` reads a section by its name in the file, as code written against
    the plain dict does."""

    arch: str
    model: dict
    config_name: str | None = None
    data: dict | None = None
    training: dict | None = None
    post_filter: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "config.json") -> "RunConfig":
        """From config.json's layout (keys other than ``CONFIG_KEYS`` are ignored)."""
        missing = [key for key in ("arch", "model") if key not in raw]
        if missing:
            raise ValueError(f"{source}: no {' or '.join(repr(key) for key in missing)}")
        return cls(arch=raw["arch"], model=raw["model"], config_name=raw.get("config_name"), data=raw.get("data"),
                   training=raw.get("training"), post_filter=raw.get("post_filter"))

    @classmethod
    def of(cls, run: "RunConfig | Mapping") -> "RunConfig":
        """``run`` itself, or a dict in config.json's layout as a RunConfig."""
        return run if isinstance(run, cls) else cls.from_dict(run)

    def to_dict(self) -> dict:
        """config.json's layout, without the sections that are None."""
        return {key: getattr(self, key) for key in CONFIG_KEYS if getattr(self, key) is not None}

    def __getitem__(self, key: str):
        if key not in CONFIG_KEYS:
            raise KeyError(key)
        return getattr(self, key)


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

    def snapshot(self, step: int) -> Path:
        """The weights kept at optimizer step ``step`` (train.py --keep-checkpoints)."""
        return self.checkpoints / f"{SNAPSHOT_PREFIX}{step:07d}{SNAPSHOT_SUFFIX}"

    def snapshots(self) -> dict[int, Path]:
        """The kept weight snapshots by optimizer step, oldest first (empty without any)."""
        found = {}
        for path in self.checkpoints.glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}"):
            step = path.name[len(SNAPSHOT_PREFIX):-len(SNAPSHOT_SUFFIX)]
            if step.isdigit():
                found[int(step)] = path
        return dict(sorted(found.items()))

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def read_config(self) -> RunConfig:
        """config.json's reader: every tool reads a run's configuration through it."""
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.json)")
        return RunConfig.from_dict(json.loads(self.config_file.read_text()), source=str(self.config_file))

    def write_config(self, run: RunConfig | Mapping) -> None:
        """config.json's writer; ``run`` may also be a dict in its layout (a run made by hand)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(RunConfig.of(run).to_dict(), indent=2))

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


def float16_weight_names(model) -> list[str]:
    """The keys of ``model``'s weights in best.float16.npz, in the model's order."""
    return [f"{index:04d}:{weight.path}" for index, weight in enumerate(model.weights)]


def _load_float16_weights(model, path: Path) -> None:
    with np.load(path) as stored:
        names = sorted(name for name in stored.files if name != FLOAT16_CHECK_KEY)
        expected = float16_weight_names(model)
        if names != expected:
            raise ValueError(f"it holds {len(names)} weights {names[:2]}..., the model has {len(expected)} "
                             f"{expected[:2]}...")
        arrays = [stored[name].astype(np.float32) for name in names]
    for weight, array in zip(model.weights, arrays):
        if tuple(weight.shape) != array.shape:
            raise ValueError(f"{weight.path} has shape {tuple(weight.shape)}, the file {array.shape}")
    model.set_weights(arrays)
