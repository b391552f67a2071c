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
from models.waveunet import CONFIGS, context_length
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
    "waveunet-low-latency": ("waveunet", dataclasses.replace(tiny_waveunet(), output_shift=20)),
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


@pytest.mark.parametrize("name", ["waveunet", "waveunet-chunked", "waveunet-low-latency", "wavenet", "umt-a"])
@pytest.mark.parametrize("block_sizes", [[1], [7, 1, 300]], ids=["one sample", "mixed"])
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


SHIFTED = dataclasses.replace(tiny_waveunet(), output_shift=context_length(tiny_waveunet()) // 2 - 5)


@pytest.mark.parametrize("changes", [dict(upsampling="learned", output_type="direct", channels=1),
                                     dict(predicted_source="accompaniment", output_filter_size=3),
                                     dict(output_shift=SHIFTED.output_shift)],
                         ids=["learned-direct-mono", "difference-accompaniment", "low-latency"])
def test_the_incremental_wave_u_net_equals_the_keras_model(changes):
    """Every layer kind the executor mirrors, against the Keras model's one pass; and its
    readiness count says exactly how many outputs it has given."""
    config = dataclasses.replace(tiny_waveunet(), **changes)
    model = ARCHITECTURES["waveunet"].build(config)
    length, _ = ARCHITECTURES["waveunet"].input_length_for(config, 700)
    mix = song(length, config.channels)[None]
    expected = {source: np.asarray(output) for source, output in model(mix).items()}
    executor, given, received, pieces = ARCHITECTURES["waveunet"].incremental(model, config)(1), 0, 0, []
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


def test_a_stream_refuses_a_bfloat16_model_so_its_delay_never_follows_the_cpu(tmp_path):
    """bfloat16 would send a Wave-U-Net through the chunked path, which waits longer."""
    import separate

    run_dir = make_run_dir(tmp_path / "run")
    with pytest.raises(StreamError, match="float32"):
        StreamSeparation(load_separator(run_dir, precision="bfloat16"), 8000, 2, 160)
    with pytest.raises(SystemExit):
        separate.parse_args(["--live", "-", "--rate", "8000", "--channels", "2", "--precision", "bfloat16"])


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


# ---------------------------------------------------------------- the pipe CLI (separate.py --live)


def live_args(*flags):
    import separate

    return separate.parse_args(["--live", "-", *flags])


def test_the_pipe_cli_writes_offline_separation_delayed_end_to_end(separators, tmp_path, cpu_class):
    """A real pipe into ``python separate.py --live -``: float32 PCM comes out equal to
    offline separation once the announced delay is dropped, then the tail; the same delay
    and samples on every CPU class (streams compute in float32 even where ``auto`` picks
    bfloat16 for files)."""
    import subprocess
    import sys

    from runtime.pcm import decode_pcm, encode_pcm
    from tests.helpers import REPOSITORY

    run_dir = make_run_dir(tmp_path / "run", tiny_waveunet(), arch="waveunet")
    audio = song(4000, 2)
    result = subprocess.run([sys.executable, "separate.py", "--live", "-", "--rate", "8000", "--channels", "2",
                             "--format", "f32le", "--source", "vocals", "--model", str(run_dir)],
                            input=encode_pcm(audio, "f32le"), capture_output=True, cwd=REPOSITORY, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    separation = StreamSeparation(separators["waveunet"], 8000, 2, 160)  # 20 ms, the default block
    assert f"output delayed by {separation.delay_samples} samples" in result.stderr.decode()
    streamed = decode_pcm(result.stdout, "f32le", 2)
    offline = separate_song(load_separator(run_dir, precision="float32"), audio, 8000)["vocals"]
    assert len(streamed) == len(audio) + separation.delay_samples
    np.testing.assert_allclose(streamed[separation.delay_samples:], offline, atol=1e-5)


def test_the_pipe_cli_aligned_in_16_bit(separators):
    import io

    import separate
    from runtime.pcm import decode_pcm, encode_pcm

    audio = song(3000, 2)
    pcm = encode_pcm(audio, "s16le")
    sink = io.BytesIO()
    args = live_args("--rate", "8000", "--channels", "2", "--align", "--block-ms", "7.5")
    assert separate.separate_live(separators["waveunet"], args, io.BytesIO(pcm), sink) == 0
    streamed = np.frombuffer(sink.getvalue(), "<i2").reshape(-1, 2).astype(int)
    offline = separate_song(separators["waveunet"], decode_pcm(pcm, "s16le", 2), 8000)["accompaniment"]
    expected = np.frombuffer(encode_pcm(offline, "s16le"), "<i2").reshape(-1, 2).astype(int)
    assert streamed.shape == audio.shape  # --align: the output lines up with the input
    assert np.abs(streamed - expected).max() <= 1  # offline's own 16-bit samples, but where rounding tips


@pytest.mark.parametrize("data, reason", [(b"\x01\x00" * 1001, "ended mid-frame: 2 byte"),
                                          (b"RIFF" + b"\x00" * 2000, "file header, not raw PCM")])
def test_the_pipe_cli_refuses_a_stream_that_ends_mid_frame_or_is_a_file(separators, capsys, data, reason):
    import io

    import separate

    args = live_args("--rate", "8000", "--channels", "2")
    assert separate.separate_live(separators["waveunet"], args, io.BytesIO(data), io.BytesIO()) == 2
    assert reason in capsys.readouterr().err


def test_the_pipe_cli_checks_its_flags(capsys):
    import separate

    for flags, message in [(["--live", "-"], "needs --rate and --channels"),
                           (["--live", "-", "--rate", "8000", "--channels", "2", "song.wav"], "takes no INPUT"),
                           (["--live", "-", "--rate", "8000", "--channels", "2", "--block-ms", "0"], "--block-ms"),
                           ([], "give INPUT files")]:
        with pytest.raises(SystemExit):
            separate.parse_args(flags)
        assert message in capsys.readouterr().err


def test_the_low_latency_config_looks_ahead_20_ms_and_trains_on_what_it_outputs():
    """Its outputs sit right of its input's centre: the chunk plan, the training crop and
    the model's own crop of the mix (its sources add up to it) all agree on where."""
    from data_pipeline.crops import CropSpec

    config = CONFIGS["lowlatency"]
    assert config.lookahead == 441 and CONFIGS["small"].lookahead == 4087  # 20 ms and 185 ms at 22.05 kHz
    architecture = ARCHITECTURES["waveunet"]
    input_length, output_length = architecture.input_length_for(SHIFTED, 300)
    crop = CropSpec(input_length, output_length, shift=architecture.output_shift(SHIFTED))
    assert crop.context_left == architecture.chunk_plan(SHIFTED, 300).output_offset
    assert crop.input_length - crop.context_left - crop.output_length == SHIFTED.lookahead
    mix = song(input_length, 2)[None]
    sources = architecture.build(SHIFTED)(mix)
    np.testing.assert_allclose(np.asarray(sources["vocals"]) + np.asarray(sources["accompaniment"]),
                               mix[:, crop.context_left:crop.context_left + output_length], atol=1e-6)
    with pytest.raises(ValueError, match="output_shift needs context"):
        dataclasses.replace(tiny_waveunet(), output_shift=context_length(tiny_waveunet()) // 2 + 1)


def test_an_exported_model_streams_through_the_same_executor(shipped_export):
    """The server's models are SavedModels: their separator rebuilds the Keras model from
    the export's variables for the stream executor, and streams as the run directory does."""
    from runtime.loading import saved_model_separator

    exported = saved_model_separator(shipped_export / "1")
    assert exported.incremental is not None
    audio = song(11025, 2)
    separation = StreamSeparation(exported, 22050, 2, 441)
    streamed = stream_through(separation, audio, [441])
    offline = separate_song(load_separator(PRETRAINED_MODEL), audio, 22050)
    assert_delayed_offline(streamed, offline, separation.delay_samples, atol=1e-5)
