"""The separator as Beam's RunInference sees it: a ``ModelHandler`` that loads the model
once per worker process and runs chunk-plan windows from any songs as one model call,
and the model's fingerprint (what a song's outputs were made with, for resuming).

A window is keyed (``KeyedModelHandler``): the key says which song and which window it
is, and passes through untouched; the inference is the window's model outputs, each
source ``[output_length, channels]`` (``runtime.separator.Separator.separate_windows``).
"""
from __future__ import annotations

import atexit
import dataclasses
import gc
import hashlib
import os
import tempfile
from typing import Iterable, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from runtime.run_directory import RunDirectory

ONNX_SUFFIX = ".onnx"


def is_local(path: str) -> bool:
    """A path on this machine's file system (no scheme such as gs:// or s3://)."""
    return FileSystems.get_scheme(path) is None


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


def model_files(model: str) -> list[str]:
    """The files a model's outputs depend on, as ``runtime.loading.load_separator`` reads
    them: a model.onnx; every file of an exported SavedModel version folder; a run
    directory's config.json and the checkpoint it loads (best, else last, else the float16
    copy; not its logs or training backup). Local or on any Beam file system."""
    if model.endswith(ONNX_SUFFIX):
        return [model]
    if _exists(FileSystems.join(model, "saved_model.pb")):
        found = FileSystems.match([FileSystems.join(model, "**")])[0].metadata_list
        return sorted(m.path for m in found)
    run = RunDirectory(model)
    candidates = [FileSystems.join(model, str(p.relative_to(run.path)))
                  for p in (run.best_checkpoint, run.last_checkpoint, run.float16_checkpoint)]
    config = FileSystems.join(model, "config.json")
    if not _exists(config):
        raise FileNotFoundError(f"{model}: not a run directory (no config.json), an exported SavedModel version "
                                f"folder (no saved_model.pb) or a model.onnx")
    checkpoint = next((c for c in candidates if _exists(c)), None)
    if checkpoint is None:
        raise FileNotFoundError(f"{model}: no checkpoints/best.keras, last.keras or best.float16.npz")
    return [config, checkpoint]


def _relative(model: str, path: str) -> str:
    return os.path.basename(path) if model.endswith(ONNX_SUFFIX) else path[len(model.rstrip("/")) + 1:]


def fingerprint(model: str, precision: str, post_filter: str = "off") -> str:
    """sha256 over the model's files (``model_files``: names relative to the model and
    contents), the precision it runs in and its post-filter (in words): the same
    fingerprint, the same outputs."""
    digest = hashlib.sha256(f"precision {precision}\npost-filter {post_filter}\n".encode())
    for path in model_files(model):
        content = hashlib.sha256()
        with FileSystems.open(path, compression_type="uncompressed") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                content.update(block)
        digest.update(f"{_relative(model, path)} {content.hexdigest()}\n".encode())
    return digest.hexdigest()


def local_model(model: str) -> str:
    """``model`` itself when local, else a local copy of its files (``model_files``) in a
    temporary folder, laid out as they are there (a worker loads a model on gs://)."""
    if is_local(model):
        return model
    folder = tempfile.mkdtemp(prefix="wavesep-model-")
    for path in model_files(model):
        target = os.path.join(folder, _relative(model, path))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(path, compression_type="uncompressed") as source, open(target, "wb") as copy:
            for block in iter(lambda: source.read(1 << 20), b""):
                copy.write(block)
    return os.path.join(folder, os.path.basename(model)) if model.endswith(ONNX_SUFFIX) else folder


def _let_go(held: list) -> None:
    held.clear()
    gc.collect()


class SeparatorModelHandler(ModelHandler[np.ndarray, PredictionResult, object]):
    """Chunk-plan windows ``[input_length, channels]`` in, their model outputs out.

    ``load_model`` runs once per worker process (RunInference shares it between the
    process's threads); ``run_inference`` stacks the batch's windows, from whatever
    songs, into one model call per channel count (all of them in one, as a rule)."""

    def __init__(self, model: str, precision: str, batch_size: int, threads: int = 0):
        """``threads``: TensorFlow's threads per worker (0: its default, every core)."""
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.model, self.precision, self.threads = model, precision, threads

    def load_model(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from runtime.loading import load_separator

        if self.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                tf.config.threading.set_inter_op_parallelism_threads(self.threads)
            except RuntimeError:  # TensorFlow already ran in this process: its pools are set
                pass
        separator = load_separator(local_model(self.model), self.precision)
        # Held here and let go at exit, while TensorFlow's modules are still whole: RunInference
        # keeps what load_model returns until the interpreter tears its modules down, and a
        # graph function freed then prints an error.
        held = [separator]
        atexit.register(_let_go, held)
        return dataclasses.replace(separator, forward=lambda mix: held[0].forward(mix), incremental=None)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[PredictionResult]:
        outputs: list = [None] * len(batch)
        for channels in sorted({window.shape[1] for window in batch}):
            indices = [i for i, window in enumerate(batch) if window.shape[1] == channels]
            estimates = model.separate_windows(np.stack([batch[i] for i in indices]))
            for row, i in enumerate(indices):
                outputs[i] = {source: estimate[row] for source, estimate in estimates.items()}
        return [PredictionResult(window, output) for window, output in zip(batch, outputs)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(window.nbytes for window in batch)  # the default pickles the batch to count it

    def get_metrics_namespace(self) -> str:
        return "wavesep_catalog"
