"""The serve tests' shared pieces (test_serve.py, test_serve_hostile.py, test_serve_page.py,
test_bench_serve.py, test_serve_slow_clients.py): a tiny stand-in SavedModel with the
exported signatures, ``python -m serve`` in a subprocess, request bodies, raw requests
whose body waits, and the shipped model's export (the session fixtures
``shipped_export`` and ``shipped_model_server`` in conftest.py use it)."""
import base64
import json
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
import tensorflow as tf

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPOSITORY / "pretrained" / "waveunet-small-musdb"
# A batch of two stereo waveforms for the stand-in's serving_default.
MIX = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 300, 2)).astype(np.float32)


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


def open_request(url: str, length: int, source: str = "127.0.0.1") -> socket.socket:
    """A predict request (to the model ``tiny``) from the address ``source`` whose headers are
    sent and whose body of ``length`` bytes is not (yet)."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
    connection.sendall(f"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode())
    return connection


def read_response(connection: socket.socket) -> tuple[int, bytes]:
    """(status, body) of the HTTP answer on ``connection``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += connection.recv(65536)
    return int(head.split()[1]), body


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def audio_request(data: bytes) -> dict:
    return {"signature_name": "separate_audio", "instances": [b64(data)]}


def export_shipped_model(base: Path) -> Path:
    """The shipped model exported as version 1 under ``base`` (unless it is there already); returns ``base``."""
    from runtime import export

    if not (base / "1").is_dir():
        export.export_run(SHIPPED_MODEL, base, version=1, log=lambda message: None)
    return base
