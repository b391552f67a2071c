"""Weight averaging (train.py --keep-checkpoints, python -m training.average) and output
ensembles (runtime.ensemble, evaluate.py --ensemble-with): docs/averaging.md."""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

import evaluate
import train
from models.registry import ARCHITECTURES
from runtime.chunking import separate_song
from runtime.ensemble import ensemble_separator
from runtime.loading import load_run, load_separator
from runtime.run_directory import RunDirectory
from tests.helpers import TINY_WAVEUNET, make_run_dir, tiny_waveunet, write_run
from training import average, session
from training.checkpointing import KeepSnapshots
from training.strategy import choose_strategy


def snapshot_run(path, weight_sets: dict) -> RunDirectory:
    """A tiny Wave-U-Net run directory keeping a snapshot of each of ``weight_sets`` (step -> weights)."""
    make_run_dir(path)
    run = RunDirectory(path)
    model = ARCHITECTURES["waveunet"].build(TINY_WAVEUNET)
    for step, weights in weight_sets.items():
        model.set_weights(weights)
        model.save_weights(run.snapshot(step))
    return run


def random_weights(seed: int) -> list[np.ndarray]:
    model = ARCHITECTURES["waveunet"].build(TINY_WAVEUNET)
    generator = np.random.default_rng(seed)
    return [generator.normal(0, 0.1, w.shape).astype(np.float32) for w in model.get_weights()]


def test_the_run_directory_lists_its_snapshots_by_step(tmp_path):
    run = snapshot_run(tmp_path / "run", {400: random_weights(0), 50: random_weights(1), 1200: random_weights(2)})
    (run.checkpoints / "partial-step-0000500.weights.h5").write_bytes(b"")  # a kill mid-write: not a snapshot
    assert list(run.snapshots()) == [50, 400, 1200]
    assert run.snapshot(50).name == "step-0000050.weights.h5"


def test_keep_snapshots_keeps_the_newest_k_at_each_validation(tmp_path):
    run = RunDirectory(tmp_path / "run")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.random.rand(32, 3), np.random.rand(32, 2)
    model.fit(x, y, epochs=4, steps_per_epoch=2, batch_size=8, verbose=0, callbacks=[KeepSnapshots(run, 2)])
    assert list(run.snapshots()) == [6, 8]
    restored = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    restored.load_weights(run.snapshot(8))
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_averaging_identical_checkpoints_gives_the_same_weights(tmp_path):
    weights = random_weights(0)
    snapshot_run(tmp_path / "run", {100: weights, 200: weights, 300: weights})
    average.average_run(tmp_path / "run", tmp_path / "avg", last=3)
    for averaged, original in zip(load_run(tmp_path / "avg").model.get_weights(), weights):
        np.testing.assert_allclose(averaged, original, rtol=0, atol=1e-7)


def test_averaging_two_known_checkpoints_gives_their_mean_and_a_run_that_loads_and_separates(tmp_path, capsys):
    first, second, third = random_weights(0), random_weights(1), random_weights(2)
    snapshot_run(tmp_path / "run", {100: first, 200: second, 300: third})
    assert average.main([str(tmp_path / "run"), "--steps", "100", "200", "--out", str(tmp_path / "avg")]) == 0
    assert "Averaged 2 checkpoints" in capsys.readouterr().out
    loaded = load_run(tmp_path / "avg")
    assert loaded.checkpoint == RunDirectory(tmp_path / "avg").best_checkpoint
    for averaged, a, b in zip(loaded.model.get_weights(), first, second):
        np.testing.assert_allclose(averaged, (a + b) / 2, rtol=1e-6, atol=1e-7)
    config = RunDirectory(tmp_path / "avg").read_config()
    assert config.model == RunDirectory(tmp_path / "run").read_config().model
    assert config.training["weight_average"]["steps"] == [100, 200]
    separator = load_separator(tmp_path / "avg")
    song = np.random.default_rng(0).uniform(-0.5, 0.5, (3000, 2)).astype(np.float32)
    estimates = separate_song(separator, song, 8000)
    assert all(e.shape == song.shape and np.all(np.isfinite(e)) for e in estimates.values())
    # --last 2: the newest two
    average.average_run(tmp_path / "run", tmp_path / "last2", last=2)
    for averaged, b, c in zip(load_run(tmp_path / "last2").model.get_weights(), second, third):
        np.testing.assert_allclose(averaged, (b + c) / 2, rtol=1e-6, atol=1e-7)


def test_averaging_refuses_what_it_cannot_do(tmp_path, capsys):
    snapshot_run(tmp_path / "run", {100: random_weights(0)})
    make_run_dir(tmp_path / "plain")
    assert average.main([str(tmp_path / "run"), "--last", "2", "--out", str(tmp_path / "a")]) == 2
    assert "keeps 1 checkpoints" in capsys.readouterr().err
    assert average.main([str(tmp_path / "run"), "--steps", "50", "--out", str(tmp_path / "b")]) == 2
    assert "no checkpoint at step 50" in capsys.readouterr().err
    assert average.main([str(tmp_path / "plain"), "--last", "1", "--out", str(tmp_path / "c")]) == 2
    assert "--keep-checkpoints" in capsys.readouterr().err
    assert average.main([str(tmp_path / "run"), "--last", "1", "--out", str(tmp_path / "plain")]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_training_keeps_the_raw_weights_of_the_last_k_validations_also_with_ema(tmp_path):
    """--keep-checkpoints 2 with --ema: snapshots at the last two validations, holding the raw
    weights the backup resumes from, while last.keras holds the moving average."""
    run_dir = tmp_path / "run"
    run = write_run(run_dir, tmp_path / "cache", steps=6, validate_every=2, ema_momentum=0.5, keep_checkpoints=2)
    train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir)])))
    directory = RunDirectory(run_dir)
    assert list(directory.snapshots()) == [4, 6]
    backup, _ = session.build_model(run, choose_strategy())
    backup.optimizer.build(backup.trainable_variables)
    backup.load_weights(directory.backup / "latest.weights.h5")
    snapshot = ARCHITECTURES["waveunet"].build(ARCHITECTURES["waveunet"].config_from_dict(run["model"]))
    snapshot.load_weights(directory.snapshot(6))
    ema = keras.saving.load_model(directory.last_checkpoint)
    for raw, kept, averaged in zip(backup.trainable_variables, snapshot.trainable_variables, ema.trainable_variables):
        np.testing.assert_array_equal(kept.numpy(), raw.numpy())
    assert not all(np.allclose(k.numpy(), e.numpy(), atol=1e-6)
                   for k, e in zip(snapshot.trainable_variables, ema.trainable_variables))
    args = train.parse_args(["--keep-checkpoints", "3"])
    assert args.keep_checkpoints == 3
    with pytest.raises(SystemExit):
        train.parse_args(["--keep-checkpoints", "-1"])


def test_an_ensemble_averages_its_members_outputs_through_the_chunked_path(tmp_path):
    one = load_separator(make_run_dir(tmp_path / "one"))
    other = load_separator(make_run_dir(tmp_path / "other"))
    song = np.random.default_rng(1).uniform(-0.5, 0.5, (5000, 2)).astype(np.float32)
    alone = [separate_song(s, song, 8000, chunk_seconds=0.2) for s in (one, other)]
    both = separate_song(ensemble_separator([one, other]), song, 8000, chunk_seconds=0.2)
    for source in both:
        np.testing.assert_allclose(both[source], (alone[0][source] + alone[1][source]) / 2, atol=1e-5)
    itself = separate_song(ensemble_separator([one, one]), song, 8000, chunk_seconds=0.2)
    for source in itself:
        np.testing.assert_allclose(itself[source], alone[0][source], atol=1e-6)
    other_rate = load_separator(make_run_dir(tmp_path / "rate", dataclasses.replace(TINY_WAVEUNET, sample_rate=16000)))
    with pytest.raises(ValueError, match="do not ensemble"):
        ensemble_separator([one, other_rate])
    deeper = load_separator(make_run_dir(tmp_path / "deeper", dataclasses.replace(tiny_waveunet(), num_layers=4)))
    with pytest.raises(ValueError, match="frames its chunks"):
        ensemble_separator([one, deeper])


def test_an_ensemble_sums_to_its_input_only_where_every_member_does(tmp_path):
    """Difference-output members' mean still leaves the input minus the vocals as the
    accompaniment (the resampling back and the post-filter take only the vocals); with a
    direct-output member it does not, and the path resamples both sources back: at a song
    rate that is not the model's, the ensemble is still its members' mean."""
    difference = load_separator(make_run_dir(tmp_path / "difference"))
    direct = load_separator(make_run_dir(tmp_path / "direct", dataclasses.replace(TINY_WAVEUNET, output_type="direct")))
    assert difference.sums_to_input and not direct.sums_to_input
    assert ensemble_separator([difference, difference]).sums_to_input
    mixed = ensemble_separator([difference, direct])
    assert not mixed.sums_to_input
    rate = 2 * TINY_WAVEUNET.sample_rate
    song = np.random.default_rng(2).uniform(-0.5, 0.5, (6000, 2)).astype(np.float32)
    alone = [separate_song(s, song, rate, chunk_seconds=0.2) for s in (difference, direct)]
    both = separate_song(mixed, song, rate, chunk_seconds=0.2)
    for source in both:
        np.testing.assert_allclose(both[source], (alone[0][source] + alone[1][source]) / 2, atol=1e-5)


def test_evaluate_ensemble_needs_its_own_json(tmp_path, capsys):
    run = str(make_run_dir(tmp_path / "run"))
    assert evaluate.main(["--model", run, "--ensemble-with", run, "--dataset", "folder",
                          "--data-root", str(tmp_path)]) == 2
    assert "--ensemble-with needs --json" in capsys.readouterr().err


def test_averaging_checkpoints_of_several_runs_gives_their_mean_and_refuses_other_shapes(tmp_path, capsys):
    first, second = random_weights(0), random_weights(1)
    snapshot_run(tmp_path / "a", {1: first}), snapshot_run(tmp_path / "b", {1: second})
    model = ARCHITECTURES["waveunet"].build(TINY_WAVEUNET)
    model.set_weights(first)
    model.save(RunDirectory(tmp_path / "a").best_checkpoint)  # a run directory stands for its best checkpoint
    assert average.main(["--checkpoints", str(tmp_path / "a"), str(RunDirectory(tmp_path / "b").snapshot(1)),
                         "--out", str(tmp_path / "soup")]) == 0
    for averaged, a, b in zip(load_run(tmp_path / "soup").model.get_weights(), first, second):
        np.testing.assert_allclose(averaged, (a + b) / 2, rtol=1e-6, atol=1e-7)
    assert len(RunDirectory(tmp_path / "soup").read_config().training["weight_average"]["checkpoints"]) == 2
    make_run_dir(tmp_path / "deeper", dataclasses.replace(tiny_waveunet(), num_layers=4))
    assert average.main(["--checkpoints", str(tmp_path / "a"), str(tmp_path / "deeper"),
                         "--out", str(tmp_path / "x")]) == 2
    assert "do not average" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # RUN and --checkpoints do not combine
        average.main([str(tmp_path / "a"), "--checkpoints", str(tmp_path / "b"), "--out", str(tmp_path / "y")])
