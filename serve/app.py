"""The HTTP side: TensorFlow Serving's REST API v1 under ``/v1/``, the web page at ``/``
with its job API under ``/api/`` (the jobs themselves in serve/jobs.py), and live
separation over a WebSocket at ``/v1/models/NAME:stream`` (serve/live.py, with its own
limits).

Model calls run in worker threads, so the event loop keeps answering (status, progress,
other uploads) while a model computes, and at most ``max_concurrent`` run at once,
REST requests and page jobs alike (a page job's decoding included): the rest wait their
turn instead of thrashing the cores or the memory, at most ``max_waiting`` of them and
``max_per_client`` from one address; further ones are answered 429 before their bodies
are read (serve/limits.py). Request bodies over ``max_request_bytes`` are refused with
413 before they are read whole, and bodies slower than ``read_timeout`` seconds plus one
per ``min_body_rate`` bytes with 408; songs over ``max_song_seconds`` with 400 before
they are decoded (serve/upload.py). Every answer but success is TF Serving's
``{"error": "..."}``:
4xx for the client's mistakes (Starlette's own refusals included), 500 for the server's.
One line per request goes to the ``serve.access`` log. Requests for another host, and
those of other sites' pages, are refused before anything else (serve/origins.py).
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from data_pipeline.audio import AudioError
from models.architecture import SOURCES
from serve import rest
from serve.jobs import JobRunner, JobStore
from serve.limits import BodyLimit, WorkQueue, client_address
from serve.live import LiveLimits, LiveSessions
from serve.origins import OriginGuard
from serve.repository import ModelRepository
from serve.rest import RestError
from serve.upload import UploadLimits, check_wav_bytes

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


def run_predict(version, body: bytes, limits: UploadLimits) -> bytes:
    """A predict request from JSON body to JSON answer (in a worker thread)."""
    document = rest.parse_body(body)
    signature = rest.signature_name(document)
    inputs, row = rest.request_inputs(document, version.input_specs(signature))
    check_duration(version, inputs, limits)
    return rest.response_body(version.call(signature, inputs), row)


def check_duration(version, inputs: dict, limits: UploadLimits) -> None:
    """Songs longer than the limit are refused before the graph runs: WAV bytes by their
    headers, waveforms at the model's rate by their length."""
    try:
        for name, array in inputs.items():
            if array.dtype == object:
                for index, data in enumerate(array.flat):
                    check_wav_bytes(data, f"input '{name}' item {index}", limits)
            elif version.facts is not None and version.facts.sample_rate and array.ndim == 3:
                limits.check_header(f"input '{name}'", array.shape[1] / version.facts.sample_rate,
                                    version.facts.sample_rate, array.shape[2])
    except AudioError as error:
        raise RestError(400, str(error)) from None


def create_app(repository: ModelRepository, max_request_bytes: int = 64 * 2 ** 20, max_concurrent: int = 2,
               max_jobs: int = 8, max_waiting: int = 16, max_song_seconds: float = 600.0,
               live_limits: LiveLimits = LiveLimits(), allowed_hosts: Iterable[str] = (),
               allowed_origins: Iterable[str] = (), read_timeout: float = 10.0, min_body_rate: float = 32 * 1024,
               max_per_client: int = 4) -> Starlette:
    """``allowed_hosts``: the names the server answers to besides the loopback ones (the address
    it listens on among them); ``allowed_origins``: pages that may call it besides its own
    (serve/origins.py). ``read_timeout``, ``min_body_rate`` (bytes/s) and ``max_per_client``:
    serve/limits.py."""
    work = WorkQueue(max_concurrent, max_waiting, max_per_client)
    live = LiveSessions(repository, live_limits)
    limits = UploadLimits(max_song_seconds)
    jobs = JobStore(max_jobs)
    runner = JobRunner(repository, work.slots, limits)

    async def rest_api(request: Request) -> Response:
        path, method = request.url.path, request.method
        if method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
            version = repository.get(match[1], int(match[2]) if match[2] else None)
            release = work.enter(client_address(request))
            try:
                body = await request.body()
                async with work.slots:
                    content = await run_in_threadpool(run_predict, version, body, limits)
            finally:
                release()
            return Response(content, media_type="application/json")
        if method == "GET" and (match := STATUS_PATH.fullmatch(path)):
            number = int(match[2]) if match[2] else None
            if match[3]:
                version = repository.get(match[1], number)
                facts = version.facts.to_dict() if version.facts is not None else None
                return JSONResponse(rest.metadata_json(match[1], version.number, version.signature_defs, facts))
            return JSONResponse(rest.status_json(repository.states(match[1], number)))
        raise RestError(400, f"Malformed request: {method} {path}")

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def model(request: Request) -> Response:
        version = repository.get(repository.name)
        facts = version.facts.to_dict() if version.facts is not None else {}
        return JSONResponse({"name": repository.name, "version": version.number, "facts": facts})

    async def separate(request: Request) -> Response:
        release = work.enter(client_address(request))  # before the upload is read
        try:
            async with request.form(max_files=1, max_fields=0) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile) or not upload.filename:
                    raise RestError(400, "send the song as the multipart form field 'file'")
                job = jobs.add(Path(upload.filename).name[:200])
                with job.upload.open("wb") as file:
                    await run_in_threadpool(shutil.copyfileobj, upload.file, file)
            runner.start(job, release)
        except BaseException:
            release()
            raise
        return JSONResponse(job.json(), status_code=202)

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
              WebSocketRoute("/v1/{path:path}", live.serve),
              Route("/", page), Route("/api/model", model), Route("/api/separate", separate, methods=["POST"]),
              Route("/api/jobs/{job_id}", job_status), Route("/api/jobs/{job_id}/{source}.wav", job_result),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    middleware = [Middleware(AccessLog), Middleware(OriginGuard, hosts=allowed_hosts, origins=allowed_origins),
                  Middleware(BodyLimit, max_bytes=max_request_bytes, read_timeout=read_timeout,
                             min_rate=min_body_rate)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={RestError: refused, HTTPException: http_error, Exception: internal_error})
