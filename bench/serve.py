"""What the REST server costs over calling the model in process, how it holds up under
load, and whether it stays correct when good and hostile traffic arrive together,
measured in one run.

    python -m bench.serve                       # all three phases, the defaults below
    python -m bench.serve --phases mixed        # only the mixed-traffic phase
    python -m bench.serve --phases latency,load # the phases of earlier versions

Exports the shipped model (or --model) to a temporary folder, or serves an existing
export with --model-base-path, and starts ``python -m serve`` on 127.0.0.1. --phases
picks the phases, in this order (default: latency,load,mixed):
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

Exits 1 if a load request fails, a good mixed request is not answered 200 with both
sources at its length, a good upload does not end done with its results, or a bad
request (or hostile upload's result) is answered anything but a 4xx.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
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

from data_pipeline.audio import AudioError  # noqa: E402
from runtime.export import export_run  # noqa: E402
from runtime.loading import PRETRAINED_MODEL  # noqa: E402
from runtime.model_facts import ModelFacts  # noqa: E402
from serve.client import wav_bytes  # noqa: E402
from serve.upload import wav_header  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
PHASES = ("latency", "load", "mixed")
# The mixed phase's server limits: small, so that refusing a body over them is cheap to provoke.
MIXED_MAX_REQUEST_MB, MIXED_MAX_SONG_MINUTES = 2, 1
MALFORMED_SHARE, TOO_BIG_SHARE = 0.10, 0.05
OVER_LONG_RATE = 100  # Hz: 1.5 times the song limit fits in 18 kB
HOSTILE_FLAC_MINUTES = 10  # silent: 100 kB, 106 MB if it were decoded to float32


def clip(seconds: float, rate: int) -> np.ndarray:
    """Tones and noise below full scale, stereo."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal((len(t), 2))
    return (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * noise).astype(np.float32)


def start_server(base: Path, log_path: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "serve", "--model-base-path", str(base), "--model-name",
                                    "wavesep", "--port", str(port), *flags], cwd=REPOSITORY, stdout=log,
                                   stderr=subprocess.STDOUT)
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
    predict = f"{url}/v1/models/wavesep:predict"
    pending = iter(requests)
    outcomes: list[Outcome] = []
    answered = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal answered
        for request in pending:  # one shared iterator: each client takes the next request
            started = time.perf_counter()
            try:
                response = await client.post(predict, content=request.body,
                                             headers={"Content-Type": "application/json"})
                status = str(response.status_code)
                ok = (good_answer(response, rate, frames) if request.category == "good"
                      else 400 <= response.status_code < 500)
                if request.category == "good" and response.status_code == 200 and not ok:
                    status = "200 (wrong answer)"
            except httpx.HTTPError as error:
                status, ok = f"transport error: {type(error).__name__}", False
            outcomes.append(Outcome(request.category, request.kind, status, time.perf_counter() - started, ok))
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


def mixed_table(outcomes: list[Outcome]) -> list[str]:
    """One line per category and kind: count, answers by status, p50/p99, and "FAILED" where an
    answer was not the one expected."""
    lines = [f"  {'category':<15} {'kind':<38} {'n':>4}   {'p50 ms':>8} {'p99 ms':>8}   answers (status: count)"]
    kinds = list(dict.fromkeys((o.category, o.kind) for o in outcomes))
    for category in ("good", "malformed", "too big", "good upload", "hostile upload"):
        of_category = [k for c, k in kinds if c == category]
        for kind in of_category + (["(all)"] if len(of_category) > 1 else []):
            rows = [o for o in outcomes if o.category == category and kind in (o.kind, "(all)")]
            times = np.array([o.seconds for o in rows]) * 1000
            statuses = ", ".join(f"{status}: {n}" for status, n in sorted(Counter(o.status for o in rows).items()))
            failed = sum(not o.ok for o in rows)
            lines.append(f"  {category:<15} {kind:<38} {len(rows):>4}   {np.percentile(times, 50):8.0f} "
                         f"{np.percentile(times, 99):8.0f}   {statuses}" + (f"   FAILED {failed}" if failed else ""))
    return lines


def verdict(outcomes: list[Outcome]) -> tuple[int, int]:
    """Good requests and uploads that failed; bad ones (hostile uploads included) not answered 4xx."""
    return (sum(not o.ok for o in outcomes if o.category in ("good", "good upload")),
            sum(not o.ok for o in outcomes if o.category in ("malformed", "too big", "hostile upload")))


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
    parser.add_argument("--phases", type=phase_list, default=list(PHASES),
                        help=f"comma-separated, from {','.join(PHASES)} (default: all three)")
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
    parser.add_argument("--seed", type=int, default=0, help="mixed: seed of the requests' order (default: 0)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.mixed_seconds <= 10 or not 0 < args.load_seconds <= 60:
        parser.error("--mixed-seconds must be in (0, 10] (its requests must stay under the mixed phase's "
                     "limits) and --load-seconds in (0, 60]")

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
