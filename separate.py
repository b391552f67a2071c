"""Separate songs into vocals and accompaniment.

    python separate.py song.mp3 other.flac --model runs/waveunet-small-... --out separated/

--model takes a run directory, an exported SavedModel version (export/NAME/1) or
an exported model.onnx (run by ONNX Runtime): all go through the same chunked path.
writes vocals.wav and accompaniment.wav at each input's own sample rate, channel
count and length. Inputs: WAV, FLAC, MP3 or OGG, mono or stereo, any length
(processed in chunks, memory stays bounded).

Where the outputs go:
  a file named on the command line   song.mp3            -> OUT/song/
  a file found inside a folder       album/disc1/01.wav  -> OUT/disc1/01/
                                     (its path relative to the folder named, without extension)
Before anything is separated, the command stops with an error if two inputs
would get the same output folder (e.g. a/song.wav and b/song.mp3, or 01.wav and
01.flac in one folder), if an output folder already holds vocals.wav or
accompaniment.wav (unless --overwrite), or if a folder holds no audio files.
A file that cannot be read is reported and skipped; the others are still separated.

Live, from a pipe (raw PCM in, one source out, a fixed latency later):

    ffmpeg -i song.mp3 -f s16le -ac 2 -ar 44100 - \
      | python separate.py --live - --rate 44100 --channels 2 --source accompaniment \
      | ffplay -f s16le -ar 44100 -ac 2 -

--live reads raw interleaved PCM (--format s16le or f32le) from a file, a FIFO or
stdin (-), and writes the --source in the same format to stdout, block by block; the
latency (model lookahead + block + resampling) is printed to stderr at the start. The
output is offline separation delayed by that latency (the start is silence; --align
drops it, for file-to-file use); at the end of the input the rest is flushed.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data_pipeline.audio import SUPPORTED_EXTENSIONS, AudioError, WavWriter, open_audio, read_blocks  # noqa: E402
from models.architecture import SOURCES  # noqa: E402
from models.registry import PRECISIONS  # noqa: E402
from runtime.chunking import fit_length, positive_seconds, SongSeparation  # noqa: E402
from runtime.wiener import add_wiener_arguments, model_wiener  # noqa: E402
from runtime.loading import PRETRAINED_MODEL, load_separator, resolve_precision  # noqa: E402
from runtime.pcm import PCM_FORMATS, PcmError, decode_pcm, encode_pcm, frame_bytes  # noqa: E402
from runtime.streaming import StreamError, StreamSeparation  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="audio files (WAV/FLAC/MP3/OGG), or folders: every such file inside them, at any depth")
    parser.add_argument("--model", help="a run directory, an exported SavedModel version folder (export/NAME/1) "
                                         f"or an exported model.onnx (default: the shipped {PRETRAINED_MODEL.name})")
    parser.add_argument("--out", default="separated",
                        help="output folder: OUT/<stem>/ for a file named here, OUT/<path inside the folder, "
                             "without extension>/ for a file found in a folder (default: separated/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs already in --out (default: refuse to, before separating anything)")
    parser.add_argument("--precision", choices=["auto", *sorted(PRECISIONS)], default="auto",
                        help="auto (default): bfloat16 where it is faster (GPUs, CPUs with AMX; SDR within "
                             "0.05 dB of float32), else float32; --live always computes in float32, so a "
                             "stream's delay is the same on every machine")
    parser.add_argument("--chunk-seconds", type=positive_seconds, default=30.0,
                        help="audio per model call; lower it to use less memory (default: 30)")
    add_wiener_arguments(parser, "Default: the model's own: a run directory's config.json post_filter (mask "
                                 "for the shipped model), an export's facts; off for a model without one. "
                                 "--live streams always run without it (its STFT would add latency).")
    live = parser.add_argument_group("live separation (raw PCM in, one source out; instead of INPUT files)")
    live.add_argument("--live", metavar="PCM", help="raw interleaved PCM to separate as it arrives: a file, "
                                                    "a FIFO, or - for stdin; the separated source goes to stdout")
    live.add_argument("--rate", type=int, help="the stream's sample rate in Hz (required with --live)")
    live.add_argument("--channels", type=int, choices=[1, 2], help="the stream's channels (required with --live)")
    live.add_argument("--format", choices=sorted(PCM_FORMATS), default="s16le",
                      help="sample format in and out, as ffmpeg names it (default: s16le)")
    live.add_argument("--source", choices=SOURCES, default="accompaniment",
                      help="the source written to stdout (default: accompaniment, karaoke)")
    live.add_argument("--block-ms", type=float, default=20.0,
                      help="audio per block; smaller blocks wait less and cost more per second (default: 20)")
    live.add_argument("--align", action="store_true",
                      help="drop the latency's silence at the start: the output lines up with the input "
                           "(for file-to-file use, not for playback)")
    args = parser.parse_args(argv)
    if args.live is None and not args.inputs:
        parser.error("give INPUT files or folders, or --live PCM")
    if args.live is not None and (args.inputs or args.rate is None or args.channels is None):
        parser.error("--live takes no INPUT files, and needs --rate and --channels")
    if args.live is not None and args.precision == "bfloat16":
        parser.error("--live computes in float32 (a stream's delay and output are then the same on every "
                     "machine): drop --precision bfloat16")
    if args.live is not None and args.wiener is not None and args.wiener.active:
        parser.error("--live separates without the Wiener post-filter (it would add its STFT's length to the "
                     "latency, 93 ms at the default size, and seconds with EM): drop --wiener")
    if not 0 < args.block_ms <= 1000:
        parser.error(f"--block-ms must be above 0 and at most 1000, not {args.block_ms:g}")
    return args


def device_description() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return f"GPU ({', '.join(g.name for g in gpus)})" if gpus else f"CPU ({os.cpu_count()} cores)"


class PlanError(Exception):
    """A command line that would lose or overwrite outputs; nothing has been separated yet."""


def plan_outputs(names: list[str], out: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """``(input file, its output folder)`` for every input, checked before any separation work.

    A file named directly goes to ``out/<stem>``; a file inside a folder argument to
    ``out/<its path relative to that folder, without extension>``, so songs of the
    same name in different subfolders stay apart."""
    jobs = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            # Earlier outputs inside the folder (--out under it) are not songs to separate.
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS
                           and out.resolve() not in p.resolve().parents)
            if not found:
                raise PlanError(f"{path}: no {'/'.join(e[1:].upper() for e in SUPPORTED_EXTENSIONS)} files "
                                "in this folder")
            jobs.extend((p, out / p.relative_to(path).with_suffix("")) for p in found)
        else:
            jobs.append((path, out / path.stem))  # a missing or unreadable file is reported when its turn comes

    inputs_by_destination = {}
    for path, destination in jobs:
        inputs_by_destination.setdefault(destination, []).append(path)
    collisions = [f"  {destination}/: {', '.join(map(str, paths))}"
                  for destination, paths in inputs_by_destination.items() if len(paths) > 1]
    if collisions:
        raise PlanError("inputs that would be written to the same output folder (rename one of them):\n"
                        + "\n".join(collisions))

    if out.exists() and not out.is_dir():
        raise PlanError(f"--out {out} is a file, not a folder")
    for _, destination in jobs:
        blocker = next((folder for folder in (destination, *destination.parents) if folder.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise PlanError(f"cannot create output folder {destination}: {blocker} is a file")
    if not overwrite:
        existing = [destination / f"{source}.wav" for _, destination in jobs for source in SOURCES
                    if (destination / f"{source}.wav").exists()]
        if existing:
            raise PlanError("outputs already exist (pass --overwrite to replace them):\n"
                            + "\n".join(f"  {path}" for path in existing))
    return jobs


def separate_file(separator, path: Path, destination: Path, chunk_seconds: float, wiener=None) -> None:
    """Streams ``path`` through the separator (and the Wiener post-filter ``wiener``, if any)
    into ``destination/{vocals,accompaniment}.wav``; memory holds about one chunk, whatever
    the song's length."""
    info = open_audio(path)
    written = 0
    # seconds of audio, shown to a tenth of a second
    with tqdm(total=round(info.frames / info.sample_rate, 1), desc=path.name, unit="s audio", leave=False,
              bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}, {rate_fmt}]") as bar, \
            ExitStack() as files:
        separation = SongSeparation(separator, info.sample_rate, info.channels, chunk_seconds,
                                    progress=lambda samples: bar.update(samples / separator.sample_rate),
                                    wiener=wiener)
        writers = {source: files.enter_context(WavWriter(destination / f"{source}.wav", info.sample_rate,
                                                         info.channels)) for source in SOURCES}

        def write(estimates, length):
            for source, writer in writers.items():
                writer.write(fit_length(estimates[source], length))

        for block in read_blocks(path, max(1, int(chunk_seconds * info.sample_rate)), info):
            estimates = separation.push(block)
            ready = min(len(estimates["vocals"]), info.frames - written)
            write(estimates, ready)
            written += ready
        write(separation.push(np.zeros((0, info.channels), np.float32), last=True), info.frames - written)


def read_exactly(stream, count: int) -> bytes:
    """``count`` bytes, fewer only at the end of the stream (pipes return what has arrived)."""
    data = bytearray()
    while len(data) < count:
        piece = stream.read(count - len(data))
        if not piece:
            break
        data += piece
    return bytes(data)


def separate_live(separator, args, source_stream, sink) -> int:
    """Separates raw PCM from ``source_stream`` block by block into ``sink`` (both binary
    files): each block's output is written as soon as it is computed."""
    try:
        separation = StreamSeparation(separator, args.rate, args.channels,
                                      max(1, round(args.block_ms / 1000 * args.rate)))
    except StreamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    figures = separation.describe()
    print(f"Live: {args.rate} Hz, {args.channels} channel(s), {args.format}, blocks of "
          f"{separation.block_size} samples; latency {figures['latency_ms']} ms (model lookahead "
          f"{figures['lookahead_ms']} ms; output delayed by {separation.delay_samples} samples"
          f"{', dropped by --align' if args.align else ''})", file=sys.stderr)
    block_bytes = separation.block_size * frame_bytes(args.format, args.channels)
    to_drop = separation.delay_samples if args.align else 0

    def write(audio):
        nonlocal to_drop
        dropped, to_drop = min(to_drop, len(audio)), to_drop - min(to_drop, len(audio))
        sink.write(encode_pcm(audio[dropped:], args.format))
        sink.flush()

    first = True
    while data := read_exactly(source_stream, block_bytes):
        if first and data[:4] in (b"RIFF", b"RIFX", b"fLaC", b"OggS", b"ID3\x03", b"ID3\x04"):
            print("error: the input starts with a file header, not raw PCM: pipe raw samples "
                  f"(ffmpeg -f {args.format}), or separate the file with separate.py FILE", file=sys.stderr)
            return 2
        first = False
        whole = len(data) - len(data) % frame_bytes(args.format, args.channels)
        if whole:
            try:
                block = decode_pcm(data[:whole], args.format, args.channels)
            except PcmError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            write(separation.push(block)[args.source])
        if whole < len(data):
            print(f"error: the input ended mid-frame: {len(data) - whole} byte(s) after the last whole "
                  f"{frame_bytes(args.format, args.channels)}-byte frame ({args.channels} channel(s) of "
                  f"{args.format}); check --format and --channels", file=sys.stderr)
            return 2
    write(separation.finish()[args.source])
    return 0


def load_chosen_separator(args):
    """The --model (default: the shipped one) as a Separator, said on ``log``; None after an error."""
    model_path = Path(args.model) if args.model else PRETRAINED_MODEL
    log = sys.stderr if args.live is not None else sys.stdout  # live: stdout carries the audio
    if args.model is None:
        print(f"No --model given: using the shipped pretrained model {model_path}", file=log)
    precision = resolve_precision(args.precision, model_path, live=args.live is not None)
    try:
        separator = load_separator(model_path, precision)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    print(f"Model {separator.source} ({separator.description}, {separator.sample_rate} Hz, "
          f"{'stereo' if separator.channels == 2 else 'mono'}, {precision}) on {device_description()}", file=log)
    return separator


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.live is not None:
        separator = load_chosen_separator(args)
        if separator is None:
            return 2
        try:
            with ExitStack() as files:
                source_stream = (sys.stdin.buffer if args.live == "-"
                                 else files.enter_context(open(args.live, "rb")))
                return separate_live(separator, args, source_stream, sys.stdout.buffer)
        except BrokenPipeError:  # the player quit: not an error
            return 0
        except OSError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        jobs = plan_outputs(args.inputs, Path(args.out), args.overwrite)
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    separator = load_chosen_separator(args)
    if separator is None:
        return 2
    if separator.channels == 1:
        print("Mono model: each channel of a stereo input is separated on its own")
    wiener = model_wiener(separator, args.wiener, args.wiener_fft)
    if wiener is not None:
        print(wiener.describe(separator.sample_rate))
    failures = 0
    for path, destination in jobs:
        try:
            separate_file(separator, path, destination, args.chunk_seconds, wiener)
            print(f"{path} -> {destination}/vocals.wav, accompaniment.wav")
        except AudioError as error:
            failures += 1
            print(f"error: {error} (skipped)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
