"""Run directories with float16 weights (``checkpoints/best.float16.npz``: half the
size, loaded as float32 by every tool) and their one writer, ``write_float16_run``.
It writes the rounded weights only when the model separates a fixed test signal with
them within ``FLOAT16_TOLERANCE`` of its float32 weights, and records the measured
difference in the file. Keras and numpy only (the model's own forward, no TensorFlow):
training.gpu_campaign writes these under JAX on hosts without TensorFlow."""
from __future__ import annotations

import keras
import numpy as np

from models.registry import ARCHITECTURES, build_in_precision
from runtime.run_directory import FLOAT16_CHECK_KEY, RunDirectory, float16_weight_names

FLOAT16_TOLERANCE = 1e-3  # float16 weights carry ~3 significant digits
TEST_SECONDS = 4  # of separated output in the check's one model call


class Float16Error(ValueError):
    """A float16 run directory that was not written (nothing was)."""


def probe_signal(sample_rate: int, channels: int, length: int) -> np.ndarray:
    """Tones and noise below full scale: ``[time, channels]``."""
    t = np.arange(length) / sample_rate
    rng = np.random.default_rng(0)
    tones = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t)
    signal = tones[:, None] + 0.1 * rng.standard_normal((length, channels))
    return signal.astype(np.float32)


def float16_difference(model, arch: str, config, rounded: list[np.ndarray]) -> float:
    """Max abs difference between the separations of the probe signal (one model call
    giving TEST_SECONDS of output) by ``model`` with its own weights and with ``rounded``;
    ``model`` keeps ``rounded``."""
    architecture = ARCHITECTURES[arch]
    plan = architecture.chunk_plan(config, TEST_SECONDS * config.sample_rate)
    window = probe_signal(config.sample_rate, config.channels, plan.input_length)[None]

    def separate() -> dict:
        estimates = architecture.run_windows(model, config, keras.ops.convert_to_tensor(window))
        return {source: keras.ops.convert_to_numpy(estimate) for source, estimate in estimates.items()}

    reference = separate()
    model.set_weights([weight.astype(np.float32) for weight in rounded])  # as the loader reads them
    compact = separate()
    return max(float(np.max(np.abs(compact[source] - reference[source]))) for source in reference)


def write_float16_run(run_dir, destination, tolerance: float = FLOAT16_TOLERANCE, log=print) -> float:
    """Writes ``destination``: the config of the run in ``run_dir`` and its best (else
    last) weights rounded to float16, if the separation changes by at most ``tolerance``;
    returns that difference. Otherwise, or over a non-empty folder, a Float16Error."""
    source, target = RunDirectory(run_dir), RunDirectory(destination)
    if target.path.exists() and any(target.path.iterdir()):
        raise Float16Error(f"{target.path} is not empty")
    run = source.read_config()
    architecture = ARCHITECTURES[run.arch]
    config = architecture.config_from_dict(run.model)
    # Built in float32 whatever the run trained in: the check measures the weights' rounding alone.
    model = build_in_precision(architecture.build, config, "float32")
    checkpoint = source.load_weights(model)
    with np.errstate(over="ignore"):  # a weight beyond float16's range becomes inf: the check reports it
        rounded = [np.asarray(weight, np.float16) for weight in model.get_weights()]
    difference = float16_difference(model, run.arch, config, rounded)
    log(f"{checkpoint} in float16: separation of a {TEST_SECONDS} s test signal vs the float32 weights: "
        f"max abs diff {difference:.2e} (at most {tolerance:g})")
    if not difference <= tolerance:
        raise Float16Error(f"float16 weights change the separation by {difference:.2e} (> {tolerance:g}); "
                           f"{target.path} was not written")
    target.write_config(run)
    target.checkpoints.mkdir(parents=True, exist_ok=True)
    np.savez(target.float16_checkpoint, **dict(zip(float16_weight_names(model), rounded)),
             **{FLOAT16_CHECK_KEY: np.float64(difference)})
    log(f"{target.float16_checkpoint}: {target.float16_checkpoint.stat().st_size / 1e6:.1f} MB")
    return difference

