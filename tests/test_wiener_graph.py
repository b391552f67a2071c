"""The Wiener post-filter in the exported graph (runtime.wiener_graph, issue 28): the numpy
stream's within 1e-4 (on a real preview where ../shared has them), in serving_default and
separate_audio of an export made with it, recorded in its facts, and followed by the numpy
path (separate.py, the page) of such an export by default."""
import io

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from runtime import export
from runtime.chunking import separate_song
from runtime.loading import load_separator, saved_model_separator
from runtime.model_facts import ModelFacts
from runtime.wiener import WienerSettings, wiener_filter
from runtime.wiener_graph import wiener_tf
from serve.client import wav_bytes
from tests.helpers import make_run_dir, tiny_waveunet
from tests.test_wiener import PREVIEWS

VARIANTS = [WienerSettings.parse("mask"), WienerSettings(1, em_block=40, em_context=10),
            WienerSettings(2, 1024, True, em_block=300, em_context=100)]


def in_graph(mix, estimates, settings, rate):
    channels = mix.shape[1]
    spec = tf.TensorSpec([None, channels], tf.float32)
    function = tf.function(lambda m, v, a: wiener_tf(m, v, a, settings, rate), input_signature=[spec] * 3)
    vocals, accompaniment = function(mix, estimates["vocals"], estimates["accompaniment"])
    return {"vocals": vocals.numpy(), "accompaniment": accompaniment.numpy()}


@pytest.mark.parametrize("settings", VARIANTS, ids=lambda s: f"{s.name}-{s.em_block}")
@pytest.mark.parametrize("channels", [1, 2])
def test_the_graph_is_the_numpy_stream(settings, channels):
    rng = np.random.default_rng(4)
    rate, length = 22050, 3 * 22050 + 77
    mix = (0.2 * rng.standard_normal((length, channels))).astype(np.float32)
    estimates = {"vocals": (0.5 * mix + 0.05 * rng.standard_normal(mix.shape)).astype(np.float32)}
    estimates["accompaniment"] = (mix - estimates["vocals"] + 0.05 * rng.standard_normal(mix.shape)).astype(np.float32)
    graph, numpy_path = in_graph(mix, estimates, settings, rate), wiener_filter(mix, estimates, settings, rate)
    for source in estimates:
        assert graph[source].shape == (length, channels)
        assert np.abs(graph[source] - numpy_path[source]).max() < 1e-4


@pytest.mark.skipif(not PREVIEWS.is_dir(), reason="needs ../shared/data/musdb18-train-previews")
@pytest.mark.parametrize("settings", VARIANTS[:2], ids=lambda s: s.name)
def test_the_graph_is_the_numpy_stream_on_a_real_preview(settings):
    """Measured: 1.2e-7 (mask), 1.2e-6 (em1), 7.8e-6 (em2)."""
    from data_pipeline.datasets import get_tracks, load_track

    audio = load_track(get_tracks("musdb", "valid", data_root=PREVIEWS)[1], 22050)
    leaky = {"vocals": 0.8 * audio["vocals"] + 0.15 * audio["accompaniment"],
             "accompaniment": 0.9 * audio["accompaniment"] + 0.2 * audio["vocals"]}
    graph, numpy_path = in_graph(audio["mixture"], leaky, settings, 22050), wiener_filter(
        audio["mixture"], leaky, settings, 22050)
    for source in leaky:
        assert np.abs(graph[source] - numpy_path[source]).max() < 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported with mask+em1 (EM blocks of 20 frames: several in a few seconds)."""
    root = tmp_path_factory.mktemp("wiener-export")
    run_dir = make_run_dir(root / "run", tiny_waveunet(True, 2))
    settings = WienerSettings(1, 256, True, em_block=20, em_context=5)
    version = export.export_run(run_dir, root / "export", chunk_seconds=0.1, log=lambda message: None,
                                wiener=settings)
    return run_dir, version, settings


def test_an_export_with_the_filter_records_it_and_runs_it_in_its_signatures(exported):
    run_dir, version, settings = exported
    facts = ModelFacts.read(version)
    assert facts.post_filter["wiener"] == "mask+em1" and facts.post_filter["n_fft"] == 256
    assert WienerSettings.from_dict(facts.post_filter) == settings
    loaded = tf.saved_model.load(str(version))
    rate = 8000
    song = np.random.default_rng(6).uniform(-0.5, 0.5, (3 * rate + 5, 2)).astype(np.float32)
    in_graph_outputs = loaded.signatures["serving_default"](waveform=tf.constant(song[None]))
    keras_path = separate_song(load_separator(run_dir), song, rate, chunk_seconds=0.1, wiener=settings)
    plain = separate_song(load_separator(run_dir), song, rate, chunk_seconds=0.1)
    for source, estimate in in_graph_outputs.items():
        assert np.abs(estimate.numpy()[0] - keras_path[source]).max() < 1e-4
        assert np.abs(estimate.numpy()[0] - plain[source]).max() > 1e-3  # the filter is in the graph
    # separate_audio, at another rate: the numpy path's result as a 16-bit WAV
    wav_rate = 44100
    wav_song = np.random.default_rng(7).uniform(-0.5, 0.5, (wav_rate, 2)).astype(np.float32)
    outputs = loaded.signatures["separate_audio"](audio_bytes=tf.constant([wav_bytes(wav_song, wav_rate)]))
    quantised, _ = sf.read(io.BytesIO(wav_bytes(wav_song, wav_rate)), dtype="float32", always_2d=True)
    expected = separate_song(load_separator(run_dir), quantised, wav_rate, chunk_seconds=0.1, wiener=settings)
    for source in ("vocals", "accompaniment"):
        audio, _ = sf.read(io.BytesIO(outputs[f"{source}_bytes"].numpy()[0]), dtype="float32", always_2d=True)
        assert np.abs(audio - np.clip(expected[source], -1, 1)).max() < 2 ** -15 + 1e-4


def test_the_numpy_path_of_such_an_export_follows_its_facts(exported):
    """separate.py, evaluate.py and the page (serve/jobs.py) load an export through its
    separate_windows and take its post-filter from the facts."""
    _, version, settings = exported
    separator = saved_model_separator(version)
    assert separator.wiener == settings
