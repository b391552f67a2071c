"""Separate audio files through any server that speaks TensorFlow Serving's REST API v1.

    python -m serve.client song.mp3 --url http://127.0.0.1:8501 --model wavesep --out separated/

writes separated/song/vocals.wav and accompaniment.wav at the input's sample rate,
channel count and exact length, as separate.py does. The song goes to the model's
``separate_audio`` signature in chunks, each sent as its own 16-bit WAV at the file's
rate and channel count (the exported graph resamples for the model and back). Each
chunk carries a margin of real audio on both sides, the context the model needs,
whose outputs are dropped: the kept centres join without seams, and memory on both
ends stays bounded by the chunk, whatever the song's length.

Chunks are cut on the served model's own chunk plan, which the server gives in its
model metadata (``python -m serve`` adds the export's facts as the field
``model_facts``): every request starts on a multiple of the plan's stride, in the
model's time, with at least the plan's context on both sides, so the graph cuts each
request into the windows that one call on the whole file would use. For a file at
the model's rate (or whenever a stride is a whole number of the file's samples) the
result is then that call's, to the 16-bit rounding of the answers. A server that
gives no plan (the official TF Serving image prints signatures only, and their
shapes [-1, -1, channels] do not hold one) gets chunks on a grid of 4096 samples at
the file's rate, with a note saying so: the time grid of a Wave-U-Net of up to 12
levels, so exact for those at the model's rate, not for other architectures.

Only REST API v1 is used: the same command works against the official
tensorflow/serving image (serve/compose.yaml). No TensorFlow is needed here.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from tqdm import tqdm

from data_pipeline.audio import AudioError, WavWriter, open_audio, read_blocks
from models.architecture import SOURCES
from models.framing import ChunkPlan

# Where the server gives no chunk plan: chunks on this grid at the file's rate.
FALLBACK_GRID = 4096
# The metadata field of serve's answer that holds the export's facts (serve.rest.MODEL_FACTS_FIELD).
MODEL_FACTS_FIELD = "model_facts"


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
    parser.add_argument("--chunk-seconds", type=float, default=20.0,
                        help="audio kept per request, in whole strides of the model's chunk plan (default: 20)")
    parser.add_argument("--margin-seconds", type=float, default=3.0,
                        help="context sent on each side of a chunk and dropped from its outputs, at least; more "
                             "where the model's chunk plan needs it (default: 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one request (default: 600)")
    args = parser.parse_args(argv)
    if not args.chunk_seconds > 0 or not args.margin_seconds >= 0:
        parser.error("--chunk-seconds must be above zero and --margin-seconds not below zero")
    return args


def model_url(url: str, model: str, version: int | None) -> str:
    return f"{url.rstrip('/')}/v1/models/{model}{f'/versions/{version}' if version else ''}"


def predict_url(url: str, model: str, version: int | None) -> str:
    return f"{model_url(url, model, version)}:predict"


def answer(response: httpx.Response, url: str) -> dict:
    """A 200 answer's JSON; the server's own message for anything else."""
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise ServerError(f"{url} answered {response.status_code}: {message}")
    try:
        return response.json()
    except ValueError:
        raise ServerError(f"{url} answered 200 with something that is not JSON: {response.text[:300]!r}") from None


@dataclass(frozen=True)
class ServedPlan:
    """The served version's chunk plan and the sample rate its lengths count at."""

    plan: ChunkPlan
    sample_rate: int


def served_plan(client: httpx.Client, url: str, model: str, version: int | None) -> ServedPlan | None:
    """The chunk plan in the server's model metadata; None when it has none (the official TF
    Serving image, or an export without facts). A plan that is there but unusable is a
    ServerError: the server contradicts itself, and no cutting would be known to be right."""
    metadata_url = f"{model_url(url, model, version)}/metadata"
    try:
        response = client.get(metadata_url)
    except httpx.HTTPError as error:
        raise ServerError(f"cannot reach {metadata_url}: {error}") from None
    document = answer(response, metadata_url)
    metadata = document.get("metadata") if isinstance(document, dict) else None
    facts = metadata.get(MODEL_FACTS_FIELD) if isinstance(metadata, dict) else None
    if not isinstance(facts, dict) or not facts.get("chunk_plan"):
        return None
    raw, rate = facts["chunk_plan"], facts.get("sample_rate")
    try:
        if not isinstance(raw, dict) or set(raw) != {f.name for f in fields(ChunkPlan)}:
            raise ValueError(f"its fields are not {', '.join(f.name for f in fields(ChunkPlan))}")
        if not all(type(value) is int and value >= 0 for value in [*raw.values(), rate]) or not rate:
            raise ValueError("its lengths and the sample rate must be whole numbers, the rate above zero")
        plan = ChunkPlan(**raw)
        if plan.lead + plan.stride > plan.input_length:
            raise ValueError("its kept outputs lie beyond its input window")
    except (TypeError, ValueError) as error:
        raise ServerError(f"{metadata_url} gives a chunk plan that cannot be used ({error}): "
                          f"{json.dumps({'chunk_plan': raw, 'sample_rate': rate})[:300]}") from None
    return ServedPlan(plan, rate)


@dataclass(frozen=True)
class Cutting:
    """Where the client cuts files, in samples at ``rate`` (the model's, or the file's own
    without a plan): requests keep ``hop`` samples each and start ``before`` samples ahead
    of them, both multiples of ``unit`` (the plan's stride), and go on ``after`` past them."""

    rate: int
    unit: int
    hop: int
    before: int
    after: int

    @classmethod
    def of(cls, served: ServedPlan | None, file_rate: int, chunk_seconds: float, margin_seconds: float) -> "Cutting":
        if served is None:
            rate, unit, lead, trail = file_rate, FALLBACK_GRID, 0, 0
        else:
            plan = served.plan
            rate, unit, lead = served.sample_rate, plan.stride, plan.lead
            trail = plan.input_length - plan.lead - plan.stride
        margin = math.ceil(margin_seconds * rate)
        return cls(rate, unit, hop=max(1, round(chunk_seconds * rate / unit)) * unit,
                   before=-(-max(margin, lead) // unit) * unit, after=max(margin, trail))

    def requests(self, frames: int, file_rate: int):
        """``(start, keep_start, keep_end, end)`` of each request, in the file's samples: the
        nearest to those positions in the model's time (the same ones at its rate)."""
        def at_file(position: int) -> int:
            return min(frames, (max(0, position) * file_rate + self.rate // 2) // self.rate)

        index = 0
        while (keep_start := at_file(index * self.hop)) < frames:
            yield (at_file(index * self.hop - self.before), keep_start, at_file((index + 1) * self.hop),
                   at_file((index + 1) * self.hop + self.after))
            index += 1


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
    prediction = answer(response, url)["predictions"][0]
    sources = {}
    for source in SOURCES:
        data = base64.b64decode(prediction[f"{source}_bytes"]["b64"])
        sources[source], rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        if rate != sample_rate or sources[source].shape[1] != audio.shape[1]:
            raise ServerError(f"{url} answered {rate} Hz, {sources[source].shape[1]} channels for "
                              f"{sample_rate} Hz, {audio.shape[1]} channels")
    return sources


def chunks(path: Path, info, cutting: Cutting):
    """``(window, keep_from, keep_length)``: the file's requests as ``cutting`` places them,
    read block by block."""
    blocks = read_blocks(path, max(1, cutting.hop * info.sample_rate // cutting.rate), info)
    buffer, buffer_start = np.zeros((0, info.channels), np.float32), 0
    for start, keep_start, keep_end, end in cutting.requests(info.frames, info.sample_rate):
        while buffer_start + len(buffer) < end:
            buffer = np.concatenate([buffer, next(blocks)])
        buffer, buffer_start = buffer[start - buffer_start:], start
        yield buffer[:end - start], keep_start - start, keep_end - keep_start


def separate_file(client: httpx.Client, url: str, path: Path, destination: Path, chunk_seconds: float,
                  margin_seconds: float, served: ServedPlan | None = None) -> None:
    """``path`` through the server at ``url`` (predict) in requests cut on ``served``'s plan
    (``None``: the fallback grid)."""
    info = open_audio(path)
    cutting = Cutting.of(served, info.sample_rate, chunk_seconds, margin_seconds)
    with tqdm(total=info.frames, unit_scale=1 / info.sample_rate, unit="s audio", desc=path.name, leave=False) as bar, \
            ExitStack() as files:
        writers = {source: files.enter_context(WavWriter(destination / f"{source}.wav", info.sample_rate,
                                                         info.channels)) for source in SOURCES}
        for window, keep_from, keep_length in chunks(path, info, cutting):
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
        try:
            served = served_plan(client, args.url, args.model, args.version)
        except ServerError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if served is None:
            print(f"note: {args.url} gives no chunk plan in its metadata of model {args.model} (the official TF "
                  f"Serving image gives signatures only): cutting on a grid of {FALLBACK_GRID} samples at each "
                  f"file's rate, exact at the model's rate for Wave-U-Nets of up to 12 levels only",
                  file=sys.stderr)
        for path, destination in jobs:
            try:
                separate_file(client, url, path, destination, args.chunk_seconds, args.margin_seconds, served)
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
