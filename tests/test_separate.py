"""separate.py and inference.py: any rate, length and channel count in, the same out;
chunked equals one pass; bad files are named and skipped."""
import json

import numpy as np
import pytest
import soundfile as sf

import separate
from data_pipeline.audio import load_audio
from inference import SongSeparation, load_separator, separate_song
from models.waveunet import WaveUNetConfig, build_waveunet

TINY = WaveUNetConfig(num_layers=3, num_initial_filters=8, context=True, output_type="difference", channels=2,
                      sample_rate=8000, num_frames=1024)


def make_run_dir(path, config=TINY):
    """A run directory holding an untrained (random) model: enough to test the plumbing."""
    (path / "checkpoints").mkdir(parents=True)
    run = {"arch": "waveunet", "config_name": "tiny", "model": config.to_dict()}
    (path / "config.json").write_text(json.dumps(run))
    build_waveunet(config).save(path / "checkpoints" / "last.keras")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run") / "tiny")


@pytest.mark.parametrize("context", [True, False])
def test_chunked_separation_equals_one_pass(tmp_path, context):
    config = WaveUNetConfig(**{**TINY.to_dict(), "context": context})
    separator = load_separator(make_run_dir(tmp_path / "run", config))
    mix = np.random.default_rng(0).uniform(-0.5, 0.5, (5000, 2)).astype(np.float32)
    one_pass = separate_song(separator, mix, 8000, chunk_seconds=5000 / 8000)
    chunks = []
    chunked = separate_song(separator, mix, 8000, chunk_seconds=700 / 8000, progress=chunks.append)
    assert sum(chunks) == 5000 and len(chunks) > 5
    for source in one_pass:
        assert chunked[source].shape == (5000, 2)
        np.testing.assert_allclose(chunked[source], one_pass[source], atol=1e-5)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_block_by_block_streaming_equals_the_whole_song(run_dir, rate):
    separator = load_separator(run_dir)
    song = np.random.default_rng(2).uniform(-0.5, 0.5, (rate, 2)).astype(np.float32)
    whole = separate_song(separator, song, rate, chunk_seconds=0.1)
    separation = SongSeparation(separator, rate, 2, chunk_seconds=0.1)
    cuts = [0, 1, 999, 5000, 5001, rate]
    pieces = [separation.push(song[a:b]) for a, b in zip(cuts, cuts[1:])] + [separation.push(song[:0], last=True)]
    for source in whole:
        streamed = np.concatenate([p[source] for p in pieces])[:rate]
        np.testing.assert_allclose(streamed, whole[source], atol=1e-5)


def test_mono_model_separates_each_channel_of_a_stereo_song(tmp_path):
    mono = WaveUNetConfig(**{**TINY.to_dict(), "channels": 1})
    separator = load_separator(make_run_dir(tmp_path / "mono", mono))
    left = np.random.default_rng(1).uniform(-0.5, 0.5, (3000, 1)).astype(np.float32)
    song = np.concatenate([left, np.zeros_like(left)], axis=1)
    estimates = separate_song(separator, song, 8000)
    alone = separate_song(separator, left, 8000)
    np.testing.assert_allclose(estimates["vocals"][:, :1], alone["vocals"], atol=1e-5)


@pytest.mark.parametrize("rate,channels,frames", [(16000, 1, 12345), (44100, 2, 33333), (48000, 2, 48001)])
def test_outputs_match_input_rate_channels_and_length(run_dir, tmp_path, rate, channels, frames):
    song = tmp_path / f"song {rate}.flac"
    sf.write(song, np.random.default_rng(rate).uniform(-0.3, 0.3, (frames, channels)), rate)
    assert separate.main([str(song), "--model", str(run_dir), "--out", str(tmp_path / "out"),
                          "--chunk-seconds", "0.3"]) == 0
    for source in ("vocals", "accompaniment"):
        info = sf.info(tmp_path / "out" / f"song {rate}" / f"{source}.wav")
        assert (info.samplerate, info.channels, info.frames) == (rate, channels, frames)
    vocals, _ = load_audio(tmp_path / "out" / f"song {rate}" / "vocals.wav")
    accompaniment, _ = load_audio(tmp_path / "out" / f"song {rate}" / "accompaniment.wav")
    mix, _ = load_audio(song)
    # Difference output: the two sources add back up to the input (through two resamplings).
    assert np.sqrt(np.mean((vocals + accompaniment - mix) ** 2)) < 0.05 * np.sqrt(np.mean(mix ** 2))


def test_bad_file_is_named_and_the_others_still_separate(run_dir, tmp_path, capsys):
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros((4000, 2)), 8000)
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    code = separate.main([str(bad), str(good), "--model", str(run_dir), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"{bad}: not a readable audio file" in capsys.readouterr().err
    assert (tmp_path / "out" / "good" / "vocals.wav").is_file()


def test_model_that_does_not_match_its_config_is_a_clear_error(run_dir, tmp_path, capsys):
    other = tmp_path / "mismatch"
    make_run_dir(other)
    bigger = WaveUNetConfig(**{**TINY.to_dict(), "num_initial_filters": 12})
    (other / "config.json").write_text(json.dumps({"arch": "waveunet", "model": bigger.to_dict()}))
    assert separate.main([str(tmp_path / "x.wav"), "--model", str(other)]) == 2
    assert "does not match the model described by" in capsys.readouterr().err


def test_a_folder_input_separates_every_audio_file_inside(run_dir, tmp_path):
    album = tmp_path / "album"
    (album / "disc 2").mkdir(parents=True)
    sf.write(album / "one.wav", np.zeros((2000, 2)), 8000)
    sf.write(album / "disc 2" / "two.ogg", np.zeros((2000, 1)), 8000)
    (album / "cover.jpg").write_bytes(b"not audio, not an input")
    assert separate.main([str(album), "--model", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "out").rglob("vocals.wav")) == ["one", "two"]


def test_bfloat16_precision_stays_close_to_float32(run_dir):
    song = np.random.default_rng(3).uniform(-0.5, 0.5, (4000, 2)).astype(np.float32)
    exact = separate_song(load_separator(run_dir), song, 8000)
    fast = separate_song(load_separator(run_dir, precision="bfloat16"), song, 8000)
    for source in exact:
        assert fast[source].dtype == np.float32
        np.testing.assert_allclose(fast[source], exact[source], atol=0.02)
        assert not np.array_equal(fast[source], exact[source])  # it did compute in bfloat16


def test_without_model_the_shipped_pretrained_model_is_used(tmp_path, capsys):
    song = tmp_path / "clip.wav"
    sf.write(song, np.random.default_rng(4).uniform(-0.3, 0.3, (44100, 2)), 44100)
    assert separate.main([str(song), "--out", str(tmp_path / "out")]) == 0
    assert "using the shipped pretrained model" in capsys.readouterr().out
    assert sf.info(tmp_path / "out" / "clip" / "vocals.wav").frames == 44100
