"""export.py: TF Serving layout, atomic versions, both signatures against the Keras
model, the ONNX file, the TF-TRT error on this CPU build, and separate.py on exports."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import export as export_cli
import separate
from models.waveunet import CONFIGS, WaveUNetConfig
from runtime import export, resampling
from runtime.chunking import separate_song
from runtime.float16_run import FLOAT16_TOLERANCE, write_float16_run
from runtime.loading import load_separator
from runtime.model_facts import MODEL_FACTS_FILE
from runtime.saved_model_graph import resample_tf
from serve.client import wav_bytes
from tests.helpers import make_run_dir, tiny_waveunet as tiny_config

RATE = 8000
# The SavedModel and the Keras model run the same float32 kernels on the same windows.
TOLERANCE = 1e-5
# 16-bit WAV output: half a step of 2**-15, plus float rounding.
WAV_TOLERANCE = 2 ** -15 + 1e-5


@pytest.fixture(scope="module", params=[(True, 2), (False, 1)], ids=["stereo-context", "mono-same-padding"])
def config(request):
    return tiny_config(*request.param)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported[1]))


def song(length: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (length, channels)).astype(np.float32)


def read_wav(data: bytes):
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio, rate


def test_versions_are_numbered_and_written_atomically(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", tiny_config(True, 2))
    base = tmp_path / "export" / "tiny"
    quiet = {"chunk_seconds": 0.1, "log": lambda message: None}
    assert export.export_run(run_dir, base, **quiet) == base / "1"
    assert export.export_run(run_dir, base, **quiet) == base / "2"
    assert export.export_run(run_dir, base, version=7, **quiet) == base / "7"
    assert export.export_run(run_dir, base, **quiet) == base / "8"
    with pytest.raises(export.ExportError, match="exists already"):
        export.export_run(run_dir, base, version=2, **quiet)
    # Only whole versions: the staging folders are gone, each version is a full SavedModel.
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "7", "8"]
    for version in base.iterdir():
        assert {p.name for p in version.iterdir()} >= {"saved_model.pb", "variables", "assets"}
        facts = json.loads((version / "assets" / MODEL_FACTS_FILE).read_text())
        assert (facts["arch"], facts["sample_rate"], facts["channels"]) == ("waveunet", RATE, 2)


def test_a_failed_parity_check_writes_nothing(tmp_path, monkeypatch):
    run_dir = make_run_dir(tmp_path / "run", tiny_config(True, 2))
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(export.ExportError, match="SavedModel vs Keras model.*nothing was written"):
        export.export_run(run_dir, tmp_path / "export", chunk_seconds=0.1, log=lambda message: None)
    assert list((tmp_path / "export").iterdir()) == []


@pytest.mark.parametrize("length", [0, 1, 500, 3001])
def test_serving_default_equals_the_keras_chunked_path(exported, loaded, config, length):
    run_dir, _ = exported
    mix = song(length, config.channels, seed=length)
    outputs = loaded.signatures["serving_default"](waveform=tf.constant(mix[None]))
    reference = separate_song(load_separator(run_dir), mix, RATE, chunk_seconds=0.1)
    for source in reference:
        assert outputs[source].shape == (1, length, config.channels)
        np.testing.assert_allclose(outputs[source].numpy()[0], reference[source], atol=TOLERANCE)


def test_serving_default_separates_each_song_of_a_batch_alone(loaded, config):
    batch = np.stack([song(1234, config.channels, seed) for seed in (1, 2)])
    together = loaded.signatures["serving_default"](waveform=tf.constant(batch))
    for index in range(2):
        alone = loaded.signatures["serving_default"](waveform=tf.constant(batch[index:index + 1]))
        for source in ("vocals", "accompaniment"):
            np.testing.assert_allclose(together[source].numpy()[index], alone[source].numpy()[0], atol=TOLERANCE)


@pytest.mark.parametrize("rate, channels", [(RATE, 2), (RATE, 1), (44100, 2), (11025, 1)])
def test_separate_audio_returns_wavs_at_the_input_rate_channels_and_length(exported, loaded, rate, channels):
    run_dir, _ = exported
    mix = song(int(0.45 * rate) + 3, channels, seed=rate) * 0.5
    outputs = loaded.signatures["separate_audio"](audio_bytes=tf.constant([wav_bytes(mix, rate)]))
    vocals, vocals_rate = read_wav(outputs["vocals_bytes"].numpy()[0])
    accompaniment, _ = read_wav(outputs["accompaniment_bytes"].numpy()[0])
    assert vocals_rate == rate and vocals.shape == accompaniment.shape == mix.shape
    quantized_mix, _ = read_wav(wav_bytes(mix, rate))
    # A difference-output model: the sources add up to the input at every rate (what
    # the model's rate cannot carry goes to the accompaniment).
    np.testing.assert_allclose(vocals + accompaniment, quantized_mix, atol=2 * WAV_TOLERANCE)
    if rate == RATE:  # no resampling: the same numbers as the Keras path, up to 16-bit output
        reference = separate_song(load_separator(run_dir), quantized_mix, RATE)
        np.testing.assert_allclose(vocals, reference["vocals"], atol=WAV_TOLERANCE)


@pytest.mark.parametrize("rate, channels", [(RATE, 1), (RATE, 2), (44100, 1), (44100, 2), (11025, 1)])
def test_separate_audio_agrees_with_the_numpy_path_at_any_rate_and_channel_count(exported, loaded, rate, channels):
    """One channel rule (runtime.channels) and one resampling rule (runtime.resampling): the
    graph's separate_audio and the numpy path (separate.py's, on the run directory) give
    the same sources for a song longer than a resampling window, mono or stereo, at the
    model's rate or not, into a stereo or a mono model. Measured: at most 1.535e-5 apart,
    half a 16-bit step (the graph's WAV output) plus 9e-8; with the two resamplers of
    before (soxr in numpy, a whole-song FFT in the graph) the shipped model's sources
    were about 35 dB apart at 44.1 kHz, i.e. differences of 1e-2."""
    run_dir, _ = exported
    mix, _ = read_wav(wav_bytes(song(int(9.5 * rate), channels, seed=7) * 0.5, rate))
    outputs = loaded.signatures["separate_audio"](audio_bytes=tf.constant([wav_bytes(mix, rate)]))
    reference = separate_song(load_separator(run_dir), mix, rate)
    for source, expected in reference.items():
        separated, _ = read_wav(outputs[f"{source}_bytes"].numpy()[0])
        assert separated.shape == mix.shape
        np.testing.assert_allclose(separated, np.clip(expected, -1.0, 1.0), atol=2 ** -16 + 2e-6)


def test_separate_audio_rejects_what_is_not_a_mono_or_stereo_wav(loaded):
    signature = loaded.signatures["separate_audio"]
    for data, message in [(b"not a wav file", "RIFF"), (wav_bytes(song(100, 5), RATE), "mono or stereo"),
                          (wav_bytes(np.zeros((0, 2), np.float32), RATE), "no samples")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            signature(audio_bytes=tf.constant([data]))


@pytest.mark.parametrize("from_rate, to_rate", [(44100, 22050), (22050, 44100), (44100, 16000), (48000, 22050),
                                                (8000, 8000)])
@pytest.mark.parametrize("seconds", [0.5, 60])  # a minute: time * rate passes 2**31
def test_in_graph_resampling_keeps_a_tone_and_follows_the_numpy_rule(from_rate, to_rate, seconds):
    """The graph's resampler is runtime.resampling's rule: the same samples as the numpy
    path's (measured: at most 4.8e-7 apart, float32 FFTs against float64 ones)."""
    length = int(seconds * from_rate) + 11
    t = np.arange(length) / from_rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)[:, None]
    signal = (tone + 0.1 * np.random.default_rng(0).standard_normal((length, 2))).astype(np.float32)
    resampled = resample_tf(tf.constant(signal), from_rate, to_rate).numpy()
    expected_length = -(-length * to_rate // from_rate)
    assert resampled.shape == (expected_length, 2)
    np.testing.assert_allclose(resampled, resampling.resample(signal, from_rate, to_rate), atol=2e-6)
    tone_only = resample_tf(tf.constant(tone.astype(np.float32)), from_rate, to_rate).numpy()
    t_out = np.arange(expected_length) / to_rate
    interior = slice(to_rate // 20, -to_rate // 20)  # the song's edges meet silence
    np.testing.assert_allclose(tone_only[interior, 0], 0.5 * np.sin(2 * np.pi * 440 * t_out)[interior], atol=2e-3)


def test_the_resampling_rule_streams_block_by_block_as_on_the_whole_song():
    """What lets separate.py stream a file through the graph's resampler: blocks of any
    size give the samples of one call on the whole song, bit for bit."""
    signal = np.random.default_rng(1).uniform(-0.5, 0.5, (20 * 44100 + 7, 2)).astype(np.float32)
    stream = resampling.ResampleStream(44100, 22050, 2)
    pieces = [stream.resample_chunk(signal[start:start + 12345]) for start in range(0, len(signal), 12345)]
    pieces.append(stream.resample_chunk(signal[:0], last=True))
    np.testing.assert_array_equal(np.concatenate(pieces), resampling.resample(signal, 44100, 22050))


def test_onnx_file_separates_like_the_saved_model(exported, config):
    _, version_dir = exported
    mix = song(2500, config.channels, seed=3)
    from_onnx = separate_song(load_separator(version_dir / export.ONNX_FILE), mix, RATE)
    from_saved_model = separate_song(load_separator(version_dir), mix, RATE)
    assert load_separator(version_dir / export.ONNX_FILE).description == "waveunet (ONNX Runtime)"
    for source in from_onnx:
        np.testing.assert_allclose(from_onnx[source], from_saved_model[source], atol=TOLERANCE)


@pytest.mark.parametrize("model", ["version", "onnx"])
def test_separate_py_takes_an_exported_model(exported, tmp_path, model):
    _, version_dir = exported
    path = version_dir if model == "version" else version_dir / export.ONNX_FILE
    audio = song(3000, 2, seed=4)
    sf.write(tmp_path / "song.wav", audio, 16000)
    assert separate.main([str(tmp_path / "song.wav"), "--model", str(path), "--out", str(tmp_path / "out")]) == 0
    vocals, rate = sf.read(tmp_path / "out" / "song" / "vocals.wav", always_2d=True)
    assert rate == 16000 and vocals.shape == audio.shape


def test_trt_without_tensorrt_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    assert not export.tensorrt_available()  # the CPU wheel this suite runs on
    run_dir = make_run_dir(tmp_path / "run", tiny_config(True, 2))
    assert export_cli.main(["--model", str(run_dir), "--out", str(tmp_path / "export"), "--trt", "fp16"]) == 1
    error = capsys.readouterr().err
    assert "TensorRT" in error and "tensorflow[and-cuda]" in error and "gpu" in error
    assert not (tmp_path / "export").exists()


def save_like_tensorrt(saved_model_dir, output_dir, precision, signature, weight_scale=1.0):
    """What TrtGraphConverterV2 (TF 2.16) converts and saves, with its own code but for the
    TensorRT pass this TensorFlow lacks: the one signature, frozen (variables turned into
    constants), rebuilt from its graph and saved alone on a bare AutoTrackable.
    ``weight_scale`` scales every weight first, to stand for a conversion that changed the numbers."""
    from tensorflow.python.compiler.tensorrt import trt_convert
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.trackable.autotrackable import AutoTrackable

    original = tf.saved_model.load(str(saved_model_dir))  # alive while its variables are read
    for variable in original.model_variables:
        variable.assign(variable * weight_scale)
    function = original.signatures[signature]
    frozen = convert_variables_to_constants_v2(function)
    converted = trt_convert._construct_function_from_graph_def(function, frozen.graph.as_graph_def(), frozen)
    tf.saved_model.save(AutoTrackable(), str(output_dir), signatures={signature: converted})


def test_a_tensorrt_version_loads_through_its_signatures_and_passes_parity_before_it_is_placed(tmp_path,
                                                                                               monkeypatch):
    """A TF-TRT export (simulated: this TensorFlow has no TensorRT) keeps only frozen signatures;
    separate.py's loader, the server's and every signature work on it, and it is checked
    against the Keras model before it is renamed into place."""
    from serve.repository import Version

    run_dir = make_run_dir(tmp_path / "run", tiny_config(True, 2))
    monkeypatch.setattr(export, "tensorrt_available", lambda: True)
    monkeypatch.setattr(export, "convert_signature_with_tensorrt", save_like_tensorrt)
    messages = []
    version_dir = export.export_run(run_dir, tmp_path / "export", trt="fp32", chunk_seconds=0.1,
                                    log=messages.append)
    assert any(m.startswith("TF-TRT fp32 vs Keras model") for m in messages), messages
    loaded = tf.saved_model.load(str(version_dir))
    assert sorted(loaded.signatures) == sorted(export.SIGNATURES) and not hasattr(loaded, "forward")
    reference = export_run_keras_path(run_dir, song(2500, 2, seed=5))
    for separator in (load_separator(version_dir), Version.load(1, version_dir).separator()):
        estimates = separate_song(separator, song(2500, 2, seed=5), RATE)
        for source in reference:
            np.testing.assert_allclose(estimates[source], reference[source], atol=TOLERANCE)
    wav = loaded.signatures["separate_audio"](audio_bytes=tf.constant([wav_bytes(song(900, 1), 16000)]))
    assert read_wav(wav["vocals_bytes"].numpy()[0])[0].shape == (900, 1)

    def off_by_a_little(*arguments):
        save_like_tensorrt(*arguments, weight_scale=1.001)

    monkeypatch.setattr(export, "convert_signature_with_tensorrt", off_by_a_little)
    with pytest.raises(export.ExportError, match="TF-TRT fp32 vs Keras model.*nothing was written"):
        export.export_run(run_dir, tmp_path / "export", trt="fp32", chunk_seconds=0.1, log=messages.append)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["1"]


def export_run_keras_path(run_dir, mix: np.ndarray) -> dict:
    return separate_song(load_separator(run_dir), mix, RATE)


def test_saved_model_cli_prints_the_model_facts(exported):
    _, version_dir = exported
    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
                            "--dir", str(version_dir)], capture_output=True, text=True, check=True).stdout
    assert "signature_def['serving_default']" in shown and "signature_def['separate_audio']" in shown
    assert "'arch': 'waveunet'" in shown and f"'sample_rate': '{RATE}'" in shown
    assert "'project_version': " in shown and "'training_data': " in shown


def test_float16_run_halves_the_weights_and_separates_within_1e3(tmp_path, capsys):
    """What a shipped model may use: an M4-sized model (the size that needs it) in float16 storage."""
    m4 = WaveUNetConfig(**{**CONFIGS["M4"].to_dict(), "sample_rate": RATE})
    run_dir = make_run_dir(tmp_path / "run", m4)
    assert export_cli.main(["--model", str(run_dir), "--float16-run", str(tmp_path / "compact")]) == 0
    assert "max abs diff" in capsys.readouterr().out
    compact = tmp_path / "compact" / "checkpoints"
    assert [p.name for p in compact.iterdir()] == ["best.float16.npz"]
    full_size = (run_dir / "checkpoints" / "last.keras").stat().st_size
    assert (compact / "best.float16.npz").stat().st_size < 0.55 * full_size
    mix = song(RATE * 2, 2, seed=5)
    reference = separate_song(load_separator(run_dir), mix, RATE)
    loaded = separate_song(load_separator(tmp_path / "compact"), mix, RATE)
    assert 0 < max(np.abs(loaded[s] - reference[s]).max() for s in reference) <= FLOAT16_TOLERANCE
    # Not written over a non-empty folder.
    assert export_cli.main(["--model", str(run_dir), "--float16-run", str(tmp_path / "compact")]) == 1


def test_float16_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", tiny_config(True, 2))
    write_float16_run(run_dir, tmp_path / "compact", log=lambda message: None)
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    config["model"]["num_initial_filters"] = 4
    (tmp_path / "compact" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match the model"):
        load_separator(tmp_path / "compact")
