"""Live separation (``runtime.streaming``): a stream separated block by block, whatever
the blocks, equals offline separation of the same audio delayed by the reported delay,
for every one-pass architecture, at the stream's own rate and channels; its memory stays
flat however long it runs; and what it cannot take is refused with a reason."""
import dataclasses
import tracemalloc

import numpy as np
import pytest

from models.architecture import SOURCES
from models.registry import ARCHITECTURES
from models.waveunet_streaming import WaveUNetStream
from runtime.chunking import separate_song
from runtime.loading import PRETRAINED_MODEL, load_run, load_separator
from runtime.resampling import LiveResampleStream, resample
from runtime.streaming import StreamError, StreamSeparation
from tests.helpers import TINY_UMT_A, TINY_UMT_FULL, TINY_WAVENET, make_run_dir, tiny_waveunet


def song(length: int, channels: int, seed: int = 0) -> np.ndarray:
    """Noise with a tone: every band of the model's range carries signal."""
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(np.arange(length) * 0.05)[:, None]
    return (tone + 0.2 * rng.standard_normal((length, channels))).astype(np.float32)


def stream_through(separation: StreamSeparation, audio: np.ndarray, block_sizes) -> dict:
    """Pushes ``audio`` in blocks of ``block_sizes`` (cycled), then finishes: the whole output."""
    pieces, start, turn = [], 0, 0
    while start < len(audio):
        block = audio[start:start + block_sizes[turn % len(block_sizes)]]
        out = separation.push(block)
        assert all(out[source].shape == block.shape for source in SOURCES)  # as many samples as pushed
        pieces.append(out)
        start, turn = start + len(block), turn + 1
    pieces.append(separation.finish())
    return {source: np.concatenate([piece[source] for piece in pieces]) for source in SOURCES}


def assert_delayed_offline(streamed: dict, offline: dict, delay: int, atol: float) -> None:
    for source in SOURCES:
        assert len(streamed[source]) == len(offline[source]) + delay
        assert not streamed[source][:delay].any()  # silence before the first output
        np.testing.assert_allclose(streamed[source][delay:], offline[source], atol=atol, err_msg=source)


ONE_PASS = {
    "waveunet": ("waveunet", tiny_waveunet()),
    "wavenet": ("wavenet", TINY_WAVENET),
    "umt-a": ("umt", TINY_UMT_A),
}


@pytest.fixture(scope="module")
def separators(tmp_path_factory):
    """A separator of each one-pass architecture (untrained tiny models), and the
    Wave-U-Net also without its incremental executor (the chunk-recomputing path)."""
    found = {name: load_separator(make_run_dir(tmp_path_factory.mktemp(name), config, arch=arch))
             for name, (arch, config) in ONE_PASS.items()}
    found["waveunet-chunked"] = dataclasses.replace(found["waveunet"], incremental=None)
    assert found["waveunet"].incremental is not None
    return found


@pytest.mark.parametrize("name", ["waveunet", "waveunet-chunked", "wavenet", "umt-a"])
@pytest.mark.parametrize("block_sizes", [[1], [7, 1, 300], [100]], ids=["one sample", "mixed", "100"])
def test_a_stream_equals_offline_separation_delayed(separators, name, block_sizes):
    separator = separators[name]
    audio = song(300 if block_sizes == [1] else 1500, separator.channels)
    offline = separate_song(separator, audio, separator.sample_rate)
    separation = StreamSeparation(separator, separator.sample_rate, separator.channels, block_sizes[0])
    streamed = stream_through(separation, audio, block_sizes)
    assert_delayed_offline(streamed, offline, separation.delay_samples, atol=1e-5)
    assert separation.latency_seconds == (separation.delay_samples + block_sizes[0]) / separator.sample_rate


@pytest.mark.parametrize("rate, channels", [(44100, 2), (22050, 1)])
def test_a_resampled_stream_equals_offline_separation_delayed(separators, rate, channels):
    """A stream at another rate (the tiny Wave-U-Net runs at 8 kHz) and channel count:
    the live resampler is the offline rule cut to a short filter, within 1e-5."""
    separator = separators["waveunet"]
    audio = song(rate // 2, channels)
    offline = separate_song(separator, audio, rate)
    separation = StreamSeparation(separator, rate, channels, rate // 50)
    streamed = stream_through(separation, audio, [rate // 50, 13])
    assert_delayed_offline(streamed, offline, separation.delay_samples, atol=1e-5)


def test_a_long_stream_holds_constant_memory(separators):
    separation = StreamSeparation(separators["waveunet"], 44100, 2, 441)
    block = song(441, 2)
    tracemalloc.start()
    try:
        held = []
        for count in range(300):
            separation.push(block)
            if count in (99, 299):
                held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert held[1] - held[0] < 64 * 1024, held  # 200 more blocks (2 s): nothing accumulates


def test_the_shipped_model_streams_within_a_quarter_second_at_its_rate():
    separation = StreamSeparation(load_separator(PRETRAINED_MODEL), 22050, 2, 441)
    assert separation.latency_seconds <= 0.25
    assert separation.describe()["lookahead_ms"] == pytest.approx(185.6, abs=0.1)


def test_what_cannot_stream_is_refused_with_a_reason(separators, tmp_path):
    generating = load_separator(make_run_dir(tmp_path / "full", TINY_UMT_FULL, arch="umt"))
    with pytest.raises(StreamError, match="one-pass model"):
        StreamSeparation(generating, 8000, 1, 80)
    separator = separators["waveunet"]
    for rate, channels, block, reason in [(8000, 3, 80, "mono or stereo"), (8000, 2, 0, "block size"),
                                          (8000, 2, 8001, "block size"), (100, 2, 10, "sample rate"),
                                          (44101, 2, 441, "filter phases")]:
        with pytest.raises(StreamError, match=reason):
            StreamSeparation(separator, rate, channels, block)
    separation = StreamSeparation(separator, 8000, 2, 80)
    for bad in (np.zeros((80, 1), np.float32), np.zeros(80, np.float32), np.zeros((8001, 2), np.float32)):
        with pytest.raises(StreamError, match="a block is"):
            separation.push(bad)


@pytest.mark.parametrize("changes", [dict(upsampling="learned", output_type="direct", channels=1),
                                     dict(predicted_source="accompaniment", output_filter_size=3)],
                         ids=["learned-direct-mono", "difference-accompaniment"])
def test_the_incremental_wave_u_net_equals_the_keras_model(changes):
    """Every layer kind the executor mirrors, against the Keras model's one pass; and its
    readiness count says exactly how many outputs it has given."""
    config = dataclasses.replace(tiny_waveunet(), **changes)
    model = ARCHITECTURES["waveunet"].build(config)
    length, _ = ARCHITECTURES["waveunet"].input_length_for(config, 700)
    mix = song(length, config.channels)[None]
    expected = {source: np.asarray(output) for source, output in model(mix).items()}
    executor, given, received, pieces = WaveUNetStream(model, config, batch=1), 0, 0, []
    for size in [1, 2, 5, 64, 3, 200] * 20:
        block = mix[:, received:received + size]
        received += block.shape[1]
        out = executor.push(block)
        given += out["vocals"].shape[1]
        assert executor.ready(received) == given
        pieces.append(out)
    for source in SOURCES:
        streamed = np.concatenate([piece[source] for piece in pieces], axis=1)
        assert streamed.shape == expected[source].shape
        np.testing.assert_allclose(streamed, expected[source], atol=1e-5)


def test_an_incremental_executor_only_for_float32_context_models(tmp_path):
    assert load_separator(make_run_dir(tmp_path / "same", tiny_waveunet(context=False))).incremental is None
    bfloat16 = load_run(make_run_dir(tmp_path / "bf16"), precision="bfloat16")
    assert ARCHITECTURES["waveunet"].incremental(bfloat16.model, bfloat16.config) is None


@pytest.mark.parametrize("rates", [(44100, 22050), (22050, 44100), (48000, 22050), (8000, 22050)])
def test_the_live_resampler_is_the_offline_rule_within_1e_5(rates):
    """Full-scale noise (the hardest case for a cut filter), fed a sample at a time and in odd blocks."""
    from_rate, to_rate = rates
    noise = (0.3 * np.random.default_rng(1).standard_normal((from_rate // 4, 2))).astype(np.float32)
    stream = LiveResampleStream(from_rate, to_rate, 2)
    pieces = [stream.resample_chunk(noise[:50][start:start + 1]) for start in range(50)]
    pieces += [stream.resample_chunk(noise[start:start + 999]) for start in range(50, len(noise), 999)]
    pieces.append(stream.resample_chunk(noise[:0], last=True))
    np.testing.assert_allclose(np.concatenate(pieces), resample(noise, from_rate, to_rate), atol=1e-5)
