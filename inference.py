"""Running a trained separator on whole songs: the one framing implementation
that separate.py, evaluate.py, export and the server share.

Each architecture's ``chunk_plan`` cuts a song into chunks whose kept outputs
tile it while each chunk's input carries the context on both sides: the result
is the same as one pass over the whole song, with bounded memory and no seams.
"""
from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import soxr
import tensorflow as tf

from data_pipeline.audio import convert_channels
from models.architecture import SOURCES
from models.framing import ChunkPlan
from models.registry import ARCHITECTURES, PRECISIONS, build_in_precision  # noqa: F401 (re-exported for the CLIs)
from run_directory import RunDirectory


@dataclass(frozen=True)
class Separator:
    """A separation model as the framing sees it, wherever it came from (a Keras run
    directory, an exported SavedModel or an ONNX file)."""

    forward: Callable[[np.ndarray], dict]  # float32 [batch, time, channels] -> {"vocals", "accompaniment"} arrays
    sample_rate: int
    channels: int
    chunk_plan: Callable[[int], ChunkPlan]  # chunk output length -> the plan for calls of about that length
    source: str  # where the model was loaded from, for messages
    description: str  # what the model is (e.g. its architecture), for messages

    def passes(self, input_channels: int) -> int:
        """Model passes over a song: a mono model runs once per channel of a stereo song."""
        return 2 if self.channels == 1 and input_channels == 2 else 1

    def separate_window(self, window: np.ndarray) -> dict:
        """One model call on ``[input_length, 1 or 2]`` -> sources ``[output_length, same channels]``.

        A mono model takes a stereo window as a batch of two mono ones; a stereo
        model takes a mono window on both channels and its outputs are averaged."""
        if self.passes(window.shape[1]) == 2:
            estimates = self.forward(window.T[:, :, None])
            return {s: e[:, :, 0].T for s, e in estimates.items()}
        estimates = self.forward(convert_channels(window, self.channels)[None])
        return {s: convert_channels(e[0], window.shape[1]) for s, e in estimates.items()}


# export.py writes the model's facts under this name in a SavedModel's assets.
MODEL_FACTS_FILE = "model.json"

# The model separate.py (and bench) use when none is named; see its model card.
PRETRAINED_MODEL = Path(__file__).resolve().parent / "pretrained" / "waveunet-small-mixed"

def keras_separator(model: keras.Model, arch: str, config, source: str) -> Separator:
    """Wraps a Keras model of a registered architecture: its forward pass, then its inference head."""
    architecture = ARCHITECTURES[arch]

    # A graph function frees intermediate tensors as it goes: about half the
    # peak memory of an eager call on long chunks.
    @tf.function(input_signature=[tf.TensorSpec([None, None, config.channels], tf.float32)])
    def graph_forward(mix):
        estimates = architecture.run_windows(model, config, mix)
        return {name: tf.cast(estimate, tf.float32) for name, estimate in estimates.items()}

    def forward(mix: np.ndarray) -> dict:
        return {s: keras.ops.convert_to_numpy(e) for s, e in graph_forward(mix).items()}

    return Separator(forward=forward, sample_rate=config.sample_rate, channels=config.channels,
                     chunk_plan=functools.partial(architecture.chunk_plan, config), source=source, description=arch)


def fast_bfloat16() -> bool:
    """Whether bfloat16 computes faster than float32 here: on a GPU, or a CPU with AMX.

    AVX512-BF16 alone is not enough: on such a 2-core Xeon the shipped model ran at
    0.5-1.4x its float32 speed in bfloat16 (README, Benchmarks)."""
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags


def is_exported(path) -> bool:
    """An exported model (a SavedModel version folder or a model.onnx), not a run directory."""
    path = Path(path)
    return path.suffix == ".onnx" or (path / "saved_model.pb").is_file()


def resolve_precision(precision: str, path) -> str:
    """``auto``: bfloat16 for a run directory where it is faster (``fast_bfloat16``;
    SDR within 0.05 dB of float32, README, Benchmarks), else float32 (exported models
    run in the precision they were exported in)."""
    if precision != "auto":
        return precision
    return "bfloat16" if fast_bfloat16() and not is_exported(path) else "float32"


@dataclass(frozen=True)
class LoadedRun:
    """The Keras model of a run directory, for what needs more than a Separator (e.g. its weights)."""

    model: keras.Model
    arch: str
    config: object  # the architecture's config dataclass
    checkpoint: Path


def load_run(path, precision: str = "float32") -> LoadedRun:
    """Builds a run directory's model and loads its best checkpoint, else the last one.

    ``precision="bfloat16"`` computes in bfloat16 with float32 weights (Keras'
    mixed_bfloat16 policy): faster on CPUs with AVX512-BF16/AMX and on GPUs, at
    bfloat16's ~3 significant digits."""
    run_directory = RunDirectory(path)
    run = run_directory.read_config()
    architecture = ARCHITECTURES[run["arch"]]
    config = architecture.config_from_dict(run["model"])
    model = build_in_precision(architecture.build, config, precision)
    checkpoint = run_directory.load_weights(model)
    return LoadedRun(model, run["arch"], config, checkpoint)


def _separator_from_facts(forward, facts: dict, source: str, runtime: str) -> Separator:
    """A Separator for an exported model, whose facts (written by export.py) name its
    architecture and config: the registry gives the chunk plan."""
    architecture = ARCHITECTURES[facts["arch"]]
    config = architecture.config_from_dict(facts["model"])
    return Separator(forward=forward, sample_rate=config.sample_rate, channels=config.channels,
                     chunk_plan=functools.partial(architecture.chunk_plan, config), source=source,
                     description=f"{facts['arch']} ({runtime})")


# The signature of an exported SavedModel that runs one model call on chunk-plan windows.
WINDOWS_SIGNATURE = "separate_windows"


def saved_model_separator(version_dir: Path, loaded=None, facts: dict | None = None) -> Separator:
    """An exported SavedModel version folder through its ``separate_windows`` signature:
    signatures are all that every export keeps (a TF-TRT conversion saves nothing else).

    ``loaded``/``facts``: the version already loaded by ``tf.saved_model.load`` and its
    facts, so that a server holds one copy of each version for every use."""
    version_dir = Path(version_dir)
    if facts is None:
        facts = json.loads((version_dir / "assets" / MODEL_FACTS_FILE).read_text())
    if loaded is None:
        loaded = tf.saved_model.load(str(version_dir))
    if WINDOWS_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{version_dir}: no {WINDOWS_SIGNATURE!r} signature (exported before it existed?); "
                         f"export the run again with export.py")

    def run(mix: np.ndarray) -> dict:  # through `loaded`, which owns the variables the signature reads
        return {s: e.numpy() for s, e in loaded.signatures[WINDOWS_SIGNATURE](windows=tf.constant(mix)).items()}

    return _separator_from_facts(run, facts, str(version_dir), "SavedModel")


def onnx_separator(path: Path) -> Separator:
    """An exported model.onnx run by ONNX Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    properties = session.get_modelmeta().custom_metadata_map
    if "wavesep" not in properties:
        raise ValueError(f"{path}: not an ONNX file written by export.py (no wavesep metadata)")
    input_name = session.get_inputs()[0].name
    output_names = [output.name for output in session.get_outputs()]

    def run(mix: np.ndarray) -> dict:
        return dict(zip(output_names, session.run(None, {input_name: mix})))

    return _separator_from_facts(run, json.loads(properties["wavesep"]), str(path), "ONNX Runtime")


def load_separator(path, precision: str = "float32") -> Separator:
    """The model at ``path`` as a Separator: a run directory (see ``load_run``), an
    exported SavedModel version folder, or an exported model.onnx."""
    path = Path(path)
    exported = is_exported(path)
    if exported and precision != "float32":
        raise ValueError(f"{path}: an exported model runs in the precision it was exported in; "
                         f"--precision {precision} applies to run directories")
    if path.suffix == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        return onnx_separator(path)
    if exported:
        return saved_model_separator(path)
    run = load_run(path, precision)
    return keras_separator(run.model, run.arch, run.config, str(run.checkpoint))


class _Fifo:
    """Samples waiting to be matched with samples that another path produces later."""

    def __init__(self, channels: int):
        self.data = np.zeros((0, channels), np.float32)

    def push(self, samples: np.ndarray) -> None:
        self.data = np.concatenate([self.data, samples])

    def pop(self, count: int) -> np.ndarray:
        taken, self.data = self.data[:count], self.data[count:]
        return taken


class _ChunkRunner:
    """Model-rate samples in, separated model-rate samples out, one chunk plan at a time.

    Holds only the current chunk's input: the context before the song is silence,
    and at the end the last chunk is completed with silence."""

    def __init__(self, separator: Separator, plan: ChunkPlan, channels: int, progress=None):
        self.separator, self.plan, self.progress = separator, plan, progress
        self.buffer = np.zeros((plan.lead, channels), np.float32)
        self.received = self.emitted = 0

    def _run_chunk(self) -> dict:
        window = self.buffer[:self.plan.input_length]
        kept = slice(self.plan.keep_from, self.plan.keep_from + self.plan.stride)
        estimates = self.separator.separate_window(window)
        self.buffer = self.buffer[self.plan.stride:]
        done = min(self.plan.stride, self.received - self.emitted)
        self.emitted += done
        if self.progress is not None:
            self.progress(done)
        return {source: estimate[kept][:done] for source, estimate in estimates.items()}

    def push(self, samples: np.ndarray, last: bool = False) -> dict:
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += len(samples)
        pieces = []
        while len(self.buffer) >= self.plan.input_length:
            pieces.append(self._run_chunk())
        while last and self.emitted < self.received:
            shortfall = self.plan.input_length - len(self.buffer)
            self.buffer = np.pad(self.buffer, [(0, max(0, shortfall)), (0, 0)])
            pieces.append(self._run_chunk())
        channels = self.buffer.shape[1]
        return {source: np.concatenate([p[source] for p in pieces]) if pieces else np.zeros((0, channels), np.float32)
                for source in SOURCES}


class SongSeparation:
    """Separates one song fed block by block at its own rate and channel count.

    ``push`` returns whatever separated audio is ready, at the input's rate, the
    same for both sources; memory holds about one chunk, whatever the song's
    length, and the outputs end with exactly as many samples as were pushed. The
    song is resampled to the model's rate (soxr streams, identical to one-shot
    resampling) and the sources back. What that round trip loses goes to the
    accompaniment: for a lower-rate model the band above its Nyquist frequency,
    which it never hears; for a higher-rate one the top of the input's band, cut by
    the resampling filters. So the outputs keep the input's full bandwidth, and a
    difference-output model's sources add up to the input."""

    def __init__(self, separator: Separator, sample_rate: int, channels: int, chunk_seconds: float = 30.0,
                 progress=None):
        model_rate = separator.sample_rate
        plan = separator.chunk_plan(max(1, int(chunk_seconds * model_rate)))
        self.runner = _ChunkRunner(separator, plan, channels, progress)
        self.resampled = sample_rate != model_rate

        def stream(from_rate, to_rate):
            return soxr.ResampleStream(from_rate, to_rate, channels, dtype="float32", quality="HQ")

        if self.resampled:
            self.to_model = stream(sample_rate, model_rate)
            self.to_input = {source: stream(model_rate, sample_rate) for source in SOURCES}
            self.round_trip = stream(model_rate, sample_rate)  # the input as the model gets it, back at its rate
            self.input_awaiting_round_trip = _Fifo(channels)
            self.round_trip_loss = _Fifo(channels)  # input minus its round trip, waiting for the accompaniment

    def push(self, block: np.ndarray, last: bool = False) -> dict:
        block = np.asarray(block, np.float32)
        if not self.resampled:
            return self.runner.push(block, last=last)
        model_input = self.to_model.resample_chunk(block, last=last)
        self.input_awaiting_round_trip.push(block)
        round_trip = self.round_trip.resample_chunk(model_input, last=last)
        if last:  # the round trip may end a sample short of the input or beyond it
            round_trip = fit_length(round_trip, len(self.input_awaiting_round_trip.data))
        self.round_trip_loss.push(self.input_awaiting_round_trip.pop(len(round_trip)) - round_trip)
        estimates = {s: self.to_input[s].resample_chunk(e, last=last)
                     for s, e in self.runner.push(model_input, last=last).items()}
        if last:  # the same rounding as the round trip: end exactly where the input ends
            estimates = {s: fit_length(e, len(self.round_trip_loss.data)) for s, e in estimates.items()}
        # Both paths resample the same model-rate samples, the sources later: the loss is always ready first.
        estimates["accompaniment"] += self.round_trip_loss.pop(len(estimates["accompaniment"]))
        return estimates


def separate_song(separator: Separator, audio: np.ndarray, sample_rate: int, chunk_seconds: float = 30.0,
                  progress=None) -> dict:
    """Separates a whole song held in memory; sources have exactly the input's shape."""
    estimates = SongSeparation(separator, sample_rate, audio.shape[1], chunk_seconds, progress).push(audio, last=True)
    return {s: fit_length(e, len(audio)) for s, e in estimates.items()}


def positive_seconds(text: str) -> float:
    """argparse type for a duration that must be above zero (``--chunk-seconds``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def fit_length(signal: np.ndarray, length: int) -> np.ndarray:
    """Cuts or zero-pads to ``length`` samples (resampling may round by a sample)."""
    return np.pad(signal[:length], [(0, max(0, length - len(signal))), (0, 0)])
