"""The HTTP side: TensorFlow Serving's REST API v1 under ``/v1/``, the web page at ``/``
with its job API under ``/api/``.

Model calls run in worker threads, so the event loop keeps answering (status, progress,
other uploads) while a model computes, and at most ``max_concurrent`` run at once,
REST requests and page jobs alike: the rest wait their turn instead of thrashing the
cores or the memory. Request bodies over ``max_request_bytes`` are refused with 413
before they are read whole. Every answer but success is TF Serving's ``{"error": "..."}``:
4xx for the client's mistakes (Starlette's own refusals included), 500 for the server's.
One line per request goes to the ``serve.access`` log.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from data_pipeline.audio import SUPPORTED_EXTENSIONS, AudioError, load_audio, write_wav
from data_pipeline.crops import SOURCES
from serve import rest
from serve.repository import ModelRepository
from serve.rest import RestError

log = logging.getLogger("serve")
access_log = logging.getLogger("serve.access")
STATIC = Path(__file__).resolve().parent / "static"
# TF Serving's paths (model_servers/http_rest_api_util.cc), without version labels.
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata)?", re.IGNORECASE)


class AccessLog:
    """ASGI middleware: one line per request with client, method, path, status and latency in ms."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # 500 unless a response starts

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            client = "%s:%d" % tuple(scope["client"]) if scope.get("client") else "-"
            access_log.info('%s "%s %s" %d %.1f ms', client, scope["method"], scope["path"], status,
                            (time.perf_counter() - started) * 1000)


class BodyLimit:
    """ASGI middleware: refuses bodies over ``max_bytes`` with 413 in TF Serving's JSON shape, by
    their Content-Length before reading them, or once a chunked body passes the limit.
    (Starlette's own ``max_body_size`` answers in plain text.)"""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body larger than the server's limit of {self.max_bytes / 2 ** 20:g} MB"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"error": message}, 413)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                raise RestError(413, message)  # answered by the app's RestError handler
            return event

        await self.app(scope, limited_receive, send)


@dataclass
class Job:
    """A song separated for the web page; its files live in ``folder`` until the job is evicted."""

    id: str
    filename: str
    folder: Path
    state: str = "queued"  # queued -> decoding -> waiting (for the model) -> separating -> done | error
    progress: float = 0.0  # fraction of the song separated
    error: str = ""
    facts: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)
    task: asyncio.Task | None = None

    def json(self) -> dict:
        results = {s: f"/api/jobs/{self.id}/{s}.wav" for s in SOURCES} if self.state == "done" else {}
        return {"id": self.id, "filename": self.filename, "state": self.state, "progress": round(self.progress, 4),
                "error": self.error, **self.facts, "peaks": self.peaks, "results": results}


class JobStore:
    """The newest ``max_jobs`` jobs; a new one evicts the oldest finished job, with its files."""

    def __init__(self, max_jobs: int):
        self.max_jobs = max_jobs
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.root = Path(tempfile.mkdtemp(prefix="wavesep-jobs-"))

    def add(self, filename: str) -> Job:
        if len(self.jobs) >= self.max_jobs:
            finished = [j for j in self.jobs.values() if j.state in ("done", "error")]
            if not finished:
                raise RestError(429, f"{self.max_jobs} songs are being separated; try again when one is done")
            shutil.rmtree(self.jobs.pop(finished[0].id).folder, ignore_errors=True)
        job = Job(uuid.uuid4().hex, filename, self.root / uuid.uuid4().hex)
        job.folder.mkdir()
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise RestError(404, f"no job {job_id} (jobs are kept for the newest {self.max_jobs} songs)")
        return self.jobs[job_id]

    def close(self) -> None:
        for job in self.jobs.values():
            if job.task is not None:
                job.task.cancel()
        shutil.rmtree(self.root, ignore_errors=True)


def decode_upload(path: Path, filename: str) -> tuple[np.ndarray, int]:
    """An uploaded song as float32 ``[time, channels]`` at its own rate: WAV/FLAC/MP3/OGG through
    data_pipeline.audio, any other format ffmpeg knows (AAC, M4A, Opus, a video's sound) converted first."""
    if path.suffix not in SUPPORTED_EXTENSIONS:
        converted = path.with_suffix(".wav")
        try:
            result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-c:a", "pcm_f32le",
                                     str(converted)], capture_output=True, text=True)
        except FileNotFoundError:
            raise AudioError(filename, "not WAV/FLAC/MP3/OGG, and ffmpeg is not installed to convert it") from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise AudioError(filename, f"ffmpeg cannot decode it ({reason})")
        path = converted
    try:
        return load_audio(path)
    except AudioError as error:
        raise AudioError(filename, error.reason) from None


def envelope(audio: np.ndarray, bins: int = 600) -> dict:
    """Per-bin minimum and maximum of the channel mean: what the page draws as a waveform."""
    mono = audio.mean(axis=1, dtype=np.float64)
    per_bin = -(-len(mono) // bins)
    table = np.pad(mono, (0, per_bin * bins - len(mono))).reshape(bins, per_bin)
    return {"min": np.round(table.min(axis=1), 4).tolist(), "max": np.round(table.max(axis=1), 4).tolist()}


def run_predict(version, body: bytes) -> bytes:
    """A predict request from JSON body to JSON answer (in a worker thread)."""
    document = rest.parse_body(body)
    signature = rest.signature_name(document)
    inputs, row = rest.request_inputs(document, version.input_specs(signature))
    return rest.response_body(version.call(signature, inputs), row)


def create_app(repository: ModelRepository, max_request_bytes: int = 64 * 2 ** 20, max_concurrent: int = 2,
               max_jobs: int = 8) -> Starlette:
    slots = asyncio.Semaphore(max_concurrent)
    jobs = JobStore(max_jobs)

    async def rest_api(request: Request) -> Response:
        path, method = request.url.path, request.method
        if method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
            version = repository.get(match[1], int(match[2]) if match[2] else None)
            body = await request.body()
            async with slots:
                content = await run_in_threadpool(run_predict, version, body)
            return Response(content, media_type="application/json")
        if method == "GET" and (match := STATUS_PATH.fullmatch(path)):
            number = int(match[2]) if match[2] else None
            if match[3]:
                version = repository.get(match[1], number)
                return JSONResponse(rest.metadata_json(match[1], version.number, version.signature_defs))
            return JSONResponse(rest.status_json(repository.states(match[1], number)))
        raise RestError(400, f"Malformed request: {method} {path}")

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def model(request: Request) -> Response:
        version = repository.get(repository.name)
        return JSONResponse({"name": repository.name, "version": version.number, "facts": version.facts})

    async def separate(request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=0)
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise RestError(400, "send the song as the multipart form field 'file'")
        job = jobs.add(Path(upload.filename).name)
        path = job.folder / f"upload{Path(upload.filename).suffix.lower()}"
        with path.open("wb") as file:
            await run_in_threadpool(shutil.copyfileobj, upload.file, file)
        await form.close()
        job.task = asyncio.create_task(run_job(job, path))
        return JSONResponse(job.json(), status_code=202)

    async def run_job(job: Job, path: Path) -> None:
        from inference import separate_song  # imports Keras and the models: only once a song is sent

        try:
            job.state = "decoding"
            audio, rate = await run_in_threadpool(decode_upload, path, job.filename)
            job.state = "waiting"
            version = repository.get(repository.name)
            separator = await run_in_threadpool(version.separator)
            job.facts = {"sample_rate": rate, "channels": audio.shape[1], "seconds": len(audio) / rate,
                         "version": version.number}
            model_samples = len(audio) * separator.sample_rate / rate
            done = 0

            def progress(samples: int) -> None:
                nonlocal done
                done += samples
                job.progress = min(1.0, done / model_samples)

            async with slots:
                job.state = "separating"
                # 10 s chunks rather than separate.py's 30: the page's progress bar moves more often.
                estimates = await run_in_threadpool(separate_song, separator, audio, rate, chunk_seconds=10,
                                                    progress=progress)
            for source, estimate in estimates.items():
                await run_in_threadpool(write_wav, job.folder / f"{source}.wav", estimate, rate)
                job.peaks[source] = envelope(estimate)
            job.state, job.progress = "done", 1.0
        except (AudioError, RestError) as error:
            job.state, job.error = "error", str(error)
        except Exception:  # a page job must end with a state the page can show
            log.exception("job %s (%s) failed", job.id, job.filename)
            job.state, job.error = "error", "separation failed; the server log has the details"
        finally:
            path.unlink(missing_ok=True)

    async def job_status(request: Request) -> Response:
        return JSONResponse(jobs.get(request.path_params["job_id"]).json())

    async def job_result(request: Request) -> Response:
        job, source = jobs.get(request.path_params["job_id"]), request.path_params["source"]
        if source not in SOURCES or job.state != "done":
            raise RestError(404, f"job {job.id} has no {source}.wav" + ("" if job.state == "done" else " yet"))
        return FileResponse(job.folder / f"{source}.wav", media_type="audio/wav")

    async def refused(request: Request, error: RestError) -> Response:
        return JSONResponse({"error": error.message}, error.status)

    async def http_error(request: Request, error: HTTPException) -> Response:
        """Starlette's own refusals (unknown path, bad form) in TF Serving's shape."""
        return JSONResponse({"error": error.detail}, error.status_code, headers=error.headers)

    async def internal_error(request: Request, error: Exception) -> Response:  # uvicorn logs the traceback
        return JSONResponse({"error": f"internal error: {error}"}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        repository.start()
        try:
            yield
        finally:
            repository.stop()
            jobs.close()

    routes = [Route("/v1/{path:path}", rest_api, methods=["GET", "POST"]),
              Route("/", page), Route("/api/model", model), Route("/api/separate", separate, methods=["POST"]),
              Route("/api/jobs/{job_id}", job_status), Route("/api/jobs/{job_id}/{source}.wav", job_result),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    middleware = [Middleware(AccessLog), Middleware(BodyLimit, max_bytes=max_request_bytes)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={RestError: refused, HTTPException: http_error, Exception: internal_error})
