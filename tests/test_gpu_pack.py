"""training.gpu_pack: each file decodes within its part's stated SNR of its source, the pack
loads through the normal loaders, its sizes are bounded; training.gpu_campaign's runs,
recipe, data flags and argument checks (its dry run: nothing trains)."""
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipeline.audio import load_audio
from data_pipeline.datasets import get_tracks, load_track
from data_pipeline.synthetic_music import generate_song
from training import gpu_campaign, gpu_pack
from training.gpu_pack import MIN_SNR_DB, MIR1K_CODEC, MUSDB_CODEC, encode_and_check, snr_db

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED = REPOSITORY.parent / "shared" / "data"
MUSDB_PREVIEWS, MIR1K = SHARED / "musdb18-train-previews", SHARED / "mir-1k"


@pytest.fixture(scope="module")
def song():
    """Three seconds of a synthetic song (voice-like vocals over a band) at the model's rate."""
    return generate_song(7, 22050, duration=3.0)


def test_snr_db():
    source = np.ones((100, 2), np.float32)
    assert snr_db(source, source) == float("inf")
    assert snr_db(source, 0.9 * source) == pytest.approx(20.0)
    assert snr_db(np.zeros((10, 1)), np.ones((10, 1))) is None
    assert snr_db(source, np.concatenate([source, source])) == float("inf")  # compared over the common length


def test_each_codec_decodes_within_its_stated_snr(tmp_path, song):
    """The MUSDB18 part's Vorbis at 22.05 kHz stereo and MIR-1K's Opus at 16 kHz mono, decoded by
    the normal loader, sample for sample as long as the source and within the part's bound."""
    import soxr

    for source, audio in song.items():
        record = encode_and_check(tmp_path / f"musdb-{source}.ogg", audio, 22050, MUSDB_CODEC)
        assert record["snr_db"] >= MIN_SNR_DB["musdb-22k"], record
        assert sf.info(record["path"]).subtype == "VORBIS"
        mono = soxr.resample(audio.mean(axis=1, keepdims=True), 22050, 16000)
        record = encode_and_check(tmp_path / f"mir-{source}.ogg", mono, 16000, MIR1K_CODEC)
        assert record["snr_db"] >= MIN_SNR_DB["mir-1k"], record
        info = sf.info(record["path"])
        assert (info.subtype, info.samplerate, info.channels) == ("OPUS", 16000, 1)


def test_opus_refuses_a_rate_it_cannot_hold(tmp_path):
    with pytest.raises(Exception, match="Opus only supports"):
        MIR1K_CODEC.write(tmp_path / "x.ogg", np.zeros((22050, 1), np.float32), 22050)


def write_stems(root, rate, channels, songs, seconds=1.0):
    time = np.arange(int(seconds * rate)) / rate
    for split, names in songs.items():
        for number, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index, source in enumerate(("vocals", "accompaniment")):
                tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * index + 30 * number) * time)
                sf.write(folder / f"{source}.wav", np.repeat(tone[:, None], channels, axis=1), rate)


def test_the_pack_loads_through_the_normal_loaders(tmp_path, capsys):
    """A pack of a stems folder at 44.1 kHz (in MUSDB18's place) and a 16 kHz mono folder (in
    MIR-1K's): both read by get_tracks at the model's rate, as train.py would with the
    campaign's data flags; the manifest records every file's SNR; the report prints sizes."""
    write_stems(tmp_path / "songs", 44100, 2, {"train": ["a", "b"], "valid": ["c"]})
    write_stems(tmp_path / "clips", 16000, 1, {"train": ["x_1_01", "y_2_02"], "valid": ["z_1_01"]})
    pack = tmp_path / "pack"
    musdb = gpu_pack.pack_musdb(tmp_path / "songs", pack / "musdb-22k", dataset="folder")
    mir1k = gpu_pack.pack_folder(tmp_path / "clips", pack / "mir-1k")
    assert (musdb["files"], mir1k["files"]) == (6, 4)  # MIR-1K's valid clips stay out: they pick nothing
    assert sorted(p.name for p in (pack / "musdb-22k").iterdir()) == ["train", "valid"]
    assert [p.name for p in (pack / "mir-1k").iterdir()] == ["train"]
    assert musdb["snr_db"]["min"] >= MIN_SNR_DB["musdb-22k"] and mir1k["snr_db"]["min"] >= MIN_SNR_DB["mir-1k"]

    flags = gpu_campaign.data_flags(pack=str(pack))
    assert flags == ["--dataset", "folder+mir-1k", "--data-root", str(pack / "musdb-22k"),
                     "--data-root", str(pack / "mir-1k"), "--select-on", "folder"]
    for name, root in (("folder", pack / "musdb-22k"), ("mir-1k", pack / "mir-1k")):
        tracks = get_tracks(name, "train", data_root=root)
        audio = load_track(tracks[0], 22050, channels=2)
        assert audio["vocals"].shape == (22050, 2) and audio["accompaniment"].shape == (22050, 2)
    assert [t.name for t in get_tracks("folder", "valid", data_root=pack / "musdb-22k")] == ["c"]

    assert len(musdb["records"]) == 6 and all(r["snr_db"] >= MIN_SNR_DB["musdb-22k"] for r in musdb["records"])
    (pack / "manifest.json").write_text(json.dumps(
        {"parts": {"musdb-22k": musdb, "mir-1k": mir1k}, "files": musdb.pop("records") + mir1k.pop("records")}))
    assert gpu_pack.report(pack, tmp_path / "no-wheels") == 0
    printed = capsys.readouterr().out
    assert "musdb-22k: 6 files" in printed and "mir-1k: 4 files" in printed and "pack total" in printed
    assert "a call would carry" in printed


def test_main_writes_the_manifest(tmp_path, capsys):
    write_stems(tmp_path / "clips", 16000, 1, {"train": ["x_1_01"], "valid": ["z_1_01"]})
    assert gpu_pack.main(["--out", str(tmp_path / "pack"), "--mir1k-root", str(tmp_path / "clips"),
                          "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["mir-1k"] and manifest["parts"]["mir-1k"]["codec"]["subtype"] == "OPUS"
    assert len(manifest["files"]) == 2 and all(f["snr_db"] > MIN_SNR_DB["mir-1k"] for f in manifest["files"])
    # --verify measures the written files again without writing them; a part's records are replaced.
    written = {f["path"]: Path(f["path"]).stat().st_mtime_ns for f in manifest["files"]}
    assert gpu_pack.main(["--out", str(tmp_path / "pack"), "--mir1k-root", str(tmp_path / "clips"),
                          "--workers", "1", "--verify"]) == 0
    again = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert again["files"] == manifest["files"]
    assert {path: Path(path).stat().st_mtime_ns for path in written} == written
    with pytest.raises(SystemExit):
        gpu_pack.main(["--out", str(tmp_path / "p2")])  # no part named


def test_the_code_that_travels_is_small():
    """What a device call carries besides the pack and the wheels (limit 64 MiB in all)."""
    sizes = gpu_pack.travelling_bytes(REPOSITORY, skip=REPOSITORY / "gpu-pack")
    assert sum(sizes.values()) < 12 * 2**20, sizes


@pytest.mark.skipif(not (MUSDB_PREVIEWS.is_dir() and MIR1K.is_dir()), reason="needs ../shared/data")
def test_real_clips_decode_within_the_stated_snr_at_the_stated_rate(tmp_path):
    """One MUSDB18 preview and one MIR-1K clip of each source: SNR at least the part's bound, and
    bit rates that keep the whole pack (94 x 7 s stereo; 911 clips, 121 min, mono) under 45 MB."""
    preview = get_tracks("musdb", "train", data_root=MUSDB_PREVIEWS)[0]
    audio = load_track(preview, 22050, channels=2)
    clip = get_tracks("folder", "train", data_root=MIR1K)[0]
    rates = {}
    for source in ("vocals", "accompaniment"):
        record = encode_and_check(tmp_path / f"musdb-{source}.ogg", audio[source], 22050, MUSDB_CODEC)
        assert record["snr_db"] >= MIN_SNR_DB["musdb-22k"], record
        rates.setdefault("musdb", []).append(8 * record["bytes"] / record["seconds"])
        original, rate = load_audio(getattr(clip, source)[0].path)
        record = encode_and_check(tmp_path / f"mir-{source}.ogg", original, rate, MIR1K_CODEC)
        assert record["snr_db"] >= MIN_SNR_DB["mir-1k"], record
        rates.setdefault("mir", []).append(8 * record["bytes"] / record["seconds"])
    projected = (max(rates["musdb"]) * 94 * 7 * 2 + max(rates["mir"]) * 121 * 60 * 2) / 8
    assert projected < 45e6, (rates, projected)


# --- training.gpu_campaign ------------------------------------------------------


def dry_run(capsys, *argv):
    assert gpu_campaign.main(["--out", "results", "--minutes", "9", "--dry-run", *argv]) == 0
    return {line.split(": ", 1)[0]: shlex.split(line.split(": ", 1)[1])
            for line in capsys.readouterr().out.splitlines()}


def test_campaign_grid_recipe_and_averaging(tmp_path, capsys):
    (tmp_path / "musdb-22k").mkdir()
    (tmp_path / "mir-1k").mkdir()
    commands = dry_run(capsys, "--pack", str(tmp_path), "--recipe", "--widths", "24,16", "--seeds", "0,1",
                       "--average", "4", "--", "--precision", "bfloat16")
    assert list(commands) == ["w24-s0", "w24-s1", "w16-s0", "w16-s1"]
    command = commands["w16-s1"]
    text = " ".join(command)
    assert "--model-set num_initial_filters=16 --seed 1" in text
    assert "--dataset folder+mir-1k" in text and "--select-on folder" in text
    assert " ".join(gpu_campaign.RECIPE) in text and "--cross-dataset-probability 0.5" in text
    assert "--pitch-shift 0.5" in text and "--keep-checkpoints 4" in text
    assert command[-2:] == ["--precision", "bfloat16"]  # the common flags come last
    # A pack without MIR-1K trains on its MUSDB18 part alone.
    (tmp_path / "mir-1k").rmdir()
    assert gpu_campaign.data_flags(pack=str(tmp_path)) == ["--dataset", "folder", "--data-root",
                                                          str(tmp_path / "musdb-22k")]


def test_campaign_named_runs_as_before(capsys):
    commands = dry_run(capsys, "--data-root", "data/musdb-22k", "--run", "w24=--model-set num_initial_filters=24",
                       "--run", "w16=", "--", "--seed", "0")
    assert commands["w16"][2:] == [*gpu_campaign.BASE_FLAGS, "--dataset", "folder", "--data-root", "data/musdb-22k",
                                   "--run-dir", commands["w16"][commands["w16"].index("--run-dir") + 1],
                                   "--seed", "0"]


@pytest.mark.parametrize("argv, message", [
    (["--data-root", "d", "--widths", "16", "--run", "a="], "name the runs"),
    (["--data-root", "d"], "name the runs"),
    (["--data-root", "d", "--run", "a=", "--seed", "3"], "unrecognized arguments: --seed 3"),
    (["--data-root", "d", "--widths", "16,x"], "comma-separated list of integers"),
    (["--data-root", "d", "--widths", "16,16"], "distinct"),
    (["--data-root", "d", "--run", "a-avg="], "not ending in -avg"),
    (["--data-root", "d", "--run", "a=", "--run", "a=--seed 1"], "given twice"),
    (["--data-root", "d", "--run", "a=", "--average", "-1"], "must not be negative"),
    (["--pack", "/nonexistent", "--run", "a="], "no musdb-22k/"),
    (["--pack", "p", "--data-root", "d", "--run", "a="], "not allowed with"),
])
def test_campaign_refuses_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        gpu_campaign.main(["--out", "o", "--minutes", "1", "--dry-run", *argv])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_four_runs_share_the_budget():
    # Timed alone at 12 ms a step; four side by side with half of each extra run's work hidden: 2.5x.
    assert gpu_campaign.steps_that_fit(300.0, 0.012, runs=4, overlap=0.5) == 10000
