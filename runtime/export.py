"""Exporting a run: a SavedModel in TF Serving's layout (``base/<version>/``, written
under a temporary name and renamed into place), its facts (runtime.model_facts), a
model.onnx and a TF-TRT conversion of every signature; each checked against the Keras
model before anything is placed. export.py is its command line (its float16 run
directories are runtime.float16_run's)."""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from models.architecture import SOURCES
from models.registry import ARCHITECTURES
from runtime.chunking import separate_song
from runtime.float16_run import probe_signal
from runtime.loading import load_run, saved_model_separator
from runtime.model_facts import ModelFacts
from runtime.run_directory import RunConfig, RunDirectory
from runtime.saved_model_graph import SIGNATURES, SeparationModule
from runtime.separator import keras_separator

PROJECT_VERSION = "0.3.0"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17  # tf2onnx 1.17 with onnx 1.17: 17 and 18 work, 19 is refused
PARITY_TOLERANCE = 1e-4
# A TF-TRT version against the Keras model: fp32 as any export; fp16 computes in half
# precision. The shipped model computed in Keras' mixed_float16 (on a CPU: no TensorRT
# here) differed from float32 by at most 6.0e-4 (RMS 1.1e-4) on the test signal: 5x that.
TRT_TOLERANCE = {"fp32": PARITY_TOLERANCE, "fp16": 3e-3}
TEST_SIGNAL_WINDOWS = 2.5  # chunk-plan windows in the test signal: a cut, a whole window and a partial one


class ExportError(Exception):
    """An export that cannot be done; nothing has been written."""


def tensorrt_available() -> bool:
    return bool(tf.sysconfig.get_build_info().get("is_tensorrt_build", False))


TENSORRT_MISSING = (
    "--trt needs TensorFlow built with TensorRT, and a GPU; this TensorFlow ({version}) has no TensorRT. "
    "On a Linux x86-64 host with an NVIDIA GPU: pip install 'tensorflow[and-cuda]==2.16.2' tensorrt==8.6.1 "
    "(TF-TRT is compiled out of TensorFlow >= 2.18), run this command there, and serve the export with the "
    "tensorflow/serving:2.16.1-gpu image (serve/compose.yaml). Without TensorRT, --onnx gives a model.onnx "
    "that ONNX Runtime and TensorRT itself can run.")


def next_version(base: Path) -> int:
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    return max(versions, default=0) + 1


def model_facts(run_dir: Path, run: RunConfig, checkpoint: Path, plan, precision: str, wiener=None) -> ModelFacts:
    """The facts of an export of ``run`` (their one writer)."""
    return ModelFacts(
        project="wavesep",
        project_version=PROJECT_VERSION,
        arch=run.arch,
        config_name=run.config_name,
        model=run.model,
        sample_rate=run.model["sample_rate"],
        channels=run.model["channels"],
        sources=tuple(SOURCES),
        training_data=run.data,
        training=run.training,
        checkpoint=str(checkpoint.relative_to(run_dir)) if checkpoint.is_relative_to(run_dir) else str(checkpoint),
        chunk_plan=dataclasses.asdict(plan),
        precision=precision,
        post_filter=wiener.to_dict(run.model["sample_rate"]) if wiener is not None and wiener.active else None,
    )


def check_saved_model(version_dir: Path, module: SeparationModule, loaded_run, chunk_seconds: float) -> float:
    """Max abs difference from the Keras model run through runtime.chunking's numpy chunked
    path on the test signal, of the reloaded SavedModel's serving_default and of the
    same chunked path through its separate_windows (how every tool loads an export)."""
    signal = probe_signal(module.sample_rate, module.channels, int(TEST_SIGNAL_WINDOWS * module.plan.stride) + 7)
    reloaded = tf.saved_model.load(str(version_dir))
    in_graph = reloaded.signatures["serving_default"](waveform=tf.constant(signal[None]))
    keras_path = separate_song(keras_separator(loaded_run.model, loaded_run.arch, loaded_run.config, "keras"),
                               signal, module.sample_rate, chunk_seconds=chunk_seconds, wiener=module.wiener)
    windows_path = separate_song(saved_model_separator(version_dir, reloaded), signal, module.sample_rate,
                                 chunk_seconds=chunk_seconds, wiener=module.wiener)
    return max(float(np.max(np.abs(estimates[s] - keras_path[s])))
               for estimates in ({s: e.numpy()[0] for s, e in in_graph.items()}, windows_path) for s in keras_path)


def require_parity(what: str, difference: float, tolerance: float, log) -> None:
    log(f"{what}: max abs diff {difference:.2e}")
    if not difference <= tolerance:
        raise ExportError(f"{what}: the difference {difference:.2e} is over {tolerance:g}; nothing was written")


def write_onnx(version_dir: Path, module: SeparationModule, facts: ModelFacts) -> float:
    """``forward`` (one model call on chunk-plan windows) as model.onnx, facts in its
    metadata; returns its max abs difference from TensorFlow on test windows."""
    import onnx
    import onnxruntime
    import tf2onnx

    onnx_model, _ = tf2onnx.convert.from_function(module.forward, input_signature=[module.window_spec],
                                                  opset=ONNX_OPSET)
    onnx.helper.set_model_props(onnx_model, {"wavesep": facts.to_json()})
    path = version_dir / ONNX_FILE
    onnx.save(onnx_model, str(path))

    windows = np.random.default_rng(1).uniform(-0.5, 0.5, (2, module.plan.input_length, module.channels))
    windows = windows.astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {session.get_inputs()[0].name: windows})))
    reference = module.forward(tf.constant(windows))
    return max(float(np.max(np.abs(outputs[s] - reference[s].numpy()))) for s in reference)


def convert_signature_with_tensorrt(saved_model_dir: Path, output_dir: Path, precision: str, signature: str) -> None:
    """One signature of a SavedModel through TF-TRT, saved as a SavedModel of that signature
    alone (a frozen graph: all TrtGraphConverterV2 keeps)."""
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    converter = trt.TrtGraphConverterV2(
        input_saved_model_dir=str(saved_model_dir), input_saved_model_signature_key=signature,
        precision_mode=trt.TrtPrecisionMode.FP16 if precision == "fp16" else trt.TrtPrecisionMode.FP32)
    converter.convert()
    converter.save(str(output_dir))


def convert_with_tensorrt(saved_model_dir: Path, output_dir: Path, precision: str) -> None:
    """Every signature converted (TrtGraphConverterV2 converts one at a time), then saved
    together as one SavedModel with the original's assets."""
    root = tf.Module()
    signatures = {}
    for name in SIGNATURES:
        converted_dir = output_dir.parent / f"tensorrt-{name}"
        convert_signature_with_tensorrt(saved_model_dir, converted_dir, precision, name)
        loaded = tf.saved_model.load(str(converted_dir))
        setattr(root, name, loaded)  # tracked, so its constants and TensorRT engines are saved
        signatures[name] = loaded.signatures[name]
    tf.saved_model.save(root, str(output_dir), signatures=signatures)
    shutil.copytree(saved_model_dir / "assets", output_dir / "assets", dirs_exist_ok=True)


def export_run(run_dir, base_dir, version: int | None = None, onnx: bool = False, trt: str | None = None,
               chunk_seconds: float = 5.0, log=print, wiener=None) -> Path:
    """Exports a run directory's model to ``base_dir/<version>/``; returns that folder.
    ``wiener``: a Wiener post-filter (runtime.wiener.WienerSettings) in its graph, in its facts;
    None: the run's own (config.json's post_filter), if any."""
    if trt is not None and not tensorrt_available():
        raise ExportError(TENSORRT_MISSING.format(version=tf.__version__))
    run_dir, base_dir = Path(run_dir), Path(base_dir)
    run = RunDirectory(run_dir).read_config()
    loaded = load_run(run_dir)
    wiener = loaded.wiener if wiener is None else wiener
    architecture = ARCHITECTURES[loaded.arch]
    if onnx and architecture.generator(loaded.config) is not None:
        raise ExportError(f"--onnx writes one model call on chunk windows; {run.config_name} ({loaded.arch}) "
                          f"separates by autoregressive generation, which only the SavedModel holds")
    version = next_version(base_dir) if version is None else version
    version_dir = base_dir / str(version)
    if version_dir.exists():
        raise ExportError(f"{version_dir} exists already; pick another --version or leave it out")

    output_length = max(1, int(chunk_seconds * loaded.config.sample_rate))
    if wiener is not None and wiener.active:
        # Clients cut requests on the plan's stride (serve.client): a stride of whole STFT hops puts
        # every request's filter frames on the whole song's, so chunked answers equal one call.
        hop = wiener.fft_size(loaded.config.sample_rate) // 4
        output_length = -(-output_length // hop) * hop
    plan = architecture.chunk_plan(loaded.config, output_length)
    if wiener is not None and wiener.active and plan.stride % hop:
        log(f"note: the chunk plan's stride ({plan.stride}) is not a whole number of the Wiener filter's hop "
            f"({hop}): requests cut on it get the filter's frames at other positions than one call")
    facts = model_facts(run_dir, run, loaded.checkpoint, plan, trt or "float32", wiener)
    module = SeparationModule(loaded.model, architecture, loaded.config, plan, facts.to_dict(), wiener=wiener)
    base_dir.mkdir(parents=True, exist_ok=True)
    # The temporary folders sit beside the versions (same file system: the rename is
    # atomic) under names that are not integers, which servers ignore.
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=base_dir))
    try:
        saved_model_dir = staging / "saved_model"
        module.facts_asset = tf.saved_model.Asset(str(facts.write(staging)))
        tf.saved_model.save(module, str(saved_model_dir), signatures=module.signatures())

        require_parity(f"SavedModel vs Keras model on a test signal of {TEST_SIGNAL_WINDOWS:g} windows",
                       check_saved_model(saved_model_dir, module, loaded, chunk_seconds), PARITY_TOLERANCE, log)
        if onnx:
            require_parity("ONNX Runtime vs TensorFlow on test windows", write_onnx(saved_model_dir, module, facts),
                           PARITY_TOLERANCE, log)
        if trt is not None:
            converted = staging / "tensorrt"
            convert_with_tensorrt(saved_model_dir, converted, trt)
            require_parity(f"TF-TRT {trt} vs Keras model on a test signal of {TEST_SIGNAL_WINDOWS:g} windows",
                           check_saved_model(converted, module, loaded, chunk_seconds), TRT_TOLERANCE[trt], log)
            saved_model_dir = converted
        saved_model_dir.rename(version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir

