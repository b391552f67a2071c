"""data_pipeline.to_folder writes a dataset in the folder layout that trains and
scores like the original; training.gpu_campaign's budget arithmetic."""
import numpy as np
import pytest
import soundfile as sf

from data_pipeline.datasets import get_tracks, load_track
from data_pipeline.to_folder import main as to_folder
from training.gpu_campaign import seconds_per_step, steps_that_fit

RATE = 16000


def write_musdb_hq(root):
    """Two training songs and one test song of tones (Vorbis codes tones well, so its error is small)."""
    time = np.arange(RATE) / RATE
    for subset, names in {"train": ["Song A", "Song B"], "test": ["Song C"]}.items():
        for number, name in enumerate(names):
            stems = {stem: 0.2 * np.sin(2 * np.pi * (220 + 110 * index + 7 * number) * time)
                     for index, stem in enumerate(("drums", "bass", "other", "vocals"))}
            for stem, tone in {**stems, "mixture": sum(stems.values())}.items():
                path = root / subset / name / f"{stem}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, np.stack([tone, 0.5 * tone], axis=1).astype(np.float32), RATE, subtype="FLOAT")
    return root


def snr_db(reference, estimate):
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2))


@pytest.mark.parametrize("audio_format, least_snr_db", [("flac", 80), ("ogg", 20)])
def test_the_folder_copy_holds_every_split_and_the_same_sources(tmp_path, capsys, audio_format, least_snr_db):
    source = write_musdb_hq(tmp_path / "hq")
    out = tmp_path / "folder"
    assert to_folder(["--dataset", "musdb-hq", "--data-root", str(source), "--out", str(out),
                      "--splits", "train", "test", "--rate", str(RATE), "--format", audio_format]) == 0
    assert "wrote 3 songs" in capsys.readouterr().out
    for split in ("train", "test"):
        originals = get_tracks("musdb-hq", split, data_root=source)
        copies = get_tracks("folder", split, data_root=out)
        assert [t.name for t in copies] == [t.name for t in originals]
        for original, copy in zip(originals, copies):
            assert not copy.mixture  # the folder dataset sums the sources
            before, after = load_track(original, RATE), load_track(copy, RATE)
            for name in ("vocals", "accompaniment", "mixture"):
                length = min(len(before[name]), len(after[name]))
                assert length > 0.95 * RATE
                assert snr_db(before[name][:length], after[name][:length]) > least_snr_db


def test_a_missing_root_is_an_error_naming_the_layout(tmp_path, capsys):
    assert to_folder(["--dataset", "musdb-hq", "--data-root", str(tmp_path / "absent"),
                      "--out", str(tmp_path / "out")]) == 2
    assert "expected layout" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_song_that_does_not_decode_is_an_error_naming_its_file(tmp_path, capsys):
    source = write_musdb_hq(tmp_path / "hq")
    broken = source / "train" / "Song B" / "vocals.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVE")  # a header and nothing else
    assert to_folder(["--dataset", "musdb-hq", "--data-root", str(source), "--out", str(tmp_path / "out"),
                      "--splits", "train"]) == 2
    assert str(broken) in capsys.readouterr().err


def test_the_campaign_reads_keras_step_times_and_fits_its_steps_to_the_time_left():
    log = ("40/40 - 9s - 220ms/step - loss: 0.01\n"
           "40/40 - 1s - 35ms/step - loss: 0.01\n")
    assert seconds_per_step(log) == pytest.approx(0.035)
    assert seconds_per_step("863/863 - 1s - 943us/step - loss: 2.0") == pytest.approx(943e-6)
    assert seconds_per_step("10/10 - 60s - 6s/step - loss: 0.0049") == 6.0
    with pytest.raises(RuntimeError, match="no 'N/step' figure"):
        seconds_per_step("Traceback: out of memory")
    assert steps_that_fit(100.0, 0.01, runs=1, overlap=0.5) == 10000
    # Two runs at once, half of the second one's work hidden: 1.5x the time per step.
    assert steps_that_fit(150.0, 0.01, runs=2, overlap=0.5) == 10000
    assert steps_that_fit(200.0, 0.01, runs=2, overlap=0.0) == 10000
