"""What the REST server costs over calling the model in process, how it holds up under
load, and whether it stays correct when good and hostile traffic arrive together,
measured in one run.

    python -m bench.serve                       # all three phases, the defaults below
    python -m bench.serve --phases mixed        # only the mixed-traffic phase
    python -m bench.serve --phases latency,load # the phases of earlier versions
    python -m bench.serve --phases soak --json soak.json  # 20 minutes of steady good and hostile traffic

Exports the shipped model (or --model) to a temporary folder, or serves an existing
export with --model-base-path, and starts ``python -m serve`` on 127.0.0.1. --phases
picks the phases, in this order (default: latency,load,mixed; the soak only when named):
  1. latency: a 10 s stereo clip at the model's rate, one request at a time, through
     serving_default (JSON float lists in and out) and separate_audio (a 16-bit WAV as
     {"b64": ...} in and out), against the same SavedModel signatures called in this
     process: p50 and p99 in ms, requests/s, and REST over in-process as ratios. The REST
     times run from sending the encoded request to receiving the whole answer: what the
     server adds, without the client's own JSON work (which depends on its language).
  2. load: --load-requests separate_audio requests of a short clip from --concurrency
     clients at once (the server runs --max-concurrent 2 model calls, the rest wait):
     failures (must be 0), requests/s, p50/p99, and the server's peak RSS.
  3. mixed: a server of its own with --max-request-mb 2 --max-song-minutes 1, gets
     --mixed-requests predict requests from --concurrency clients in an order shuffled
     with --seed: about 10 % malformed (bad JSON, wrong shape, NaN, not base64, bytes
     that are not a WAV, unknown signature, in turn), about 5 % too big (bodies over
     2 MB: a 37 s clip; and 1.5-minute WAVs at 100 Hz, 18 kB whose header says more than
     the 1 minute allowed), the rest good separate_audio requests of a --mixed-seconds
     clip. Meanwhile --uploads page uploads of that clip go through POST /api/separate,
     with 2 hostile ones (an HLS playlist naming a file on the server's disk, and a
     10-minute silent FLAC), started at even steps of the requests' progress, each
     followed through GET /api/jobs/<id> until it ends. Printed: the answers' status
     codes per kind of request, p50/p99 per kind, requests/s, and the server's peak RSS
     (VmHWM) before and after the phase. The server admits --concurrency + uploads
     requests to wait (--max-waiting) and keeps that many jobs, so no good request can
     be turned away with 429: one would count as a failure.
  4. soak: --soak-minutes (20) of steady traffic against a server of its own (--max-waiting
     32 --max-live-sessions 8: room for every client at once; only limits per client
     address may refuse one). Good clients, from 127.0.0.1: a predict every 1.5 s
     (serving_default as JSON and separate_audio as a b64 WAV in turn, of a 1 s stereo
     clip), a page upload of that clip every 15 s followed to its end, and a 3 s live
     session every 4 s (WebSocket, 20 ms blocks paced in real time, then {"end": true}).
     Page and WebSocket clients send the server's own Origin, as its page does. A hostile
     client every --hostile-seconds (10), the kinds in turn, each from its own address
     (127.0.0.2, 127.0.0.3, ...): slow headers, a slow predict body and a slow page upload
     (a byte a second for --slow-seconds unless the server stops them first), a WAV whose
     header claims 13.5 h, a fuzzed WAV (random bytes of a good one changed, seeded by
     --seed), hours of silence in a FLAC and an OGG of a few hundred kB uploaded through the
     page, and a burst of 5 predicts and 5 live sessions at once. Every --sample-seconds
     (60), and once the traffic has ended, the server's RSS, open files (/proc/PID/fd),
     threads and the files in its TMPDIR (a folder of the bench's: its uploads and page
     jobs) are read. Printed, and with --json written: status codes and p50/p99 per kind,
     the live blocks' round trip, the samples with each one's least-squares slope per hour,
     the temp files once the traffic has ended (only kept page jobs' results may be there)
     and after the server stopped (nothing may be), and the ERROR lines of its log.

Exits 1 if a load request fails, a good mixed request is not answered 200 with both
sources at its length, a good upload does not end done with its results, or a bad
request (or hostile upload's result) is answered anything but a 4xx; in the soak, if a
good request, upload or live session fails, a hostile client is not refused (a 4xx, its
connection closed, a WebSocket closed with any code but 1011; a fuzzed WAV may also be
separated, a burst's requests served), a temp file is left, or the server logs an error
or exits.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import tensorflow as tf  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException  # noqa: E402

from data_pipeline.audio import AudioError  # noqa: E402
from runtime.cpu import this_cpu  # noqa: E402
from runtime.export import export_run  # noqa: E402
from runtime.loading import PRETRAINED_MODEL  # noqa: E402
from runtime.model_facts import ModelFacts  # noqa: E402
from serve.client import wav_bytes  # noqa: E402
from serve.upload import wav_header  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
PHASES = ("latency", "load", "mixed", "soak")
DEFAULT_PHASES = PHASES[:3]
# The mixed phase's server limits: small, so that refusing a body over them is cheap to provoke.
MIXED_MAX_REQUEST_MB, MIXED_MAX_SONG_MINUTES = 2, 1
MALFORMED_SHARE, TOO_BIG_SHARE = 0.10, 0.05
OVER_LONG_RATE = 100  # Hz: 1.5 times the song limit fits in 18 kB
HOSTILE_FLAC_MINUTES = 10  # silent: 100 kB, 106 MB if it were decoded to float32
MIXED_CATEGORIES = ("good", "malformed", "too big", "good upload", "hostile upload")
# How httpx reports a connection that the server closed without an answer: a refusal, for a hostile client.
SERVER_CLOSED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def clip(seconds: float, rate: int) -> np.ndarray:
    """Tones and noise below full scale, stereo."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal((len(t), 2))
    return (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * noise).astype(np.float32)


def start_server(base: Path, log_path: Path, *flags: str, tmpdir: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m serve`` of ``base`` on a free port of 127.0.0.1, once its model is available; with
    ``tmpdir``, that is its TMPDIR (where it keeps uploads and page jobs)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "serve", "--model-base-path", str(base), "--model-name",
                                    "wavesep", "--port", str(port), *flags], cwd=REPOSITORY, stdout=log,
                                   stderr=subprocess.STDOUT,
                                   env=None if tmpdir is None else {**os.environ, "TMPDIR": str(tmpdir)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            status = httpx.get(f"{url}/v1/models/wavesep").json()
            if any(s["state"] == "AVAILABLE" for s in status.get("model_version_status", [])):
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"the server did not start:\n{log_path.read_text()}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=60)


def timed(call, repeats: int, warmup: int = 2) -> np.ndarray:
    for _ in range(warmup):  # the first calls of a graph optimise it
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return np.array(times)


def row(name: str, times: np.ndarray, reference: np.ndarray | None = None) -> str:
    p50, p99 = np.percentile(times, 50) * 1000, np.percentile(times, 99) * 1000
    text = f"  {name:<36} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   {len(times) / times.sum():6.2f} req/s"
    if reference is not None:
        text += (f"   REST/in-process: p50 x{p50 / (np.percentile(reference, 50) * 1000):.2f}, "
                 f"req/s x{reference.sum() / times.sum() * len(times) / len(reference):.2f}")
    return text


async def load_test(url: str, body: dict, requests: int, concurrency: int) -> tuple[np.ndarray, int, float]:
    """``requests`` posts, ``concurrency`` in flight at a time: latencies, failures, wall seconds."""
    latencies, failures = [], 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one():
            nonlocal failures
            async with gate:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                    ok = response.status_code == 200 and "predictions" in response.json()
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                failures += not ok

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
    return np.array(latencies), failures, time.perf_counter() - started


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the mixed phase --------------------------------------------------------------------------


@dataclass
class Request:
    """One request of the mix: its category (good, malformed, too big), kind, and encoded body."""

    category: str
    kind: str
    body: bytes


@dataclass
class Outcome:
    """What came back: ``status`` is the HTTP status as text ("200", "413", "202 -> done",
    "transport error: ReadTimeout"); ``ok`` whether the answer is the one expected."""

    category: str
    kind: str
    status: str
    seconds: float
    ok: bool


def audio_body(wav: bytes) -> bytes:
    return json.dumps({"signature_name": "separate_audio",
                       "instances": [{"b64": base64.b64encode(wav).decode()}]}).encode()


def request_mix(count: int, seed: int, good_wav: bytes, rate: int) -> list[Request]:
    """``count`` requests, about MALFORMED_SHARE malformed and TOO_BIG_SHARE too big, in an
    order shuffled with ``seed``."""
    malformed = [
        ("bad JSON", b'{"signature_name": "separate_audio", "instances": [{"b64": '),
        ("wrong shape", json.dumps({"instances": [[[0.1, 0.2, 0.3]] * 8]}).encode()),
        ("NaN", b'{"inputs": {"waveform": [[[NaN, 0.5], [0.25, 0.5]]]}}'),
        ("not base64", json.dumps({"signature_name": "separate_audio",
                                   "instances": [{"b64": "not base64!"}]}).encode()),
        ("bytes not a WAV", audio_body(b"RIFF\x24\x00\x00\x00WAVEjunk, not a wave file at all")),
        ("unknown signature", json.dumps({"signature_name": "separate_everything",
                                          "instances": [{"b64": base64.b64encode(good_wav).decode()}]}).encode()),
    ]
    # A real song over the body limit (base64 and JSON add a third): 10 % over it.
    limit = MIXED_MAX_REQUEST_MB * 2 ** 20
    oversize = audio_body(wav_bytes(clip(1.1 * limit * 3 / 4 / (rate * 4), rate), rate))
    assert len(oversize) > limit
    over_long_seconds = 1.5 * MIXED_MAX_SONG_MINUTES * 60
    over_long = audio_body(wav_bytes(np.zeros((int(over_long_seconds * OVER_LONG_RATE), 1), np.float32),
                                     OVER_LONG_RATE))
    too_big = [(f"body over {MIXED_MAX_REQUEST_MB} MB ({len(oversize) / 2 ** 20:.1f} MB)", oversize),
               (f"{over_long_seconds / 60:g} min WAV at {OVER_LONG_RATE} Hz", over_long)]

    malformed_count, too_big_count = round(MALFORMED_SHARE * count), round(TOO_BIG_SHARE * count)
    requests = [Request("malformed", *malformed[i % len(malformed)]) for i in range(malformed_count)]
    requests += [Request("too big", *too_big[i % len(too_big)]) for i in range(too_big_count)]
    requests += [Request("good", "separate_audio", audio_body(good_wav))
                 for _ in range(count - malformed_count - too_big_count)]
    order = np.random.default_rng(seed).permutation(len(requests))
    return [requests[i] for i in order]


def good_answer(response: httpx.Response, rate: int, frames: int) -> bool:
    """200 with both sources as WAVs at the clip's rate and length."""
    if response.status_code != 200:
        return False
    try:
        [prediction] = response.json()["predictions"]
        for name in ("vocals_bytes", "accompaniment_bytes"):
            header = wav_header(base64.b64decode(prediction[name]["b64"]))
            if header is None or header.sample_rate != rate or header.frames != frames:
                return False
    except (KeyError, TypeError, ValueError, AudioError):
        return False
    return True


def refused(response: httpx.Response) -> bool:
    return 400 <= response.status_code < 500


async def post_predict(client: httpx.AsyncClient, url: str, category: str, kind: str, body: bytes,
                       accept) -> Outcome:
    """One predict request; ``accept(response)`` says whether its answer is the one expected. A
    hostile client's connection closed by the server counts as refused."""
    started = time.perf_counter()
    try:
        response = await client.post(f"{url}/v1/models/wavesep:predict", content=body,
                                     headers={"Content-Type": "application/json"})
        ok = accept(response)
        status = str(response.status_code) + (" (wrong answer)" if response.status_code == 200 and not ok else "")
    except httpx.HTTPError as error:
        status = f"transport error: {type(error).__name__}"
        ok = category.startswith("hostile") and isinstance(error, SERVER_CLOSED)
    return Outcome(category, kind, status, time.perf_counter() - started, ok)


def hostile_uploads(local_file: Path) -> list[tuple[str, str, bytes]]:
    """(kind, file name, content) of uploads the page must refuse."""
    playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\nfile://{local_file}\n#EXT-X-ENDLIST\n").encode()
    flac = io.BytesIO()
    sf.write(flac, np.zeros((HOSTILE_FLAC_MINUTES * 60 * 44100, 2), np.int16), 44100, format="FLAC",
             subtype="PCM_16")
    return [("HLS playlist of a server file", "song.m3u8", playlist),
            (f"{HOSTILE_FLAC_MINUTES} min silent FLAC ({len(flac.getvalue()) // 1024} kB)", "quiet.flac",
             flac.getvalue())]


async def page_upload(client: httpx.AsyncClient, url: str, category: str, kind: str, name: str, content: bytes,
                      rate: int, frames: int, timeout: float = 600) -> Outcome:
    """Uploads ``content`` through the page's API and follows its job to the end. A good upload
    must end done with vocals.wav of its length; a hostile one must end in error, and its
    vocals.wav must be refused with a 4xx."""
    started = time.perf_counter()
    try:
        response = await client.post(f"{url}/api/separate", files={"file": (name, content)})
        if response.status_code != 202:
            return Outcome(category, kind, str(response.status_code), time.perf_counter() - started,
                           category == "hostile upload" and 400 <= response.status_code < 500)
        job_id = response.json()["id"]
        deadline = time.monotonic() + timeout
        while (job := (await client.get(f"{url}/api/jobs/{job_id}")).json())["state"] not in ("done", "error"):
            if time.monotonic() > deadline:
                return Outcome(category, kind, f"202 -> still {job['state']} after {timeout:g} s",
                               time.perf_counter() - started, False)
            await asyncio.sleep(0.2)
        seconds = time.perf_counter() - started
        result = await client.get(f"{url}/api/jobs/{job_id}/vocals.wav")
        status = f"202 -> {job['state']}, vocals.wav {result.status_code}"
        if category == "good upload":
            try:
                header = wav_header(result.content) if result.status_code == 200 else None
            except AudioError:
                header = None
            ok = job["state"] == "done" and header is not None and header.frames == frames
        else:
            ok = job["state"] == "error" and job["results"] == {} and 400 <= result.status_code < 500
        return Outcome(category, kind, status, seconds, ok)
    except httpx.HTTPError as error:
        return Outcome(category, kind, f"transport error: {type(error).__name__}", time.perf_counter() - started,
                       False)


async def mixed_traffic(url: str, requests: list[Request], uploads: list[tuple[str, str, str, bytes]],
                        concurrency: int, rate: int, frames: int) -> tuple[list[Outcome], float]:
    """``requests`` from ``concurrency`` clients, and ``uploads`` (category, kind, name, content)
    started at even steps of the requests' progress: the outcomes, and the requests' wall seconds."""
    pending = iter(requests)
    outcomes: list[Outcome] = []
    answered = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal answered
        for request in pending:  # one shared iterator: each client takes the next request
            accept = (lambda response: good_answer(response, rate, frames)) if request.category == "good" else refused
            outcomes.append(await post_predict(client, url, request.category, request.kind, request.body, accept))
            answered += 1

    async def upload_at(threshold: int, client: httpx.AsyncClient, upload) -> Outcome:
        while answered < threshold:
            await asyncio.sleep(0.05)
        return await page_upload(client, url, *upload, rate=rate, frames=frames)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as rest, httpx.AsyncClient(timeout=300) as page:
        steps = [round((i + 1) * len(requests) / (len(uploads) + 1)) for i in range(len(uploads))]
        page_jobs = asyncio.gather(*(upload_at(step, page, upload) for step, upload in zip(steps, uploads)))
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(rest) for _ in range(concurrency)))
        wall = time.perf_counter() - started
        outcomes += await page_jobs
    return outcomes, wall


def kind_figures(outcomes: list[Outcome], categories: tuple[str, ...]) -> list[dict]:
    """Per category (in the order given) and kind, and for all of a category with several kinds:
    count, p50/p99 ms, answers by status, and how many were not the answer expected."""
    kinds = list(dict.fromkeys((o.category, o.kind) for o in outcomes))
    figures = []
    for category in categories:
        of_category = [k for c, k in kinds if c == category]
        for kind in of_category + (["(all)"] if len(of_category) > 1 else []):
            rows = [o for o in outcomes if o.category == category and kind in (o.kind, "(all)")]
            times = np.array([o.seconds for o in rows]) * 1000
            figures.append({"category": category, "kind": kind, "n": len(rows),
                            "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                            "statuses": dict(sorted(Counter(o.status for o in rows).items())),
                            "failed": sum(not o.ok for o in rows)})
    return figures


def mixed_table(outcomes: list[Outcome], categories: tuple[str, ...] = MIXED_CATEGORIES) -> list[str]:
    """One line per category and kind: count, answers by status, p50/p99, and "FAILED" where an
    answer was not the one expected."""
    lines = [f"  {'category':<15} {'kind':<38} {'n':>4}   {'p50 ms':>8} {'p99 ms':>8}   answers (status: count)"]
    for row in kind_figures(outcomes, categories):
        statuses = ", ".join(f"{status}: {n}" for status, n in row["statuses"].items())
        lines.append(f"  {row['category']:<15} {row['kind']:<38} {row['n']:>4}   {row['p50_ms']:8.0f} "
                     f"{row['p99_ms']:8.0f}   {statuses}" + (f"   FAILED {row['failed']}" if row["failed"] else ""))
    return lines


def verdict(outcomes: list[Outcome]) -> tuple[int, int]:
    """Good requests, uploads and live sessions that failed; bad or hostile ones not refused."""
    return (sum(not o.ok for o in outcomes if o.category.startswith("good")),
            sum(not o.ok for o in outcomes if not o.category.startswith("good")))


def run_mixed(base: Path, folder: Path, rate: int, args) -> bool:
    frames = int(args.mixed_seconds * rate)
    good_wav = wav_bytes(clip(args.mixed_seconds, rate), rate)
    requests = request_mix(args.mixed_requests, args.seed, good_wav, rate)
    local_file = folder / "on-the-servers-disk.wav"  # what the playlist names; never to be served back
    local_file.write_bytes(good_wav)
    uploads = [("good upload", f"{args.mixed_seconds:g} s WAV", "song.wav", good_wav)] * args.uploads
    uploads += [("hostile upload", *hostile) for hostile in hostile_uploads(local_file)]
    uploads = [uploads[i] for i in np.random.default_rng(args.seed + 1).permutation(len(uploads))]

    waiting = args.concurrency + len(uploads)  # every client and every page job may wait at once: no 429
    flags = ["--max-request-mb", str(MIXED_MAX_REQUEST_MB), "--max-song-minutes", str(MIXED_MAX_SONG_MINUTES),
             "--max-concurrent", "2", "--max-waiting", str(waiting), "--max-jobs", str(len(uploads)),
             "--max-per-client", str(waiting)]  # every client is 127.0.0.1
    server, url = start_server(base, folder / "mixed-server.log", *flags)
    try:
        with httpx.Client(timeout=300) as client:  # one call first: the graph's first run optimises it
            warm = client.post(f"{url}/v1/models/wavesep:predict", content=audio_body(good_wav),
                               headers={"Content-Type": "application/json"})
            if not good_answer(warm, rate, frames):
                raise SystemExit(f"the warm-up request failed: {warm.status_code} {warm.text[:300]}")
        before = peak_rss_mb(server.pid)
        counts = Counter(r.category for r in requests)
        print(f"Mixed: {len(requests)} predict requests from {args.concurrency} clients (order shuffled, seed "
              f"{args.seed}): {counts['good']} good separate_audio of a {args.mixed_seconds:g} s stereo clip, "
              f"{counts['malformed']} malformed, {counts['too big']} too big; {len(uploads)} page uploads "
              f"meanwhile. Server: {' '.join(flags)}")
        outcomes, wall = asyncio.run(mixed_traffic(url, requests, uploads, args.concurrency, rate, frames))
        after = peak_rss_mb(server.pid)
        alive = server.poll() is None
    finally:
        stop_server(server)
    for line in mixed_table(outcomes):
        print(line)
    good = [o for o in outcomes if o.category == "good"]
    bad = [o for o in outcomes if o.category in ("malformed", "too big")]
    good_times = np.array([o.seconds for o in good]) * 1000
    good_failures, bad_not_4xx = verdict(outcomes)
    print(f"  good requests: {len(good)}, failures {good_failures} (uploads included)   p50 "
          f"{np.percentile(good_times, 50):.0f} ms   p99 {np.percentile(good_times, 99):.0f} ms   "
          f"{len(good) / wall:.2f} good req/s")
    print(f"  bad requests: {len(bad)}, answered other than 4xx: {bad_not_4xx} (hostile uploads included)")
    print(f"  all {len(requests)} requests in {wall:.1f} s: {len(requests) / wall:.2f} req/s   server peak RSS "
          f"(VmHWM) {before:.0f} MB before the phase (after one warm-up request), {after:.0f} MB after"
          + ("" if alive else "   THE SERVER EXITED"))
    return good_failures == 0 and bad_not_4xx == 0 and alive


# --- the soak phase ---------------------------------------------------------------------------

GOOD_ADDRESS = "127.0.0.1"  # the good clients' source address; each hostile kind has its own, from 127.0.0.2
SOAK_CLIP_SECONDS = 1.0
GOOD_REQUEST_EVERY, GOOD_UPLOAD_EVERY = 1.5, 15.0  # seconds from one start to the next, at least
LIVE_SECONDS, LIVE_BLOCK_MS, LIVE_PAUSE_SECONDS = 3.0, 20, 1.0
CHANNELS = 2
BURST_REQUESTS, BURST_SESSIONS, BURST_LIVE_SECONDS = 5, 5, 1.0
BOMB_RATE = 8000  # Hz, mono: hours of silence in a few hundred kB
# What its header claims, 13.5 h of 22.05 kHz stereo: the most whole frames whose RIFF size (36 bytes more)
# fits its 32 bits.
LYING_WAV_DATA_BYTES = 0xFFFFFFD8
# Room for every client that may wait for a model call at once (a burst, slow bodies, page jobs, the good
# ones) and for a burst's live sessions beside the good one: only a limit per client may refuse a hostile one.
SOAK_SERVER_FLAGS = ("--max-waiting", "32", "--max-live-sessions", str(BURST_SESSIONS + 3))
ANSWER_TIMEOUT = 120  # seconds a client waits for an answer owed to it
SOAK_CATEGORIES = ("good", "good upload", "good live", "hostile", "hostile upload")
RESOURCES = ("rss_mb", "open_files", "threads", "temp_files")


def waveform_answer(response: httpx.Response, frames: int) -> bool:
    """200 with both sources as [1, frames, 2] waveforms: serving_default's columnar answer."""
    if response.status_code != 200:
        return False
    try:
        outputs = response.json()["outputs"]
        return all(np.shape(outputs[source]) == (1, frames, CHANNELS) for source in ("vocals", "accompaniment"))
    except (KeyError, TypeError, ValueError):
        return False


def audio_answer(response: httpx.Response) -> bool:
    """200 with both sources as audio files that soundfile reads, of any rate and length."""
    if response.status_code != 200:
        return False
    try:
        [prediction] = response.json()["predictions"]
        for name in ("vocals_bytes", "accompaniment_bytes"):
            sf.info(io.BytesIO(base64.b64decode(prediction[name]["b64"])))
    except (KeyError, TypeError, ValueError, RuntimeError):  # soundfile's errors are RuntimeErrors
        return False
    return True


def decompression_bombs() -> list[tuple[str, str, bytes]]:
    """(kind, file name, content) of small files that decode to hours of silence: seconds to encode."""
    bombs = []
    for audio_format, subtype, hours in (("FLAC", "PCM_16", 3), ("OGG", "VORBIS", 1)):
        data = io.BytesIO()
        with sf.SoundFile(data, "w", BOMB_RATE, 1, format=audio_format, subtype=subtype) as file:
            minute = np.zeros(BOMB_RATE * 60, np.float32)
            for _ in range(hours * 60):
                file.write(minute)
        bombs.append((f"{hours} h silent {audio_format} ({len(data.getvalue()) // 1024} kB)",
                      f"hours.{audio_format.lower()}", data.getvalue()))
    return bombs


def lying_wav(wav: bytes, rate: int) -> bytes:
    """A tenth of a second of ``wav`` (16-bit stereo, 44-byte header) under RIFF and data sizes of 4 GB."""
    assert wav[36:40] == b"data"
    data = bytearray(wav[:44 + rate // 10 * CHANNELS * 2])
    data[4:8] = (LYING_WAV_DATA_BYTES + 36).to_bytes(4, "little")
    data[40:44] = LYING_WAV_DATA_BYTES.to_bytes(4, "little")
    return bytes(data)


def fuzzed_wav(wav: bytes, rng: np.random.Generator) -> bytes:
    """``wav`` with 1 to 8 bytes set at random, three in four of them in its 44-byte header, and
    one time in five cut short at random."""
    data = bytearray(wav)
    for _ in range(rng.integers(1, 9)):
        data[rng.integers(0, 44) if rng.random() < 0.75 else rng.integers(0, len(data))] = rng.integers(0, 256)
    return bytes(data[:rng.integers(0, len(data))] if rng.random() < 0.2 else data)


def status_code(line: bytes) -> str:
    """The code of an HTTP status line, or "closed" for the empty line of a connection closed without one."""
    return line.split()[1].decode() if line.startswith(b"HTTP/") and len(line.split()) > 1 else "closed"


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if not path.is_dir())


def server_sample(pid: int, tmpdir: Path) -> dict:
    """The server's resident memory, open file descriptors, threads, and the files in its TMPDIR."""
    status = proc_status(pid)
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "open_files": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"]), "temp_files": len(files_under(tmpdir))}


def slopes_per_hour(samples: list[dict]) -> dict[str, float]:
    """Each resource's least-squares slope over the samples, per hour (NaN with fewer than two)."""
    hours = np.array([sample["minute"] for sample in samples]) / 60
    return {name: float(np.polyfit(hours, [sample[name] for sample in samples], 1)[0]) if len(samples) > 1
            else float("nan") for name in RESOURCES}


def job_result(path: Path, tmpdir: Path) -> bool:
    """Whether a file is a page job's result (TMPDIR/wavesep-jobs-*/JOB/SOURCE.wav): kept until evicted."""
    parts = path.relative_to(tmpdir).parts
    return len(parts) == 3 and parts[0].startswith("wavesep-jobs-") and parts[2] in ("vocals.wav",
                                                                                      "accompaniment.wav")


class SoakClients:
    """The soak's clients of the server at ``url``, their requests prepared once."""

    def __init__(self, url: str, rate: int, slow_seconds: int, seed: int, bombs: list[tuple[str, str, bytes]]):
        self.url, self.rate, self.slow_seconds, self.bombs = url, rate, slow_seconds, bombs
        self.host = url.removeprefix("http://")
        self.frames = int(SOAK_CLIP_SECONDS * rate)
        audio = clip(SOAK_CLIP_SECONDS, rate)
        self.wav = wav_bytes(audio, rate)
        self.bodies = {"serving_default": json.dumps({"inputs": {"waveform": [audio.tolist()]}}).encode(),
                       "separate_audio": audio_body(self.wav)}
        self.fuzz = np.random.default_rng(seed)

    def client(self, address: str, page: bool = False) -> httpx.AsyncClient:
        """An HTTP client from ``address``; ``page``: with the server's own page as its Origin, as a browser."""
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=ANSWER_TIMEOUT,
                                 headers={"Origin": self.url} if page else None)

    def hostile_kinds(self) -> list:
        """The hostile clients, each a coroutine function of its source address that returns its outcomes."""
        bomb_uploads = [lambda address, bomb=bomb: self.upload(address, "hostile upload", *bomb) for bomb in self.bombs]
        return [self.slow_headers, self.slow_body, self.slow_upload, self.lying_wav, self.fuzzed_wav, *bomb_uploads,
                self.burst]

    # the good clients

    async def predict(self, client: httpx.AsyncClient, signature: str) -> Outcome:
        def accept(response):
            return (waveform_answer(response, self.frames) if signature == "serving_default"
                    else good_answer(response, self.rate, self.frames))
        return await post_predict(client, self.url, "good", signature, self.bodies[signature], accept)

    async def upload(self, address: str, category: str, kind: str, name: str, content: bytes) -> list[Outcome]:
        async with self.client(address, page=True) as client:
            return [await page_upload(client, self.url, category, kind, name, content, self.rate, self.frames,
                                      timeout=ANSWER_TIMEOUT)]

    async def good_upload(self) -> list[Outcome]:
        return await self.upload(GOOD_ADDRESS, "good upload", f"{SOAK_CLIP_SECONDS:g} s WAV", "song.wav", self.wav)

    async def live(self, address: str, seconds: float, category: str, kind: str) -> tuple[Outcome, list[float]]:
        """A live session from ``address``: ``seconds`` of audio sent paced in real time, then
        ``{"end": true}``. Its status: "1000" when every block was answered, then the tail, then
        a normal close; else how it ended ("closed CODE before streaming", "HTTP 429", ...).
        Also its blocks' round trips (seconds from sending to the answer) when it ended so."""
        block = self.rate * LIVE_BLOCK_MS // 1000
        audio = clip(seconds, self.rate).astype("<f4")
        frames = [audio[start:start + block].tobytes() for start in range(0, len(audio) - block + 1, block)]
        sent, received, sizes = [], [], []
        opened, close_code, tail_bytes = False, None, None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(seconds + ANSWER_TIMEOUT):
                async with connect(self.url.replace("http://", "ws://", 1) + "/v1/models/wavesep:stream",
                                   origin=self.url, compression=None, max_size=None, proxy=None,
                                   local_addr=(address, 0)) as stream:
                    await stream.send(json.dumps({"sample_rate": self.rate, "channels": CHANNELS,
                                                  "block_size": block, "format": "f32le"}))
                    tail_bytes = 2 * json.loads(await stream.recv())["delay_samples"] * CHANNELS * 4
                    opened = True

                    async def receive():  # to the server's close: normal, or raising ConnectionClosedError
                        async for answer in stream:
                            received.append(time.perf_counter())
                            sizes.append(len(answer))

                    receiver = asyncio.create_task(receive())
                    begin = time.perf_counter()
                    for index, frame in enumerate(frames):
                        await asyncio.sleep(max(0.0, begin + index * block / self.rate - time.perf_counter()))
                        if receiver.done():  # the server closed the stream
                            break
                        sent.append(time.perf_counter())
                        with contextlib.suppress(ConnectionClosed):  # then the receiver ends too
                            await stream.send(frame)
                    else:
                        with contextlib.suppress(ConnectionClosed):
                            await stream.send(json.dumps({"end": True}))
                    await receiver
                    close_code = stream.close_code
        except ConnectionClosed as closed:
            close_code = closed.rcvd.code if closed.rcvd else 1006
        except InvalidStatus as refusal:
            status = f"HTTP {refusal.response.status_code}"
        except TimeoutError:
            status = f"no end in {seconds + ANSWER_TIMEOUT:g} s"
        except (OSError, WebSocketException, ValueError, KeyError, TypeError) as error:
            status = f"transport error: {type(error).__name__}"
        seconds_taken = time.perf_counter() - started
        answer_bytes = 2 * block * CHANNELS * 4
        if close_code is not None:
            complete = opened and close_code == 1000 and sizes == [answer_bytes] * len(frames) + [tail_bytes]
            status = ("1000" if complete else f"closed {close_code} before streaming" if not opened
                      else f"closed {close_code} after {len(sizes)} of {len(frames) + 1} answers")
        if category.startswith("good"):
            ok = status == "1000"
        else:  # a refusal: a close other than an internal error, or a 4xx to the handshake
            ok = (status == "1000" or (status.startswith("closed") and close_code != 1011)
                  or status.startswith("HTTP 4"))
        trips = list(np.array(received[:len(frames)]) - np.array(sent)) if status == "1000" else []
        return Outcome(category, kind, status, seconds_taken, ok), trips

    # the hostile clients

    async def trickle(self, address: str, kind: str, head: bytes, trickled: bytes, tail: bytes) -> list[Outcome]:
        """Sends ``head``, ``trickled`` a byte a second, then ``tail`` over a connection from ``address``,
        reading meanwhile. Refused: a 4xx or the connection closed, at any point."""
        started = time.perf_counter()
        host, port = self.host.split(":")
        try:
            reader, writer = await asyncio.open_connection(host, int(port), local_addr=(address, 0))
        except OSError as error:
            return [Outcome("hostile", kind, f"transport error: {type(error).__name__}", 0.0, False)]
        answer = asyncio.create_task(reader.readline())
        try:
            writer.write(head)
            for byte in trickled:
                await asyncio.wait([answer], timeout=1)  # a byte a second, unless the server answers first
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
            else:
                writer.write(tail)
                await writer.drain()
            status = status_code(await asyncio.wait_for(answer, ANSWER_TIMEOUT))
        except ConnectionError:  # the server closed the connection: after its answer, if it sent one
            await asyncio.wait([answer], timeout=1)
            status = "closed" if not answer.done() or answer.exception() else status_code(answer.result())
        except TimeoutError:
            status = f"no answer in {ANSWER_TIMEOUT} s"
        finally:
            answer.cancel()
            writer.close()
        ok = status == "closed" or status.startswith("4")
        return [Outcome("hostile", kind, status, time.perf_counter() - started, ok)]

    def request_head(self, path: str, content_type: str, length: int, page: bool = False) -> bytes:
        origin = f"Origin: {self.url}\r\n" if page else ""
        return (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{origin}Content-Type: {content_type}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n").encode()

    async def slow_headers(self, address: str) -> list[Outcome]:
        """A predict whose last header comes a byte a second, then an empty JSON list as its body (400)."""
        head = self.request_head("/v1/models/wavesep:predict", "application/json", 2) + b"X-Slow: "
        return await self.trickle(address, "slow headers (1 byte/s)", head, b"a" * self.slow_seconds, b"\r\n\r\n[]")

    async def slow_body(self, address: str) -> list[Outcome]:
        """A predict body of spaces a byte a second, then an empty JSON list (400)."""
        head = self.request_head("/v1/models/wavesep:predict", "application/json", self.slow_seconds + 2) + b"\r\n"
        return await self.trickle(address, "slow body (1 byte/s)", head, b" " * self.slow_seconds, b"[]")

    async def slow_upload(self, address: str) -> list[Outcome]:
        """A page upload whose file comes a byte a second, in a form field other than "file" (400)."""
        part = b'--soak\r\nContent-Disposition: form-data; name="song"; filename="slow.wav"\r\n\r\n'
        end = b"\r\n--soak--\r\n"
        head = self.request_head("/api/separate", "multipart/form-data; boundary=soak",
                                 len(part) + self.slow_seconds + len(end), page=True) + b"\r\n" + part
        return await self.trickle(address, "slow upload (1 byte/s)", head, b"\0" * self.slow_seconds, end)

    async def lying_wav(self, address: str) -> list[Outcome]:
        hours = LYING_WAV_DATA_BYTES / (self.rate * CHANNELS * 2) / 3600
        async with self.client(address) as client:
            return [await post_predict(client, self.url, "hostile", f"WAV header claiming {hours:.1f} h",
                                       audio_body(lying_wav(self.wav, self.rate)), refused)]

    async def fuzzed_wav(self, address: str) -> list[Outcome]:
        """A good WAV with random bytes changed: refused, or separated if it still is a WAV, never a 5xx."""
        async with self.client(address) as client:
            return [await post_predict(client, self.url, "hostile", "fuzzed WAV (4xx or audio)",
                                       audio_body(fuzzed_wav(self.wav, self.fuzz)),
                                       lambda response: refused(response) or audio_answer(response))]

    async def burst(self, address: str) -> list[Outcome]:
        """Good predicts and live sessions all at once from one address: each served or refused."""
        async with self.client(address) as client:
            predicts = [post_predict(client, self.url, "hostile", f"burst: {BURST_REQUESTS} predicts at once",
                                     self.bodies["separate_audio"],
                                     lambda response: refused(response) or good_answer(response, self.rate,
                                                                                       self.frames))
                        for _ in range(BURST_REQUESTS)]
            sessions = [self.live(address, BURST_LIVE_SECONDS, "hostile", f"burst: {BURST_SESSIONS} live at once")
                        for _ in range(BURST_SESSIONS)]
            answers = await asyncio.gather(*predicts, *sessions)
        return answers[:BURST_REQUESTS] + [outcome for outcome, _ in answers[BURST_REQUESTS:]]


async def soak_traffic(clients: SoakClients, args, sample) -> tuple[list[Outcome], list[float], list[dict]]:
    """One of each good request to warm the server, then ``args.soak_minutes`` of good traffic
    with a hostile client every ``args.hostile_seconds``, and ``sample()`` every ``args.sample_seconds``
    and once the traffic has ended: the outcomes, live blocks' round trips, and the samples."""
    outcomes, trips, samples, hostile_tasks = [], [], [], []
    hostile_kinds = clients.hostile_kinds()
    signatures = itertools.cycle(("serving_default", "separate_audio"))
    async with clients.client(GOOD_ADDRESS) as rest:
        warm_up = [await clients.predict(rest, next(signatures)) for _ in range(2)]
        warm_up += await clients.good_upload()
        warm_up.append((await clients.live(GOOD_ADDRESS, LIVE_SECONDS, "good live", "warm-up"))[0])
        if failed := [outcome for outcome in warm_up if not outcome.ok]:
            raise SystemExit(f"the warm-up failed: {failed}")
        started = time.monotonic()
        deadline = started + args.soak_minutes * 60

        async def every(seconds: float, action) -> None:
            """``action()`` again and again until the deadline, each start ``seconds`` after the one
            before, or once that one has ended if later."""
            while (begun := time.monotonic()) < deadline:
                await action()
                await asyncio.sleep(max(0.0, min(begun + seconds, deadline) - time.monotonic()))

        async def good_request():
            outcomes.append(await clients.predict(rest, next(signatures)))

        async def good_upload():
            outcomes.extend(await clients.good_upload())

        async def live_session():
            outcome, session_trips = await clients.live(GOOD_ADDRESS, LIVE_SECONDS, "good live",
                                                        f"{LIVE_SECONDS:g} s, {LIVE_BLOCK_MS} ms blocks")
            outcomes.append(outcome)
            trips.extend(session_trips)

        async def hostile_client():  # not awaited: a slow one lasts longer than the interval
            index = len(hostile_tasks) % len(hostile_kinds)
            hostile_tasks.append(asyncio.create_task(hostile_kinds[index](f"127.0.0.{2 + index}")))

        async def take_sample():
            samples.append({"minute": (time.monotonic() - started) / 60, **sample()})

        await asyncio.gather(every(GOOD_REQUEST_EVERY, good_request), every(GOOD_UPLOAD_EVERY, good_upload),
                             every(LIVE_SECONDS + LIVE_PAUSE_SECONDS, live_session),
                             every(args.hostile_seconds, hostile_client), every(args.sample_seconds, take_sample))
        for answers in await asyncio.gather(*hostile_tasks):
            outcomes.extend(answers)
        await take_sample()
    return outcomes, trips, samples


def run_soak(base: Path, folder: Path, rate: int, args) -> bool:
    tmpdir = folder / "soak-server-tmp"  # the server's TMPDIR: its uploads and page jobs, counted at the end
    tmpdir.mkdir()
    log_path = folder / "soak-server.log"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bombs = pool.submit(decompression_bombs)  # encoded while the server starts
        server, url = start_server(base, log_path, *SOAK_SERVER_FLAGS, tmpdir=tmpdir)
        clients = SoakClients(url, rate, args.slow_seconds, args.seed, bombs.result())
    kinds = clients.hostile_kinds()
    print(f"Soak: {args.soak_minutes:g} min against one server ({' '.join(SOAK_SERVER_FLAGS)}); CPU: "
          f"{this_cpu().describe()}\n"
          f"  good, from {GOOD_ADDRESS}: a predict every {GOOD_REQUEST_EVERY:g} s (serving_default as JSON and "
          f"separate_audio as a b64 WAV in turn, of a {SOAK_CLIP_SECONDS:g} s stereo clip), a page upload of it "
          f"every {GOOD_UPLOAD_EVERY:g} s followed to its end, a {LIVE_SECONDS:g} s live session every "
          f"{LIVE_SECONDS + LIVE_PAUSE_SECONDS:g} s ({LIVE_BLOCK_MS} ms blocks paced in real time)\n"
          f"  hostile: a client every {args.hostile_seconds:g} s, the {len(kinds)} kinds in turn, each from its own "
          f"address (127.0.0.2-127.0.0.{1 + len(kinds)}); slow ones send a byte a second for up to "
          f"{args.slow_seconds} s")
    try:
        outcomes, trips, samples = asyncio.run(
            soak_traffic(clients, args, lambda: server_sample(server.pid, tmpdir)))
        idle_files = files_under(tmpdir)  # every job has ended: only the kept jobs' results may be there
        alive = server.poll() is None
    finally:
        stop_server(server)
    left = [str(path.relative_to(tmpdir)) for path in sorted(tmpdir.rglob("*"))]
    stray = [str(path.relative_to(tmpdir)) for path in idle_files if not job_result(path, tmpdir)]
    errors = [line for line in log_path.read_text(errors="replace").splitlines()
              if " ERROR " in line or line.startswith("Traceback")]
    good_failures, hostile_not_refused = verdict(outcomes)
    slopes = slopes_per_hour(samples)
    trip_ms = np.percentile(np.array(trips) * 1000, [50, 99]) if trips else [float("nan")] * 2

    for line in mixed_table(outcomes, SOAK_CATEGORIES):
        print(line)
    print(f"  live blocks answered: {len(trips)}, round trip p50 {trip_ms[0]:.1f} ms, p99 {trip_ms[1]:.1f} ms")
    print(f"  good requests, uploads and live sessions: {sum(o.category.startswith('good') for o in outcomes)}, "
          f"failures {good_failures}   hostile: {sum(not o.category.startswith('good') for o in outcomes)}, "
          f"not refused {hostile_not_refused}")
    print(f"  the server, read every {args.sample_seconds:g} s:")
    print("    minute   RSS MB   open files   threads   temp files")
    for sample in samples:
        print(f"    {sample['minute']:6.1f} {sample['rss_mb']:8.0f} {sample['open_files']:12d} {sample['threads']:9d} "
              f"{sample['temp_files']:12d}")
    print(f"  slope per hour (least squares, {len(samples)} samples): RSS {slopes['rss_mb']:+.0f} MB, open files "
          f"{slopes['open_files']:+.1f}, threads {slopes['threads']:+.1f}, temp files {slopes['temp_files']:+.1f}")
    print(f"  temp files in the server's TMPDIR: once the traffic ended {len(idle_files)} "
          f"({len(idle_files) - len(stray)} results of kept page jobs, {len(stray)} others"
          f"{': ' + ', '.join(stray[:5]) if stray else ''}); "
          f"after it stopped {len(left)}{': ' + ', '.join(left[:5]) if left else ''}")
    print(f"  server log: {len(errors)} errors{': ' + errors[0] if errors else ''}; "
          f"the server {'ran to the end' if alive else 'EXITED'}")
    ok = good_failures == 0 and hostile_not_refused == 0 and not stray and not left and not errors and alive
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": this_cpu().describe(), "minutes": args.soak_minutes, "server_flags": list(SOAK_SERVER_FLAGS),
            "kinds": kind_figures(outcomes, SOAK_CATEGORIES),
            "live_round_trip_ms": {"n": len(trips), "p50": float(trip_ms[0]), "p99": float(trip_ms[1])},
            "good_failures": good_failures, "hostile_not_refused": hostile_not_refused,
            "samples": samples, "slopes_per_hour": slopes,
            "temp_files": {"after_traffic": len(idle_files), "stray_after_traffic": stray, "left_after_stop": left},
            "server_errors": errors, "server_ran_to_the_end": alive, "ok": ok}, indent=1))
    return ok


# --- the command ------------------------------------------------------------------------------


def phase_list(text: str) -> list[str]:
    phases = [phase.strip() for phase in text.split(",") if phase.strip()]
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown or not phases:
        raise argparse.ArgumentTypeError(f"choose from {','.join(PHASES)}, not {text!r}")
    return [phase for phase in PHASES if phase in phases]


def count(least: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(PRETRAINED_MODEL), help="run directory to export (default: shipped)")
    parser.add_argument("--model-base-path", type=Path,
                        help="serve this export instead (a folder of numbered versions, as export.py writes them)")
    parser.add_argument("--phases", type=phase_list, default=list(DEFAULT_PHASES),
                        help=f"comma-separated, from {','.join(PHASES)} (default: {','.join(DEFAULT_PHASES)})")
    parser.add_argument("--requests", type=count(1), default=20, help="latency: timed requests per path (default: 20)")
    parser.add_argument("--load-requests", type=count(1), default=500, help="load: requests (default: 500)")
    parser.add_argument("--concurrency", type=count(1), default=16,
                        help="load and mixed: requests in flight (default: 16)")
    parser.add_argument("--load-seconds", type=float, default=0.5, help="load: clip length (default: 0.5)")
    parser.add_argument("--mixed-requests", type=count(20), default=500,
                        help="mixed: predict requests, good and bad (default: 500)")
    parser.add_argument("--mixed-seconds", type=float, default=1.0,
                        help="mixed: length of the good requests' and uploads' clip (default: 1)")
    parser.add_argument("--uploads", type=count(0), default=10,
                        help="mixed: good page uploads, besides the 2 hostile ones (default: 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="mixed: seed of the requests' order; soak: of the fuzzed WAVs (default: 0)")
    parser.add_argument("--soak-minutes", type=float, default=20, help="soak: how long (default: 20)")
    parser.add_argument("--sample-seconds", type=float, default=60,
                        help="soak: how often the server's RSS, open files, threads and temp files are read "
                             "(default: 60)")
    parser.add_argument("--hostile-seconds", type=float, default=10,
                        help="soak: a hostile client starts this often (default: 10)")
    parser.add_argument("--slow-seconds", type=count(1), default=60,
                        help="soak: how long a slow client sends a byte a second, unless the server stops it "
                             "first (default: 60)")
    parser.add_argument("--json", type=Path, help="soak: write its figures here")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.mixed_seconds <= 10 or not 0 < args.load_seconds <= 60:
        parser.error("--mixed-seconds must be in (0, 10] (its requests must stay under the mixed phase's "
                     "limits) and --load-seconds in (0, 60]")
    if min(args.soak_minutes, args.sample_seconds, args.hostile_seconds) <= 0:
        parser.error("--soak-minutes, --sample-seconds and --hostile-seconds must be above 0")

    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        folder = Path(folder)
        if args.model_base_path:
            base = args.model_base_path
            numbered = [path for path in base.iterdir() if path.is_dir() and path.name.isdigit()]
            if not numbered:
                parser.error(f"--model-base-path {base} holds no numbered version folder")
            version = max(numbered, key=lambda path: int(path.name))
        else:
            base = folder / "wavesep"
            version = export_run(args.model, base, log=lambda message: None)
        rate = ModelFacts.read(version).sample_rate
        print(f"{os.cpu_count()} CPU cores; phases: {','.join(args.phases)}")

        if "latency" in args.phases or "load" in args.phases:
            # --concurrency clients at once, all from 127.0.0.1.
            server, url = start_server(base, folder / "server.log", "--max-per-client", str(args.concurrency))
            try:
                predict = f"{url}/v1/models/wavesep:predict"
                if "latency" in args.phases:
                    latency_phase(version, rate, predict, args)
                if "load" in args.phases:
                    short = wav_bytes(clip(args.load_seconds, rate), rate)
                    body = {"signature_name": "separate_audio",
                            "instances": [{"b64": base64.b64encode(short).decode()}]}
                    latencies, failures, wall = asyncio.run(load_test(predict, body, args.load_requests,
                                                                      args.concurrency))
                    print(f"Load: {args.load_requests} separate_audio requests of a {args.load_seconds:g} s stereo "
                          f"clip, {args.concurrency} in flight:")
                    print(f"  failures {failures}   {args.load_requests / wall:.1f} req/s   "
                          f"p50 {np.percentile(latencies, 50) * 1000:.0f} ms   "
                          f"p99 {np.percentile(latencies, 99) * 1000:.0f} ms"
                          f"   server peak RSS {peak_rss_mb(server.pid):.0f} MB")
                    ok &= failures == 0
            finally:
                stop_server(server)
        if "mixed" in args.phases:
            ok &= run_mixed(base, folder, rate, args)
        if "soak" in args.phases:
            ok &= run_soak(base, folder, rate, args)
    return 0 if ok else 1


def latency_phase(version: Path, rate: int, predict: str, args) -> None:
    loaded = tf.saved_model.load(str(version))
    mix = clip(10, rate)
    wav = wav_bytes(mix, rate)
    with httpx.Client(timeout=300) as client:
        def rest(body):
            content = json.dumps(body).encode()

            def call():
                client.post(predict, content=content).raise_for_status()
            return call

        cases = [
            ("serving_default, JSON",
             lambda: loaded.signatures["serving_default"](waveform=tf.constant(mix[None])),
             rest({"inputs": {"waveform": [mix.tolist()]}})),
            ("separate_audio, b64 WAV",
             lambda: loaded.signatures["separate_audio"](audio_bytes=tf.constant([wav])),
             rest({"signature_name": "separate_audio",
                   "instances": [{"b64": base64.b64encode(wav).decode()}]})),
        ]
        print(f"10 s stereo clip at {rate} Hz, {args.requests} requests one at a time "
              f"(REST over in-process as ratios), {os.cpu_count()} CPU cores:")
        for name, in_process, through_rest in cases:
            reference = timed(in_process, args.requests)
            print(row(f"{name}, in process", reference))
            print(row(f"{name}, REST", timed(through_rest, args.requests), reference))


if __name__ == "__main__":
    sys.exit(main())
