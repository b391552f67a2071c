"""models/framing.py's TensorFlow tiler: cut into chunk-plan windows, run, stitch,
the same samples as runtime.chunking's numpy chunked path and as one pass over the song."""

import numpy as np
import pytest
import tensorflow as tf

from models.framing import ChunkPlan, frame_tf, stitch_tf
from models.registry import ARCHITECTURES
from models.waveunet import WaveUNetConfig, chunk_plan, context_length, input_length_for
from runtime.chunking import separate_song
from runtime.loading import load_run, load_separator
from tests.helpers import make_run_dir, tiny_waveunet

RATE = 8000
SONG_LENGTHS = [1, 7, 250, 2049]  # shorter than any chunk up to several chunks, on no grid
CHUNK_OUTPUT_LENGTHS = [1, 100, 333]
# The three paths run the same float32 convolutions on differently cut windows:
# bit-identical on the CPU this was written on; other kernels may sum in another
# order, so a few float32 ulps of outputs of order one are allowed.
TOLERANCE = 1e-6


@pytest.fixture(scope="module", params=[True, False], ids=["context", "same-padding"])
def config(request):
    return tiny_waveunet(context=request.param)


@pytest.fixture(scope="module")
def run_dir(config, tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run") / "tiny", config)


@pytest.fixture(scope="module")
def separator(run_dir):
    """The numpy chunked path."""
    return load_separator(run_dir)


@pytest.fixture(scope="module")
def sources(run_dir):
    """The same checkpoint's model, ``[batch, time, channels]`` -> {source: waveforms}, as a tensor function."""
    run = load_run(run_dir)
    inference_head = ARCHITECTURES[run.arch].inference_head
    return lambda mix: inference_head(run.model(mix, training=False))


def song(length: int) -> np.ndarray:
    return np.random.default_rng(length).uniform(-0.5, 0.5, (length, 2)).astype(np.float32)


def separate_in_graph(sources, plan: ChunkPlan, waveform) -> dict:
    estimates = sources(frame_tf(waveform, plan))
    return {source: stitch_tf(estimate, plan, tf.shape(waveform)[0]) for source, estimate in estimates.items()}


def one_pass(sources, config: WaveUNetConfig, waveform: np.ndarray) -> dict:
    """The model once over the whole song, zero-padded to a valid length with the
    context (or the receptive margin of a same-padding model) on both sides."""
    length = len(waveform)
    if config.context:
        before = context_length(config) // 2
        input_length, _ = input_length_for(config, length)
        output_start = 0
    else:
        before = output_start = chunk_plan(config, 1).keep_from
        input_length, _ = input_length_for(config, length + 2 * before)
    window = np.pad(waveform, [(before, input_length - before - length), (0, 0)])
    estimates = sources(window[None])
    return {source: np.asarray(estimate)[0, output_start:output_start + length]
            for source, estimate in estimates.items()}


@pytest.mark.parametrize("plan", [ChunkPlan(20, 4, 10, 2, 6), ChunkPlan(16, 0, 16, 0, 16), ChunkPlan(9, 3, 5, 0, 5)])
@pytest.mark.parametrize("length", [0, 1, 6, 37])
def test_stitching_the_kept_windows_gives_the_song_back(plan, length):
    """With the identity as model, windows and kept outputs line up sample for sample."""
    waveform = song(length)
    frames = frame_tf(waveform, plan)
    assert frames.shape[0] == -(-length // plan.stride)
    head = frames[:1, :plan.lead].numpy()
    assert not head.any()  # the context before the song is silence
    outputs = frames[:, plan.output_offset:plan.output_offset + plan.output_length]
    np.testing.assert_array_equal(stitch_tf(outputs, plan, length), waveform)


@pytest.mark.parametrize("chunk_output_length", CHUNK_OUTPUT_LENGTHS)
def test_graph_chunks_equal_numpy_chunks_and_one_pass(config, separator, sources, chunk_output_length):
    plan = separator.chunk_plan(chunk_output_length)
    # Half a sample more, so that inference's int(seconds * rate) gives back chunk_output_length.
    chunk_seconds = (chunk_output_length + 0.5) / RATE
    for length in SONG_LENGTHS:
        waveform = song(length)
        in_graph = separate_in_graph(sources, plan, waveform)
        numpy_chunks = separate_song(separator, waveform, RATE, chunk_seconds=chunk_seconds)
        whole = one_pass(sources, config, waveform)
        for source in whole:
            assert in_graph[source].shape == (length, 2)
            np.testing.assert_allclose(in_graph[source], numpy_chunks[source], rtol=0, atol=TOLERANCE)
            np.testing.assert_allclose(in_graph[source], whole[source], rtol=0, atol=TOLERANCE)


def test_framing_runs_in_a_graph_of_unknown_song_length(separator, sources):
    plan = separator.chunk_plan(100)
    separate = tf.function(lambda waveform: separate_in_graph(sources, plan, waveform),
                           input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    for length in SONG_LENGTHS:
        waveform = song(length)
        in_graph = separate(waveform)
        eager = separate_in_graph(sources, plan, waveform)
        for source in eager:
            assert in_graph[source].shape == (length, 2)
            np.testing.assert_allclose(in_graph[source], eager[source], rtol=0, atol=TOLERANCE)
    assert separate.experimental_get_tracing_count() == 1  # one graph for every length
