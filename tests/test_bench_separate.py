"""bench/separate.py: the int8 ONNX model it builds from an exported run separates like Keras float32."""
import numpy as np

from bench.separate import CLIP_RATE, measure, runtime_models
from inference import load_separator, separate_song
from tests.test_separate import TINY, make_run_dir


def test_int8_onnx_of_a_tiny_run_separates_like_keras_float32(tmp_path):
    song = np.random.default_rng(0).uniform(-0.3, 0.3, (2 * TINY.sample_rate, 2)).astype(np.float32)
    models = runtime_models(make_run_dir(tmp_path / "run"), tmp_path / "export", ["keras-float32", "onnx-int8"],
                            [(song, TINY.sample_rate)])
    reference = separate_song(load_separator(*models["keras-float32"]), song, TINY.sample_rate)
    int8 = load_separator(*models["onnx-int8"])
    estimates = separate_song(int8, song, TINY.sample_rate)
    for source, expected in reference.items():
        # int8 keeps about 2 significant digits: error energy 2.5e-4 and 6e-5 of the signal's when written.
        assert np.sum((estimates[source] - expected) ** 2) < 1e-3 * np.sum(expected ** 2)
    assert measure(int8, np.resize(song, (CLIP_RATE, 2)), chunk_seconds=0.5, repeats=1) > 0
