"""serve/jobs.py without the HTTP app: a page job waits for a model slot, separates a song
with a tiny random Wave-U-Net (tests/helpers.py) while its progress climbs, and ends
done with the same sources as separate_song; a file that is not audio ends in error;
the store keeps the newest jobs."""
import asyncio
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from models.architecture import SOURCES
from serve.jobs import CHUNK_SECONDS, JobRunner, JobStore
from serve.rest import RestError
from serve.upload import UploadLimits

SONG_SECONDS = 2.5 * CHUNK_SECONDS  # three chunks: the progress moves twice before the end


@pytest.fixture(scope="module")
def separator(tmp_path_factory):
    from runtime.loading import load_separator
    from tests.helpers import make_run_dir

    return load_separator(make_run_dir(tmp_path_factory.mktemp("run") / "tiny"))


def repository_of(separator) -> SimpleNamespace:
    """What the runner asks of a ModelRepository: its name, and a version with a number and a Separator."""
    version = SimpleNamespace(number=3, separator=lambda: separator)
    return SimpleNamespace(name="tiny", get=lambda name: version)


class Releases:
    """Counts how often a job gives its queue place back."""

    def __init__(self):
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_a_job_waits_for_a_slot_then_separates_with_progress(separator, tmp_path):
    rate = separator.sample_rate
    song = np.random.default_rng(0).uniform(-0.5, 0.5, (int(SONG_SECONDS * rate), 2)).astype(np.float32)
    progress_seen = []

    def forward(windows):
        progress_seen.append(job.progress)
        return separator.forward(windows)

    store, release = JobStore(2), Releases()
    job = store.add("song.wav")
    sf.write(job.upload, song, rate, format="WAV", subtype="FLOAT")
    runner = JobRunner(repository_of(dataclasses.replace(separator, forward=forward)), asyncio.Semaphore(1),
                       UploadLimits(60))

    async def separate_while_the_slot_is_held_a_moment():
        async with runner.slots:
            runner.start(job, release)
            await asyncio.sleep(0.2)
            assert job.state == "waiting" and progress_seen == []
        await job.task

    try:
        asyncio.run(separate_while_the_slot_is_held_a_moment())
        assert (job.state, job.progress, job.error) == ("done", 1.0, ""), job.error
        assert job.facts == {"sample_rate": rate, "channels": 2, "seconds": SONG_SECONDS, "version": 3}
        assert release.count == 1 and not job.upload.exists()
        assert progress_seen[0] == 0 and 0 < progress_seen[-1] < 1 and progress_seen == sorted(progress_seen)
        assert len(set(progress_seen)) == 3  # one step per chunk
        from runtime.chunking import separate_song

        expected = separate_song(separator, song, rate, chunk_seconds=CHUNK_SECONDS)
        for source in SOURCES:
            written, written_rate = sf.read(job.folder / f"{source}.wav", dtype="float32", always_2d=True)
            assert written_rate == rate
            np.testing.assert_allclose(written, np.clip(expected[source], -1, 1), atol=2 ** -15)
            assert len(job.peaks[source]["min"]) == len(job.peaks[source]["max"]) == 600
        assert job.json()["results"] == {source: f"/api/jobs/{job.id}/{source}.wav" for source in SOURCES}
    finally:
        store.close()


def test_a_file_that_is_not_audio_ends_in_error_and_gives_its_place_back(separator):
    store, release = JobStore(2), Releases()
    job = store.add("notes.txt")
    job.upload.write_text("not a song")
    try:
        asyncio.run(JobRunner(repository_of(separator), asyncio.Semaphore(1), UploadLimits(60)).run(job, release))
        assert job.state == "error" and job.error.startswith("notes.txt: ") and job.json()["results"] == {}
        assert release.count == 1 and not job.upload.exists()
    finally:
        store.close()


def test_the_store_keeps_the_newest_jobs_and_refuses_when_none_has_finished():
    store = JobStore(1)
    try:
        first = store.add("a.wav")
        with pytest.raises(RestError) as refused:
            store.add("b.wav")
        assert refused.value.status == 429
        first.state = "done"
        second = store.add("b.wav")
        assert not first.folder.exists() and store.get(second.id) is second
        with pytest.raises(RestError) as missing:
            store.get(first.id)
        assert missing.value.status == 404
    finally:
        store.close()
    assert not store.root.exists()
