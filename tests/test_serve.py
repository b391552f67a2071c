"""serve/: TensorFlow Serving's REST API v1 (status, metadata, predict in both formats and
both signatures, explicit versions, errors), new versions picked up while serving, the
access log, shutdown on SIGTERM, and serve.client's round trip.

A tiny stand-in SavedModel with the exported signatures (vocals = gain * mix) keeps the
API and error checks fast; the shipped model, exported once per session, checks the
real thing end to end. Every server runs in a subprocess on 127.0.0.1."""
import base64
import io
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from serve.client import wav_bytes

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPOSITORY / "pretrained" / "waveunet-small-mixed"


class StandIn(tf.Module):
    """The exported signatures' names, dtypes and shapes around a trivial model:
    vocals = gain * mix, accompaniment = (1 - gain) * mix."""

    def __init__(self, gain: float):
        super().__init__()
        self.gain = tf.Variable(gain)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 2], tf.float32, name="waveform")])
    def serving_default(self, waveform):
        return {"vocals": self.gain * waveform, "accompaniment": (1 - self.gain) * waveform}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="audio_bytes")])
    def separate_audio(self, audio_bytes):
        def one(data):
            audio, rate = tf.audio.decode_wav(data)
            with tf.control_dependencies([
                tf.debugging.assert_greater(tf.shape(audio)[0], 0, message="the WAV holds no samples"),
                tf.debugging.assert_less_equal(tf.shape(audio)[1], 2, message="only mono or stereo WAVs"),
            ]):
                audio = tf.identity(audio)
            return tf.audio.encode_wav(self.gain * audio, rate), tf.audio.encode_wav((1 - self.gain) * audio, rate)

        vocals, accompaniment = tf.map_fn(one, audio_bytes, fn_output_signature=(tf.string, tf.string))
        return {"vocals_bytes": vocals, "accompaniment_bytes": accompaniment}


def save_stand_in(base: Path, version: int, gain: float) -> None:
    """Written beside the versions under a hidden name and renamed into place, as export.py does."""
    module = StandIn(gain)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    tf.saved_model.save(module, str(staging / "model"),
                        signatures={"serving_default": module.serving_default, "separate_audio": module.separate_audio})
    (staging / "model").rename(base / str(version))
    shutil.rmtree(staging)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``python -m serve`` in a subprocess, its output in a log file; ``wait_for`` the versions."""

    def __init__(self, base: Path, name: str, log_path: Path, *flags: str):
        self.name, self.log_path = name, log_path
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "serve", "--model-base-path", str(base), "--model-name", name,
                   "--port", self.url.rsplit(":", 1)[1], *flags]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, versions: set, timeout: float = 120) -> None:
        """Until exactly ``versions`` are AVAILABLE."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.log()}"
            try:
                status = httpx.get(f"{self.url}/v1/models/{self.name}", timeout=5).json()
                if {int(s["version"]) for s in status.get("model_version_status", [])
                        if s["state"] == "AVAILABLE"} == versions:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"versions {versions} not available after {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.url}{path}", content=content, timeout=120, **kwargs)


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal over difference in dB; infinite for identical signals."""
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2)))


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def from_b64(value: dict) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(base64.b64decode(value["b64"])), dtype="float32", always_2d=True)


def export_shipped_model(tmp_path_factory) -> Path:
    """The shipped model exported once per session: its base path."""
    import export

    base = tmp_path_factory.getbasetemp() / "export-wavesep"
    if not (base / "1").is_dir():
        export.export_run(SHIPPED_MODEL, base, version=1, log=lambda message: None)
    return base


_SHARED = {}


def shipped_model_server(request, tmp_path_factory) -> Server:
    """One server of the exported shipped model for the session (both serve test modules
    use it: a server start is seconds), stopped when the session ends."""
    if "server" not in _SHARED:
        base = tmp_path_factory.getbasetemp() / "export-wavesep"
        base.mkdir(exist_ok=True)
        # Started before the export: it starts up meanwhile, and picks version 1 up when it appears.
        server = Server(base, "wavesep", tmp_path_factory.getbasetemp() / "wavesep-server.log")
        request.session.addfinalizer(server.stop)
        export_shipped_model(tmp_path_factory)
        server.wait_for({1})
        _SHARED["server"] = server
    return _SHARED["server"]


# --- the API, against the stand-in --------------------------------------------------------

GAIN = 0.5
MIX = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 300, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def stand_in_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("stand-in")
    save_stand_in(base, 1, GAIN)
    return base


@pytest.fixture(scope="module")
def server(stand_in_base, tmp_path_factory):
    server = Server(stand_in_base, "tiny", tmp_path_factory.mktemp("log") / "server.log",
                    "--poll-seconds", "0.2", "--num-versions", "2", "--max-request-mb", "1")
    server.wait_for({1})
    yield server
    server.stop()


def test_status_and_metadata_are_tf_servings_json(server):
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{server.url}/v1/models/tiny").json() == status
    assert httpx.get(f"{server.url}/v1/models/tiny/versions/1").json() == status

    for path in ("/v1/models/tiny/metadata", "/v1/models/tiny/versions/1/metadata"):
        metadata = httpx.get(f"{server.url}{path}").json()
        assert metadata["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
        signatures = metadata["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "separate_audio", "__saved_model_init_op"} <= set(signatures)

        def dims(*sizes):
            return {"dim": [{"size": size, "name": ""} for size in sizes], "unknown_rank": False}

        default = signatures["serving_default"]
        assert default["method_name"] == "tensorflow/serving/predict"
        assert default["inputs"] == {"waveform": {"name": "serving_default_waveform:0", "dtype": "DT_FLOAT",
                                                  "tensor_shape": dims("-1", "-1", "2")}}
        assert {name: (o["dtype"], o["tensor_shape"]) for name, o in default["outputs"].items()} == {
            "vocals": ("DT_FLOAT", dims("-1", "-1", "2")), "accompaniment": ("DT_FLOAT", dims("-1", "-1", "2"))}
        audio = signatures["separate_audio"]
        assert audio["inputs"]["audio_bytes"]["dtype"] == "DT_STRING"
        assert audio["inputs"]["audio_bytes"]["tensor_shape"] == dims("-1")
        assert {name: o["dtype"] for name, o in audio["outputs"].items()} == {
            "vocals_bytes": "DT_STRING", "accompaniment_bytes": "DT_STRING"}


@pytest.mark.parametrize("path", ["/v1/models/tiny:predict", "/v1/models/tiny/versions/1:predict"])
def test_predict_in_row_and_columnar_formats(server, path):
    row = server.post(path, {"instances": MIX.tolist()})
    assert row.status_code == 200, row.text
    predictions = row.json()["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == {"vocals", "accompaniment"}
    np.testing.assert_array_equal(np.array([p["vocals"] for p in predictions], np.float32), GAIN * MIX)
    np.testing.assert_array_equal(np.array([p["accompaniment"] for p in predictions], np.float32), (1 - GAIN) * MIX)

    # Floats print as TF Serving prints them: 6 significant digits where they read back the same.
    assert server.post(path, {"instances": [[[0.1, 0.2]]]}).json()["predictions"] == [
        {"vocals": [[0.05, 0.1]], "accompaniment": [[0.05, 0.1]]}]
    for inputs in ({"waveform": MIX.tolist()}, MIX.tolist()):  # named, or the single input's plain value
        columnar = server.post(path, {"signature_name": "serving_default", "inputs": inputs})
        assert columnar.status_code == 200, columnar.text
        outputs = columnar.json()["outputs"]
        np.testing.assert_array_equal(np.array(outputs["vocals"], np.float32), GAIN * MIX)
        np.testing.assert_array_equal(np.array(outputs["accompaniment"], np.float32), (1 - GAIN) * MIX)


def test_separate_audio_takes_and_returns_base64_wavs(server):
    songs = [(np.random.default_rng(1).uniform(-0.5, 0.5, (800, 1)), 8000),
             (np.random.default_rng(2).uniform(-0.5, 0.5, (441, 2)), 44100)]
    row = server.post("/v1/models/tiny:predict",
                      {"signature_name": "separate_audio", "instances": [b64(wav_bytes(*songs[0]))]})
    assert row.status_code == 200, row.text
    [prediction] = row.json()["predictions"]
    vocals, rate = from_b64(prediction["vocals_bytes"])
    assert rate == 8000 and vocals.shape == (800, 1)
    np.testing.assert_allclose(vocals, GAIN * songs[0][0], atol=2 ** -15)

    columnar = server.post("/v1/models/tiny:predict", {"signature_name": "separate_audio", "inputs": {
        "audio_bytes": [b64(wav_bytes(audio, rate)) for audio, rate in songs]}})
    assert columnar.status_code == 200, columnar.text
    outputs = columnar.json()["outputs"]
    for (audio, rate), encoded in zip(songs, outputs["accompaniment_bytes"]):
        accompaniment, returned_rate = from_b64(encoded)
        assert returned_rate == rate and accompaniment.shape == audio.shape
        np.testing.assert_allclose(accompaniment, (1 - GAIN) * audio, atol=2 ** -15)


def audio_request(data: bytes) -> dict:
    return {"signature_name": "separate_audio", "instances": [b64(data)]}


PREDICT = "/v1/models/tiny:predict"
BAD_REQUESTS = {
    # name: (method, path, body, status)
    "malformed JSON": ("POST", PREDICT, b'{"instances": [', 400),
    "empty body": ("POST", PREDICT, b"", 400),
    "JSON that is not an object": ("POST", PREDICT, b"[1, 2]", 400),
    "neither instances nor inputs": ("POST", PREDICT, {"signature_name": "serving_default"}, 400),
    "both instances and inputs": ("POST", PREDICT, {"instances": [[[0, 0]]], "inputs": [[[0, 0]]]}, 400),
    "instances not a list": ("POST", PREDICT, {"instances": {"b64": "AAAA"}}, 400),
    "no instances": ("POST", PREDICT, {"instances": []}, 400),
    "ragged lists": ("POST", PREDICT, {"instances": [[[0.1, 0.2], [0.3]]]}, 400),
    "wrong rank": ("POST", PREDICT, {"instances": [[0.1, 0.2]]}, 400),
    "wrong channel count": ("POST", PREDICT, {"instances": [[[0.1, 0.2, 0.3]]]}, 400),
    "zero-length waveform": ("POST", PREDICT, {"inputs": {"waveform": [[]]}}, 400),
    "strings for DT_FLOAT": ("POST", PREDICT, {"instances": [[["0.1", "0.2"]]]}, 400),
    "booleans for DT_FLOAT": ("POST", PREDICT, {"instances": [[[True, False]]]}, 400),
    "NaN": ("POST", PREDICT, b'{"instances": [[[NaN, 0.5]]]}', 400),
    "infinity": ("POST", PREDICT, b'{"inputs": [[[0.5, -Infinity]]]}', 400),
    "numbers for DT_STRING": ("POST", PREDICT, {"signature_name": "separate_audio", "instances": [1.5]}, 400),
    "not base64": ("POST", PREDICT, {"signature_name": "separate_audio", "instances": [{"b64": "no base64!"}]}, 400),
    "bytes that are not a WAV": ("POST", PREDICT, audio_request(b"RIFF but not really a wave file"), 400),
    "a WAV with 5 channels": ("POST", PREDICT, audio_request(wav_bytes(np.zeros((100, 5)), 8000)), 400),
    "a WAV without samples": ("POST", PREDICT, audio_request(wav_bytes(np.zeros((0, 2)), 8000)), 400),
    "signature_name not a string": ("POST", PREDICT, {"signature_name": 3, "instances": [[[0, 0]]]}, 400),
    "unknown signature": ("POST", PREDICT, {"signature_name": "nope", "instances": [[[0, 0]]]}, 400),
    "unknown model": ("POST", "/v1/models/nope:predict", {"instances": [[[0, 0]]]}, 404),
    "unknown version": ("POST", "/v1/models/tiny/versions/99:predict", {"instances": [[[0, 0]]]}, 404),
    "status of an unknown model": ("GET", "/v1/models/nope", None, 404),
    "status of an unknown version": ("GET", "/v1/models/tiny/versions/99", None, 404),
    "metadata of an unknown version": ("GET", "/v1/models/tiny/versions/99/metadata", None, 404),
    "malformed path": ("GET", "/v1/models", None, 400),
    "body over the limit": ("POST", PREDICT, b" " * (1024 * 1024 + 1), 413),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(server, name):
    method, path, body, status = BAD_REQUESTS[name]
    if method == "GET":
        response = httpx.get(f"{server.url}{path}")
    else:
        response = server.post(path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and 0 < len(error) < 400, error
    assert server.post(PREDICT, {"instances": MIX[:1].tolist()}).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(server):
    def body():
        for _ in range(40):
            yield b" " * 65536

    response = httpx.post(f"{server.url}{PREDICT}", content=body(), timeout=60)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_the_graphs_own_error_message_comes_back_short(server):
    response = server.post(PREDICT, audio_request(b"hello, not a WAV"))
    assert response.json() == {"error": "Header mismatch: Expected RIFF but found hell"}


def test_a_new_version_is_served_once_loaded_and_a_removed_one_unloaded(server, stand_in_base):
    """Version 2 is written while requests keep coming: none fails, each answer is
    version 1's until version 2's start and version 2's after; version 1 stays
    reachable by number (--num-versions 2) until its folder is removed."""
    save_stand_in(stand_in_base, 2, 0.25)
    gains = []
    deadline = time.monotonic() + 60
    while not gains or gains[-1] != 0.25:
        assert time.monotonic() < deadline, server.log()
        response = server.post(PREDICT, {"instances": MIX[:1].tolist()})
        assert response.status_code == 200, response.text
        gains.append(round(float(np.array(response.json()["predictions"][0]["vocals"])[0, 0] / MIX[0, 0, 0]), 3))
    assert set(gains) <= {GAIN, 0.25} and gains == sorted(gains, reverse=True)
    server.wait_for({1, 2})
    states = httpx.get(f"{server.url}/v1/models/tiny").json()["model_version_status"]
    assert [s["version"] for s in states] == ["2", "1"]
    by_number = server.post("/v1/models/tiny/versions/1:predict", {"instances": MIX[:1].tolist()})
    np.testing.assert_array_equal(np.array(by_number.json()["predictions"][0]["vocals"], np.float32), GAIN * MIX[0])

    shutil.rmtree(stand_in_base / "1")
    server.wait_for({2})
    assert server.post("/v1/models/tiny/versions/1:predict", {"instances": MIX[:1].tolist()}).status_code == 404
    assert "unloading tiny version 1" in server.log()


def test_each_request_gets_an_access_log_line(server):
    log = server.log()
    for method, path, status in [("GET", "/v1/models/tiny/metadata", 200), ("POST", PREDICT, 200),
                                 ("POST", PREDICT, 400), ("POST", "/v1/models/nope:predict", 404),
                                 ("POST", PREDICT, 413)]:
        assert re.search(rf'127\.0\.0\.1:\d+ "{method} {re.escape(path)}" {status} \d+\.\d ms$', log, re.MULTILINE), \
            f"no access line for {method} {path} {status}:\n{log}"


def test_sigterm_stops_the_server_gracefully(server):
    """Last of the stand-in's tests: it stops the module's server."""
    assert server.stop() == 0
    assert "Finished server process" in server.log()


# --- the shipped model, exported ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(request, tmp_path_factory):
    return shipped_model_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The same export as a runtime Separator in this process."""
    from runtime.loading import load_separator

    return load_separator(export_shipped_model(tmp_path_factory) / "1")


@pytest.fixture(scope="module")
def in_process_saved_model(tmp_path_factory):
    return tf.saved_model.load(str(export_shipped_model(tmp_path_factory) / "1"))


def test_real_model_serving_default_matches_in_process_separation(real_server, in_process):
    mix = np.random.default_rng(3).uniform(-0.3, 0.3, (1, 22050, 2)).astype(np.float32)
    response = real_server.post("/v1/models/wavesep:predict", {"inputs": {"waveform": mix.tolist()}})
    assert response.status_code == 200, response.text
    from runtime.chunking import separate_song

    expected = separate_song(in_process, mix[0], 22050)
    for source in ("vocals", "accompaniment"):
        np.testing.assert_allclose(np.array(response.json()["outputs"][source], np.float32)[0], expected[source],
                                   atol=1e-5)


@pytest.mark.parametrize("rate, channels, seconds", [(22050, 2, 20.3), (44100, 1, 14.1)])
def test_client_round_trip_agrees_with_in_process_separation(real_server, in_process, in_process_saved_model,
                                                             tmp_path, rate, channels, seconds):
    """Chunks of 6 s with 1.5 s margins (several requests) through the server: the files have
    the input's rate, channels and length, the chunks join without seams (against one
    separate_audio call on the whole file in this process), and the result agrees with
    separate_song (which resamples with soxr where the graph has its FFT resampler)."""
    from runtime.chunking import separate_song

    time_axis = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(4).standard_normal((len(time_axis), channels))
    song = (0.3 * np.sin(2 * np.pi * 220 * time_axis * (1 + 0.2 * np.sin(time_axis)))[:, None] + 0.05 * noise)
    sf.write(tmp_path / "song.wav", song.astype(np.float32), rate, subtype="PCM_16")
    result = subprocess.run([sys.executable, "-m", "serve.client", str(tmp_path / "song.wav"), "--url", real_server.url,
                             "--model", "wavesep", "--out", str(tmp_path / "out"), "--chunk-seconds", "6",
                             "--margin-seconds", "1.5"], cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    audio, _ = sf.read(tmp_path / "song.wav", dtype="float32", always_2d=True)
    expected = separate_song(in_process, audio, rate)
    whole_file = in_process_saved_model.signatures["separate_audio"](audio_bytes=tf.constant([wav_bytes(audio, rate)]))
    for source in ("vocals", "accompaniment"):
        separated, separated_rate = sf.read(tmp_path / "out" / "song" / f"{source}.wav", dtype="float32",
                                            always_2d=True)
        assert separated_rate == rate and separated.shape == audio.shape
        # Measured: 79-82 dB, the 16-bit rounding of the answers.
        one_call, _ = sf.read(io.BytesIO(whole_file[f"{source}_bytes"][0].numpy()), dtype="float32", always_2d=True)
        assert sdr(one_call, separated) > 60, source
        # Measured: 82 dB at the model's rate; 34-35 dB at 44.1 kHz, the two resamplers' difference.
        assert sdr(expected[source], separated) > 30, source


def test_client_says_when_the_server_is_unreachable_or_refuses(real_server, tmp_path):
    sf.write(tmp_path / "song.wav", np.zeros((22050, 2), np.float32), 22050)

    def client(url, model):
        return subprocess.run([sys.executable, "-m", "serve.client", str(tmp_path / "song.wav"), "--url", url,
                               "--model", model, "--out", str(tmp_path / "out")], cwd=REPOSITORY,
                              capture_output=True, text=True, timeout=120)

    unreachable = client(f"http://127.0.0.1:{free_port()}", "wavesep")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    refused = client(real_server.url, "nope")
    assert refused.returncode == 2 and "answered 404: Servable not found for request: Latest(nope)" in refused.stderr
    assert not (tmp_path / "out" / "song" / "vocals.wav").exists()
