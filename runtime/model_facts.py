"""An export's facts: which architecture and config it holds, its sample rate and channels,
the chunk plan of its graph, and where it came from. One record with one writer (the
export, runtime/export.py) and one reader (``ModelFacts.read``, ``ModelFacts.from_json``)
for loading, the server and bench. An exported SavedModel keeps them in
``assets/model.json``; an exported model.onnx as the JSON of its ``wavesep`` metadata.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The facts' file in a SavedModel version folder's assets.
MODEL_FACTS_FILE = "model.json"


@dataclass(frozen=True)
class ModelFacts:
    project: str  # "wavesep"
    project_version: str
    arch: str
    config_name: str | None
    model: dict  # the architecture's config, its to_dict()
    sample_rate: int
    channels: int
    sources: tuple[str, ...]
    training_data: dict | None  # the run's config.json "data" and "training" sections
    training: dict | None
    checkpoint: str  # the weights exported, relative to the run directory where inside it
    chunk_plan: dict  # models.framing.ChunkPlan of the graph's windows, as a dict
    precision: str  # float32, or the TF-TRT precision (fp32, fp16)
    post_filter: dict | None = None  # the graph's Wiener post-filter (runtime.wiener.WienerSettings.to_dict), if any

    @staticmethod
    def path(version_dir) -> Path:
        """Where a SavedModel version folder keeps its facts."""
        return Path(version_dir) / "assets" / MODEL_FACTS_FILE

    @classmethod
    def read(cls, version_dir) -> "ModelFacts":
        """The facts of a SavedModel version folder."""
        path = cls.path(version_dir)
        if not path.is_file():
            raise FileNotFoundError(f"{version_dir}: no {path.relative_to(version_dir)} (not exported by export.py?)")
        return cls.from_json(path.read_text(), source=str(path))

    @classmethod
    def from_json(cls, text: str, source: str = "the model's facts") -> "ModelFacts":
        return cls.from_dict(json.loads(text), source)

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "the model's facts") -> "ModelFacts":
        if "arch" not in raw or "model" not in raw:
            raise ValueError(f"{source}: no 'arch' or 'model'")
        model = raw["model"]
        return cls(project=raw.get("project", "wavesep"), project_version=raw.get("project_version", ""),
                   arch=raw["arch"], config_name=raw.get("config_name"), model=model,
                   sample_rate=raw.get("sample_rate", model.get("sample_rate")),
                   channels=raw.get("channels", model.get("channels")),
                   sources=tuple(raw.get("sources", ())), training_data=raw.get("training_data"),
                   training=raw.get("training"), checkpoint=raw.get("checkpoint", ""),
                   chunk_plan=raw.get("chunk_plan", {}), precision=raw.get("precision", "float32"),
                   post_filter=raw.get("post_filter"))

    def to_dict(self) -> dict:
        return {"project": self.project, "project_version": self.project_version, "arch": self.arch,
                "config_name": self.config_name, "model": self.model, "sample_rate": self.sample_rate,
                "channels": self.channels, "sources": list(self.sources), "training_data": self.training_data,
                "training": self.training, "checkpoint": self.checkpoint, "chunk_plan": self.chunk_plan,
                "precision": self.precision, "post_filter": self.post_filter}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def write(self, folder) -> Path:
        """Writes the facts file into ``folder``; returns its path. The export hands it to
        ``tf.saved_model.Asset``, which copies it into the version's assets."""
        path = Path(folder) / MODEL_FACTS_FILE
        path.write_text(self.to_json(indent=2))
        return path
