"""The server against hostile input: uploads that point at other files (playlists, concat
lists, links), songs whose decoded size dwarfs their bytes, lying headers, a flood of
requests beyond the queue, broken or half-copied versions, and randomly mutated bodies.
Every server runs in a subprocess on 127.0.0.1."""
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings, strategies as st

from data_pipeline.audio import AudioError
from serve import upload
from serve.client import wav_bytes
from tests.serve_helpers import MIX, Server, audio_request, b64, open_request, read_response, save_stand_in

SECRET_SECONDS = 2.0
FFMPEG = shutil.which("ffmpeg") is not None


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    """A song on the server's disk that no upload may make the server read: an MP3 of a tone."""
    folder = tmp_path_factory.mktemp("server-disk")
    time_axis = np.arange(int(SECRET_SECONDS * 44100)) / 44100
    sf.write(folder / "secret.wav", (0.3 * np.sin(2 * np.pi * 440 * time_axis)).astype(np.float32), 44100)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(folder / "secret.wav"), str(folder / "secret.mp3")], check=True)
    return folder / "secret.mp3"


def references(secret: Path) -> dict:
    """Uploads whose content names another file or a URL."""
    return {
        "hls playlist, file:// URL": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\nfile://{secret}\n"
                                     f"#EXT-X-ENDLIST\n",
        "hls playlist, plain path": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n",
        "hls playlist, http:// URL": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n"
                                     "http://127.0.0.1:9/song.mp3\n#EXT-X-ENDLIST\n",
        "ffconcat list": f"ffconcat version 1.0\nfile '{secret}'\n",
        "concat list with a file: URL": f"ffconcat version 1.0\nfile 'file:{secret}'\n",
    }


@pytest.mark.skipif(not FFMPEG, reason="needs ffmpeg")
@pytest.mark.parametrize("kind", ["hls playlist, file:// URL", "hls playlist, plain path", "hls playlist, http:// URL",
                                  "ffconcat list", "concat list with a file: URL"])
@pytest.mark.parametrize("name", ["song.m3u8", "x.wav", "song.mp4"])
def test_an_upload_that_names_other_files_is_refused_without_reading_them(secret, tmp_path, kind, name):
    path = tmp_path / "upload"  # the server's own name for every upload
    path.write_text(references(secret)[kind])
    with pytest.raises(AudioError) as refused:
        upload.decode_upload(path, name, upload.UploadLimits(600))
    message = str(refused.value)
    assert message.startswith(f"{name}: ") and str(tmp_path) not in message and str(secret.parent) not in message
    # The same file is decoded by ffmpeg when the allow-lists are off: the attack is real.
    if "http" not in kind:
        unguarded = subprocess.run(["ffmpeg", "-v", "error", "-safe", "0", "-i", str(path), "-f", "f32le", "-"]
                                   if "concat" in kind else ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le",
                                                             "-"], capture_output=True)
        assert len(unguarded.stdout) >= 4 * SECRET_SECONDS * 44100 * 0.9


@pytest.mark.skipif(not FFMPEG, reason="needs ffmpeg")
def test_formats_of_songs_and_videos_still_decode(secret, tmp_path):
    for suffix in ("m4a", "mkv", "opus"):
        converted = tmp_path / f"song.{suffix}"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(secret), str(converted)], check=True)
        stored = tmp_path / "upload"
        shutil.copy(converted, stored)
        audio, rate = upload.decode_upload(stored, converted.name, upload.UploadLimits(600))
        assert audio.shape[1] == 1 and abs(len(audio) / rate - SECRET_SECONDS) < 0.1, suffix


def silent_flac(path: Path, seconds: float, rate: int = 44100) -> Path:
    sf.write(path, np.zeros((int(seconds * rate), 2), np.int16), rate, format="FLAC", subtype="PCM_16")
    return path


def test_a_long_song_is_refused_from_its_header(tmp_path):
    path = silent_flac(tmp_path / "upload", 130)
    assert path.stat().st_size < 200_000  # decodes to 46 MB of float32
    with pytest.raises(AudioError, match=r"lasts 2\.2 minutes; this server separates songs of at most 2 minutes"):
        upload.decode_upload(path, "quiet.flac", upload.UploadLimits(120))


def test_a_header_that_understates_the_length_is_caught_while_decoding(tmp_path):
    """A FLAC whose STREAMINFO says 1 s over 130 s of samples, and an ffmpeg probe that says 1 s."""
    path = silent_flac(tmp_path / "upload", 130)
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    # STREAMINFO's total samples: the low 36 bits of its bytes 13..17 (after a 4-byte block header).
    field = int.from_bytes(data[8 + 13:8 + 18], "big")
    field = (field & ~((1 << 36) - 1)) | 44100
    data[8 + 13:8 + 18] = field.to_bytes(5, "big")
    path.write_bytes(bytes(data))
    assert sf.info(str(path)).frames == 44100
    try:
        audio, _ = upload.decode_upload(path, "liar.flac", upload.UploadLimits(120))
    except AudioError as error:  # refused while decoding, or as inconsistent
        assert str(error).startswith("liar.flac: ")
    else:  # libsndfile stopped where the header said: no more than that was decoded
        assert len(audio) <= 44100
    if FFMPEG:
        original = upload._probe
        upload._probe = lambda path, name: {**original(path, name), "streams": [
            {"sample_rate": "44100", "channels": 2, "duration": "1.0"}]}
        try:
            with pytest.raises(AudioError, match="more than its header said"):
                upload._decode_with_ffmpeg(silent_flac(tmp_path / "ffmpeg-upload", 130), "liar.flac",
                                           upload.UploadLimits(120))
        finally:
            upload._probe = original


def wav_header_only(rate: int, seconds: float, channels: int = 1) -> bytes:
    """16-bit PCM WAV bytes of ``seconds`` of silence."""
    return wav_bytes(np.zeros((int(rate * seconds), channels), np.float32), rate)


def test_wav_headers_give_the_rate_and_duration():
    header = upload.wav_header(wav_header_only(8000, 2.5))
    assert (header.sample_rate, header.channels, header.seconds) == (8000, 1, 2.5)
    assert upload.wav_header(wav_header_only(100, 700)).seconds == 700
    assert upload.wav_header(b"RIFF not a wave at all") is None
    truncated = wav_header_only(8000, 2.0)[:44 + 8000]  # 0.5 s of the announced 2 s present
    with pytest.raises(AudioError, match="announces 32000 bytes and 8000 follow"):
        upload.wav_header(truncated)


# --- through a server of the shipped model ----------------------------------------------------


def peak_rss_mb(process) -> float:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


@pytest.fixture(scope="module")
def guarded_server(shipped_export, tmp_path_factory):
    """The shipped model with a 2-minute song limit, one model call at a time."""
    server = Server(shipped_export, "wavesep", tmp_path_factory.mktemp("log") / "guarded.log", "--max-song-minutes", "2",
                    "--max-concurrent", "1")
    server.wait_for({1})
    yield server
    server.stop()


def page_job(server: Server, name: str, content: bytes, timeout: float = 120) -> dict:
    """Uploads through the page's API and waits for the job to end; returns its final JSON."""
    started = httpx.post(f"{server.url}/api/separate", files={"file": (name, content)}, timeout=60)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/api/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("done", "error"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end:\n{server.log()}")


@pytest.mark.skipif(not FFMPEG, reason="needs ffmpeg")
def test_the_page_refuses_a_playlist_of_a_local_file_and_never_returns_its_audio(guarded_server, secret):
    for name in ("song.m3u8", "x.wav"):
        job = page_job(guarded_server, name, references(secret)["hls playlist, file:// URL"].encode())
        assert job["state"] == "error" and "playlists" in job["error"] and job["results"] == {}, job
        for source in ("vocals", "accompaniment"):
            assert httpx.get(f"{guarded_server.url}/api/jobs/{job['id']}/{source}.wav").status_code == 404
    # The same audio sent as itself is separated: the refusal is about the reference, not the song.
    job = page_job(guarded_server, "secret.mp3", secret.read_bytes())
    assert job["state"] == "done", job


def test_a_long_song_is_refused_before_decoding_with_the_servers_memory_unchanged(guarded_server, tmp_path):
    warm_up = page_job(guarded_server, "short.flac", silent_flac(tmp_path / "short.flac", 3).read_bytes())
    assert warm_up["state"] == "done", warm_up
    before = peak_rss_mb(guarded_server.process)
    long_song = silent_flac(tmp_path / "quiet.flac", 600).read_bytes()  # 600 s: 212 MB as float32 at 44.1 kHz
    job = page_job(guarded_server, "quiet.flac", long_song)
    assert job["state"] == "error" and "at most 2 minutes" in job["error"], job
    over_long_wav = wav_header_only(100, 130)  # 130 s at 100 Hz: 26 kB, 29 M samples at the model's rate
    response = guarded_server.post("/v1/models/wavesep:predict", audio_request(over_long_wav))
    assert response.status_code == 400 and "at most 2 minutes" in response.json()["error"], response.text
    grown = peak_rss_mb(guarded_server.process) - before
    print(f"peak RSS {before:.0f} MB before the long songs, +{grown:.0f} MB after")
    assert grown < 100  # the 600 s song alone would be 212 MB decoded, ~850 MB with its separation
    # A waveform longer than the limit at the model's rate: refused before the model runs.
    waveform = {"inputs": {"waveform": np.zeros((1, 22050 * 121, 2), np.int8).tolist()}}
    response = httpx.post(f"{guarded_server.url}/v1/models/wavesep:predict", json=waveform, timeout=120)
    assert response.status_code == 400 and "at most 2 minutes" in response.json()["error"], response.text


# --- queue bounds and versions, against the stand-in ------------------------------------------


@pytest.fixture
def stand_in_server(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    save_stand_in(base, 1, 0.5)
    server = Server(base, "tiny", tmp_path / "server.log", "--poll-seconds", "0.2", "--max-concurrent", "1",
                    "--max-waiting", "1")
    server.wait_for({1})
    yield server, base
    server.stop()


def test_requests_beyond_the_queue_get_429_at_once_without_their_body_being_read(stand_in_server):
    server, _ = stand_in_server
    body = json.dumps({"instances": MIX[:1].tolist()}).encode()
    held = [open_request(server.url, len(body)) for _ in range(2)]  # one running + one waiting: the queue is full
    time.sleep(0.5)
    refused = open_request(server.url, 10 ** 7)  # its 10 MB body is never sent
    started = time.monotonic()
    status, answer = read_response(refused)
    assert status == 429 and "busy" in json.loads(answer)["error"] and time.monotonic() - started < 5
    for connection in held:
        connection.sendall(body)
        assert read_response(connection)[0] == 200
        connection.close()
    refused.close()
    assert server.post("/v1/models/tiny:predict", {"instances": MIX[:1].tolist()}).status_code == 200


def status_of(server: Server, version: int) -> dict:
    states = httpx.get(f"{server.url}/v1/models/tiny", timeout=10).json()["model_version_status"]
    return next((state for state in states if state["version"] == str(version)), {})


def test_a_half_copied_version_fails_shows_its_error_and_loads_once_complete(stand_in_server, tmp_path):
    """Version 2 appears with its saved_model.pb but not yet its variables (a copy in progress):
    its status is END with the load error while version 1 keeps serving; once the copy
    completes, the next retry loads it, although saved_model.pb itself did not change."""
    server, base = stand_in_server
    save_stand_in(tmp_path, 2, 0.25)
    (base / "2").mkdir()
    shutil.copy2(tmp_path / "2" / "saved_model.pb", base / "2" / "saved_model.pb")
    deadline = time.monotonic() + 30
    while (state := status_of(server, 2)).get("state") != "END":  # between retries (LOADING while one runs)
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    failed = state["status"]
    assert failed["error_code"] == "UNKNOWN" and "version 2" in failed["error_message"], failed
    response = server.post("/v1/models/tiny:predict", {"instances": MIX[:1].tolist()})
    assert response.status_code == 200  # version 1 still answers
    shutil.copytree(tmp_path / "2" / "variables", base / "2" / "variables")
    server.wait_for({2}, timeout=60)
    assert status_of(server, 2)["status"] == {"error_code": "OK", "error_message": ""}


def test_versions_come_and_go_under_concurrent_load_without_a_failed_request(tmp_path):
    """Eight clients keep predicting while version 2 appears and version 1 is removed: every
    answer is a 200 from version 1 (gain 0.5) or version 2 (gain 0.25), and the last ones are 2's."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path / "base"
    base.mkdir()
    save_stand_in(base, 1, 0.5)
    server = Server(base, "tiny", tmp_path / "server.log", "--poll-seconds", "0.2", "--max-per-client", "8")
    server.wait_for({1})
    stop = time.monotonic() + 7
    body = {"instances": MIX[:1].tolist()}

    def keep_asking() -> list:
        answers = []
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                response = client.post(f"{server.url}/v1/models/tiny:predict", json=body)
                gain = (float(np.array(response.json()["predictions"][0]["vocals"])[0, 0] / MIX[0, 0, 0])
                        if response.status_code == 200 else None)
                answers.append((response.status_code, None if gain is None else round(gain, 3)))
        return answers

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(keep_asking) for _ in range(8)]
            time.sleep(1.5)
            save_stand_in(base, 2, 0.25)
            server.wait_for({2}, timeout=30)  # --num-versions 1: version 1 is unloaded as 2 arrives
            shutil.rmtree(base / "1")
            answers = [future.result() for future in futures]
    finally:
        server.stop()
    flat = [answer for client in answers for answer in client]
    assert len(flat) > 100 and {status for status, _ in flat} == {200}, set(flat)
    assert {gain for _, gain in flat} == {0.5, 0.25} and all(client[-1][1] == 0.25 for client in answers)


# --- fuzzing the predict path ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-base")
    save_stand_in(base, 1, 0.5)
    server = Server(base, "tiny", tmp_path_factory.mktemp("log") / "fuzz.log", "--max-request-mb", "1",
                    "--max-song-minutes", "1")
    server.wait_for({1})
    yield server
    assert server.process.poll() is None, server.log()
    server.stop()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40)
KEYS = st.sampled_from(["instances", "inputs", "signature_name", "waveform", "audio_bytes", "b64"])
BODIES = st.dictionaries(KEYS, JSON_VALUES | st.sampled_from(["separate_audio", "serving_default"]), max_size=4)
VALID_WAV = wav_bytes(np.random.default_rng(0).uniform(-0.5, 0.5, (400, 2)), 8000)


def mutated_wav(data: st.DataObject) -> bytes:
    wav = bytearray(VALID_WAV)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, 63))  # the header and the first samples
        wav[position] = data.draw(st.integers(0, 255))
    return bytes(wav[:data.draw(st.integers(0, len(wav)))])


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES)
def test_random_json_bodies_never_get_a_5xx(fuzz_server, body):
    check_answer(fuzz_server.post("/v1/models/tiny:predict", body))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_wav_bytes_never_get_a_5xx(fuzz_server, data):
    check_answer(fuzz_server.post("/v1/models/tiny:predict", audio_request(mutated_wav(data))))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=300))
def test_raw_bytes_as_a_body_never_get_a_5xx(fuzz_server, raw):
    check_answer(fuzz_server.post("/v1/models/tiny:predict", raw))
    check_answer(fuzz_server.post("/v1/models/tiny:predict", {"signature_name": "separate_audio",
                                                              "instances": [b64(raw)]}))
