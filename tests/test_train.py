"""train.py end to end on a tiny Wave-U-Net and tiny synthetic songs: the loss
falls, the run directory is complete, a killed run resumes where it was, and
distributed training (MirroredStrategy on two logical CPUs, two workers on loopback)
keeps its replicas in step."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import soundfile as sf

import train
from data_pipeline.datasets import DatasetError, get_tracks
from data_pipeline.pipeline import CropSpec, make_dataset
from models.waveunet import input_length_for
from runtime.loading import load_run
from runtime.run_directory import RunDirectory
from tests.helpers import (TINY_TRAINED_WAVEUNET as TINY_MODEL, TINY_WAVEUNET as TINY, best_constant_gain_loss,
                           make_run_dir, write_run)
from training import data, session
from training.checkpointing import backup_progress
from training.strategy import choose_strategy

REPOSITORY = Path(__file__).resolve().parents[1]
TRAINING_STEPS = 150


def test_training_beats_the_best_constant_gain_and_fills_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    run = write_run(run_dir, tmp_path / "cache", steps=TRAINING_STEPS, validate_every=TRAINING_STEPS // 3)
    model, history = train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir)])))
    assert int(model.optimizer.iterations.numpy()) == TRAINING_STEPS
    # Fresh augmented crops of the training songs (3 songs of 3 s are too few to generalise from).
    crop = CropSpec(*input_length_for(TINY_MODEL, TINY_MODEL.num_frames))
    batches = make_dataset(data.training_groups(run, TINY_MODEL.sample_rate)[0], sample_rate=8000, crop=crop,
                           batch_size=4, seed=123).take(16).cache()
    model_loss, constant_gain_loss = model.evaluate(batches, verbose=0)[0], best_constant_gain_loss(batches)
    assert model_loss < 0.7 * constant_gain_loss, (model_loss, constant_gain_loss)  # measured: 0.42 (0.38-0.57 over seeds 0-2)
    best = keras.saving.load_model(RunDirectory(run_dir).best_checkpoint)
    mix = np.random.default_rng(0).uniform(-0.1, 0.1, (1, model.input_shape[1] or 10000, 2)).astype(np.float32)
    np.testing.assert_allclose(best.predict(mix, verbose=0)["vocals"], best(mix)["vocals"].numpy(), atol=1e-6)
    assert "val_sdr_vocals" in history.history
    train_tags, examples = logged_tags(RunDirectory(run_dir).logs / "train"), logged_tags(RunDirectory(run_dir).logs / "validation_examples")
    assert {"epoch_loss", "epoch_learning_rate", "keras"} <= set(train_tags["tensors"])
    assert {"sdr/vocals", "sdr_best_gain_baseline/vocals", "sdr_mixture_baseline/vocals", "sdr/accompaniment", "reference_vocals/example_0",
            "estimate_vocals/example_0", "estimate_vocals_spectrogram/example_0", "mixture/example_0"} <= set(
        examples["tensors"])
    assert examples["graph"]
    assert "epoch_sdr_vocals" in logged_tags(RunDirectory(run_dir).logs / "validation")["tensors"]


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
    metadata = RunDirectory(run_dir).backup / "training_metadata.json"
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


@pytest.fixture(scope="module")
def song_cache(tmp_path_factory):
    """The songs write_run trains on, generated once for the tests here that share them."""
    cache = tmp_path_factory.mktemp("songs")
    data.check_data(write_run(tmp_path_factory.mktemp("songs-run"), cache, steps=1, validate_every=1),
                    TINY_MODEL.sample_rate)
    return cache


def assert_complete_run(run_dir: Path, steps: int, validations: int) -> list[float]:
    """The run directory holds all that a finished run writes; returns its logged losses."""
    run = RunDirectory(run_dir)
    assert run.config_file.is_file() and run.best_checkpoint.is_file() and run.last_checkpoint.is_file()
    assert backup_progress(run.backup)["step"] == steps
    assert {"train", "validation", "validation_examples"} <= {path.name for path in run.logs.iterdir()}
    with open(run.logs / "metrics.csv") as metrics:
        losses = [float(row["loss"]) for row in csv.DictReader(metrics)]
    assert len(losses) == validations and np.all(np.isfinite(losses)), losses
    return losses


def assert_complete_with_falling_loss(run_dir: Path, steps: int, validations: int) -> list[float]:
    """The run directory holds all that a finished run writes, and its logged loss fell."""
    losses = assert_complete_run(run_dir, steps, validations)
    assert losses[-1] < losses[0], losses
    return losses


MIRRORED_SCRIPT = """
import json
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import train
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
model, history = train.train(*train.resolve_run(train.parse_args(["--resume", sys.argv[1]])), strategy=strategy)
copies = [strategy.experimental_local_results(weight.value) for weight in model.weights]
print("RESULT", json.dumps({
    "replicas": model.distribute_strategy.num_replicas_in_sync,
    "steps": int(model.optimizer.iterations.numpy()),
    "devices": sorted({copy.device.split("/")[-1] for weight in copies for copy in weight}),
    "replica_difference": max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in copies)}))
"""


def test_training_under_a_mirrored_strategy_on_two_logical_cpus(tmp_path, song_cache):
    run_dir = tmp_path / "run"
    write_run(run_dir, song_cache, steps=4, validate_every=2)
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(run_dir)], cwd=REPOSITORY, text=True,
                            capture_output=True, timeout=240, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    outcome = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert outcome["replicas"] == 2 and outcome["steps"] == 4
    assert outcome["devices"] == ["device:CPU:0", "device:CPU:1"]
    assert outcome["replica_difference"] == 0  # every update reached both copies of every weight
    assert_complete_with_falling_loss(run_dir, steps=4, validations=2)


def test_init_from_starts_with_another_runs_weights_and_architecture(tmp_path):

    source = make_run_dir(tmp_path / "source")
    run_dir, run = train.resolve_run(train.parse_args(["--init-from", str(source), "--run-dir", str(tmp_path / "new"),
                                                       "--learning-rate", "1e-5"]))
    assert run["model"] == TINY.to_dict() and run["training"]["learning_rate"] == 1e-5
    model, _ = session.build_model(run, choose_strategy())
    for started, trained in zip(model.weights, load_run(source).model.weights):
        np.testing.assert_array_equal(started.numpy(), trained.numpy())
    with pytest.raises(SystemExit, match="not a run directory"):
        train.resolve_run(train.parse_args(["--init-from", str(tmp_path), "--run-dir", str(tmp_path / "x")]))


@pytest.mark.parametrize("config,expected", [
    ("small", {"steps": 400, "batch_size": 8, "learning_rate": 1e-3, "learning_rate_schedule": "cosine",
               "validate_every": 200, "patience": 20}),
    ("M5", {"steps": 100_000, "batch_size": 16, "learning_rate": 1e-4, "learning_rate_schedule": "constant",
            "validate_every": 2000, "patience": 20}),
])
def test_named_configs_train_with_their_architectures_presets(tmp_path, config, expected):
    _, run = train.resolve_run(train.parse_args(["--config", config, "--run-dir", str(tmp_path / "run")]))
    assert {key: run["training"][key] for key in expected} == expected


def resume(run_dir: Path, *flags: str):
    return train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir), *flags])))


def test_steps_are_exact_and_the_last_short_interval_still_validates(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=25, validate_every=10)
    model, history = resume(run_dir)
    assert int(model.optimizer.iterations.numpy()) == 25
    assert len(history.history["val_loss"]) == 3  # 10 + 10 + 5 steps, each validated
    model, history = resume(run_dir, "--steps", "32")  # longer: recorded in config.json
    assert int(model.optimizer.iterations.numpy()) == 32 and len(history.history["val_loss"]) == 1
    assert RunDirectory(run_dir).read_config()["training"]["steps"] == 32
    model, history = resume(run_dir)  # nothing left to do
    assert history is None


def test_with_ema_the_checkpoints_hold_the_averaged_weights_and_the_backup_the_raw_ones(tmp_path):
    """--ema: best.keras and last.keras hold the moving average of the weights; the resumable
    backup holds the raw weights the optimizer goes on from, with the average beside them."""
    run_dir = tmp_path / "run"
    run = write_run(run_dir, tmp_path / "cache", steps=6, validate_every=3, ema_momentum=0.5)
    resume(run_dir)
    backup, _ = session.build_model(run, choose_strategy())
    backup.optimizer.build(backup.trainable_variables)
    backup.load_weights(RunDirectory(run_dir).backup / "latest.weights.h5")
    raw = {v.path: v.numpy() for v in backup.trainable_variables}
    averages = dict(zip(raw, (v.numpy() for v in backup.optimizer._model_variables_moving_average)))
    assert max(float(np.max(np.abs(raw[path] - averages[path]))) for path in raw) > 1e-4
    for checkpoint in (RunDirectory(run_dir).last_checkpoint, RunDirectory(run_dir).best_checkpoint):
        saved = {v.path: v.numpy() for v in keras.saving.load_model(checkpoint).trainable_variables}
        if checkpoint.name == "last.keras":  # the backup and last.keras are written at the same step
            for path in raw:
                np.testing.assert_allclose(saved[path], averages[path], atol=1e-6)
        assert not all(np.allclose(saved[path], raw[path], atol=1e-6) for path in raw)
    with pytest.raises(SystemExit):
        train.parse_args(["--ema", "1.5"])


def test_bfloat16_mixed_precision_trains_and_its_checkpoint_loads_in_float32(tmp_path):
    run_dir = tmp_path / "run"
    run = write_run(run_dir, tmp_path / "cache", steps=4, validate_every=2)
    run["training"]["precision"] = "bfloat16"
    RunDirectory(run_dir).write_config(run)
    model, history = resume(run_dir)
    assert model.dtype_policy.name == "mixed_bfloat16" and int(model.optimizer.iterations.numpy()) == 4
    assert np.all(np.isfinite(history.history["loss"]))
    loaded = load_run(run_dir).model  # every tool builds it in float32 from the same weights
    assert loaded.dtype_policy.name == "float32"
    for trained, restored in zip(model.weights, loaded.weights):
        assert restored.dtype == "float32"
        np.testing.assert_array_equal(restored.numpy(), trained.numpy())
    with pytest.raises(SystemExit, match="precision"):  # a resumed run keeps its precision
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--precision", "float32"]))


@pytest.mark.slow  # three runs' worth of steps
def test_resume_falls_back_to_the_previous_backup_when_the_newest_is_corrupt(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=20, validate_every=10)
    resume(run_dir)
    backup = RunDirectory(run_dir).backup
    previous = json.loads((backup / "training_metadata.json.bkp").read_text())
    assert previous["epoch"] == 1 and previous["step"] == 10
    # As if killed while writing the newest backup: both files half-written.
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n")
    (backup / "training_metadata.json").write_text('{"epoch": 2, "ba')
    model, history = resume(run_dir, "--steps", "30")
    assert "resuming from the previous one" in capsys.readouterr().out
    assert len(history.history["loss"]) == 2 and int(model.optimizer.iterations.numpy()) == 30


@pytest.mark.slow  # two minutes on 2 cores; resuming is covered by test_a_killed_run_resumes_from_its_last_backup
def test_resume_keeps_the_best_loss_and_the_patience_count(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=20, validate_every=10)
    run = RunDirectory(run_dir).read_config()
    run["training"]["patience"] = 3
    RunDirectory(run_dir).write_config(run)
    resume(run_dir)
    metadata_path = RunDirectory(run_dir).backup / "training_metadata.json"
    metadata = json.loads(metadata_path.read_text())
    saved = metadata["callbacks"]
    assert saved["best"] == saved["early_stopping_best"] and saved["best"] > 0
    # Pretend the run before the kill had reached an unbeatable loss two validations ago.
    metadata["callbacks"].update(best=1e-12, early_stopping_best=1e-12, early_stopping_wait=2)
    metadata_path.write_text(json.dumps(metadata))
    best_file = RunDirectory(run_dir).best_checkpoint
    best_before = best_file.read_bytes()
    model, history = resume(run_dir, "--steps", "60")
    assert len(history.history["loss"]) == 1  # the third validation without improvement stops it
    assert best_file.read_bytes() == best_before  # not replaced by a worse model


def test_a_resumed_run_draws_new_crops(tmp_path, song_cache):
    seeds = {data.run_seed(0, worker, epoch) for worker in (0, 1) for epoch in (0, 3)}
    assert len(seeds) == 4
    run_dir = tmp_path / "run"
    run = write_run(run_dir, song_cache, steps=20, validate_every=10)
    config = TINY_MODEL
    crop = CropSpec(*input_length_for(config, config.num_frames))
    tracks = data.check_data(run, config.sample_rate)
    strategy = choose_strategy()
    first = [next(iter(data.build_datasets(run, tracks, config, crop, strategy, epoch)[0]))[0].numpy()
             for epoch in (0, 0, 2)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


def test_resume_refuses_flags_that_contradict_the_saved_run(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=20, validate_every=10)
    with pytest.raises(SystemExit, match=r"--batch-size 2 \(the run has 4\); --learning-rate 0.1 \(the run has 0.003\)"):
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--learning-rate", "0.1", "--batch-size", "2"]))
    train.resolve_run(train.parse_args(["--resume", str(run_dir), "--batch-size", "4"]))  # the same value is fine


def test_bad_numbers_are_refused(capsys):
    for flags in (["--steps", "0"], ["--batch-size", "-1"], ["--learning-rate", "0"], ["--validate-every", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            train.parse_args(flags)
        assert exit_info.value.code == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_every_flag_has_help():
    actions = train.build_parser()._actions
    assert len(actions) > 15 and all(action.help for action in actions)


def write_stems(song: Path, rate=8000, seconds=2, seed=0):
    rng = np.random.default_rng(seed)
    song.mkdir(parents=True)
    for name in ("vocals", "accompaniment"):
        sf.write(song / f"{name}.wav", rng.uniform(-0.3, 0.3, (rate * seconds, 2)), rate)


def test_every_bad_file_is_named_before_the_first_step(tmp_path, capsys):
    root = tmp_path / "stems"
    for index in range(12):
        write_stems(root / f"song{index:02d}", seed=index)
    (root / "song03" / "vocals.wav").write_bytes((root / "song03" / "vocals.wav").read_bytes()[:3000])  # truncated
    (root / "song11" / "accompaniment.wav").write_text("not audio")  # a validation song
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", "folder", "--data-root", str(root), "--run-dir", str(tmp_path / "run"),
                    "--steps", "1"])
    message = str(exit_info.value.code)
    assert "2 problem(s)" in message
    assert str(root / "song03" / "vocals.wav") in message and str(root / "song11" / "accompaniment.wav") in message


WORKER_SCRIPT = """
import json
import os
import sys
import numpy as np
import train
from training.strategy import cluster_role
model, history = train.train(*train.resolve_run(train.parse_args(["--resume", sys.argv[1]])))
np.savez(sys.argv[2], *model.get_weights())
strategy = model.distribute_strategy
print("RESULT", json.dumps({"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
                            "workers": cluster_role(strategy).count, "steps": int(model.optimizer.iterations.numpy()),
                            "losses": history.history["loss"]}), flush=True)
# Skips TensorFlow's exit, where the chief waits out the heartbeat timeout (~17 s) of a
# worker that has already left.
os._exit(0)
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_training_with_a_chief_and_a_worker(tmp_path, song_cache):
    run_dir = tmp_path / "run"
    # 1 validation excerpt for 2 replicas: one replica's share of the batch was empty, which failed.
    write_run(run_dir, song_cache, steps=4, validate_every=2, validation_excerpts=1)
    chief, worker = (f"127.0.0.1:{port}" for port in free_ports(2))
    tasks = ("chief", "worker")
    processes = []
    for task_type in tasks:
        tf_config = {"cluster": {"chief": [chief], "worker": [worker]}, "task": {"type": task_type, "index": 0}}
        environment = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2",
                       "TMPDIR": str(tmp_path)}
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(run_dir),
                                           str(tmp_path / f"{task_type}.npz")], cwd=REPOSITORY, env=environment,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 240
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        pytest.fail("the workers did not finish in 240 s")
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, "\n\n".join(o[-3000:] for o in outputs)
    results = [json.loads(output.split("RESULT ", 1)[1]) for output in outputs]
    for result in results:  # MultiWorkerMirroredStrategy, chosen from TF_CONFIG
        assert (result["strategy"], result["replicas"], result["workers"], result["steps"]) == (
            "CollectiveAllReduceStrategy", 2, 2, 4)
    # Each worker logs the loss averaged over both; the chief wrote the run directory. Not
    # asserted: that the loss fell. Over 2 + 2 steps of batch 4 it is noise, and this run
    # logged 0.0203 then 0.0230 in some runs, under load and on an idle machine alike
    # (single-process tests check that training learns).
    np.testing.assert_allclose(results[0]["losses"], results[1]["losses"], rtol=1e-6)
    np.testing.assert_allclose(assert_complete_run(run_dir, steps=4, validations=2),
                               results[0]["losses"], rtol=1e-6)
    final = {}
    for task in tasks:
        with np.load(tmp_path / f"{task}.npz") as weights:
            final[task] = [weights[f"arr_{index}"] for index in range(len(weights.files))]
    last = keras.saving.load_model(RunDirectory(run_dir).last_checkpoint, compile=False).get_weights()
    assert len(last) == len(final["chief"]) == len(final["worker"])
    for saved, chief_weight, worker_weight in zip(last, final["chief"], final["worker"]):
        np.testing.assert_array_equal(chief_weight, worker_weight)  # the workers stayed in step
        np.testing.assert_array_equal(saved, chief_weight)  # and the chief saved where they ended
    scratch = list(tmp_path.glob("worker1-*"))  # the worker wrote its files outside the run directory
    assert len(scratch) == 1 and RunDirectory(scratch[0]).last_checkpoint.is_file()


def test_cluster_roles_count_the_chief():
    import tensorflow as tf

    from training.strategy import ClusterRole, cluster_role

    def role(task_type, index, cluster):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=index)
        return cluster_role(type("Strategy", (), {"cluster_resolver": resolver})())

    with_chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert [role("chief", 0, with_chief), role("worker", 0, with_chief), role("worker", 1, with_chief)] == [
        ClusterRole(3, 0, True), ClusterRole(3, 1, False), ClusterRole(3, 2, False)]
    workers_only = {"worker": ["b:1", "c:1"]}
    assert [role("worker", 0, workers_only), role("worker", 1, workers_only)] == [
        ClusterRole(2, 0, True), ClusterRole(2, 1, False)]
    assert cluster_role(choose_strategy()) == ClusterRole(1, 0, True)


def test_a_file_that_fails_only_inside_tf_data_is_named(tmp_path, monkeypatch):
    root = tmp_path / "stems"
    for index in range(4):
        write_stems(root / f"song{index}", seed=index)
    broken = root / "song1" / "vocals.wav"
    checked = data.check_data

    def check_then_break(run, sample_rate):  # the file changes after the check, as on a flaky disk
        tracks = checked(run, sample_rate)
        broken.write_bytes(broken.read_bytes()[:3000])
        return tracks

    monkeypatch.setattr(session, "check_data", check_then_break)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", "folder", "--data-root", str(root), "--run-dir", str(tmp_path / "run"),
                    "--steps", "4", "--validate-every", "2", "--batch-size", "2"])
    message = str(exit_info.value.code)
    assert message.startswith("error: decoding the training data failed") and str(broken) in message


JAX_TRAINING_SCRIPT = """
import sys
sys.modules["tensorflow"] = None  # as on a GPU host that has JAX and no TensorFlow
import numpy as np
import train
from runtime.run_directory import RunDirectory
from training.checkpointing import optimizer_step
model, history = train.train(*train.resolve_run(train.parse_args(["--resume", sys.argv[1]])))
import keras
best = keras.saving.load_model(RunDirectory(sys.argv[1]).checkpoint())  # what every tool loads
np.save(sys.argv[3], np.asarray(best.predict(np.load(sys.argv[2]), verbose=0)["vocals"]))
print("steps", optimizer_step(model), "validations", len(history.history["val_loss"]))
"""


def test_training_under_jax_without_tensorflow_loads_under_tensorflow(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, tmp_path / "cache", steps=6, validate_every=3)
    mix = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4000, 2)).astype(np.float32)
    np.save(tmp_path / "mix.npy", mix)
    result = subprocess.run([sys.executable, "-c", JAX_TRAINING_SCRIPT, str(run_dir), str(tmp_path / "mix.npy"),
                             str(tmp_path / "vocals.npy")], cwd=REPOSITORY, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "on jax on " in result.stdout and "steps 6 validations 2" in result.stdout
    run_directory = RunDirectory(run_dir)
    assert run_directory.best_checkpoint.is_file() and (run_directory.logs / "metrics.csv").is_file()
    header = (run_directory.logs / "metrics.csv").read_text().splitlines()[0]
    assert "val_sdr_gain_vocals" in header
    under_tensorflow = load_run(run_dir).model.predict(mix, verbose=0)["vocals"]
    np.testing.assert_allclose(under_tensorflow, np.load(tmp_path / "vocals.npy"), atol=1e-5)


PREVIEWS = REPOSITORY.parent / "shared" / "data" / "musdb18-train-previews"


def test_mixed_datasets_train_on_both_and_validate_on_the_real_songs(tmp_path):
    root = tmp_path / "stems"
    for index in range(10):
        write_stems(root / f"song{index:02d}", seed=index)
    run_dir, run = train.resolve_run(train.parse_args([
        "--dataset", "synthetic+folder", "--data-root", str(root), "--mix-weights", "0.7,0.3", "--run-dir",
        str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--synthetic-songs", "2"]))
    assert run["data"]["mix_weights"] == [0.7, 0.3]
    run["data"]["synthetic_duration"] = 3.0
    groups, valid = data.training_groups(run, 8000), data.validation_tracks(run, 8000)
    assert [len(group) for group in groups] == [2, 9]
    assert [track.name for track in valid] == ["song09"]  # the real songs' validation split, not synthetic's
    with pytest.raises(SystemExit, match=r"--mix-weights \[0.5, 0.5\] \(the run has \[0.7, 0.3\]\)"):
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--mix-weights", "0.5,0.5"]))
    for bad in (["--dataset", "synthetic+nope"], ["--dataset", "musdb+musdb"], ["--mix-weights", "1,x"],
                ["--mix-weights", "0,0"]):
        with pytest.raises(SystemExit):
            train.parse_args(bad)


@pytest.mark.skipif(not PREVIEWS.is_dir(), reason="needs ../shared/data/musdb18-train-previews")
def test_select_on_picks_the_checkpoint_on_the_named_datasets_only_and_others_train_only(tmp_path):
    """A folder dataset with a train/ split only (like karaoke clips kept for training) beside
    the MUSDB18 previews: by default the run refuses (every real dataset must have validation
    songs); with --select-on musdb the folder trains only, and the songs check_data hands to
    validation, which picks the checkpoint, are exactly the 14 validation previews."""
    training_only = tmp_path / "training-only"
    for index in range(4):
        write_stems(training_only / "train" / f"extra{index}", rate=22050, seed=index)
    common = ["--dataset", "folder+musdb", "--data-root", str(training_only), "--data-root", str(PREVIEWS),
              "--cache-dir", str(tmp_path / "cache")]
    _, default = train.resolve_run(train.parse_args([*common, "--run-dir", str(tmp_path / "default")]))
    with pytest.raises(DatasetError, match="no songs for split 'valid'"):
        data.validation_tracks(default, 22050)
    run_dir, run = train.resolve_run(train.parse_args([*common, "--select-on", "musdb",
                                                       "--run-dir", str(tmp_path / "run")]))
    assert run["data"]["select_on"] == ["musdb"]
    # What check_data hands to validation (without its header checks of all 94 songs).
    tracks = {"train": data.training_groups(run, 22050), "valid": data.validation_tracks(run, 22050)}
    previews = {track.name for track in get_tracks("musdb", "valid", data_root=PREVIEWS)}
    assert len(previews) == 14 and {track.name for track in tracks["valid"]} == previews
    assert [len(group) for group in tracks["train"]] == [4, 80]
    with pytest.raises(SystemExit, match="--select-on synthetic: synthetic is not in --dataset folder"):
        train.resolve_run(train.parse_args([*common, "--select-on", "synthetic", "--run-dir", str(tmp_path / "x")]))
    with pytest.raises(SystemExit, match=r"--select-on folder \(the run has musdb\)"):
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--select-on", "folder"]))


@pytest.mark.skipif(not PREVIEWS.is_dir(), reason="needs ../shared/data/musdb18-train-previews")
def test_the_validation_previews_are_never_trained_on():
    run = {"data": {"dataset": "synthetic+musdb", "data_root": [str(PREVIEWS)], "cache_dir": None,
                    "synthetic_songs": {"train": 1, "valid": 1, "test": 1}}}
    real_training = {track.name for track in data.training_groups(run, 22050)[1]}
    validation = {track.name for track in data.validation_tracks(run, 22050)}
    assert len(validation) == 14 and len(real_training) == 80 and not validation & real_training


def test_l1_and_band_limited_losses_train_are_recorded_and_refused_where_they_do_not_apply(tmp_path):
    """--loss l1 --band-limit: the run trains with the band-limited L1 loss of training.losses
    (its values checked in tests/test_losses.py), keeps it on resume, and both flags are
    refused for mu-law models and for a band edge at or above half the model's rate."""
    run_dir, cache = tmp_path / "run", str(tmp_path / "cache")
    common = ["--dataset", "synthetic", "--synthetic-songs", "3", "--cache-dir", cache, "--batch-size", "2",
              "--validate-every", "2", "--steps", "2"]
    _, run = train.resolve_run(train.parse_args([*common, "--loss", "l1", "--band-limit", "8000",
                                                 "--run-dir", str(run_dir)]))
    assert RunDirectory(run_dir).read_config()["training"]["loss"] == "l1"
    model, _ = session.build_model(run, choose_strategy())
    assert {loss.__name__ for loss in model.loss.values()} == {"l1_below_8000hz"}
    with pytest.raises(SystemExit, match="--loss"):  # a resumed run keeps its loss
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--loss", "mse"]))
    with pytest.raises(SystemExit, match="waveform models"):
        train.resolve_run(train.parse_args([*common, "--arch", "wavenet", "--loss", "l1",
                                            "--run-dir", str(tmp_path / "wavenet")]))
    with pytest.raises(SystemExit, match="half the model's sample rate"):
        train.resolve_run(train.parse_args([*common, "--band-limit", "11025", "--run-dir", str(tmp_path / "edge")]))
    with pytest.raises(SystemExit):
        train.parse_args(["--loss", "huber"])
    tiny_run_dir = tmp_path / "tiny"
    write_run(tiny_run_dir, tmp_path / "tiny-cache", steps=4, validate_every=2, loss="l1", band_limit_hz=3000.0)
    model, history = resume(tiny_run_dir)
    assert int(model.optimizer.iterations.numpy()) == 4 and np.all(np.isfinite(history.history["loss"]))


def test_a_cosine_schedule_falls_from_the_learning_rate_to_zero_over_the_runs_steps(tmp_path):
    run_dir = tmp_path / "run"
    _, run = train.resolve_run(train.parse_args(["--lr-schedule", "cosine", "--learning-rate", "1e-3", "--steps", "100",
                                                 "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "c")]))
    assert RunDirectory(run_dir).read_config()["training"]["learning_rate_schedule"] == "cosine"
    optimizer = session.make_optimizer(run.training)
    rates = []
    for step in (0, 50, 100):
        optimizer.iterations.assign(step)
        rates.append(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
    np.testing.assert_allclose(rates, [1e-3, 5e-4, 0.0], atol=1e-9)
    constant = session.make_optimizer({**run.training, "learning_rate_schedule": "constant"})
    constant.iterations.assign(100)
    assert float(keras.ops.convert_to_numpy(constant.learning_rate)) == pytest.approx(1e-3)
    with pytest.raises(SystemExit, match=r"--lr-schedule constant \(the run has cosine\)"):  # a resumed run keeps its schedule
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--lr-schedule", "constant"]))
    with pytest.raises(SystemExit, match="learning-rate decay"):  # UMT decays per validation already
        train.resolve_run(train.parse_args(["--arch", "umt", "--lr-schedule", "cosine",
                                            "--run-dir", str(tmp_path / "umt")]))


def test_model_set_changes_fields_of_the_named_config_and_refuses_what_does_not_fit(tmp_path):
    run_dir = tmp_path / "run"
    _, run = train.resolve_run(train.parse_args(["--model-set", "num_initial_filters=24", "--model-set",
                                                 "sample_rate=16000", "--model-set", "context=true",
                                                 "--run-dir", str(run_dir)]))
    saved = RunDirectory(run_dir).read_config()["model"]
    assert (saved["num_initial_filters"], saved["sample_rate"], saved["context"]) == (24, 16000, True)
    assert saved["num_layers"] == 8  # the rest is the small config's
    model, _ = session.build_model(run, choose_strategy())
    assert model.count_params() > 2_000_000  # 1.5 M at 16 filters; about (24/16)^2 as many at 24
    for setting, message in (("bogus=1", "no such field"), ("num_layers=1.5", "invalid literal"),
                             ("context=maybe", "true or false"), ("upsampling=cubic", "'linear' or 'learned'")):
        with pytest.raises(SystemExit, match=message):
            train.resolve_run(train.parse_args(["--model-set", setting, "--run-dir", str(tmp_path / "bad")]))
    with pytest.raises(SystemExit, match="--init-from"):
        train.resolve_run(train.parse_args(["--init-from", str(run_dir), "--model-set", "num_layers=4",
                                            "--run-dir", str(tmp_path / "init")]))
    with pytest.raises(SystemExit, match="--model-set"):
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--model-set", "num_layers=4"]))


def test_the_cross_dataset_remix_is_recorded_reaches_the_pipeline_and_is_kept_on_resume(tmp_path, monkeypatch):
    """--cross-dataset-probability: stored in config.json, handed to the mixed pipeline's
    augmentation (its batches are checked in tests/test_pipeline.py and test_numpy_loader.py),
    kept on resume, and refused outside [0, 1] or with a single dataset."""
    root = tmp_path / "stems"
    for index in range(4):
        write_stems(root / f"song{index:02d}", seed=index)
    common = ["--dataset", "synthetic+folder", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
              "--synthetic-songs", "2"]
    run_dir, run = train.resolve_run(train.parse_args([*common, "--cross-dataset-probability", "0.5",
                                                       "--run-dir", str(tmp_path / "run")]))
    assert RunDirectory(run_dir).read_config()["training"]["cross_dataset_probability"] == 0.5
    import data_pipeline.pipeline

    handed = {}
    monkeypatch.setattr(data_pipeline.pipeline, "make_mixed_dataset",
                        lambda groups, weights, **options: handed.update(options) or "train")
    monkeypatch.setattr(data_pipeline.pipeline, "make_dataset", lambda tracks, **options: "valid")
    monkeypatch.setattr(data, "USES_TF_DATA", True)
    model_config = session.ARCHITECTURES[run["arch"]].config_from_dict(run["model"])
    data._pipeline_datasets(run, {"train": [["a"], ["b"]], "valid": ["c"]}, model_config, CropSpec(300, 100),
                            choose_strategy(), 0)
    assert handed["augmentation"].cross_dataset_probability == 0.5
    with pytest.raises(SystemExit, match=r"--cross-dataset-probability 1.0 \(the run has 0.5\)"):
        train.resolve_run(train.parse_args(["--resume", str(run_dir), "--cross-dataset-probability", "1"]))
    _, default = train.resolve_run(train.parse_args([*common, "--run-dir", str(tmp_path / "default")]))
    assert default["training"]["cross_dataset_probability"] == 0.0  # off unless asked for
    with pytest.raises(SystemExit, match="name several with --dataset"):
        train.resolve_run(train.parse_args(["--dataset", "synthetic", "--cross-dataset-probability", "0.5",
                                            "--run-dir", str(tmp_path / "single")]))
    for bad in ("1.5", "-0.1"):
        with pytest.raises(SystemExit):
            train.parse_args(["--cross-dataset-probability", bad])
