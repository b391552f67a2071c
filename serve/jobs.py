"""The web page's songs: each upload becomes a ``Job`` in the ``JobStore`` (the newest
``max_jobs``, with their files), and the ``JobRunner`` separates it in the background:
it waits for a model slot (the REST queue's), decodes, separates in chunks while
counting its progress, then writes each source as a WAV with the waveform the page draws.
Nothing here knows HTTP: serve/app.py admits an upload and hands it over."""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

from data_pipeline.audio import AudioError, write_wav
from models.architecture import SOURCES
from serve.repository import ModelRepository
from serve.rest import RestError
from serve.upload import UploadLimits, decode_upload

log = logging.getLogger("serve")
# Rather than separate.py's 30 s: the page's progress bar moves more often.
CHUNK_SECONDS = 10


@dataclass
class Job:
    """A song separated for the web page; its files live in ``folder`` until the job is evicted."""

    id: str
    filename: str
    folder: Path
    state: str = "queued"  # queued -> waiting (for the model) -> decoding -> separating -> done | error
    progress: float = 0.0  # fraction of the song separated
    error: str = ""
    facts: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)
    task: asyncio.Task | None = None

    @property
    def upload(self) -> Path:
        """Where the uploaded song waits for the runner, under our own name without the upload's
        suffix: the content alone says what it is."""
        return self.folder / "upload"

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


def envelope(audio: np.ndarray, bins: int = 600) -> dict:
    """Per-bin minimum and maximum of the channel mean: what the page draws as a waveform."""
    mono = audio.mean(axis=1, dtype=np.float64)
    per_bin = -(-len(mono) // bins)
    table = np.pad(mono, (0, per_bin * bins - len(mono))).reshape(bins, per_bin)
    return {"min": np.round(table.min(axis=1), 4).tolist(), "max": np.round(table.max(axis=1), 4).tolist()}


class JobRunner:
    """Separates jobs with the repository's newest version, one model slot of ``slots`` each
    (decoding included), within the upload ``limits``."""

    def __init__(self, repository: ModelRepository, slots: asyncio.Semaphore, limits: UploadLimits):
        self.repository, self.slots, self.limits = repository, slots, limits

    def start(self, job: Job, release: Callable[[], None]) -> None:
        """Runs ``job`` in the background; ``release`` (its place in the queue) is called once it ends."""
        job.task = asyncio.create_task(self.run(job, release))

    async def run(self, job: Job, release: Callable[[], None]) -> None:
        """The whole job; however it ends, in a state the page can show."""
        from runtime.chunking import separate_song  # imports Keras and the models: only once a song is sent

        try:
            job.state = "waiting"
            async with self.slots:
                job.state = "decoding"
                audio, rate = await run_in_threadpool(decode_upload, job.upload, job.filename, self.limits)
                version = self.repository.get(self.repository.name)
                separator = await run_in_threadpool(version.separator)
                job.facts = {"sample_rate": rate, "channels": audio.shape[1], "seconds": len(audio) / rate,
                             "version": version.number}
                job.state = "separating"
                # The export's own Wiener post-filter (its facts), as its graph runs it.
                estimates = await run_in_threadpool(separate_song, separator, audio, rate, chunk_seconds=CHUNK_SECONDS,
                                                    wiener=separator.wiener,
                                                    progress=progress_counter(job, len(audio) * separator.sample_rate
                                                                              / rate))
            del audio
            for source, estimate in estimates.items():  # file writing: no model slot needed
                await run_in_threadpool(write_wav, job.folder / f"{source}.wav", estimate, rate)
                job.peaks[source] = envelope(estimate)
            job.state, job.progress = "done", 1.0
        except (AudioError, RestError) as error:
            job.state, job.error = "error", str(error)
        except Exception:  # a page job must end with a state the page can show
            log.exception("job %s (%s) failed", job.id, job.filename)
            job.state, job.error = "error", "separation failed; the server log has the details"
        finally:
            job.upload.unlink(missing_ok=True)
            release()


def progress_counter(job: Job, model_samples: float) -> Callable[[int], None]:
    """``separate_song``'s progress callback: adds each chunk's samples (at the model's rate) to
    ``job.progress``, as a fraction of the song's ``model_samples``."""
    done = 0

    def count(samples: int) -> None:
        nonlocal done
        done += samples
        job.progress = min(1.0, done / model_samples)
    return count
