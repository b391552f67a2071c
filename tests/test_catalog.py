"""pipelines/catalog.py on the DirectRunner: its outputs are separate.py's (to 16-bit rounding)
over nested folders, with a song that spans many windows, one at the model's rate and a bad
file (dead-lettered, the rest done); a second run writes nothing; a run killed mid-way
resumes without redoing its finished songs; bad --input/--model exit 2 before anything
runs; outputs get the user's umask; a song whose windows come back in several bundles
is put together the same.

Most runs are in this process on the in_memory DirectRunner (seconds each); the killed run
is the command as a user types it, with the default multi_processing workers."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from apache_beam.ml.inference.base import PredictionResult

import separate
from data_pipeline.audio import load_audio
from pipelines import catalog, outputs
from pipelines.songs import find_songs, glob_and_root, decode, cut, window_count
from runtime.chunking import separate_song
from runtime.loading import load_separator
from tests.helpers import REPOSITORY, TINY_WAVEUNET as TINY, make_run_dir

SOURCES = ("vocals", "accompaniment")
CHUNK = ["--chunk-seconds", "0.1", "--batch-size", "3"]  # 800-sample windows at 8 kHz: songs span many
IN_PROCESS = ["--direct-running-mode", "in_memory"]
LSB = 1 / 32768


def write_song(path: Path, seconds: float, rate: int, channels: int, seed: int, **options) -> None:
    """Tones and noise, below full scale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t)[:, None]
    noise = 0.05 * np.random.default_rng(seed).standard_normal((len(t), channels))
    sf.write(path, (tone + noise).astype(np.float32), rate, **options)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def catalog_folder(tmp_path_factory):
    """Nested folders: 44.1 kHz WAV and MP3, a FLAC at the model's 8 kHz, a long song, a bad file, a cover."""
    music = tmp_path_factory.mktemp("music")
    write_song(music / "one.wav", 1.5, 44100, 2, 1)
    write_song(music / "a" / "two.flac", 2.0, TINY.sample_rate, 1, 2)
    write_song(music / "a" / "b" / "long.wav", 6.0, 44100, 2, 3)  # 60 windows of the model's 800 samples
    write_song(music / "a" / "b" / "three.mp3", 1.0, 44100, 2, 4, format="MP3")
    (music / "a" / "bad.wav").write_text("not audio")
    (music / "a" / "cover.jpg").write_bytes(b"\xff\xd8 not a song")
    return music


def run_catalog(*args) -> int:
    return catalog.main([*map(str, args)])


def song_files(folder: Path) -> dict:
    """(inode, mtime) of every file under ``folder`` but the dead letter, by path."""
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.rglob("*")
            if path.is_file() and path.name != "dead-letter.jsonl"}


@pytest.fixture(scope="module")
def separated(catalog_folder, run_dir, tmp_path_factory):
    """The catalog's outputs (under umask 022) and separate.py's of the same folder, and what the catalog printed."""
    out, reference = tmp_path_factory.mktemp("catalog") / "out", tmp_path_factory.mktemp("separate")
    previous = os.umask(0o022)
    try:
        code = run_catalog("--input", catalog_folder, "--output", out, "--model", run_dir, *CHUNK, *IN_PROCESS)
    finally:
        os.umask(previous)
    assert separate.main([str(catalog_folder), "--model", str(run_dir), "--out", str(reference),
                          "--chunk-seconds", "0.3"]) == 1  # the bad file
    return out, reference, code


def test_outputs_equal_separate_pys_and_the_bad_file_is_dead_lettered(separated, catalog_folder):
    out, reference, code = separated
    assert code == 1  # a song failed
    songs = ["one", "a/two", "a/b/long", "a/b/three"]
    for song in songs:
        for source in SOURCES:
            ours, rate = sf.read(out / song / f"{source}.wav", dtype="float32", always_2d=True)
            theirs, their_rate = sf.read(reference / song / f"{source}.wav", dtype="float32", always_2d=True)
            assert (rate, ours.shape) == (their_rate, theirs.shape)
            # The batches differ from separate.py's (several songs' windows, other chunk lengths):
            # float rounding, which the 16-bit outputs show as 1 LSB at most.
            assert np.abs(ours - theirs).max() <= LSB + 1e-6, (song, source)
    mix, rate = load_audio(catalog_folder / "a" / "b" / "long.wav")
    assert sf.info(out / "a" / "b" / "long" / "vocals.wav").frames == len(mix) and rate == 44100
    failures = [json.loads(line) for line in (out / "dead-letter.jsonl").read_text().splitlines()]
    assert failures == [{"path": str(catalog_folder / "a" / "bad.wav"),
                         "reason": failures[0]["reason"]}]
    assert failures[0]["reason"].startswith("not a readable audio file")
    assert not (out / "a" / "bad").exists() and not (out / "a" / "cover").exists()
    record = json.loads((out / "a" / "b" / "long" / outputs.RECORD).read_text())
    assert record["input"] == str(catalog_folder / "a" / "b" / "long.wav") and record["format"] == "wav"
    assert record["outputs"] == {f"{s}.wav": (out / "a" / "b" / "long" / f"{s}.wav").stat().st_size for s in SOURCES}


def test_outputs_get_the_users_umask(separated):
    out, _, _ = separated
    written = [path for path in out.rglob("*") if path.is_file()]
    assert len(written) == 4 * 3 + 1  # sources and a record per song, the dead letter
    assert {path.stat().st_mode & 0o777 for path in written if path.name != "dead-letter.jsonl"} == {0o644}


def test_a_second_run_writes_nothing_and_counts_the_songs_skipped(separated, catalog_folder, run_dir, capsys):
    out, _, _ = separated
    before = song_files(out)
    capsys.readouterr()
    assert run_catalog("--input", catalog_folder, "--output", out, "--model", run_dir, *CHUNK, *IN_PROCESS) == 1
    assert song_files(out) == before
    assert "0 songs separated, 4 skipped (already done), 1 failed" in capsys.readouterr().err
    # Another format is other outputs: not skipped.
    assert not outputs.finished(str(out), find_songs(str(catalog_folder), str(out))[0], "x", "flac")


def test_a_run_killed_mid_way_resumes_without_redoing_finished_songs(run_dir, tmp_path):
    music, out = tmp_path / "music", tmp_path / "out"
    for index in range(8):
        write_song(music / f"disc{index % 2}" / f"song{index}.wav", 6.0, 44100, 2, index)
    command = [sys.executable, "-m", "pipelines.catalog", "--input", str(music / "**" / "*.wav"), "--output", str(out),
               "--model", str(run_dir), "--chunk-seconds", "0.05", "--batch-size", "2"]  # 2 multi_processing workers
    process = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.rglob(outputs.RECORD))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its workers, as a power cut would
    process.wait()
    stderr = process.stderr.read().decode()
    finished = {path.parent for path in out.rglob(outputs.RECORD)}
    assert 2 <= len(finished) < 8, f"killed with {len(finished)} of 8 songs finished; stderr:\n{stderr[-3000:]}"
    kept = {path: stamp for path, stamp in song_files(out).items() if path.parent in finished}

    result = subprocess.run([*command, *IN_PROCESS], cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{8 - len(finished)} songs separated, {len(finished)} skipped" in result.stderr
    assert {path: stamp for path, stamp in song_files(out).items() if path.parent in finished} == kept
    for index in range(8):
        folder = out / f"disc{index % 2}" / f"song{index}"
        assert sorted(path.name for path in folder.iterdir()) == [outputs.RECORD, "accompaniment.wav", "vocals.wav"]
        assert all(sf.info(folder / f"{source}.wav").frames == 6 * 44100 for source in SOURCES)


@pytest.mark.parametrize("input_, message", [
    ("nowhere/**/*.mp3", "--input nowhere/**/*.mp3: matches no file"),
    ("{music}/a/*.jpg", "matches 1 file(s), none of them WAV/FLAC/MP3/OGG audio"),
])
def test_an_input_that_matches_no_song_exits_2_before_anything_runs(catalog_folder, run_dir, tmp_path, capsys,
                                                                     input_, message):
    code = run_catalog("--input", input_.format(music=catalog_folder), "--output", tmp_path / "out",
                       "--model", run_dir)
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_model_that_cannot_be_loaded_exits_2_before_anything_runs(catalog_folder, tmp_path, capsys):
    for model in (tmp_path / "missing", catalog_folder):
        assert run_catalog("--input", catalog_folder, "--output", tmp_path / "out", "--model", model) == 2
        assert f"error: --model {model} cannot be loaded" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_songs_that_would_share_an_output_folder_exit_2(tmp_path, run_dir, capsys):
    write_song(tmp_path / "music" / "song.wav", 0.1, 8000, 1, 0)
    write_song(tmp_path / "music" / "song.flac", 0.1, 8000, 1, 0)
    assert run_catalog("--input", tmp_path / "music", "--output", tmp_path / "out", "--model", run_dir) == 2
    assert "same output folder" in capsys.readouterr().err


def test_the_output_folder_is_the_path_under_the_globs_root():
    assert glob_and_root("music/**/*.mp3") == ("music/**/*.mp3", "music/")
    assert glob_and_root("gs://bucket/music/rock*/*.wav") == ("gs://bucket/music/rock*/*.wav", "gs://bucket/music/")
    assert glob_and_root("gs://bucket/music/") == ("gs://bucket/music/**", "gs://bucket/music/")
    assert glob_and_root("music/song.mp3") == ("music/song.mp3", "music/")


def test_a_song_whose_windows_come_back_in_several_bundles_is_put_together_the_same(
        catalog_folder, run_dir, tmp_path):
    """What a runner that did not fuse the steps would do: the song's parts go on, grouped."""
    separator = load_separator(run_dir)
    plan = separator.chunk_plan(800)
    settings = catalog.Settings(str(tmp_path / "out"), "wav", "model", separator.sample_rate, separator.channels,
                                plan, 3600.0)
    song = find_songs(str(catalog_folder / "a" / "b" / "long.wav"), settings.output)[0]
    decoded = decode(song, separator.sample_rate, 3600.0)
    windows = list(cut(decoded, plan))
    count = window_count(len(decoded.model_input), plan)
    assert count == len(windows) > 10

    def results(part):
        return [(catalog.WindowKey(song, index, count, kept),
                 PredictionResult(window, separator.separate_window(window))) for index, window, kept in part]

    groups = []
    for part in (windows[:count // 2], windows[count // 2:]):
        finish = catalog.FinishSongs(settings)
        finish.start_bundle()
        assert [out for element in results(part) for out in finish.process(element)] == []
        (regroup,) = finish.finish_bundle()
        assert regroup.tag == catalog.REGROUP
        groups.append(regroup.value.value[1])
    (summary,) = catalog.FinishRegrouped(settings).process((song.path, groups))
    assert summary["path"] == song.path
    expected = separate_song(separator, decoded.audio, decoded.sample_rate)
    for source in SOURCES:
        written, _ = sf.read(tmp_path / "out" / "long" / f"{source}.wav", dtype="float32", always_2d=True)
        assert np.abs(written - np.clip(expected[source], -1, 1)).max() <= LSB + 1e-6


def test_with_the_wiener_post_filter_the_outputs_are_separate_pys_too(separated, catalog_folder, run_dir, tmp_path):
    """The post-filter separate.py runs (--wiener, or the model's own post_filter) runs in the
    pipeline's final_sources too; another post-filter is another fingerprint (the song is done again)."""
    song = catalog_folder / "a" / "b" / "long.wav"
    out, reference = tmp_path / "out", tmp_path / "reference"
    assert run_catalog("--input", song, "--output", out, "--model", run_dir, "--wiener", "mask", *CHUNK,
                       *IN_PROCESS) == 0
    assert separate.main([str(song), "--model", str(run_dir), "--out", str(reference), "--wiener", "mask"]) == 0
    unfiltered = separated[0] / "a" / "b" / "long"
    for source in SOURCES:
        ours, _ = sf.read(out / "long" / f"{source}.wav", dtype="float32")
        theirs, _ = sf.read(reference / "long" / f"{source}.wav", dtype="float32")
        assert np.abs(ours - theirs).max() <= LSB + 1e-6
        assert np.abs(ours - sf.read(unfiltered / f"{source}.wav", dtype="float32")[0]).max() > 100 * LSB
    fingerprints = {json.loads((folder / outputs.RECORD).read_text())["model"] for folder in (out / "long", unfiltered)}
    assert len(fingerprints) == 2
