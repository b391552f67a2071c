"""Separation speed and memory, measured side by side in one run.

    python -m bench.separate [--configs ...] [--runtimes ...] [--quality]

For each --configs entry, a registered architecture's named config with random weights
(speed does not depend on them): "<arch>:<config>" (e.g. wavenet:small, umt:small-full),
or a bare name for a Wave-U-Net (by default the default preset and M4/M5/M5-HighSR-sized
ones, then wavenet:small, umt:small (Structure A) and umt:small-full), or a run directory
for its model's shape (e.g. runs/my-run; labelled by the folder's name), it separates a 30 s
stereo 44.1 kHz clip in each runtime (Keras in float32 and bfloat16, the exported
SavedModel, its model.onnx in ONNX Runtime, and that file statically quantized to int8)
and prints:
  - x realtime: seconds of audio separated per wall-clock second (the best of
    --repeats runs), and as a multiple of Keras float32's for the same config;
  - achieved FLOP/s as a percentage of this machine's measured float32 matmul FLOP/s
    (the model's Conv1D multiply-adds; "n/a" where they cannot be counted from its
    layers' output shapes);
  - context overhead: input samples computed per output sample, for the architecture's
    chunk plan, and for a Wave-U-Net against f90's (which runs the network on its
    147443 -> 16389 training frame; "n/a" for other architectures).
Every model runs at its own rate and channel count through the same path as separate.py:
UMT (16 kHz mono) hears the clip resampled, as two mono passes. UMT's separation is not
one model call per window (export.py writes no model.onnx for it), so its rows skip the
ONNX runtimes, saying so. UMT's full variant generates the accompaniment sample by
sample (``models.generation``, 1 s segments of each window side by side): small-full
separated the stereo clip (two mono passes) at about 1.1x realtime on 2 busy cores, so
its rows are timed once, not --repeats times (marked "1 run"), after a warm-up on a 1 s
window, which traces the same graph.
Then a peer measured in the same run: where the openunmix package (and torch) is
installed, Open-Unmix UMX-HQ (vocals + residual, niter 1, its STFT, BiLSTM and Wiener
filtering, with random weights: nothing is downloaded) separates the same clip and each
config's fastest runtime is printed as a multiple of it; where it is not installed, no
peer figure is printed (torch stays out of requirements.txt: ``pip install openunmix``
pulls PyPI's CUDA build of torch, gigabytes; docs/benchmarks.md shows a CPU-only way, Debian's
python3-torch). The peer runs on every core, as TensorFlow does. Then what resampling costs on
the first config: the clip to the model's rate and the sources back, against the model's time at
its rate, interleaved in one loop (aim: at most a tenth); and the shipped separator (the
`small` config with its default soft-mask Wiener stage, through separate.py's path), timed in
one loop with the model alone and the peer, as a multiple of the peer (aim: at least 2.5x). Then the peak RSS of separate.py separating a 10-minute stereo file
(--long-minutes; 0 skips this memory test). ``--quality`` scores
the shipped model in each runtime on the 14 MUSDB18 validation previews (through
evaluate.py's scoring) and prints each runtime's median SDR against Keras float32.
ONNX Runtime's CPU provider offers no float16 or bfloat16 path for this model: on
x86 it runs a float16 Conv in float32 between casts, and refuses a bfloat16 Conv.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version as package_version
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import records  # noqa: E402
from data_pipeline.datasets import get_tracks  # noqa: E402
from models.architecture import SOURCES  # noqa: E402
from models.registry import ARCHITECTURES  # noqa: E402
from runtime import scoring  # noqa: E402
from runtime.chunking import positive_seconds, separate_song  # noqa: E402
from runtime.export import ONNX_FILE, export_run  # noqa: E402
from runtime.loading import PRETRAINED_MODEL, load_separator, resolve_precision  # noqa: E402
from runtime.run_directory import RunConfig, RunDirectory  # noqa: E402
from runtime.resampling import resample  # noqa: E402
from runtime.separator import Separator  # noqa: E402
from runtime.wiener import WienerSettings, em_iterations, wiener_filter  # noqa: E402

WAVEUNET = ARCHITECTURES["waveunet"]

CLIP_RATE = 44100
REPOSITORY = Path(__file__).resolve().parents[1]
PREVIEWS = REPOSITORY.parent / "shared" / "data" / "musdb18-train-previews"
# keras-float32 is the reference every other runtime is compared with.
RUNTIMES = ("keras-float32", "keras-bfloat16", "savedmodel-float32", "onnx-float32", "onnx-int8")
CALIBRATION_SECONDS = 1.0  # int8 calibration windows: short, since calibration keeps every intermediate tensor
CALIBRATION_SONGS = 3  # MUSDB18 training previews that calibrate the shipped model's int8 ranges
SDR_TOLERANCE = 0.05  # dB: a faster runtime must keep the median SDR this close to keras-float32
# The peer: Open-Unmix UMX-HQ, measured in the same run where the openunmix package is installed.
OPEN_UNMIX_INSTALL = "pip install openunmix"
OPEN_UNMIX_NAME = "Open-Unmix UMX-HQ"
OPEN_UNMIX_SETTINGS = "vocals + residual, niter 1"
SHIPPED_CONFIG = "small"
SHIPPED_AIM = 2.5  # the shipped config's fastest runtime should separate at least this many times as fast as the peer
DEFAULT_CONFIGS = ("small", "M4", "M5", "M5-HighSR", "wavenet:small", "umt:small", "umt:small-full")
# A generating config separates the stereo clip at about 1x realtime on 2 cores: --repeats runs of it in
# every runtime would take minutes. One run is noisier than a best-of, so its rows say "1 run".
GENERATION_REPEATS = 1
# Its warm-up only needs the trace (per-sample steps plan no large kernels): a 1 s window traces the
# graph a 30 s one runs, at a thirtieth of the cost.
GENERATION_WARMUP_SECONDS = 1.0
# export.py's parity check separates 2.5 windows in Keras and again in the SavedModel; a generating
# model spends a whole segment's steps on each window, so the bench exports it with one-pool windows.
# (The bench times the SavedModel's per-window ``forward`` with its own chunking, not this framing.)
GENERATION_EXPORT_CHUNK_SECONDS = 0.05


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """A registered architecture's config, timed with random weights."""

    arch: str
    name: str
    config: object  # the architecture's config dataclass

    @classmethod
    def parse(cls, text: str) -> "BenchModel":
        """"<arch>:<config>", a bare Wave-U-Net config name (the bench's first rows: the README's
        commands keep working), or a run directory (its model, labelled by the folder's name)."""
        if (Path(text) / "config.json").is_file():
            return dataclasses.replace(cls.of_run(Path(text)), name=Path(text).name)
        arch, _, name = text.rpartition(":")
        arch = arch or "waveunet"
        if arch not in ARCHITECTURES:
            raise argparse.ArgumentTypeError(f"unknown architecture {arch!r} in {text!r}; "
                                             f"choose one of {', '.join(ARCHITECTURES)}")
        if name not in ARCHITECTURES[arch].configs:
            raise argparse.ArgumentTypeError(f"{arch} has no config {name!r}; choose one of "
                                             f"{', '.join(ARCHITECTURES[arch].configs)}")
        return cls(arch, name, ARCHITECTURES[arch].configs[name])

    @classmethod
    def of_run(cls, run_dir: Path) -> "BenchModel":
        """The model a run directory describes."""
        run = RunDirectory(run_dir).read_config()
        return cls(run.arch, run.config_name, ARCHITECTURES[run.arch].config_from_dict(run.model))

    @property
    def architecture(self):
        return ARCHITECTURES[self.arch]

    @property
    def label(self) -> str:
        return self.name if self.arch == "waveunet" else f"{self.arch}:{self.name}"

    @property
    def generates(self) -> bool:
        """Whether separation decodes sample by sample (UMT's full variant, ``models.generation``);
        export.py writes no model.onnx for such a model."""
        return ARCHITECTURES[self.arch].generator(self.config) is not None


def matmul_flops_per_second(size: int = 2048, repeats: int = 20) -> float:
    """The machine's own limit: float32 matmul throughput with every core busy (the fastest of ``repeats``
    matmuls, the least disturbed by other processes)."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    tf.linalg.matmul(a, b).numpy()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(seconds)


def model_flops(model: keras.Model) -> float | None:
    """Multiply-adds of every convolution, counted twice (FLOPs), for the model's fixed input length;
    None where a layer's output length is unknown (e.g. a layer called twice has no one output).

    For UMT's full model this is its teacher-forced graph: generation does the decoder's
    multiply-adds one sample at a time (the conditioning once per pooled frame, so a little fewer)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested model: count its convolutions too
            nested = model_flops(layer)
            if nested is None:
                return None
            total += nested
        elif isinstance(layer, keras.layers.Conv1D):
            try:
                length = layer.output.shape[1]
            except (AttributeError, ValueError):
                return None
            if length is None:
                return None
            kernel, channels_in, channels_out = layer.kernel.shape
            total += 2 * kernel * channels_in * channels_out * length
    return float(total)


def windows_fed(separator: Separator, songs: list) -> list:
    """The windows the chunked path feeds the model for ``songs`` ([(audio, rate)]), cut for calibration."""
    windows = []

    def recording_forward(window: np.ndarray) -> dict:
        windows.append(window)
        return separator.forward(window)

    recorder = dataclasses.replace(separator, forward=recording_forward)
    for audio, rate in songs:
        separate_song(recorder, audio, rate, CALIBRATION_SECONDS)
    return windows


class CalibrationWindows:
    """ONNX Runtime's calibration data reader (get_next until None) over model windows."""

    def __init__(self, input_name: str, windows: list):
        self.feeds = iter([{input_name: window} for window in windows])

    def get_next(self):
        return next(self.feeds, None)


def quantize_int8(onnx_path: Path, songs: list) -> Path:
    """model.onnx with its convolutions statically quantized to int8 (QDQ; activation ranges from ``songs``)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, int8_path = onnx_path.with_name("model-prepared.onnx"), onnx_path.with_name("model-int8.onnx")
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)  # symbolic shapes would need sympy
    reader = CalibrationWindows(onnx.load(str(prepared)).graph.input[0].name,
                                windows_fed(load_separator(onnx_path), songs))
    # 7-bit weights (reduce_range): on x86 CPUs without VNNI, ONNX Runtime's u8s8 convolutions
    # saturate with 8-bit ones (measured on an AVX2-only EPYC: error energy 5e-3 of the signal's, not 2e-4).
    quantize_static(str(prepared), str(int8_path), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    reduce_range=True)
    return int8_path


def runtime_models(run_dir: Path, scratch: Path, runtimes: list, calibration_songs: list) -> dict:
    """Per runtime, the (path, precision) that ``load_separator`` loads it from; exports the run when needed.
    The ONNX runtimes are left out for an architecture that export.py writes no model.onnx for."""
    model = BenchModel.of_run(run_dir)
    onnx = not model.generates and any(runtime.startswith("onnx") for runtime in runtimes)
    models = {"keras-float32": (run_dir, "float32"), "keras-bfloat16": (run_dir, "bfloat16")}
    if onnx or any(runtime.startswith("savedmodel") for runtime in runtimes):
        export_chunk = {"chunk_seconds": GENERATION_EXPORT_CHUNK_SECONDS} if model.generates else {}
        version_dir = export_run(run_dir, scratch, onnx=onnx, log=lambda message: None, **export_chunk)
        models["savedmodel-float32"] = (version_dir, "float32")
        if onnx:
            models["onnx-float32"] = (version_dir / ONNX_FILE, "float32")
        if onnx and "onnx-int8" in runtimes:
            models["onnx-int8"] = (quantize_int8(version_dir / ONNX_FILE, calibration_songs), "float32")
    return {runtime: models[runtime] for runtime in runtimes if runtime in models}


def measure(separator: Separator, clip: np.ndarray, chunk_seconds: float, repeats: int,
            warmup_chunk_seconds: float | None = None) -> float:
    """x realtime of ``separate_song`` on the clip, after a warm-up that traces graphs and plans kernels
    (on one window of ``warmup_chunk_seconds``, default ``chunk_seconds``): the best of ``repeats`` runs,
    which is the least disturbed by other processes on the machine."""
    separate_song(separator, clip[: CLIP_RATE // 2], CLIP_RATE, warmup_chunk_seconds or chunk_seconds)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        separate_song(separator, clip, CLIP_RATE, chunk_seconds)
        seconds.append(time.perf_counter() - start)
    return len(clip) / CLIP_RATE / min(seconds)


def flops_per_audio_second(model: BenchModel, plan, clip_seconds: float) -> float | None:
    """FLOPs the chunked path computes per second of the clip: every chunk, in every mono pass."""
    config = model.config
    chunks = -(-int(clip_seconds * config.sample_rate) // plan.stride)
    passes = 2 if config.channels == 1 else 1
    flops = model_flops(model.architecture.build(config, plan.input_length))
    return None if flops is None else flops * chunks * passes / clip_seconds


def f90_framing(model: BenchModel) -> str:
    """Input samples per output sample of f90's training frame: a Wave-U-Net's only."""
    if model.arch != "waveunet":
        return "n/a"
    f90_input, f90_output = WAVEUNET.input_length_for(model.config, model.config.num_frames)
    return f"{f90_input / f90_output:.2f}x"


def speed_rows(model: BenchModel, runtimes: list, clip: np.ndarray, chunk_seconds: float, repeats: int,
               peak: float, scratch: Path) -> dict:
    """x realtime of a random-weight config in each runtime that applies to it; prints a row for each."""
    folder = scratch / f"{model.arch}-{model.name}"
    run_dir = save_random_run(model, folder / "run")
    plan = model.architecture.chunk_plan(model.config, int(chunk_seconds * model.config.sample_rate))
    flops = flops_per_audio_second(model, plan, len(clip) / CLIP_RATE)
    framing = f90_framing(model)
    skipped = [runtime for runtime in runtimes if runtime.startswith("onnx") and model.generates]
    if skipped:
        print(f"{model.label}: {', '.join(skipped)} skipped: export.py writes no model.onnx for {model.arch} "
              f"(its separation is not one model call per window)")
    repeats, warmup, note = (GENERATION_REPEATS, min(GENERATION_WARMUP_SECONDS, chunk_seconds),
                             f"  {GENERATION_REPEATS} run") if model.generates else (repeats, None, "")
    models = runtime_models(run_dir, folder / "export", [r for r in runtimes if r not in skipped],
                            [(clip[:3 * CLIP_RATE], CLIP_RATE)])
    realtime = {}
    for runtime, path in models.items():
        speed = realtime[runtime] = measure(load_separator(*path), clip, chunk_seconds, repeats, warmup)
        utilisation = "n/a" if flops is None else f"{100 * flops * speed / peak:.1f}%"
        print(f"{model.label:15s} {runtime:18s} {model.config.sample_rate:6d} {speed:10.2f}x "
              f"{speed / realtime['keras-float32']:12.2f}x {utilisation:>12s} {plan.overhead:16.2f}x "
              f"{framing:>12s}{note}")
    return realtime


@dataclasses.dataclass(frozen=True)
class Peer:
    """Another separator, timed on the same clip: ``separate`` takes the (frames, 2) clip at CLIP_RATE."""

    name: str
    settings: str
    separate: object  # callable: np.ndarray -> anything
    versions: str


def open_unmix_umxhq() -> tuple[Peer | None, str]:
    """Open-Unmix UMX-HQ built from openunmix's model classes with ``openunmix.umxhq``'s hyperparameters
    (stereo 44.1 kHz, 4096-point STFT with hop 1024, 16 kHz bandwidth, 512 hidden units, 3 BiLSTM layers,
    Wiener windows of 300 frames), one target model (vocals) plus the residual (accompaniment), one EM
    iteration of the Wiener filter (niter=1, umxhq's default).
    Random weights: its released weights are downloaded from Zenodo, and the bench downloads nothing;
    the time does not depend on them. (None, why) where openunmix or torch cannot be imported."""
    try:
        import torch
        from openunmix import utils as openunmix_utils
        from openunmix.model import OpenUnmix, Separator as OpenUnmixSeparator
    except ImportError as error:
        return None, f"{error.name or 'openunmix'} is not installed"
    except OSError as error:  # e.g. a torchaudio build that does not match torch
        return None, f"openunmix could not be imported ({error})"
    torch.manual_seed(0)
    # Every core, as TensorFlow uses them: some builds (Debian's CPU torch) start with one thread.
    torch.set_num_threads(os.cpu_count() or 1)
    max_bin = openunmix_utils.bandwidth_to_max_bin(rate=44100.0, n_fft=4096, bandwidth=16000)
    vocals = OpenUnmix(nb_bins=4096 // 2 + 1, nb_channels=2, hidden_size=512, max_bin=max_bin)
    model = OpenUnmixSeparator({"vocals": vocals}, niter=1, residual=True, n_fft=4096, n_hop=1024, nb_channels=2,
                               sample_rate=float(CLIP_RATE), wiener_win_len=300, filterbank="torch")
    model.freeze()

    def separate(clip: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(clip.T))[None])

    versions = (f"openunmix {package_version('openunmix')}, torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads, random weights")
    return Peer(OPEN_UNMIX_NAME, OPEN_UNMIX_SETTINGS, separate, versions), ""


def measure_peer(peer: Peer, clip: np.ndarray, repeats: int) -> float:
    """x realtime of ``peer`` on the clip, timed like ``measure``: a warm-up on half a second, then the
    best of ``repeats`` runs."""
    peer.separate(clip[: CLIP_RATE // 2])
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        peer.separate(clip)
        seconds.append(time.perf_counter() - start)
    return len(clip) / CLIP_RATE / min(seconds)


def post_filter_rows(model: BenchModel, model_speed: float, clip: np.ndarray, chunk_seconds: float,
                     iterations: list, soft_mask: bool, repeats: int, scratch: Path) -> None:
    """The Wiener post-filter's cost at the model's rate (where a separator would run it): the
    filter alone in x realtime (best of ``repeats``) and the model followed by it as a fraction
    of the model's own Keras float32 speed."""
    separator = load_separator(save_random_run(model, scratch / "post-filter-run"))
    rate = separator.sample_rate
    mix = resample(clip, CLIP_RATE, rate)
    estimates = separate_song(separator, mix, rate, chunk_seconds)
    for count in iterations:
        settings = WienerSettings(count, soft_mask=soft_mask)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            wiener_filter(mix, estimates, settings, rate)
            seconds.append(time.perf_counter() - start)
        speed = len(clip) / CLIP_RATE / min(seconds)
        together = 1 / (1 / model_speed + 1 / speed)
        print(f"Post-filter: {settings.describe(rate)} at {rate} Hz: {speed:.1f}x realtime alone; {model.label} "
              f"(Keras float32) with it {together:.1f}x realtime, {together / model_speed:.2f} of the model alone")


def best_of_interleaved(steps: dict, repeats: int) -> dict:
    """Each named step's best wall-clock seconds over ``repeats`` rounds that run every step in turn,
    so that all of them see the same load."""
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in seconds.items()}


RESAMPLING_AIM = 0.10  # resampling a song to the model's rate and its sources back: at most this share of the model's time


def resampling_row(model: BenchModel, clip: np.ndarray, chunk_seconds: float, repeats: int, scratch: Path) -> float:
    """What resampling costs in separate.py's path (runtime.resampling: the clip to the model's rate, then
    the vocals back, as runtime.chunking.SongSeparation does behind the shipped post-filter, whose sources
    add up to the model input) against the model's own time on the clip at its rate, in the precision
    ``--precision auto`` picks here, timed interleaved (best of ``repeats`` each, so both see the same
    load); also the whole 44.1 kHz path against the model-rate one, both with the post-filter. Prints a
    row; returns the share."""
    run_dir = save_random_run(model, scratch / "resampling-run")
    precision = resolve_precision("auto", run_dir)
    separator = load_separator(run_dir, precision)
    wiener = WienerSettings.parse(SHIPPED_POST_FILTER)
    rate = separator.sample_rate
    at_model_rate = resample(clip, CLIP_RATE, rate)
    steps = {"resampling": lambda: (resample(clip, CLIP_RATE, rate), resample(at_model_rate, rate, CLIP_RATE)),
             "model": lambda: separate_song(separator, at_model_rate, rate, chunk_seconds),
             "path": lambda: separate_song(separator, clip, CLIP_RATE, chunk_seconds, wiener=wiener),
             "model-rate path": lambda: separate_song(separator, at_model_rate, rate, chunk_seconds, wiener=wiener)}
    separate_song(separator, clip[: CLIP_RATE // 2], CLIP_RATE, chunk_seconds, wiener=wiener)  # warm-up: traces
    best = best_of_interleaved(steps, repeats)
    share = best["resampling"] / best["model"]
    print(f"Resampling ({model.label}, {CLIP_RATE} <-> {rate} Hz, model in {precision}): "
          f"{1000 * best['resampling']:.0f} ms per clip = {share:.3f} of the model's {1000 * best['model']:.0f} ms "
          f"(aim: <= {RESAMPLING_AIM:g}); with the {SHIPPED_POST_FILTER} post-filter, the path at {CLIP_RATE} Hz "
          f"takes {best['path'] / best['model-rate path']:.2f}x the model-rate path's time")
    return share


def peer_rows(realtime: dict, clip: np.ndarray, repeats: int, find_peer=open_unmix_umxhq) -> float | None:
    """Times the peer on the clip and prints each config's fastest runtime as a multiple of it; where the
    peer is not installed, prints that no peer figure is printed. Returns the peer's x realtime, or None."""
    peer, reason = find_peer()
    if peer is None:
        print(f"Peer: no peer figure is printed: {reason} ({OPEN_UNMIX_INSTALL} adds {OPEN_UNMIX_NAME} "
              f"({OPEN_UNMIX_SETTINGS}), measured on this clip in the same run)")
        return None
    speed = measure_peer(peer, clip, repeats)
    print(f"Peer: {peer.name} ({peer.settings}), measured here on the same clip: {speed:.2f}x realtime "
          f"(best of {repeats}; {peer.versions})")
    for label, speeds in realtime.items():
        fastest = max(speeds, key=speeds.get)
        print(f"  {label} ({fastest}): {speeds[fastest]:.2f}x realtime = {speeds[fastest] / speed:.2f} x {peer.name}")
    return speed


SHIPPED_POST_FILTER = "mask"  # pretrained/waveunet-small-musdb's config.json post_filter


def shipped_separator_row(clip: np.ndarray, chunk_seconds: float, repeats: int, scratch: Path,
                          peer: Peer | None) -> float:
    """The shipped separator's speed: its config (random weights) in the precision ``--precision auto``
    picks on this CPU, with its default post-filter, through separate.py's path (``separate_song`` with
    the Wiener stage), timed interleaved with the same model without the filter, with the separator in
    float32 (where auto picks another precision) and with the peer (where installed), best of
    ``repeats`` each, so all see the same load; prints the shipped separator's x realtime as a fraction
    of the model alone's and a multiple of the peer's. Returns its x realtime."""
    run_dir = save_random_run(BenchModel.parse(SHIPPED_CONFIG), scratch / "shipped-run")
    precision = resolve_precision("auto", run_dir)
    separator = load_separator(run_dir, precision)
    wiener = WienerSettings.parse(SHIPPED_POST_FILTER)
    steps = {"shipped": lambda: separate_song(separator, clip, CLIP_RATE, chunk_seconds, wiener=wiener),
             "model": lambda: separate_song(separator, clip, CLIP_RATE, chunk_seconds)}
    if precision != "float32":
        in_float32 = load_separator(run_dir)
        steps["float32"] = lambda: separate_song(in_float32, clip, CLIP_RATE, chunk_seconds, wiener=wiener)
    if peer is not None:
        steps["peer"] = lambda: peer.separate(clip)
    for step in steps.values():  # warm-up: traces the graphs, loads the peer's kernels
        step()
    speed = {name: len(clip) / CLIP_RATE / best for name, best in best_of_interleaved(steps, repeats).items()}
    float32 = "" if precision == "float32" else f"; in float32 {speed['float32']:.2f}x"
    versus = ("" if peer is None else f"; {speed['peer']:.2f}x for {peer.name} in the same loop: the shipped "
              f"separator is {speed['shipped'] / speed['peer']:.2f} x {OPEN_UNMIX_NAME} (aim: >= {SHIPPED_AIM:g})")
    print(f"Shipped separator ({SHIPPED_CONFIG}, Keras {precision} (--precision auto on this CPU), Wiener "
          f"{SHIPPED_POST_FILTER}, 44.1 kHz path): {speed['shipped']:.2f}x realtime, "
          f"{speed['shipped'] / speed['model']:.2f} of the model alone ({speed['model']:.2f}x){float32}{versus}")
    return speed["shipped"]


def peak_rss_of_long_separation(minutes: float, model_dir: Path, scratch: Path) -> float:
    """Peak RSS (GiB) of separate.py on a long stereo file, in a child process of its own."""
    song = scratch / "long.wav"
    frames = int(minutes * 60 * CLIP_RATE)
    with sf.SoundFile(song, "w", CLIP_RATE, 2, subtype="PCM_16") as file:
        rng = np.random.default_rng(0)
        for start in range(0, frames, 60 * CLIP_RATE):  # written a minute at a time: the bench stays small too
            file.write(rng.uniform(-0.3, 0.3, (min(60 * CLIP_RATE, frames - start), 2)))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report
    # this (large) benchmark process's memory at the fork.
    script = ("import sys, separate; code = separate.main(sys.argv[1:]); "
              "print('VMHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, str(song), "--model", str(model_dir), "--out",
                             str(scratch / "out")], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    kilobytes = int(result.stdout.split("VMHWM")[1].split()[0])
    return kilobytes / 2 ** 20


def save_random_run(model: BenchModel, folder: Path) -> Path:
    """A run directory of ``model`` with random weights, as ``load_separator`` and export.py read it."""
    run_directory = RunDirectory(folder)
    run_directory.write_config(RunConfig(arch=model.arch, config_name=model.name, model=model.config.to_dict()))
    run_directory.checkpoints.mkdir()
    model.architecture.build(model.config).save(run_directory.last_checkpoint)
    return folder


def quality(runtimes: list, data_root: Path, chunk_seconds: float, scratch: Path) -> dict:
    """Median SDR of the shipped model in each runtime on the MUSDB18 validation previews, against
    keras-float32: printed, and returned by runtime ({} where the previews are absent)."""
    if not data_root.is_dir():
        print(f"Quality: skipped, no MUSDB18 previews at {data_root}")
        return {}
    valid = [scoring.load_track_audio(track) for track in get_tracks("musdb", "valid", data_root=data_root)]
    calibration_tracks = get_tracks("musdb", "train", data_root=data_root)[:CALIBRATION_SONGS]
    calibration = [(audio["mixture"], rate) for audio, rate in map(scoring.load_track_audio, calibration_tracks)]
    print(f"Quality of {PRETRAINED_MODEL.name} on the {len(valid)} MUSDB18 validation previews (median SDR over "
          f"tracks, BSSEval v4; int8 calibrated on {CALIBRATION_SONGS} training previews)")
    print(f"{'runtime':18s} {'vocals':>8s} {'Δ':>7s} {'accomp.':>8s} {'Δ':>7s}  within {SDR_TOLERANCE} dB")
    reference, figures = None, {}
    for runtime, model in runtime_models(PRETRAINED_MODEL, scratch / "shipped", runtimes, calibration).items():
        separator = load_separator(*model)
        scores = [scoring.bss_scores(audio, separate_song(separator, audio["mixture"], rate, chunk_seconds), rate)
                  for audio, rate in valid]
        sdr = {source: float(np.nanmedian([track[source]["SDR"] for track in scores])) for source in SOURCES}
        reference = reference or sdr
        delta = {source: sdr[source] - reference[source] for source in SOURCES}
        within = "yes" if all(abs(d) <= SDR_TOLERANCE for d in delta.values()) else "NO"
        print(f"{runtime:18s} {sdr['vocals']:8.2f} {delta['vocals']:+7.3f} {sdr['accompaniment']:8.2f} "
              f"{delta['accompaniment']:+7.3f}  {within}")
        figures[runtime] = {"runtime": runtime, **{f"{source}_sdr": round(sdr[source], 3) for source in SOURCES},
                            **{f"{source}_delta": round(delta[source], 3) for source in SOURCES}}
    return figures


def long_minutes(text: str) -> float:
    """argparse type of --long-minutes: at least a second of audio, or 0 to skip the memory test."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if value == 0:
        return 0.0
    if not math.isfinite(value) or value * 60 < 1:
        raise argparse.ArgumentTypeError(f"must be a number of minutes of at least 1/60 (one second), or 0 to "
                                         f"skip the memory test, not {text}")
    return value


def positive_count(text: str) -> int:
    """argparse type of --repeats: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", type=BenchModel.parse,
                        default=[BenchModel.parse(text) for text in DEFAULT_CONFIGS],
                        help="configs to time, with random weights: <arch>:<config> of any registered "
                             "architecture, a Wave-U-Net config's bare name, or a run directory (its "
                             "model's shape) (default: "
                             f"{' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                        help="runtimes to time each config in (default: all); keras-float32, the reference, "
                             "is always measured")
    parser.add_argument("--chunk-seconds", type=positive_seconds, default=30.0,
                        help="audio per model call (default: 30, separate.py's default)")
    parser.add_argument("--repeats", type=positive_count, default=3,
                        help=f"timed runs per row; the best counts (default: 3; generating configs: "
                             f"{GENERATION_REPEATS})")
    parser.add_argument("--long-minutes", type=long_minutes, default=10.0,
                        help="length in minutes of the file whose separation's peak RSS is measured (default: 10); "
                             "0 skips this memory test")
    parser.add_argument("--model", help="run directory for the memory test (default: the shipped pretrained "
                                        "model, else a random small model)")
    parser.add_argument("--quality", action="store_true",
                        help="also score the shipped model in each runtime on the MUSDB18 validation previews")
    parser.add_argument("--data-root", type=Path, default=PREVIEWS,
                        help=f"MUSDB18 root for --quality (default: {PREVIEWS}; skipped where absent)")
    parser.add_argument("--wiener", type=em_iterations, nargs="+", default=[], metavar="N",
                        help="also time the Wiener post-filter with N EM iterations (each given) on the first "
                             "config's outputs at its rate, alone and after the model")
    parser.add_argument("--wiener-soft-mask", action="store_true",
                        help="--wiener starts from the soft mask of the mixture (0: the mask alone; "
                             "as evaluate.py's flag)")
    parser.add_argument("--record", action="store_true",
                        help="also put the speed rows into docs/results/runtime-speed.json (row CONFIG-RUNTIME) and, "
                             "with --quality, the SDR rows into runtime-quality.json (row RUNTIME), with this command "
                             "line, the commit, the CPU and the date (python -m bench.records renders the tables)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    runtimes = ["keras-float32"] + [runtime for runtime in args.runtimes if runtime != "keras-float32"]
    # Each Keras separator traces its own graph once; TF counts those traces together as "retracing".
    tf.get_logger().setLevel("ERROR")

    clip = np.random.default_rng(0).uniform(-0.3, 0.3, (30 * CLIP_RATE, 2)).astype(np.float32)
    peak = matmul_flops_per_second()
    print(f"Machine: {os.cpu_count()} CPU cores, float32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"clip: 30 s stereo at {CLIP_RATE} Hz; chunks of {args.chunk_seconds:g} s; best of {args.repeats} runs "
          f"({GENERATION_REPEATS} for configs that generate sample by sample)")
    print(f"{'model':15s} {'runtime':18s} {'rate':>6s} {'x realtime':>11s} {'vs keras fp32':>13s} {'% fp32 peak':>12s} "
          f"{'context overhead':>17s} {'f90 framing':>12s}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        realtime = {model.label: speed_rows(model, runtimes, clip, args.chunk_seconds, args.repeats, peak, scratch)
                    for model in args.configs}
        peer_rows(realtime, clip, args.repeats)
        shipped_separator_row(clip, args.chunk_seconds, args.repeats, scratch, open_unmix_umxhq()[0])
        resampling_row(args.configs[0], clip, args.chunk_seconds, args.repeats, scratch)
        if args.wiener:
            first = args.configs[0]
            post_filter_rows(first, realtime[first.label]["keras-float32"], clip, args.chunk_seconds, args.wiener,
                             args.wiener_soft_mask, args.repeats, scratch)

        if args.long_minutes == 0:
            print("Peak RSS: memory test skipped (--long-minutes 0)")
        else:
            model_dir = Path(args.model) if args.model else (
                PRETRAINED_MODEL if PRETRAINED_MODEL.is_dir() else save_random_run(BenchModel.parse("small"),
                                                                                    scratch / "run"))
            rss = peak_rss_of_long_separation(args.long_minutes, model_dir, scratch)
            audio_gib = args.long_minutes * 60 * CLIP_RATE * 2 * 4 / 2 ** 30
            print(f"Peak RSS separating a {args.long_minutes:g}-minute stereo file with {model_dir.name}: "
                  f"{rss:.2f} GiB (limit 2 GiB; the song itself is {audio_gib:.2f} GiB as float32)")
        scores = quality(runtimes, args.data_root, args.chunk_seconds, scratch) if args.quality else {}
    if args.record:
        how = records.measurement("-m bench.separate", sys.argv[1:] if argv is None else list(argv))
        for label, speeds in realtime.items():
            for runtime, speed in speeds.items():
                records.record_row("runtime-speed", f"{label}-{runtime}", {
                    "model": label, "runtime": runtime, "realtime": round(speed, 2),
                    "ratio": round(speed / speeds["keras-float32"], 2)}, how)
        for runtime, figures in scores.items():
            records.record_row("runtime-quality", runtime, figures, how)
        print("Recorded in docs/results/runtime-speed.json" + (" and runtime-quality.json" if scores else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
