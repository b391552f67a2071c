"""Running a trained separator on whole songs: the one framing implementation
that separate.py, evaluate.py, export and the server share.

Each architecture's ``chunk_plan`` cuts a song into chunks whose kept outputs
tile it while each chunk's input carries the context on both sides: the result
is the same as one pass over the whole song, with bounded memory and no seams.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from data_pipeline.audio import convert_channels, resample
from data_pipeline.pipeline import SOURCES
from models.framing import ChunkPlan
from training.architectures import ARCHITECTURES


@dataclass
class Separator:
    """A loaded model plus what is needed to feed it."""

    model: keras.Model
    config: object  # the architecture's config dataclass
    arch: str
    source: str  # where it was loaded from, for messages

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    def passes(self, input_channels: int) -> int:
        """Model passes over a song: a mono model runs once per channel of a stereo song."""
        return 2 if self.channels == 1 and input_channels == 2 else 1

    def chunk_plan(self, chunk_output_length: int) -> ChunkPlan:
        return ARCHITECTURES[self.arch].chunk_plan(self.config, chunk_output_length)


def load_separator(path) -> Separator:
    """Loads a run directory (its best checkpoint, else the last one)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path}: not a run directory (no config.json)")
    run = json.loads(config_path.read_text())
    architecture = ARCHITECTURES[run["arch"]]
    config = architecture.config_from_dict(run["model"])
    checkpoints = [path / "checkpoints" / name for name in ("best.keras", "last.keras")]
    checkpoint = next((c for c in checkpoints if c.is_file()), None)
    if checkpoint is None:
        raise FileNotFoundError(f"{path}: no checkpoints/best.keras or last.keras yet")
    model = architecture.build(config)
    try:
        model.load_weights(checkpoint)
    except ValueError as error:
        raise ValueError(f"{checkpoint} does not match the model described by {config_path}: {error}") from None
    return Separator(model, config, run["arch"], str(checkpoint))


def separate_array(separator: Separator, mix: np.ndarray, chunk_output_length: int, progress=None) -> dict:
    """Separates ``mix`` (``[time, separator.channels]`` at the model's rate) chunk by chunk.

    Returns ``{"vocals", "accompaniment"}`` of the same shape. ``progress``, if
    given, is called with the number of samples each chunk completes."""
    plan = separator.chunk_plan(chunk_output_length)
    length = len(mix)
    chunks = -(-length // plan.stride)
    needed = (chunks - 1) * plan.stride + plan.input_length
    padded = np.pad(mix, [(plan.lead, needed - plan.lead - length), (0, 0)])
    outputs = {source: np.empty((chunks * plan.stride, mix.shape[1]), np.float32) for source in SOURCES}
    kept = slice(plan.keep_from, plan.keep_from + plan.stride)
    for index in range(chunks):
        start = index * plan.stride
        estimates = separator.model(padded[start:start + plan.input_length][None], training=False)
        for source in SOURCES:
            outputs[source][start:start + plan.stride] = keras.ops.convert_to_numpy(estimates[source])[0, kept]
        if progress is not None:
            progress(min(plan.stride, length - start))
    return {source: audio[:length] for source, audio in outputs.items()}


def separate_song(separator: Separator, audio: np.ndarray, sample_rate: int, chunk_seconds: float = 30.0,
                  progress=None) -> dict:
    """Separates a song at its own rate and channel count (mono or stereo) and
    returns sources of exactly the input's shape, at the input's rate.

    A mono model separates each channel of a stereo song on its own, keeping the
    stereo image; a stereo model gets a mono song on both channels and returns
    the average of the two outputs. What a lower-rate model cannot hear (the band
    above its Nyquist frequency) is not thrown away: it goes to the accompaniment,
    so the output keeps the input's full bandwidth."""
    model_input = resample(audio, sample_rate, separator.sample_rate)
    chunk = max(1, int(chunk_seconds * separator.sample_rate))
    if separator.passes(audio.shape[1]) == 2:
        per_channel = [separate_array(separator, model_input[:, [c]], chunk, progress) for c in range(2)]
        estimates = {s: np.concatenate([p[s] for p in per_channel], axis=1) for s in SOURCES}
    else:
        estimates = separate_array(separator, convert_channels(model_input, separator.channels), chunk, progress)
        estimates = {s: convert_channels(e, audio.shape[1]) for s, e in estimates.items()}
    estimates = {s: _back_to_input_rate(e, separator.sample_rate, sample_rate, len(audio)) for s, e in estimates.items()}
    if sample_rate > separator.sample_rate:
        heard = _back_to_input_rate(model_input, separator.sample_rate, sample_rate, len(audio))
        estimates["accompaniment"] = estimates["accompaniment"] + (audio - heard)
    return estimates


def _back_to_input_rate(signal: np.ndarray, model_rate: int, sample_rate: int, length: int) -> np.ndarray:
    signal = resample(signal, model_rate, sample_rate)[:length]
    return np.pad(signal, [(0, length - len(signal)), (0, 0)])
