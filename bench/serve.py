"""What the REST server costs over calling the model in process, and how it holds up
under load, measured side by side in one run.

    python -m bench.serve          # --requests 20 --load-requests 500 --concurrency 16

Exports the shipped model to a temporary folder and starts ``python -m serve`` on
127.0.0.1, then:
  1. latency: a 10 s stereo clip at the model's rate, one request at a time, through
     serving_default (JSON float lists in and out) and separate_audio (a 16-bit WAV as
     {"b64": ...} in and out), against the same SavedModel signatures called in this
     process: p50 and p99 in ms, requests/s, and REST over in-process as ratios. The REST
     times run from sending the encoded request to receiving the whole answer: what the
     server adds, without the client's own JSON work (which depends on its language).
  2. load: --load-requests separate_audio requests of a short clip from --concurrency
     clients at once (the server runs --max-concurrent 2 model calls, the rest wait):
     failures (must be 0), requests/s, p50/p99, and the server's peak RSS.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export import export_run  # noqa: E402
from inference import MODEL_FACTS_FILE, PRETRAINED_MODEL  # noqa: E402
from serve.client import wav_bytes  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]


def clip(seconds: float, rate: int) -> np.ndarray:
    """Tones and noise below full scale, stereo."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal((len(t), 2))
    return (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * noise).astype(np.float32)


def start_server(base: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "serve", "--model-base-path", str(base), "--model-name",
                                    "wavesep", "--port", str(port)], cwd=REPOSITORY, stdout=log,
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(PRETRAINED_MODEL), help="run directory to export (default: shipped)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per path (default: 20)")
    parser.add_argument("--load-requests", type=int, default=500, help="requests of the load test (default: 500)")
    parser.add_argument("--concurrency", type=int, default=16, help="load-test requests in flight (default: 16)")
    parser.add_argument("--load-seconds", type=float, default=0.5, help="clip length of the load test (default: 0.5)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        base = Path(folder) / "wavesep"
        version = export_run(args.model, base, log=lambda message: None)
        server, url = start_server(base, Path(folder) / "server.log")
        try:
            loaded = tf.saved_model.load(str(version))
            rate = json.loads((version / "assets" / MODEL_FACTS_FILE).read_text())["sample_rate"]
            predict = f"{url}/v1/models/wavesep:predict"
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

            short = wav_bytes(clip(args.load_seconds, rate), rate)
            body = {"signature_name": "separate_audio", "instances": [{"b64": base64.b64encode(short).decode()}]}
            latencies, failures, wall = asyncio.run(load_test(predict, body, args.load_requests, args.concurrency))
            print(f"Load: {args.load_requests} separate_audio requests of a {args.load_seconds:g} s stereo clip, "
                  f"{args.concurrency} in flight:")
            print(f"  failures {failures}   {args.load_requests / wall:.1f} req/s   "
                  f"p50 {np.percentile(latencies, 50) * 1000:.0f} ms   p99 {np.percentile(latencies, 99) * 1000:.0f} ms"
                  f"   server peak RSS {peak_rss_mb(server.pid):.0f} MB")
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
