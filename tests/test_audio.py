"""Audio I/O: every format decodes, every bad input raises AudioError naming the file."""
import os
import stat

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from data_pipeline.audio import (
    DECODE_PYTHON, AudioError, audio_info, convert_channels, decode_in_graph, in_graph_decoder, load_audio, write_wav)

RATE = 22050


def tone(frames=RATE // 2, channels=2, rate=RATE):
    t = np.arange(frames) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 660 * t)
    return np.stack([left, right][:channels], axis=1).astype(np.float32)


@pytest.mark.parametrize("extension,format_name,tolerance", [
    ("wav", "WAV", 1e-4), ("flac", "FLAC", 1e-4), ("ogg", "OGG", 0.1), ("mp3", "MP3", 0.1)])
@pytest.mark.parametrize("channels", [1, 2])
def test_each_format_decodes_to_float32_time_by_channels(tmp_path, extension, format_name, tolerance, channels):
    path = tmp_path / f"tone.{extension}"
    reference = tone(channels=channels)
    sf.write(path, reference, RATE, format=format_name)
    audio, rate = load_audio(path)
    assert rate == RATE and audio.dtype == np.float32 and audio.shape[1] == channels
    if extension in ("wav", "flac"):  # lossless: sample exact up to 16-bit rounding
        np.testing.assert_allclose(audio, reference, atol=tolerance)
    else:  # lossy codecs add encoder delay; compare loudness instead
        assert abs(len(audio) - len(reference)) < 0.1 * RATE
        assert abs(np.sqrt(np.mean(audio ** 2)) - np.sqrt(np.mean(reference ** 2))) < tolerance


def test_resample_and_channel_conversion(tmp_path):
    path = tmp_path / "mono48k.wav"
    sf.write(path, tone(48000, channels=1, rate=48000), 48000)
    audio, rate = load_audio(path, sample_rate=16000, channels=2)
    assert rate == 16000 and audio.shape == (16000, 2)
    np.testing.assert_array_equal(audio[:, 0], audio[:, 1])
    spectrum = np.abs(np.fft.rfft(audio[:, 0]))
    assert np.argmax(spectrum) == 440  # 1 s at 16 kHz: bin index == Hz


def test_downmix_averages_channels():
    stereo = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(convert_channels(stereo, 1), [[0.5], [0.5]])


def test_write_wav_round_trips_and_is_atomic(tmp_path):
    path = tmp_path / "out" / "x.wav"
    write_wav(path, tone(), RATE, subtype="FLOAT")
    audio, rate = load_audio(path)
    np.testing.assert_array_equal(audio, tone())
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]  # no temporary left behind


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_audio_gets_the_users_umask_not_a_temporary_files_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_wav(tmp_path / "x.wav", tone(), RATE)
        write_wav(tmp_path / "x.flac", tone(), RATE)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "x.wav").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "x.flac").stat().st_mode) == mode
    assert sf.info(tmp_path / "x.flac").format == "FLAC"
    np.testing.assert_allclose(load_audio(tmp_path / "x.flac")[0], tone(), atol=1 / 32768)


def write_truncated_wav(path):
    sf.write(path, tone(), RATE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_header_only(path):
    sf.write(path, tone(), RATE)
    path.write_bytes(path.read_bytes()[:30])


def write_truncated_flac(path):
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, (RATE, 2)), RATE, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name,make,reason", [
    ("missing.wav", lambda p: None, "does not exist"),
    ("empty.wav", lambda p: p.write_bytes(b""), "empty"),
    ("text.wav", lambda p: p.write_text("definitely not audio\n" * 10), "not a readable audio file"),
    ("truncated.wav", write_truncated_wav, "truncated"),
    ("header_only.wav", write_header_only, "not a readable audio file"),
    ("truncated.flac", write_truncated_flac, "could not decode"),
    ("three_channels.wav", lambda p: sf.write(p, np.zeros((100, 3)), RATE), "3 channels"),
    ("nan.wav", lambda p: sf.write(p, np.array([[0.1], [np.nan]]), RATE, subtype="FLOAT"), "NaN or infinite"),
    ("inf.wav", lambda p: sf.write(p, np.array([[np.inf], [0.0]]), RATE, subtype="FLOAT"), "NaN or infinite"),
    ("song.aiff", lambda p: p.write_bytes(b"FORM0000AIFF"), "unsupported format"),
])
def test_bad_input_raises_audio_error_naming_file_and_reason(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert str(path) in str(caught.value) and reason in str(caught.value)


def test_a_streamed_wav_whose_data_size_was_never_filled_in_loads_whole(tmp_path):
    path = tmp_path / "streamed.wav"
    sf.write(path, tone(), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[36:40] == b"data"
    data[40:44] = b"\xff\xff\xff\xff"  # what a recorder writes before it knows the length
    path.write_bytes(bytes(data))
    audio, _ = load_audio(path)
    np.testing.assert_allclose(audio, tone(), atol=2 ** -15)


def test_folder_is_not_a_file(tmp_path):
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path)


@pytest.mark.parametrize("extension,format_name,subtype,rate,expected_in_graph", [
    ("wav", "WAV", "PCM_16", RATE, True), ("flac", "FLAC", "PCM_16", RATE, True),
    ("ogg", "OGG", "VORBIS", RATE, True), ("mp3", "MP3", None, RATE, True),
    ("wav", "WAV", "FLOAT", RATE, False), ("wav", "WAV", "PCM_16", 44100, False)])
def test_in_graph_decoding_matches_python_loader(tmp_path, extension, format_name, subtype, rate, expected_in_graph):
    path = tmp_path / f"x.{extension}"
    sf.write(path, tone(rate // 2, channels=1, rate=rate), rate, format=format_name, subtype=subtype)
    decoder = in_graph_decoder(audio_info(path), RATE)
    assert (decoder != DECODE_PYTHON) == expected_in_graph
    decoded = decode_in_graph(tf.constant(str(path)), tf.constant(-1, tf.int64), tf.constant(decoder), RATE).numpy()
    reference, _ = load_audio(path, RATE, channels=2)
    assert decoded.shape[1] == 2
    if extension in ("wav", "flac"):
        np.testing.assert_allclose(decoded, reference, atol=1e-4)
    else:  # codec decoders differ in delay handling; loudness agrees
        assert abs(np.std(decoded) - np.std(reference)) < 0.02
