"""The Wiener post-filter in every path (issue 28): runtime.chunking.SongSeparation runs it on
the model's outputs at the model's rate, with the model input, before they go back to the
song's rate (separate.py, evaluate.py, bench and the page go through it); block by block
equals the whole song; separate.py --wiener writes it; --live refuses it."""
import json
import shutil

import numpy as np
import pytest

import separate
from data_pipeline.audio import load_audio, write_wav
from runtime import export
from runtime.model_facts import ModelFacts
from runtime.run_directory import RunDirectory
from runtime.chunking import SongSeparation, separate_song
from runtime.loading import load_separator
from runtime.wiener import WienerSettings, model_wiener, wiener_filter
from tests.helpers import make_run_dir

RATE = 8000  # the tiny model's


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def separator(run_dir):
    return load_separator(run_dir)


def song(rate: int, seconds: float = 3.0) -> np.ndarray:
    return np.random.default_rng(3).uniform(-0.5, 0.5, (int(rate * seconds), 2)).astype(np.float32)


@pytest.mark.parametrize("variant", ["mask", "em1"])
def test_at_the_models_rate_the_filter_takes_the_models_outputs_and_input(separator, variant):
    settings = WienerSettings(WienerSettings.parse(variant).iterations, 256, WienerSettings.parse(variant).soft_mask,
                              em_block=20, em_context=5)
    mix = song(RATE)
    plain = separate_song(separator, mix, RATE, chunk_seconds=0.4)
    filtered = separate_song(separator, mix, RATE, chunk_seconds=0.4, wiener=settings)
    expected = wiener_filter(mix, plain, settings, RATE)
    for source in plain:
        assert filtered[source].shape == mix.shape
        np.testing.assert_allclose(filtered[source], expected[source], atol=1e-5)
        assert np.abs(filtered[source] - plain[source]).max() > 1e-3  # it did something


@pytest.mark.parametrize("variant", ["mask", "mask+em1"])
def test_block_by_block_equals_the_whole_song_at_another_rate(separator, variant):
    settings = WienerSettings(WienerSettings.parse(variant).iterations, 256, WienerSettings.parse(variant).soft_mask,
                              em_block=20, em_context=5)
    rate = 44100
    mix = song(rate, 2.0)
    whole = separate_song(separator, mix, rate, chunk_seconds=0.3, wiener=settings)
    separation = SongSeparation(separator, rate, 2, chunk_seconds=0.3, wiener=settings)
    cuts = [0, 1, 999, 20000, 20001, len(mix)]
    pieces = [separation.push(mix[a:b]) for a, b in zip(cuts, cuts[1:])] + [separation.push(mix[:0], last=True)]
    plain = separate_song(separator, mix, rate, chunk_seconds=0.3)
    for source in whole:
        assert whole[source].shape == mix.shape
        streamed = np.concatenate([p[source] for p in pieces])[:len(mix)]
        np.testing.assert_allclose(streamed, whole[source], atol=1e-5)
        assert np.abs(whole[source] - plain[source]).max() > 1e-3
    # A difference-output model's sources still add up to the input.
    np.testing.assert_allclose(whole["vocals"] + whole["accompaniment"], mix, atol=2e-3)


def test_separate_py_writes_the_filtered_sources_and_live_refuses_the_filter(run_dir, separator, tmp_path, capsys):
    import soundfile as sf

    mix = song(RATE, 2.0)
    sf.write(tmp_path / "song.wav", mix, RATE, subtype="FLOAT")
    model = str(run_dir)
    assert separate.main([str(tmp_path / "song.wav"), "--model", model, "--out", str(tmp_path / "out"),
                          "--wiener", "mask", "--chunk-seconds", "0.5"]) == 0
    assert "Wiener post-filter mask: soft mask, 4096-point STFT" in capsys.readouterr().out
    expected = separate_song(separator, mix, RATE, chunk_seconds=0.5, wiener=WienerSettings.parse("mask"))
    for source in expected:
        written, _ = load_audio(tmp_path / "out" / "song" / f"{source}.wav", RATE, 2)
        np.testing.assert_allclose(written, expected[source], atol=1e-4)  # 16-bit WAV
    with pytest.raises(SystemExit):
        separate.parse_args(["--live", "-", "--rate", "8000", "--channels", "2", "--wiener", "mask"])
    assert "--live separates without the Wiener post-filter" in capsys.readouterr().err


def test_the_models_own_variant_is_the_default_and_off_turns_it_off(separator):
    assert model_wiener(separator, None, None) is None  # a run directory: off
    own = WienerSettings.parse("mask")

    class Exported:
        wiener = own

    assert model_wiener(Exported, None, None) == own
    assert model_wiener(Exported, None, 1024) == WienerSettings(0, 1024, True)
    assert model_wiener(Exported, WienerSettings.parse("off"), None) is None
    assert model_wiener(separator, WienerSettings.parse("em2"), 512) == WienerSettings(2, 512)


def test_a_runs_post_filter_is_its_default_in_separate_py_and_its_export(run_dir, tmp_path, capsys):
    """config.json's post_filter (the shipped model's: mask) is what a run separates with unless told
    otherwise, and what its export puts in the graph and the facts."""
    own = tmp_path / "with-mask"
    shutil.copytree(run_dir, own)
    config = json.loads((own / "config.json").read_text())
    (own / "config.json").write_text(json.dumps({**config, "post_filter": "mask"}))
    assert RunDirectory(own).read_config().to_dict()["post_filter"] == "mask"
    separator = load_separator(own)
    assert separator.wiener == WienerSettings.parse("mask")
    mix = song(RATE)
    masked = separate_song(separator, mix, RATE, wiener=model_wiener(separator, None, None))
    plain = separate_song(separator, mix, RATE)
    assert np.abs(masked["vocals"] - plain["vocals"]).max() > 1e-3  # the filter does something here
    written = {}
    for name, extra in (("default", []), ("off", ["--wiener", "off"])):
        out = tmp_path / name
        sf_path = tmp_path / "song.wav"
        write_wav(sf_path, mix, RATE, subtype="FLOAT")
        assert separate.main([str(sf_path), "--model", str(own), "--out", str(out)] + extra) == 0
        written[name] = load_audio(out / "song" / "vocals.wav", RATE)[0]
    np.testing.assert_allclose(written["default"], np.clip(masked["vocals"], -1, 1), atol=2 ** -15)
    np.testing.assert_allclose(written["off"], np.clip(plain["vocals"], -1, 1), atol=2 ** -15)
    version = export.export_run(own, tmp_path / "export", log=lambda message: None, chunk_seconds=0.5)
    assert ModelFacts.read(version).post_filter["wiener"] == "mask"
    assert load_separator(version).wiener.name == "mask"
