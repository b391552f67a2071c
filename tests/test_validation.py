"""What a run's validation measures (issue 28): the synthetic validation split is large and
drawn like the test split, the SDR excerpts cover every one of its songs, and the log
says so."""
import numpy as np

import train
from data_pipeline.crops import CropSpec
from data_pipeline.datasets import SYNTHETIC_SPLIT_SONGS, SyntheticOptions
from models.registry import ARCHITECTURES
from training.data import describe_validation, fixed_excerpts
from training.run_config import resolve_run


def test_a_default_run_validates_on_40_synthetic_songs_with_2_excerpts_each(tmp_path):
    _, run = resolve_run(train.parse_args(["--arch", "waveunet", "--run-dir", str(tmp_path / "run")]))
    assert SYNTHETIC_SPLIT_SONGS == {"train": 90, "valid": 40, "test": 10}
    assert run.data["synthetic_songs"] == SYNTHETIC_SPLIT_SONGS == SyntheticOptions().songs  # evaluate.py's too
    assert run.training["validation_excerpts"] == 2 * SYNTHETIC_SPLIT_SONGS["valid"] == 80
    # --synthetic-songs sizes the training split only
    _, run = resolve_run(train.parse_args(["--synthetic-songs", "7", "--run-dir", str(tmp_path / "other")]))
    assert run.data["synthetic_songs"] == {"train": 7, "valid": 40, "test": 10}


def test_umt_full_generates_few_validation_excerpts():
    presets = ARCHITECTURES["umt"].training_presets
    assert presets["small-full"]["validation_excerpts"] == presets["paper-full"]["validation_excerpts"] == 8
    assert "validation_excerpts" not in presets["small"]  # one pass: the default 80


def test_the_excerpts_cover_every_validation_song_and_the_log_says_what_they_measure(tmp_path):
    from data_pipeline.audio import write_wav
    from data_pipeline.datasets import AudioFile, Track

    tracks = []
    for index in range(5):
        folder = tmp_path / f"song{index}"
        for source in ("vocals", "accompaniment"):
            write_wav(folder / f"{source}.wav", np.full((8000, 2), 0.01 * (index + 1), np.float32), 8000)
        tracks.append(Track(f"song{index}", (AudioFile(str(folder / "vocals.wav")),),
                            (AudioFile(str(folder / "accompaniment.wav")),)))
    crop = CropSpec(1200, 1000)
    mixes, targets = fixed_excerpts(tracks, crop, 8000, 2, count=10)
    assert mixes.shape == (10, 1200, 2) and targets["vocals"].shape == (10, 1000, 2)
    # 2 excerpts of every song, in order (each song's vocals hold their own level)
    levels = targets["vocals"].mean(axis=(1, 2)) / 0.01
    np.testing.assert_allclose(levels, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5], atol=0.01)
    run = {"arch": "waveunet", "config_name": "small", "model": {}, "training": {},
           "data": {"dataset": "synthetic", "data_root": None, "cache_dir": None, "synthetic_songs": {}}}
    text = describe_validation(run, tracks, 10, 1000 / 8000)
    assert text.startswith("Validation: 5 synthetic valid songs (the same generator as the test split, other seeds)")
    assert "on 10 excerpts of 0.1 s from 5 of them" in text and "sanity check" in text and "MUSDB18" in text
    real = {**run, "data": {**run["data"], "dataset": "folder", "data_root": "x"}}
    assert "sanity check" not in describe_validation(real, tracks, 3, 1000 / 8000)
    assert "on 3 excerpts of 0.1 s from 3 of them" in describe_validation(real, tracks, 3, 1000 / 8000)
