"""Synthetic songs: deterministic, well-formed stems, vocal phrasing, frequency overlap, variety, no aliasing,
and output tied to GENERATOR_VERSION."""
import hashlib

import numpy as np
import pytest

from data_pipeline.synthetic_music import (
    GENERATOR_VERSION, PEAK_LIMIT, compose_song, generate_song, overdrive, pulse_wave, saw_wave)

RATE = 22050
SEEDS = range(5)


@pytest.fixture(scope="module")
def songs():
    return {seed: generate_song(seed, RATE, duration=10.0) for seed in SEEDS}


def frame_db(stereo, rate, frame_s=0.05):
    """Level of each 50 ms frame relative to the loudest frame."""
    mono = stereo.mean(axis=1)
    frame = int(frame_s * rate)
    power = np.mean(mono[: len(mono) // frame * frame].reshape(-1, frame) ** 2, axis=1)
    return 10 * np.log10(power / power.max() + 1e-30)


def band_energy_fraction(stereo, rate, low, high):
    power = np.abs(np.fft.rfft(stereo.mean(axis=1))) ** 2
    freqs = np.fft.rfftfreq(len(stereo), 1 / rate)
    return power[(freqs >= low) & (freqs < high)].sum() / power.sum()


def spectral_centroid(stereo, rate):
    power = np.abs(np.fft.rfft(stereo.mean(axis=1))) ** 2
    return float(np.sum(power * np.fft.rfftfreq(len(stereo), 1 / rate)) / power.sum())


def off_harmonic_db(wave, f0, rate):
    """Loudest spectral component below 0.45 * rate that is not a harmonic of f0, relative to the peak."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    freqs = np.fft.rfftfreq(len(wave), 1 / rate)
    harmonic = np.abs((freqs + f0 / 2) % f0 - f0 / 2) < 8  # within 8 Hz of a multiple of f0
    return 20 * np.log10(spectrum[~harmonic & (freqs < 0.45 * rate)].max() / spectrum.max())


def test_generator_version_is_an_int():
    assert isinstance(GENERATOR_VERSION, int)


# (GENERATOR_VERSION, sha256 of fingerprint_songs()) as last recorded.
FINGERPRINT = (2, "5d8ab08b0cdcd8ceee011c1d0c542f88e34fce4c8a230a9e32f6f7e0f77ec8be")


def fingerprint_songs():
    """Short songs at a low and a high rate (they oversample differently), as 16-bit PCM:
    the generator computes in float64, so 16 bits hide CPU-dependent last bits."""
    digest = hashlib.sha256()
    for seed, rate in [(0, 8000), (1, 8000), (2, 8000), (3, 44100)]:
        song = generate_song(seed, rate, duration=3.0)
        for stem in ("vocals", "accompaniment"):
            digest.update(np.round(song[stem] * 32767).astype("<i2").tobytes())
    return digest.hexdigest()


def test_generator_output_is_tied_to_its_version():
    recorded_version, recorded_digest = FINGERPRINT
    digest = fingerprint_songs()
    if digest != recorded_digest:
        assert GENERATOR_VERSION > recorded_version, (
            "generate_song's output changed: bump GENERATOR_VERSION in data_pipeline/synthetic_music.py "
            "(the synthetic song cache is keyed by it), then record the new checksum here")
    assert (GENERATOR_VERSION, digest) == FINGERPRINT, (
        f"record the checksum: FINGERPRINT = ({GENERATOR_VERSION}, {digest!r})")


def test_same_seed_gives_identical_songs_and_different_seeds_differ():
    first, again, other = (generate_song(seed, 8000, duration=3.0) for seed in (11, 11, 12))
    for stem in ("vocals", "accompaniment"):
        np.testing.assert_array_equal(first[stem], again[stem])
        assert not np.allclose(first[stem], other[stem])


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_stems_are_finite_float32_stereo_of_the_requested_length_and_never_clip(rate):
    song = generate_song(3, rate, duration=3.5)
    assert set(song) == {"vocals", "accompaniment"}
    for stem in song.values():
        assert stem.dtype == np.float32 and stem.shape == (round(3.5 * rate), 2)
        assert np.isfinite(stem).all()
        assert np.sqrt(np.mean(stem ** 2)) > 1e-3  # about -60 dBFS: neither stem is silent
    assert np.abs(song["vocals"] + song["accompaniment"]).max() <= PEAK_LIMIT + 1e-6


def test_peak_limit_holds_and_levels_vary(songs):
    peaks = [np.abs(song["vocals"] + song["accompaniment"]).max() for song in songs.values()]
    assert max(peaks) <= PEAK_LIMIT + 1e-6 and min(peaks) > 0.4


def test_vocals_sing_in_phrases_with_silent_gaps(songs):
    for song in songs.values():
        levels = frame_db(song["vocals"], RATE)
        assert np.mean(levels > -30) > 0.3  # the voice sings for a good part of the song ...
        assert np.sum(levels < -40) >= 5  # ... but not all the time


def test_accompaniment_plays_almost_throughout(songs):
    for song in songs.values():
        assert np.mean(frame_db(song["accompaniment"], RATE) > -30) > 0.85


def test_accompaniment_shares_the_vocal_frequency_band(songs):
    fractions = [band_energy_fraction(song["accompaniment"], RATE, 200, 1000) for song in songs.values()]
    assert min(fractions) > 0.08 and np.mean(fractions) > 0.2
    for song in songs.values():  # the voice lives there too, so a band split cannot separate them
        assert band_energy_fraction(song["vocals"], RATE, 200, 1000) > 0.3


def test_vocals_reach_the_presence_band(songs):
    for song in songs.values():
        assert band_energy_fraction(song["vocals"], RATE, 2000, 5000) > 0.002


def test_songs_vary_in_tempo_and_timbre(songs):
    step_lengths = [compose_song(np.random.default_rng(seed), RATE, RATE * 10).step_s for seed in range(10)]
    assert np.ptp(60 / 4 / np.array(step_lengths)) > 40  # tempo spread in BPM
    vocal_centroids = [spectral_centroid(song["vocals"], RATE) for song in songs.values()]
    accompaniment_centroids = [spectral_centroid(song["accompaniment"], RATE) for song in songs.values()]
    assert np.ptp(vocal_centroids) > 100 and np.ptp(accompaniment_centroids) > 200


@pytest.mark.parametrize("rate", [8000, 44100])
@pytest.mark.parametrize("f0", [110.0, 440.0, 900.0])
def test_oscillators_and_distortion_do_not_alias(rate, f0):
    frequency = np.full(rate, f0)
    sine = np.sin(2 * np.pi * f0 * np.arange(rate) / rate)
    for wave in (saw_wave(frequency, rate), pulse_wave(frequency, rate, duty=0.3), overdrive(sine, 12.0, rate)):
        assert off_harmonic_db(wave[rate // 4:], f0, rate) < -50
