"""Separate songs into vocals and accompaniment.

    python separate.py song.mp3 other.flac --model runs/waveunet-small-... --out separated/

writes separated/<song>/vocals.wav and separated/<song>/accompaniment.wav at each
input's own sample rate, channel count and length. Inputs: WAV, FLAC, MP3 or OGG,
mono or stereo, any length (processed in chunks, memory stays bounded). A file
that cannot be read is reported and skipped; the others are still separated.
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
from data_pipeline.pipeline import SOURCES  # noqa: E402
from inference import PRECISIONS, SongSeparation, fit_length, load_separator  # noqa: E402

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "waveunet-synthetic"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files (WAV/FLAC/MP3/OGG), or folders: every such file inside them")
    parser.add_argument("--model", help=f"run directory of a trained model (default: the shipped {PRETRAINED.name})")
    parser.add_argument("--out", default="separated", help="output folder (default: separated/)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="float32",
                        help="bfloat16: ~1.8x faster on CPUs with AVX512-BF16 (and on GPUs), SDR within 0.01 dB "
                             "in our checks (default: float32)")
    parser.add_argument("--chunk-seconds", type=float, default=30.0,
                        help="audio per model call; lower it to use less memory (default: 30)")
    return parser.parse_args(argv)


def device_description() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return f"GPU ({', '.join(g.name for g in gpus)})" if gpus else f"CPU ({os.cpu_count()} cores)"


def expand_inputs(names: list[str]) -> list[Path]:
    """Files as given; folders replaced by the audio files inside them (recursively, sorted)."""
    paths = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS))
        else:
            paths.append(path)
    return paths


def separate_file(separator, path: Path, out: Path, chunk_seconds: float) -> Path:
    """Streams ``path`` through the separator into ``out/<stem>/{vocals,accompaniment}.wav``;
    memory holds about one chunk, whatever the song's length."""
    info = open_audio(path)
    destination = out / path.stem
    written = 0
    with tqdm(total=round(info.frames / info.sample_rate, 1), desc=path.name, unit="s audio", leave=False) as bar, \
            ExitStack() as files:
        separation = SongSeparation(separator, info.sample_rate, info.channels, chunk_seconds,
                                    progress=lambda samples: bar.update(samples / separator.sample_rate))
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
    return destination


def main(argv=None) -> int:
    args = parse_args(argv)
    model_path = Path(args.model) if args.model else PRETRAINED
    if args.model is None:
        print(f"No --model given: using the shipped pretrained model {model_path}")
    try:
        separator = load_separator(model_path, args.precision)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Model {separator.source} ({separator.arch}, {separator.sample_rate} Hz, "
          f"{'stereo' if separator.channels == 2 else 'mono'}, {args.precision}) on {device_description()}")
    if separator.channels == 1:
        print("Mono model: each channel of a stereo input is separated on its own")
    failures = 0
    for path in expand_inputs(args.inputs):
        try:
            destination = separate_file(separator, path, Path(args.out), args.chunk_seconds)
            print(f"{path} -> {destination}/vocals.wav, accompaniment.wav")
        except AudioError as error:
            failures += 1
            print(f"error: {error} (skipped)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
