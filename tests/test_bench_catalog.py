"""bench/catalog.py in a tiny configuration: a catalog of 4 short songs and the two bad files,
separated by the Beam pipeline and by separate.py with a tiny model; every good song done, only
the bad files failed, a ratio printed, and the resume check passes. (The server's method is
bench/serve.py's start and serve.client's, tested with them.)"""
import re

import numpy as np
import soundfile as sf

import bench.catalog as bench
from tests.helpers import make_run_dir


def test_the_catalog_is_seeded_mixed_and_nested():
    specs = bench.catalog_spec(100, 30, 300)
    assert len(specs) == 98 and specs == bench.catalog_spec(100, 30, 300)
    assert {spec.path.rsplit(".", 1)[1] for spec in specs} == {"wav", "flac", "mp3"}
    assert {spec.channels for spec in specs} == {1, 2} and {spec.rate for spec in specs} >= {22050, 44100, 48000}
    assert all(30 <= spec.seconds <= 300 for spec in specs) and len({spec.path.count("/") for spec in specs}) == 1
    assert len({spec.path.rsplit("/", 1)[1].split(".")[0] for spec in specs}) == 98  # serve.client: unique stems
    music = bench.music(bench.SongSpec("x.wav", 1.0, 8000, 2, 0))
    assert music.shape == (8000, 2) and 0.5 < np.abs(music).max() <= 0.8 + 1e-6


def test_a_tiny_run_separates_every_good_song_and_resumes(tmp_path, capsys):
    run_dir = make_run_dir(tmp_path / "run")
    # in_memory: the pipeline in one process, its workers' start-up (seconds each) spared
    code = bench.main(["--songs", "6", "--min-song-seconds", "2", "--max-song-seconds", "4", "--model", str(run_dir),
                       "--methods", "pipeline,separate", "--songs-dir", str(tmp_path / "music"),
                       "--pipeline-mode", "in_memory"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = [line for line in printed.splitlines() if line.startswith(("(a)", "(b)"))]
    assert len(rows) == 2 and all(re.search(r"\s4 +2 +[0-9]", line) for line in rows), rows
    assert "Pipeline / separate.py throughput: " in printed
    assert "Resume after a kill: killed with " in printed and "FAILED" not in printed
    assert sf.info(next((tmp_path / "music").glob("artist*/*/*.mp3"))).format == "MP3"
