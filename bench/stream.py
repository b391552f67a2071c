"""Live separation (``runtime.streaming.StreamSeparation``): latency, compute per block
and deadline misses, against offline separation of the same audio, measured in one run.

    python bench/stream.py                                  # the shipped model, 60 s, blocks of 10-200 ms
    python bench/stream.py --arch-configs --rate 44100      # + untrained one-pass architectures, + a 44.1 kHz stream
    python bench/stream.py --websocket --json stream.json   # + the server's :stream WebSocket

For each model (--model, repeated; default the shipped one; --arch-configs adds
untrained Wave-U-Net small, WaveNet small and UMT small Structure A, whose speed does
not depend on their weights), at the model's own rate (and at --rate, resampled live,
if it differs), for each --blocks-ms, it streams --seconds of stereo audio (--song, else
the project's deterministic synthetic music) through the public API and prints one row:
  - delay ms: ``delay_samples``; latency ms: ``latency_seconds``, the delay plus one
    block of capture (algorithmic: what the stream waits for, compute aside);
  - compute mean/p99 (x block): each push timed with ``time.perf_counter``, blocks fed
    back to back after WARMUP_BLOCKS untimed ones, as a fraction of the block's duration
    (above 1: the model cannot keep up with real time on this machine);
  - misses/N: blocks late in a real-time schedule simulated from those measured times
    (``deadline_misses``: block k arrives at (k+1)B, its output is due at (k+2)B, one
    block of output buffer; its compute starts when it has arrived and the previous one
    is done, so a late block delays the next ones). Simulated, not slept through: the
    bench does not take --seconds of wall time per row;
  - vs offline: streaming compute per second of audio over offline compute per second
    (``runtime.chunking.separate_song`` on the same audio, in separate.py's 30 s chunks or
    one of the audio's length, timed once after a warm-up): the baseline doing the same work.
    Small blocks pay here: a Wave-U-Net with context computes each layer's samples once
    but per block (small matrix products), the other models recompute each chunk's field;
  - with --websocket: the model exported to a temporary folder and served by
    ``python -m serve`` on 127.0.0.1; --ws-seconds of the audio sent to
    ws://.../v1/models/NAME:stream one block per frame, paced in real time. WS round trip:
    from sending a frame to receiving its answer (the server's compute included),
    p50/p99 after the warm-up frames; WS delay: the delay the server's stream announces
    (its model is the exported SavedModel, whose stream may wait otherwise than the one
    in process); end-to-end: that delay plus one block plus the round trip, a sample's
    capture-to-playback latency when each answer is played as it arrives.
The CPU's model and vector extensions head the output (timings depend on them);
--json writes the rows.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as a file (python bench/stream.py) as well as a module
    sys.path.insert(0, str(REPOSITORY))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import WebSocketException  # noqa: E402

from bench import records  # noqa: E402
from bench.separate import BenchModel, save_random_run  # noqa: E402
from bench.serve import start_server, stop_server  # noqa: E402
from data_pipeline.audio import load_audio  # noqa: E402
from data_pipeline.synthetic_music import generate_song  # noqa: E402
from runtime.chunking import positive_seconds, separate_song  # noqa: E402
from runtime.cpu import this_cpu  # noqa: E402
from runtime.export import export_run  # noqa: E402
from runtime.loading import PRETRAINED_MODEL, is_exported, load_separator  # noqa: E402
from runtime.separator import Separator, keras_separator  # noqa: E402
from runtime.streaming import MAX_BLOCK_SECONDS, StreamSeparation  # noqa: E402

DEFAULT_BLOCKS_MS = (10, 20, 50, 100, 200)
ARCH_CONFIGS = ("waveunet:small", "wavenet:small", "umt:small")  # the one-pass architectures (UMT's Structure A)
CHANNELS = 2
# Untimed pushes before the timed ones: the first calls trace the model's graph and plan its kernels.
WARMUP_BLOCKS = 3
SERVED_NAME = "wavesep"  # bench.serve.start_server serves every model under this name
OFFLINE_CHUNK_SECONDS = 30.0  # separate.py's default chunks
# A WebSocket row gives up after this, plus so many seconds per second of audio sent (a TimeoutError).
WEBSOCKET_TIMEOUT_SECONDS, WEBSOCKET_TIMEOUT_PER_SECOND = 60, 20


@dataclasses.dataclass(frozen=True)
class StreamModel:
    """A model to stream through: its separator, and how to put it behind the server."""

    label: str
    separator: Separator
    serve_base: Callable[[Path], Path]  # scratch folder -> a base path of numbered SavedModel versions


@dataclasses.dataclass(frozen=True)
class Row:
    """One model, rate and block size. Compute figures are fractions of the block's duration;
    the WebSocket figures stay None without --websocket."""

    model: str
    rate: int
    model_rate: int
    block_ms: float  # as asked; block_size is that many milliseconds rounded to samples
    block_size: int
    delay_samples: int
    delay_ms: float
    latency_ms: float
    compute_mean: float
    compute_p99: float
    misses: int
    blocks: int  # timed blocks, those the miss simulation schedules
    vs_offline: float
    # The server's own stream announces its delay: its model (an exported SavedModel) may wait otherwise.
    ws_delay_ms: float | None = None
    ws_round_trip_p50_ms: float | None = None
    ws_round_trip_p99_ms: float | None = None
    end_to_end_p50_ms: float | None = None
    end_to_end_p99_ms: float | None = None


class StreamProtocolError(RuntimeError):
    """The :stream endpoint answered something the protocol does not allow."""


# --- the machine and the audio -----------------------------------------------------------------


def music(seconds: float, rate: int, song: Path | None = None) -> np.ndarray:
    """``seconds`` of stereo float32 at ``rate``: the start of ``song`` (looped if shorter), else the
    project's synthetic music (deterministic: seed 0), which has the spectra a model meets."""
    frames = int(seconds * rate)
    if song is None:
        stems = generate_song(0, rate, frames / rate)
        return (stems["vocals"] + stems["accompaniment"]).astype(np.float32)
    audio, _ = load_audio(song, sample_rate=rate, channels=CHANNELS)
    return np.resize(audio, (frames, CHANNELS))  # row-wise: a short song repeats from its start


# --- the models ---------------------------------------------------------------------------------


def served_version(path: Path, scratch: Path) -> Path:
    """A base path for the server holding ``path`` as version 1: a run directory is exported there,
    an exported version (or the model.onnx in one) linked."""
    base = scratch / SERVED_NAME
    if not is_exported(path):
        export_run(path, base, version=1, log=lambda message: None)
        return base
    base.mkdir(parents=True)
    (base / "1").symlink_to((path.parent if path.suffix == ".onnx" else path).resolve())
    return base


def model_at(path: Path) -> StreamModel:
    """A run directory by its name; an export by its base, version (and file): "wavesep/1/model.onnx"."""
    path = Path(path)
    label = "/".join(path.parts[-3 if path.suffix == ".onnx" else -2:]) if is_exported(path) else path.name
    return StreamModel(label, load_separator(path), lambda scratch: served_version(path, scratch))


def untrained_model(text: str) -> StreamModel:
    """A registered config with random weights, built here; the server gets another random copy."""
    registered = BenchModel.parse(text)
    separator = keras_separator(registered.architecture.build(registered.config), registered.arch,
                                registered.config, text)
    return StreamModel(f"{text} (untrained)", separator,
                       lambda scratch: served_version(save_random_run(registered, scratch / "run"), scratch))


# --- timing in process --------------------------------------------------------------------------


def blocks_of(audio: np.ndarray, block_size: int) -> list[np.ndarray]:
    """The audio's whole blocks (a partial last one is left out: every timed block is the same size)."""
    return [audio[start:start + block_size] for start in range(0, len(audio) - block_size + 1, block_size)]


def stream_compute(stream: StreamSeparation, audio: np.ndarray) -> np.ndarray:
    """Seconds each push of the audio's blocks took, fed back to back after WARMUP_BLOCKS untimed ones."""
    blocks = blocks_of(audio, stream.block_size)
    for block in blocks[:WARMUP_BLOCKS]:
        stream.push(block)
    seconds = []
    for block in blocks[WARMUP_BLOCKS:]:
        started = time.perf_counter()
        stream.push(block)
        seconds.append(time.perf_counter() - started)
    return np.array(seconds)


def offline_compute(separator: Separator, audio: np.ndarray, rate: int) -> float:
    """Seconds of compute per second of audio of ``separate_song`` on the whole audio, timed once
    after a warm-up on half a second (which traces the same graph). Its chunks are separate.py's
    30 s, or the audio's length if shorter: a window padded past the audio's end would charge
    offline separation for work that streaming does not do."""
    seconds = len(audio) / rate
    chunk_seconds = min(OFFLINE_CHUNK_SECONDS, seconds)
    separate_song(separator, audio[: rate // 2], rate, chunk_seconds)
    started = time.perf_counter()
    separate_song(separator, audio, rate, chunk_seconds)
    return (time.perf_counter() - started) / seconds


def deadline_misses(compute: Sequence[float], block_seconds: float) -> int:
    """Blocks finished after their due time in a simulated real-time schedule: block k is captured
    by (k+1)B and due for playback at (k+2)B (one block of output buffer); its compute starts
    once it is captured and the previous block is done, so a slow block also delays the next."""
    done, misses = 0.0, 0
    for k, seconds in enumerate(compute):
        done = max(done, (k + 1) * block_seconds) + seconds
        misses += done > (k + 2) * block_seconds
    return misses


def stream_row(label: str, stream: StreamSeparation, model_rate: int, block_ms: float, compute: np.ndarray,
               offline_per_second: float) -> Row:
    """The row of one stream from its pushes' measured seconds and the offline seconds per audio second."""
    block_seconds = stream.block_size / stream.sample_rate
    fractions = np.asarray(compute) / block_seconds
    return Row(model=label, rate=stream.sample_rate, model_rate=model_rate, block_ms=block_ms,
               block_size=int(stream.block_size), delay_samples=int(stream.delay_samples),
               delay_ms=1000 * stream.delay_samples / stream.sample_rate, latency_ms=1000 * stream.latency_seconds,
               compute_mean=float(fractions.mean()), compute_p99=float(np.percentile(fractions, 99)),
               misses=int(deadline_misses(compute, block_seconds)), blocks=len(fractions),
               vs_offline=float(fractions.mean() / offline_per_second))


def block_size(block_ms: float, rate: int) -> int:
    return max(1, round(block_ms * rate / 1000))


def in_process_rows(model: StreamModel, audio: np.ndarray, rate: int, blocks_ms: Sequence[float]) -> list[Row]:
    offline = offline_compute(model.separator, audio, rate)
    print(f"  {model.label} at {rate} Hz: offline separate_song {offline:.3f} s of compute per audio second")
    rows = []
    for block_ms in blocks_ms:
        stream = StreamSeparation(model.separator, rate, CHANNELS, block_size(block_ms, rate))
        rows.append(stream_row(model.label, stream, model.separator.sample_rate, block_ms,
                               stream_compute(stream, audio), offline))
    return rows


# --- through the WebSocket ----------------------------------------------------------------------


async def websocket_round_trips(url: str, audio: np.ndarray, rate: int, block_size: int) -> tuple[np.ndarray, dict]:
    """(seconds from sending each block after the warm-up ones to receiving its answer, the
    server's announcement). Blocks are sent paced in real time, block k at k*B after the first,
    as a live source captures them; answers are read meanwhile, so a slow one delays no send."""
    blocks = blocks_of(audio, block_size)
    answer_bytes = 2 * block_size * CHANNELS * 4  # vocals then accompaniment, float32
    async with connect(url, compression=None, max_size=None, proxy=None) as socket:
        await socket.send(json.dumps({"sample_rate": rate, "channels": CHANNELS, "block_size": block_size,
                                      "format": "f32le"}))
        announced = json.loads(await socket.recv())
        if "delay_samples" not in announced:
            raise StreamProtocolError(f"the stream was not opened: {announced}")
        sent, received = [], []

        async def receive():
            for _ in blocks:
                answer = await socket.recv()
                received.append(time.perf_counter())
                if not isinstance(answer, bytes) or len(answer) != answer_bytes:
                    raise StreamProtocolError(f"expected {answer_bytes} bytes, got {answer[:300]!r}")

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for k, block in enumerate(blocks):
            await asyncio.sleep(max(0.0, start + k * block_size / rate - time.perf_counter()))
            if receiver.done():  # it failed: its error is raised below
                break
            sent.append(time.perf_counter())
            await socket.send(block.astype("<f4").tobytes())
        await receiver
    return (np.array(received) - np.array(sent))[WARMUP_BLOCKS:], announced


def with_websocket(row: Row, url: str, audio: np.ndarray) -> Row:
    """The row with its WebSocket round trip and end-to-end latency on ``audio``."""
    # Generous: a server that computes slower than real time answers late, and later as the stream goes on.
    timeout = WEBSOCKET_TIMEOUT_SECONDS + WEBSOCKET_TIMEOUT_PER_SECOND * len(audio) / row.rate
    trips, announced = asyncio.run(asyncio.wait_for(websocket_round_trips(url, audio, row.rate, row.block_size),
                                                    timeout))
    algorithmic = (announced["delay_samples"] + row.block_size) / row.rate
    return dataclasses.replace(
        row, ws_delay_ms=1000 * announced["delay_samples"] / row.rate, ws_round_trip_p50_ms=1000 * float(np.percentile(trips, 50)),
        ws_round_trip_p99_ms=1000 * float(np.percentile(trips, 99)),
        end_to_end_p50_ms=1000 * (algorithmic + float(np.percentile(trips, 50))),
        end_to_end_p99_ms=1000 * (algorithmic + float(np.percentile(trips, 99))))


def websocket_rows(model: StreamModel, rows: list[Row], audio_at: Callable[[int], np.ndarray],
                   scratch: Path) -> tuple[list[Row], str | None]:
    """``rows`` measured through a server of ``model``; on a failure, the rows as they were and why."""
    folder = scratch / model.label.replace("/", "_").replace(" ", "_")
    process, url = start_server(model.serve_base(folder), folder / "server.log")
    stream_url = f"{url.replace('http://', 'ws://', 1)}/v1/models/{SERVED_NAME}:stream"
    try:
        return [with_websocket(row, stream_url, audio_at(row.rate)) for row in rows], None
    except (OSError, WebSocketException, StreamProtocolError) as error:
        return rows, f"{model.label}: the WebSocket at {stream_url} failed: {type(error).__name__}: {error}"
    finally:
        stop_server(process)


# --- the table -----------------------------------------------------------------------------------


def table(rows: list[Row], websocket: bool) -> list[str]:
    """The rows as a markdown table."""
    header = ["model", "rate", "block ms", "delay ms", "latency ms", "compute mean (x block)",
              "compute p99 (x block)", "misses/N", "vs offline"]
    if websocket:
        header += ["WS delay ms", "WS round trip p50/p99 ms", "end-to-end p50/p99 ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        rate = f"{row.rate}" if row.rate == row.model_rate else f"{row.rate} (model {row.model_rate})"
        cells = [row.model, rate, f"{row.block_ms:g}", f"{row.delay_ms:.1f}", f"{row.latency_ms:.1f}",
                 f"{row.compute_mean:.3f}", f"{row.compute_p99:.3f}", f"{row.misses}/{row.blocks}",
                 f"{row.vs_offline:.2f}x"]
        if websocket:
            cells += ["n/a" if row.ws_delay_ms is None else f"{row.ws_delay_ms:.1f}",
                      pair(row.ws_round_trip_p50_ms, row.ws_round_trip_p99_ms),
                      pair(row.end_to_end_p50_ms, row.end_to_end_p99_ms)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pair(p50: float | None, p99: float | None) -> str:
    return "n/a" if p50 is None else f"{p50:.1f} / {p99:.1f}"


# --- the command -----------------------------------------------------------------------------------


def block_milliseconds(text: str) -> float:
    """argparse type of --blocks-ms: above 0, at most the longest block a stream takes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 < value <= 1000 * MAX_BLOCK_SECONDS:
        raise argparse.ArgumentTypeError(f"a stream takes blocks of more than 0 and at most "
                                         f"{1000 * MAX_BLOCK_SECONDS:g} ms, not {text}")
    return value


def registered_config(text: str) -> str:
    """argparse type of --untrained: ARCH:CONFIG of a registered architecture's config."""
    BenchModel.parse(text)  # raises argparse's error naming the configs there are
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append",
                        help="a run directory, exported version or model.onnx; repeat for more "
                             f"(default: the shipped {PRETRAINED_MODEL.name})")
    parser.add_argument("--arch-configs", action="store_true",
                        help=f"add untrained {', '.join(ARCH_CONFIGS)} (built here, random weights)")
    parser.add_argument("--untrained", metavar="ARCH:CONFIG", action="append", default=[], type=registered_config,
                        help="add this registered config with random weights (speed does not depend on them), "
                             "e.g. waveunet:lowlatency; repeat for more")
    parser.add_argument("--blocks-ms", type=block_milliseconds, nargs="+", default=list(DEFAULT_BLOCKS_MS),
                        help=f"block durations (default: {' '.join(map(str, DEFAULT_BLOCKS_MS))})")
    parser.add_argument("--rate", type=int, help="also stream at this rate, resampled live (e.g. 44100)")
    parser.add_argument("--seconds", type=positive_seconds, default=60.0,
                        help="audio streamed per row, in process (default: 60)")
    parser.add_argument("--song", type=Path, help="stream this song (default: synthetic music)")
    parser.add_argument("--websocket", action="store_true",
                        help="also stream through the server's ws://.../v1/models/NAME:stream, paced in real time")
    parser.add_argument("--ws-seconds", type=positive_seconds, default=10.0,
                        help="audio sent per row through the WebSocket: wall time (default: 10)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--record", metavar="NAME",
                        help="also put each row into docs/results/NAME.json (row MODEL-RATE-BLOCKms) with this "
                             "command line, the commit, the CPU and the date (python -m bench.records renders "
                             "the tables of the README and docs/ from it)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.record is not None:
        try:
            records.load_record(args.record)
        except records.RecordError as error:
            parser.error(f"--record {args.record}: {error}")
    shortest = min(args.seconds, args.ws_seconds if args.websocket else args.seconds)
    if shortest * 1000 < (WARMUP_BLOCKS + 1) * max(args.blocks_ms):
        parser.error(f"--seconds (and --ws-seconds) must hold {WARMUP_BLOCKS} warm-up blocks and a timed one "
                     f"of the largest --blocks-ms")
    if args.rate is not None and not 1000 <= args.rate <= 384_000:
        parser.error(f"--rate {args.rate} is outside 1000-384000 Hz")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # each separator traces its own graph: TF calls that "retracing"
    models = [model_at(path) for path in args.model or [PRETRAINED_MODEL]]
    models += [untrained_model(text) for text in [*(ARCH_CONFIGS if args.arch_configs else ()), *args.untrained]]
    cpu = this_cpu().describe()
    print(f"CPU: {cpu}")
    print(f"Audio: {args.seconds:g} s stereo of {args.song or 'synthetic music (seed 0)'} per row; {WARMUP_BLOCKS} "
          f"warm-up blocks, then every push timed back to back. Misses are simulated from the measured compute "
          f"times (block k arrives at (k+1)B, due at (k+2)B), not slept through.")
    audio = {}

    def audio_at(rate: int) -> np.ndarray:
        if rate not in audio:
            audio[rate] = music(max(args.seconds, args.ws_seconds if args.websocket else 0), rate, args.song)
        return audio[rate]

    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as scratch:
        for model in models:
            if not model.separator.one_pass:
                print(f"  {model.label}: skipped, it decodes by sampling and cannot stream")
                continue
            rates = dict.fromkeys([model.separator.sample_rate, args.rate or model.separator.sample_rate])
            model_rows = [row for rate in rates for row in in_process_rows(
                model, audio_at(rate)[: int(args.seconds * rate)], rate, args.blocks_ms)]
            if args.websocket:
                model_rows, failure = websocket_rows(
                    model, model_rows, lambda rate: audio_at(rate)[: int(args.ws_seconds * rate)], Path(scratch))
                failures += [failure] if failure else []
            rows += model_rows
    print()
    for line in table(rows, args.websocket):
        print(line)
    for failure in failures:
        print(failure)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "rows": [dataclasses.asdict(r) for r in rows]},
                                        indent=1))
    if args.record and not failures:
        how = records.measurement("bench/stream.py", sys.argv[1:] if argv is None else list(argv))
        for row in rows:
            records.record_row(args.record, f"{row.model}-{row.rate}-{row.block_ms:g}ms", dataclasses.asdict(row), how)
        print(f"Recorded {len(rows)} rows in docs/results/{args.record}.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
