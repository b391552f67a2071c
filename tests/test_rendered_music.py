"""Songs with sampled instruments: the generator's contract, the SoundFont player's
timing and isolation between parts, every drawn program sounding, and the
``rendered`` dataset (cache, distinct songs, the missing-SoundFont error)."""
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.datasets import DatasetError, SyntheticOptions, get_tracks, load_track
from data_pipeline.synthetic_music import PEAK_LIMIT, Note, compose_song, generate_song, rms

fluidsynth = pytest.importorskip("fluidsynth", reason="needs pyfluidsynth and libfluidsynth (apt-get install fluidsynth)")
from data_pipeline import rendered_music  # noqa: E402  (after the skip: it needs the library)

pytestmark = pytest.mark.skipif(not rendered_music.soundfont_path().is_file(),
                                reason="needs a GM SoundFont (apt-get install fluid-soundfont-gm)")
RATE = 16000
LSB = 1 / 32768


@pytest.fixture(scope="module")
def player():
    player = rendered_music.SoundFontPlayer(rendered_music.check_renderer(), RATE)
    yield player
    player.close()


@pytest.fixture(scope="module")
def song():
    return compose_song(np.random.default_rng(0), RATE, RATE)  # one second


def test_rendered_songs_keep_the_generators_contract():
    first = rendered_music.generate_rendered_song(5, RATE, duration=4.0)
    again = rendered_music.generate_rendered_song(5, RATE, duration=4.0)
    procedural = generate_song(5, RATE, duration=4.0)
    for name in ("vocals", "accompaniment"):
        assert first[name].shape == (4 * RATE, 2) and first[name].dtype == np.float32
        np.testing.assert_array_equal(first[name], again[name])  # deterministic in the seed
    assert np.max(np.abs(first["vocals"] + first["accompaniment"])) <= PEAK_LIMIT
    assert rms(first["accompaniment"]) > 0.01 and rms(first["vocals"]) > 0.003
    # the same score with another band: the accompaniment is not the procedural one
    assert not np.allclose(first["accompaniment"], procedural["accompaniment"], atol=1e-2)


def test_every_program_and_drum_the_band_draws_sounds(player, song):
    melodic = sorted({*sum(rendered_music.CHORD_PROGRAMS.values(), ()), *rendered_music.LEAD_PROGRAMS,
                      *rendered_music.BASS_PROGRAMS})
    silent = [program for program in melodic
              if rms(player.play([Note(0.05, 0.5, 45 if program in rendered_music.BASS_PROGRAMS else 62, 0.8)],
                                 song, program, 0.0)) < 1e-3]
    silent += [(kit, key) for kit in rendered_music.DRUM_KITS for keys in rendered_music.DRUM_KEYS.values()
               for key in keys
               if rms(player.play([Note(0.05, 0.2, key, 0.8)], song, kit, 0.0, bank=rendered_music.DRUM_BANK,
                                  channel=rendered_music.DRUM_CHANNEL)) < 1e-4]
    assert silent == []


def test_notes_start_on_time_and_nothing_rings_into_the_next_part(player, song):
    onset = 0.5
    loud = player.play([Note(onset, 0.45, 60, 1.0), Note(onset, 0.45, 64, 1.0)], song, 48, 0.0)  # strings
    assert loud.shape == (RATE, 2)
    start = int(onset * RATE)
    # FluidSynth starts notes at its 64-sample block boundaries; its 16-bit output is dithered (1 LSB)
    assert np.max(np.abs(loud[:start - 64])) <= LSB and rms(loud[start:start + RATE // 10]) > 1e-3
    # the strings are still sounding at the end of the song: the next part must not hear them
    assert rms(loud[-RATE // 20:]) > 1e-3
    assert np.max(np.abs(player.play([], song, 0, 0.0))) <= LSB


def test_rendered_dataset_is_cached_and_differs_from_the_synthetic_songs(tmp_path):
    options = SyntheticOptions(songs={"train": 2, "valid": 1, "test": 1}, duration=2.0, cache_dir=str(tmp_path))
    rendered = get_tracks("rendered", "train", sample_rate=RATE, synthetic=options)
    assert Path(rendered[0].vocals[0].path).parts[-4].startswith("rendered-v")  # its own cache folder
    stamp = Path(rendered[0].mixture[0].path).stat().st_mtime_ns
    assert get_tracks("rendered", "train", sample_rate=RATE, synthetic=options) == rendered
    assert Path(rendered[0].mixture[0].path).stat().st_mtime_ns == stamp  # reused, not regenerated
    audio = load_track(rendered[0], RATE)
    np.testing.assert_allclose(audio["mixture"], audio["vocals"] + audio["accompaniment"], atol=1e-4)
    synthetic = load_track(get_tracks("synthetic", "train", sample_rate=RATE, synthetic=options)[0], RATE)
    assert not np.allclose(audio["vocals"], synthetic["vocals"], atol=1e-2)  # other scores and singers


def test_a_missing_soundfont_is_a_clear_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WAVESEP_SOUNDFONT", str(tmp_path / "none.sf2"))
    with pytest.raises(DatasetError, match="fluid-soundfont-gm"):
        get_tracks("rendered", "train", sample_rate=RATE, synthetic=SyntheticOptions(cache_dir=str(tmp_path)))
