"""Separate audio files through any server that speaks TensorFlow Serving's REST API v1.

    python -m serve.client song.mp3 --url http://127.0.0.1:8501 --model wavesep --out separated/

writes separated/song/vocals.wav and accompaniment.wav at the input's sample rate,
channel count and exact length, as separate.py does. The song goes to the model's
``separate_audio`` signature in chunks, each sent as its own 16-bit WAV at the file's
rate and channel count (the exported graph resamples for the model and back). Each
chunk carries a margin of real audio on both sides, the context the model needs,
whose outputs are dropped: the kept centres join without seams, and memory on both
ends stays bounded by the chunk, whatever the song's length. Chunk edges fall on
multiples of 4096 samples, the time grid of a Wave-U-Net of up to 12 levels, so a
file at the model's rate is cut where one pass over the whole song would be aligned.

Only REST API v1 is used: the same command works against the official
tensorflow/serving image (serve/compose.yaml). No TensorFlow is needed here.
"""
from __future__ import annotations

import argparse
import base64
import io
import sys
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from tqdm import tqdm

from data_pipeline.audio import AudioError, WavWriter, open_audio, read_blocks
from models.architecture import SOURCES

GRID = 4096


class ServerError(Exception):
    """The server cannot be reached or refused a request; no further file would fare better."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files (WAV/FLAC/MP3/OGG, mono or stereo)")
    parser.add_argument("--url", default="http://127.0.0.1:8501", help="the server (default: http://127.0.0.1:8501)")
    parser.add_argument("--model", default="wavesep", help="model name on the server (default: wavesep)")
    parser.add_argument("--version", type=int, help="a model version (default: the server's newest)")
    parser.add_argument("--out", default="separated", help="output folder: OUT/<stem>/ per input (default: separated/)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    parser.add_argument("--chunk-seconds", type=float, default=20.0, help="audio kept per request (default: 20)")
    parser.add_argument("--margin-seconds", type=float, default=3.0,
                        help="context sent on each side of a chunk and dropped from its outputs (default: 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one request (default: 600)")
    args = parser.parse_args(argv)
    if not args.chunk_seconds > 0 or not args.margin_seconds >= 0:
        parser.error("--chunk-seconds must be above zero and --margin-seconds not below zero")
    return args


def predict_url(url: str, model: str, version: int | None) -> str:
    return f"{url.rstrip('/')}/v1/models/{model}{f'/versions/{version}' if version else ''}:predict"


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def separate_chunk(client: httpx.Client, url: str, audio: np.ndarray, sample_rate: int) -> dict:
    """One request to ``separate_audio``: the chunk's sources, float32 ``[time, channels]``."""
    body = {"signature_name": "separate_audio",
            "instances": [{"b64": base64.b64encode(wav_bytes(audio, sample_rate)).decode("ascii")}]}
    try:
        response = client.post(url, json=body)
    except httpx.HTTPError as error:
        raise ServerError(f"cannot reach {url}: {error}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise ServerError(f"{url} answered {response.status_code}: {message}")
    prediction = response.json()["predictions"][0]
    sources = {}
    for source in SOURCES:
        data = base64.b64decode(prediction[f"{source}_bytes"]["b64"])
        sources[source], rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        if rate != sample_rate or sources[source].shape[1] != audio.shape[1]:
            raise ServerError(f"{url} answered {rate} Hz, {sources[source].shape[1]} channels for "
                              f"{sample_rate} Hz, {audio.shape[1]} channels")
    return sources


def chunks(path: Path, info, hop: int, margin: int):
    """``(window, keep_from, keep_length)``: windows of the file with ``margin`` samples
    around each ``hop`` kept ones, read block by block."""
    blocks = read_blocks(path, hop, info)
    buffer, buffer_start = np.zeros((0, info.channels), np.float32), 0
    for keep_start in range(0, info.frames, hop):
        keep_end = min(keep_start + hop, info.frames)
        start, end = max(0, keep_start - margin), min(info.frames, keep_end + margin)
        while buffer_start + len(buffer) < end:
            buffer = np.concatenate([buffer, next(blocks)])
        buffer, buffer_start = buffer[start - buffer_start:], start
        yield buffer[:end - start], keep_start - start, keep_end - keep_start


def separate_file(client: httpx.Client, url: str, path: Path, destination: Path, chunk_seconds: float,
                  margin_seconds: float) -> None:
    info = open_audio(path)
    hop = max(GRID, round(chunk_seconds * info.sample_rate / GRID) * GRID)
    margin = -(-int(margin_seconds * info.sample_rate) // GRID) * GRID
    with tqdm(total=info.frames, unit_scale=1 / info.sample_rate, unit="s audio", desc=path.name, leave=False) as bar, \
            ExitStack() as files:
        writers = {source: files.enter_context(WavWriter(destination / f"{source}.wav", info.sample_rate,
                                                         info.channels)) for source in SOURCES}
        for window, keep_from, keep_length in chunks(path, info, hop, margin):
            sources = separate_chunk(client, url, window, info.sample_rate)
            for source, writer in writers.items():
                kept = sources[source][keep_from:keep_from + keep_length]
                if len(kept) != keep_length:
                    raise ServerError(f"{url} answered {len(sources[source])} samples for {len(window)}")
                writer.write(kept)
            bar.update(keep_length)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    jobs = [(Path(name), out / Path(name).stem) for name in args.inputs]
    destinations = [destination for _, destination in jobs]
    clashes = sorted({str(d) for d in destinations if destinations.count(d) > 1})
    existing = [d / f"{s}.wav" for d in destinations for s in SOURCES if (d / f"{s}.wav").exists()]
    if clashes or (existing and not args.overwrite):
        problem = (f"inputs with the same name would share {', '.join(clashes)}" if clashes else
                   f"outputs already exist (pass --overwrite to replace them): {', '.join(map(str, existing))}")
        print(f"error: {problem}", file=sys.stderr)
        return 2
    url = predict_url(args.url, args.model, args.version)
    failures = 0
    with httpx.Client(timeout=args.timeout) as client:
        for path, destination in jobs:
            try:
                separate_file(client, url, path, destination, args.chunk_seconds, args.margin_seconds)
                print(f"{path} -> {destination}/vocals.wav, accompaniment.wav")
            except AudioError as error:
                failures += 1
                print(f"error: {error} (skipped)", file=sys.stderr)
            except ServerError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
