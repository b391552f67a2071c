"""separate.py and runtime/ (chunking, loading): any rate, length and channel count in, the same out;
chunked equals one pass; bad files are named and skipped."""

import os
import stat

import numpy as np
import pytest
import soundfile as sf

import separate
from data_pipeline.audio import load_audio
from models.framing import ChunkPlan
from models.waveunet import WaveUNetConfig
from runtime.chunking import separate_song, SongSeparation
from runtime.loading import load_separator
from runtime.run_directory import RunDirectory
from runtime.separator import Separator
from tests.helpers import TINY_WAVEUNET as TINY, make_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run") / "tiny")


def separate_args(run_dir, out, *args):
    return [*map(str, args), "--model", str(run_dir), "--out", str(out)]


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


def test_a_separator_needs_only_a_forward_function_not_a_keras_model():
    """What an exported model will plug in: here a forward function that calls everything accompaniment."""
    def forward(mix):
        return {"vocals": np.zeros_like(mix), "accompaniment": mix}

    separator = Separator(forward=forward, sample_rate=8000, channels=2,
                          chunk_plan=lambda length: ChunkPlan(length, 0, length, 0, length),
                          source="a test function", description="everything is accompaniment")
    song = np.random.default_rng(5).uniform(-0.5, 0.5, (3001, 2)).astype(np.float32)
    estimates = separate_song(separator, song, 8000, chunk_seconds=0.1)
    np.testing.assert_array_equal(estimates["accompaniment"], song)
    np.testing.assert_array_equal(estimates["vocals"], np.zeros_like(song))


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
    # Difference output: the sources add back up to the input. libsndfile rounds each 16-bit
    # output down (less than 1 LSB each); measured: at most 2.0 LSB.
    assert np.abs(vocals + accompaniment - mix).max() <= 2.05 / 2 ** 15


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_difference_model_sources_add_up_to_the_input_at_every_rate(tmp_path, rate):
    """Below, at and above the model's 22050 Hz: what resampling to the model's rate and
    back loses goes to the accompaniment, so nothing of the input's band is lost."""
    separator = load_separator(make_run_dir(tmp_path / "run", WaveUNetConfig(**{**TINY.to_dict(),
                                                                                 "sample_rate": 22050})))
    frames = rate // 2 + 7
    song = np.random.default_rng(rate).uniform(-0.5, 0.5, (frames, 2)).astype(np.float32)
    separation = SongSeparation(separator, rate, 2, chunk_seconds=0.1)
    cuts = [0, 1, 999, frames]
    pieces = [separation.push(song[a:b]) for a, b in zip(cuts, cuts[1:])] + [separation.push(song[:0], last=True)]
    vocals, accompaniment = (np.concatenate([p[source] for p in pieces]) for source in ("vocals", "accompaniment"))
    assert vocals.shape == accompaniment.shape == song.shape
    # float32 rounding through the resamplers; measured: at most 3.3e-7
    np.testing.assert_allclose(vocals + accompaniment, song, rtol=0, atol=1e-6)


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
    RunDirectory(other).write_config({"arch": "waveunet", "model": bigger.to_dict()})
    assert separate.main([str(tmp_path / "x.wav"), "--model", str(other)]) == 2
    assert "does not match the model described by" in capsys.readouterr().err


def test_a_folder_input_separates_every_audio_file_inside_into_its_relative_path(run_dir, tmp_path):
    album = tmp_path / "album"
    for disc in ("disc 1", "disc 2"):
        (album / disc).mkdir(parents=True)
    sf.write(album / "bonus.wav", np.zeros((1000, 2)), 8000)
    sf.write(album / "disc 1" / "01.wav", np.zeros((2000, 2)), 8000)
    sf.write(album / "disc 2" / "01.ogg", np.zeros((3000, 1)), 8000)
    (album / "cover.jpg").write_bytes(b"not audio, not an input")
    assert separate.main(separate_args(run_dir, tmp_path / "out", album)) == 0
    outputs = {p.parent.relative_to(tmp_path / "out").as_posix(): sf.info(p).frames
               for p in (tmp_path / "out").rglob("vocals.wav")}
    assert outputs == {"bonus": 1000, "disc 1/01": 2000, "disc 2/01": 3000}
    # Each output with the mode new files get under the umask (0644 under 022), not a temporary file's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*.wav")} == {0o666 & ~umask}
    # Outputs written inside the folder are not taken for songs on the next run.
    assert separate.main(separate_args(run_dir, album / "separated", album)) == 0
    assert separate.main(separate_args(run_dir, album / "separated", album) + ["--overwrite"]) == 0
    assert sorted(p.parent.name for p in (album / "separated").rglob("vocals.wav")) == ["01", "01", "bonus"]


@pytest.mark.parametrize("layout", [["a/song.wav", "b/song.flac"], ["album/01.wav", "album/01.flac"]])
def test_inputs_that_would_share_an_output_folder_are_refused_before_separating(run_dir, tmp_path, capsys, layout):
    for name in layout:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, np.zeros((1000, 2)), 8000)
    inputs = [tmp_path / "album"] if layout[0].startswith("album/") else [tmp_path / name for name in layout]
    assert separate.main(separate_args(run_dir, tmp_path / "out", *inputs)) == 2
    error = capsys.readouterr().err
    assert "same output folder" in error and all(str(tmp_path / name) in error for name in layout)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["vocals", "accompaniment"])
def test_existing_outputs_are_replaced_only_with_overwrite(run_dir, tmp_path, capsys, source):
    sf.write(tmp_path / "song.wav", np.zeros((1000, 2)), 8000)
    earlier = tmp_path / "out" / "song" / f"{source}.wav"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier result")
    arguments = separate_args(run_dir, tmp_path / "out", tmp_path / "song.wav")
    assert separate.main(arguments) == 2
    error = capsys.readouterr().err
    assert str(earlier) in error and "--overwrite" in error
    assert earlier.read_bytes() == b"an earlier result"
    assert separate.main(arguments + ["--overwrite"]) == 0
    assert sf.info(earlier).frames == 1000


@pytest.mark.parametrize("contents", [[], ["cover.jpg", "notes.txt"]])
def test_a_folder_without_audio_files_is_a_clear_error(run_dir, tmp_path, capsys, contents):
    folder = tmp_path / "album"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("not audio")
    assert separate.main(separate_args(run_dir, tmp_path / "out", folder)) == 2
    assert f"{folder}: no WAV/FLAC/MP3/OGG files in this folder" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_chunk_seconds_must_be_positive(run_dir, tmp_path, capsys, seconds):
    with pytest.raises(SystemExit) as exit_:
        separate.main(separate_args(run_dir, tmp_path / "out", tmp_path / "song.wav", "--chunk-seconds", seconds))
    assert exit_.value.code == 2
    assert "--chunk-seconds: must be a positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("in_the_way,message", [("out", "is a file, not a folder"),
                                                ("out/song", "cannot create output folder")])
def test_a_file_where_an_output_folder_goes_is_a_clear_error(run_dir, tmp_path, capsys, in_the_way, message):
    sf.write(tmp_path / "song.wav", np.zeros((1000, 2)), 8000)
    (tmp_path / in_the_way).parent.mkdir(exist_ok=True)
    (tmp_path / in_the_way).write_text("a file")
    assert separate.main(separate_args(run_dir, tmp_path / "out", tmp_path / "song.wav")) == 2
    error = capsys.readouterr().err
    assert message in error and str(tmp_path / in_the_way) in error


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


def test_separate_py_computes_in_what_auto_picks_on_each_cpu_class(run_dir, tmp_path, capsys, cpu_class):
    """bfloat16 only where the CPU computes it fast (AVX512-BF16, AMX); its outputs are bfloat16's, and
    float32's elsewhere, to within the 16-bit WAV's rounding (1 LSB) — not the other's."""
    audio = np.random.default_rng(3).uniform(-0.5, 0.5, (4000, 2)).astype(np.float32)
    sf.write(tmp_path / "song.wav", audio, 8000, subtype="FLOAT")
    assert separate.main(separate_args(run_dir, tmp_path / "out", tmp_path / "song.wav")) == 0
    picked, other = ("bfloat16", "float32") if cpu_class != "avx2" else ("float32", "bfloat16")
    assert f", {picked}) on " in capsys.readouterr().out
    written, _ = load_audio(tmp_path / "out" / "song" / "vocals.wav")
    lsb = 2.0 ** -15
    assert np.abs(written - separate_song(load_separator(run_dir, picked), audio, 8000)["vocals"]).max() <= lsb
    assert np.abs(written - separate_song(load_separator(run_dir, other), audio, 8000)["vocals"]).max() > 4 * lsb


def test_auto_precision_keeps_exports_and_live_streams_in_float32(run_dir, tmp_path, cpu_class):
    from runtime import loading

    fast = cpu_class != "avx2"  # AVX512-BF16 and AMX compute bfloat16; AVX2 emulates it
    assert loading.fast_bfloat16() == fast
    assert loading.resolve_precision("auto", run_dir) == ("bfloat16" if fast else "float32")
    assert loading.resolve_precision("auto", run_dir, live=True) == "float32"
    assert loading.resolve_precision("float32", run_dir) == "float32"
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").touch()  # an exported model keeps its own precision
    assert loading.resolve_precision("auto", tmp_path / "export") == "float32"
    assert loading.resolve_precision("auto", tmp_path / "model.onnx") == "float32"
