"""Loading a model for separation, per runtime: a run directory (Keras), an exported
SavedModel version folder (through its signatures) or an exported model.onnx (ONNX
Runtime), each as a ``Separator``; the precision a model runs in."""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models.registry import ARCHITECTURES, build_in_precision
from runtime.cpu import this_cpu
from runtime.model_facts import ModelFacts
from runtime.wiener import WienerSettings
from runtime.run_directory import RunDirectory
from runtime.separator import Separator, keras_separator


# The model separate.py (and bench) use when none is named; see its model card.
PRETRAINED_MODEL = Path(__file__).resolve().parents[1] / "pretrained" / "waveunet-small-musdb"


def fast_bfloat16() -> bool:
    """Whether bfloat16 computes faster than float32 here: on a GPU, or a CPU with
    bfloat16 instructions, AVX512-BF16 or AMX (``runtime.cpu``: WAVESEP_CPU_CLASS forces
    the CPU's answer, GPUs aside). Without them bfloat16 is emulated: 0.12x float32's
    speed on an AVX2-only EPYC. On an idle 2-core AVX512-BF16 EPYC (no AMX) the shipped
    model ran 1.3-1.7x faster in bfloat16 (docs/benchmarks.md); the one slower run, on a
    2-core Xeon at a load average of 9, is why ``--precision float32`` stays at hand."""
    cpu = this_cpu()
    if cpu.forced_class is None and tf.config.list_physical_devices("GPU"):
        return True
    return "avx512_bf16" in cpu.flags or "amx_bf16" in cpu.flags


def is_exported(path) -> bool:
    """An exported model (a SavedModel version folder or a model.onnx), not a run directory."""
    path = Path(path)
    return path.suffix == ".onnx" or (path / "saved_model.pb").is_file()


def resolve_precision(precision: str, path, live: bool = False) -> str:
    """``auto``: bfloat16 for a run directory where it is faster (``fast_bfloat16``;
    SDR within 0.05 dB of float32, README, Benchmarks), else float32 (exported models
    run in the precision they were exported in; live streams compute in float32,
    ``runtime.streaming``)."""
    if precision != "auto":
        return precision
    return "bfloat16" if fast_bfloat16() and not live and not is_exported(path) else "float32"


@dataclass(frozen=True)
class LoadedRun:
    """The Keras model of a run directory, for what needs more than a Separator (e.g. its weights)."""

    model: keras.Model
    arch: str
    config: object  # the architecture's config dataclass
    checkpoint: Path
    wiener: WienerSettings | None = None  # the run's default post-filter (config.json's post_filter), if any


def load_run(path, precision: str = "float32") -> LoadedRun:
    """Builds a run directory's model and loads its best checkpoint, else the last one.

    ``precision="bfloat16"`` computes in bfloat16 with float32 weights (Keras'
    mixed_bfloat16 policy): faster on CPUs with AVX512-BF16/AMX and on GPUs, at
    bfloat16's ~3 significant digits."""
    run_directory = RunDirectory(path)
    run = run_directory.read_config()
    architecture = ARCHITECTURES[run.arch]
    config = architecture.config_from_dict(run.model)
    model = build_in_precision(architecture.build, config, precision)
    checkpoint = run_directory.load_weights(model)
    wiener = None if run.post_filter is None else WienerSettings.parse(run.post_filter)
    return LoadedRun(model, run.arch, config, checkpoint, wiener)


def _separator_from_facts(forward, facts: ModelFacts, source: str, runtime: str, incremental=None) -> Separator:
    """A Separator for an exported model, whose facts (written by the export) name its
    architecture and config: the registry gives the chunk plan."""
    architecture = ARCHITECTURES[facts.arch]
    config = architecture.config_from_dict(facts.model)
    return Separator(forward=forward, sample_rate=config.sample_rate, channels=config.channels,
                     chunk_plan=functools.partial(architecture.chunk_plan, config), source=source,
                     description=f"{facts.arch} ({runtime})", one_pass=architecture.separates_in_one_pass(config),
                     incremental=incremental, wiener=WienerSettings.from_dict(facts.post_filter),
                     sums_to_input=architecture.sums_to_input(config))


def _saved_model_incremental(loaded, facts: ModelFacts):
    """The stream executor factory of an exported float32 model whose architecture has one,
    from the Keras model rebuilt with the SavedModel's own variables (the export keeps
    them in the Keras model's order); None for the rest (e.g. a TF-TRT conversion, which
    keeps only signatures). The Keras model is built on the first stream."""
    architecture = ARCHITECTURES[facts.arch]
    config = architecture.config_from_dict(facts.model)
    variables = getattr(loaded, "model_variables", None)
    if facts.precision != "float32" or variables is None or architecture.incremental(None, config) is None:
        return None

    @functools.cache
    def factory():
        model = build_in_precision(architecture.build, config, "float32")
        if len(model.variables) != len(variables):
            raise ValueError(f"the export holds {len(variables)} variables, the rebuilt model {len(model.variables)}")
        for variable, saved in zip(model.variables, variables):
            variable.assign(saved.numpy())
        return architecture.incremental(model, config)

    return lambda batch: factory()(batch)


# The signature of an exported SavedModel that runs one model call on chunk-plan windows.
WINDOWS_SIGNATURE = "separate_windows"


def saved_model_separator(version_dir: Path, loaded=None, facts: ModelFacts | None = None) -> Separator:
    """An exported SavedModel version folder through its ``separate_windows`` signature:
    signatures are all that every export keeps (a TF-TRT conversion saves nothing else).

    ``loaded``/``facts``: the version already loaded by ``tf.saved_model.load`` and its
    facts, so that a server holds one copy of each version for every use."""
    version_dir = Path(version_dir)
    if facts is None:
        facts = ModelFacts.read(version_dir)
    if loaded is None:
        loaded = tf.saved_model.load(str(version_dir))
    if WINDOWS_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{version_dir}: no {WINDOWS_SIGNATURE!r} signature (exported before it existed?); "
                         f"export the run again with export.py")

    def run(mix: np.ndarray) -> dict:  # through `loaded`, which owns the variables the signature reads
        return {s: e.numpy() for s, e in loaded.signatures[WINDOWS_SIGNATURE](windows=tf.constant(mix)).items()}

    return _separator_from_facts(run, facts, str(version_dir), "SavedModel", _saved_model_incremental(loaded, facts))


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

    return _separator_from_facts(run, ModelFacts.from_json(properties["wavesep"], source=str(path)), str(path),
                                 "ONNX Runtime")


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
    return replace(keras_separator(run.model, run.arch, run.config, str(run.checkpoint)), wiener=run.wiener)
