"""train.py end to end on a tiny Wave-U-Net and tiny synthetic songs: the loss
falls, the run directory is complete, and a killed run resumes where it was."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import train
from inference import load_separator
from models.waveunet import WaveUNetConfig
from tests.test_separate import TINY, make_run_dir

REPOSITORY = Path(__file__).resolve().parents[1]
TINY_MODEL = WaveUNetConfig(num_layers=3, num_initial_filters=8, context=True, output_type="difference",
                            channels=2, sample_rate=8000, num_frames=2048)


def write_run(run_dir: Path, cache_dir: Path, steps: int, validate_every: int) -> dict:
    run = {
        "arch": "waveunet",
        "config_name": "tiny",
        "model": TINY_MODEL.to_dict(),
        "data": {"dataset": "synthetic", "data_root": None, "cache_dir": str(cache_dir), "synthetic_duration": 3.0,
                 "synthetic_songs": {"train": 3, "valid": 1, "test": 1}},
        "training": {**train.TRAINING_DEFAULTS, "steps": steps, "batch_size": 4, "learning_rate": 3e-3,
                     "validate_every": validate_every, "validation_excerpts": 2},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(run))
    return run


def test_training_lowers_the_loss_and_fills_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=60, validate_every=20)
    model, history = train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir)])))
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(model.optimizer.iterations.numpy()) == 60
    best = keras.saving.load_model(run_dir / "checkpoints" / "best.keras")
    mix = np.random.default_rng(0).uniform(-0.1, 0.1, (1, model.input_shape[1] or 10000, 2)).astype(np.float32)
    np.testing.assert_allclose(best.predict(mix, verbose=0)["vocals"], best(mix)["vocals"].numpy(), atol=1e-6)
    assert "val_sdr_vocals" in history.history
    train_tags, examples = logged_tags(run_dir / "logs" / "train"), logged_tags(run_dir / "logs" / "validation_examples")
    assert {"epoch_loss", "epoch_learning_rate", "keras"} <= set(train_tags["tensors"])
    assert {"sdr/vocals", "sdr_mixture_baseline/vocals", "sdr/accompaniment", "reference_vocals/example_0",
            "estimate_vocals/example_0", "estimate_vocals_spectrogram/example_0", "mixture/example_0"} <= set(
        examples["tensors"])
    assert examples["graph"]
    assert "epoch_sdr_vocals" in logged_tags(run_dir / "logs" / "validation")["tensors"]


def logged_tags(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return accumulator.Tags()


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not a run directory"):
        train.resolve_run(train.parse_args(["--resume", str(tmp_path)]))
    with pytest.raises(SystemExit, match="unknown --config 'M9'"):
        train.resolve_run(train.parse_args(["--config", "M9", "--run-dir", str(tmp_path / "x")]))
    with pytest.raises(SystemExit, match="needs --data-root"):
        train.main(["--dataset", "musdb", "--run-dir", str(tmp_path / "y"), "--steps", "1"])


def run_training_process(run_dir: Path) -> subprocess.Popen:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "train.py", "--resume", str(run_dir)], cwd=REPOSITORY,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_from_its_last_backup(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=400, validate_every=10)
    metadata = run_dir / "backup" / "training_metadata.json"
    process = run_training_process(run_dir)
    deadline = time.monotonic() + 240
    while not (metadata.exists() and json.loads(metadata.read_text())["epoch"] >= 1):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no backup written in time"
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)  # no chance to clean up, as with a crash
    process.wait(timeout=30)
    killed_at_epoch = json.loads(metadata.read_text())["epoch"]
    assert killed_at_epoch < 40

    model, history = train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir), "--steps",
                                                                      str(10 * (killed_at_epoch + 2))])))
    assert len(history.history["loss"]) == 2  # only the epochs after the backup ran
    assert int(model.optimizer.iterations.numpy()) == 10 * (killed_at_epoch + 2)  # step counter carried over


STRATEGY_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import train
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
model, history = train.train(*train.resolve_run(train.parse_args(["--resume", sys.argv[1]])), strategy=strategy)
print("replicas", strategy.num_replicas_in_sync, "steps", int(model.optimizer.iterations.numpy()))
"""


def test_training_under_a_mirrored_strategy_on_two_logical_cpus(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=6, validate_every=3)
    result = subprocess.run([sys.executable, "-c", STRATEGY_SCRIPT, str(run_dir)], cwd=REPOSITORY, text=True,
                            capture_output=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in result.stdout
    assert "replicas 2 steps 6" in result.stdout


def test_init_from_starts_with_another_runs_weights_and_architecture(tmp_path):

    source = make_run_dir(tmp_path / "source")
    run_dir, run = train.resolve_run(train.parse_args(["--init-from", str(source), "--run-dir", str(tmp_path / "new"),
                                                       "--learning-rate", "1e-5"]))
    assert run["model"] == TINY.to_dict() and run["training"]["learning_rate"] == 1e-5
    model, _ = train.build_model(run, train.choose_strategy())
    for started, trained in zip(model.weights, load_separator(source).model.weights):
        np.testing.assert_array_equal(started.numpy(), trained.numpy())
    with pytest.raises(SystemExit, match="not a run directory"):
        train.resolve_run(train.parse_args(["--init-from", str(tmp_path), "--run-dir", str(tmp_path / "x")]))
