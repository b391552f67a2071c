"""Live separation over the server's WebSocket (``/v1/models/NAME:stream``, serve/live.py):
the stream against offline separation, delayed, and every limit with its close code,
against the shipped model's export served in a subprocess on 127.0.0.1."""
import contextlib
import json
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.serve_helpers import Server

IDLE_SECONDS, SEND_TIMEOUT = 3, 1.5


@pytest.fixture(scope="module")
def live_server(request, tmp_path_factory):
    """The shipped model with short idle and send timeouts, so that those refusals take seconds.
    Started before the export, as conftest's shipped_model_server: it starts up meanwhile."""
    base = tmp_path_factory.getbasetemp() / "export-wavesep"  # where the shipped_export fixture writes
    base.mkdir(exist_ok=True)
    server = Server(base, "wavesep", tmp_path_factory.mktemp("log") / "live.log",
                    "--live-idle-seconds", str(IDLE_SECONDS), "--live-send-timeout", str(SEND_TIMEOUT),
                    "--max-live-per-client", "2")  # every test's sessions come from 127.0.0.1
    try:
        request.getfixturevalue("shipped_export")
        server.wait_for({1})
        yield server
        assert server.process.poll() is None, server.log()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def separator(shipped_export):
    from runtime.loading import saved_model_separator

    return saved_model_separator(shipped_export / "1")


def stream_url(server: Server, path: str = "/v1/models/wavesep:stream") -> str:
    return server.url.replace("http://", "ws://") + path


def start(client, sample_rate: int, channels: int, block_size: int, audio_format: str = "f32le") -> dict:
    client.send(json.dumps({"sample_rate": sample_rate, "channels": channels, "block_size": block_size,
                            "format": audio_format}))
    return json.loads(client.recv(timeout=30))


def closed_with(client) -> tuple:
    """(code, reason) of the server's close frame, reading what comes before it."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            client.recv(timeout=30)
    assert closed.value.rcvd is not None, "no close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def song(rate: int, channels: int, seconds: float) -> np.ndarray:
    """A gliding tone with noise, different on each channel."""
    time_axis = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(rate)
    tone = 0.3 * np.sin(2 * np.pi * (220 + 200 * time_axis) * time_axis)
    return np.stack([tone + rng.uniform(-0.2, 0.2, len(time_axis)) for _ in range(channels)], axis=1)


def sources(frames: list, channels: int, dtype) -> dict:
    """Answer frames (each vocals then accompaniment) joined into one signal per source."""
    halves = [np.frombuffer(frame, dtype).reshape(2, -1, channels) for frame in frames]
    return {source: np.concatenate([h[index] for h in halves]) for index, source in
            enumerate(("vocals", "accompaniment"))}


@pytest.mark.parametrize("rate,channels,audio_format", [(44100, 2, "f32le"), (22050, 1, "s16le")])
def test_the_stream_is_the_offline_separation_delayed_then_its_tail(live_server, separator, rate, channels,
                                                                     audio_format):
    from runtime.chunking import separate_song
    from runtime.streaming import StreamSeparation

    block = rate // 50  # 20 ms
    audio = song(rate, channels, 1.5)
    if audio_format == "s16le":
        sent = np.round(audio * 32767).astype("<i2")
        heard, dtype, tolerance = sent / 32768, "<i2", 1.5  # in 16-bit steps: the answer's rounding and more
    else:
        sent = heard = audio.astype("<f4")
        dtype, tolerance = "<f4", 1e-5
    with connect(stream_url(live_server)) as client:
        answer = start(client, rate, channels, block, audio_format)
        figures = StreamSeparation(separator, rate, channels, block).describe()
        assert answer == {"model": "wavesep", "version": 1, "format": audio_format,
                          "sources": ["vocals", "accompaniment"], **figures}
        answers = []
        for offset in range(0, len(sent), block):
            client.send(sent[offset:offset + block].tobytes())
            answers.append(client.recv(timeout=30))
        assert all(len(frame) == 2 * block * channels * np.dtype(dtype).itemsize for frame in answers)
        client.send(json.dumps({"end": True}))
        tail = client.recv(timeout=30)
        assert len(tail) == 2 * figures["delay_samples"] * channels * np.dtype(dtype).itemsize
        assert closed_with(client) == (1000, "")
    streamed = sources(answers + [tail], channels, dtype)
    offline = separate_song(separator, heard.astype(np.float32), rate, chunk_seconds=1)  # any chunks: one result
    for source, estimate in offline.items():
        expected = np.concatenate([np.zeros((figures["delay_samples"], channels)), estimate])
        if audio_format == "s16le":
            expected = np.clip(expected, -1, 1) * 32767
        assert streamed[source].shape == expected.shape
        assert np.abs(streamed[source] - expected).max() <= tolerance, source


def test_rest_requests_are_answered_while_blocks_compute(live_server):
    """Blocks of a second compute for a tenth of a second or more each, in a worker thread:
    status requests meanwhile are answered at once (were the model computing on the event
    loop, they would wait half a block's compute in the middle)."""
    round_trips, latencies, done = [], [], threading.Event()

    def stream():
        try:
            with connect(stream_url(live_server)) as client:
                start(client, 44100, 2, 44100)
                for _ in range(3):
                    sent = time.perf_counter()
                    client.send(np.zeros((44100, 2), "<f4").tobytes())
                    client.recv(timeout=30)
                    round_trips.append(time.perf_counter() - sent)
        finally:
            done.set()

    streaming = threading.Thread(target=stream)
    streaming.start()
    with httpx.Client(timeout=30) as rest:
        while not done.is_set():
            asked = time.perf_counter()
            assert rest.get(f"{live_server.url}/v1/models/wavesep").status_code == 200
            latencies.append(time.perf_counter() - asked)
            time.sleep(0.05)
    streaming.join()
    print(f"block round trips {np.round(round_trips, 2)} s; status answers: median {np.median(latencies):.3f} s, "
          f"at most {max(latencies):.3f} s")
    assert len(round_trips) == 3 and np.median(latencies) < 0.2 * np.median(round_trips)


@pytest.mark.parametrize("first,code,reason", [
    (b"\x00" * 8, 1003, "the first message is JSON text"),
    ("sample_rate=44100", 1003, "the first message is not JSON"),
    ('["not", "an", "object"]', 1008, "the first message is a JSON object"),
    ('{"sample_rate": 44100, "channels": 2, "block_size": 882, "gain": 2}', 1008, "unknown keys gain"),
    (json.dumps({"é" * 300: 1}, ensure_ascii=False), 1008, "unknown keys éé"),  # a reason cut to 123 bytes
    ('{"sample_rate": "44100", "channels": 2, "block_size": 882}', 1008, "sample_rate must be a whole number"),
    ('{"sample_rate": 44100, "channels": 2}', 1008, "block_size must be a whole number, not null"),
    ('{"sample_rate": 44100, "channels": 2, "block_size": 882, "format": "mp3"}', 1008, "format must be f32le or"),
    ('{"sample_rate": 44100, "channels": 6, "block_size": 882}', 1008, "mono or stereo, not 6 channels"),
    ('{"sample_rate": 44100, "channels": 2, "block_size": 44101}', 1008, "block size 44101 samples is outside"),
    ('{"sample_rate": 500, "channels": 2, "block_size": 50}', 1008, "sample rate 500 Hz is outside"),
    ('{"sample_rate": 384000, "channels": 2, "block_size": 882}', 1008, "above this server's 192000 Hz"),
], ids=["binary", "not json", "array", "unknown key", "long key", "string rate", "no block", "format", "channels",
        "block over 1 s", "low rate", "high rate"])
def test_a_bad_first_message_is_refused_with_its_reason(live_server, first, code, reason):
    with connect(stream_url(live_server)) as client:
        client.send(first)
        refused = closed_with(client)
    assert refused[0] == code and reason in refused[1], refused
    assert len(refused[1].encode()) <= 123


@pytest.mark.parametrize("path,reason", [
    ("/v1/models/other:stream", "Servable not found for request: Latest(other)"),
    ("/v1/models/wavesep/versions/7:stream", "Servable not found for request: Specific(wavesep, 7)"),
    ("/v1/models/wavesep:predict", "no WebSocket here; live separation is at /v1/models/NAME[/versions/N]:stream"),
], ids=["model", "version", "path"])
def test_an_unknown_model_version_or_path_is_refused(live_server, path, reason):
    with connect(stream_url(live_server, path)) as client:
        assert closed_with(client) == (1008, reason)


def test_a_frame_of_the_wrong_size_or_values_or_another_message_ends_the_stream(live_server):
    with connect(stream_url(live_server, "/v1/models/wavesep/versions/1:stream")) as client:
        assert start(client, 44100, 2, 441)["version"] == 1
        client.send(b"\x00" * 100)
        assert closed_with(client) == (1003, "frame of 100 bytes; expected 3528 (441 samples x 2 channels, f32le)")
    with connect(stream_url(live_server)) as client:
        start(client, 44100, 2, 441)
        client.send(np.full((441, 2), np.nan, "<f4").tobytes())
        assert closed_with(client) == (1007, "a frame holds NaN or infinity")
    with connect(stream_url(live_server)) as client:
        start(client, 22050, 1, 441, "s16le")
        client.send(np.zeros(441, "<i2").tobytes())
        client.send('{"end": 1}')
        assert closed_with(client) == (1003, 'expected a binary audio frame or {"end": true}')


def open_session(server: Server) -> ClientConnection:
    client = connect(stream_url(server))
    start(client, 22050, 2, 441)
    return client


def test_sessions_beyond_the_limit_are_closed_with_try_again_later(live_server):
    held = [open_session(live_server) for _ in range(2)]  # --max-live-sessions 2 by default
    with connect(stream_url(live_server)) as client:
        assert closed_with(client) == (1013, "2 live sessions are running, this server's limit; try again later")
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the server ends the closed session a moment later
        try:
            held.append(open_session(live_server))
            break
        except ConnectionClosed:
            assert time.monotonic() < deadline, live_server.log()
            time.sleep(0.05)
    for client in held:
        client.close()


def test_a_client_sending_faster_than_real_time_is_closed(live_server):
    """Four seconds of 10 ms frames at once: refused once two seconds (the default burst) are
    ahead of the clock, however far the model has got with them."""
    frame = np.zeros((220, 2), "<f4").tobytes()
    began = time.monotonic()
    with connect(stream_url(live_server), max_queue=None) as client:
        start(client, 22050, 2, 220)
        with contextlib.suppress(ConnectionClosed):  # the server may close before every frame is sent
            for _ in range(400):
                client.send(frame)
        code, reason = closed_with(client)
    assert code == 1008 and reason.startswith("sending faster than real time: 2.0"), reason
    assert time.monotonic() - began < 10


def test_idle_sessions_are_closed(live_server):
    """No start message, or no frame after it, for --live-idle-seconds (both at once)."""
    results = {}

    def wait(name: str, started: bool) -> None:
        with connect(stream_url(live_server)) as client:
            if started:
                start(client, 22050, 2, 441)
            results[name] = closed_with(client), time.monotonic() - began

    began = time.monotonic()
    threads = [threading.Thread(target=wait, args=(name, name == "frame")) for name in ("start", "frame")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["start"][0] == (1008, f"no start message within {IDLE_SECONDS} s")
    assert results["frame"][0] == (1008, f"no audio frame for {IDLE_SECONDS} s")
    assert all(IDLE_SECONDS - 0.1 < seconds < IDLE_SECONDS + 5 for _, seconds in results.values()), results


def test_a_client_that_stops_reading_is_aborted_and_its_session_freed(live_server):
    """A client whose reading is paused (websockets' flow control after one message, a 4 kB
    receive buffer) keeps sending 50 ms stereo 44.1 kHz frames at real time (after the
    allowed burst). The answers fill the server's 256 kB socket buffer, then uvicorn's
    transport above its 64 kB high-water mark: the connection is aborted --live-send-timeout
    later, with a log line, and the session's place is free again."""
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect(("127.0.0.1", int(live_server.url.rsplit(":", 1)[1])))
    client = connect(stream_url(live_server), sock=connection, max_queue=1)
    start(client, 44100, 2, 2205)
    frame = np.random.default_rng(0).uniform(-0.3, 0.3, (2205, 2)).astype("<f4").tobytes()
    began, sent = time.monotonic(), 0
    with pytest.raises((ConnectionClosed, OSError)):
        while time.monotonic() - began < 20:
            time.sleep(max(0.0, sent * 0.05 - 1.5 - (time.monotonic() - began)))  # 1.5 s ahead, then real time
            client.send(frame)
            sent += 1
    aborted_after = time.monotonic() - began
    client.close()
    log = ""
    deadline = time.monotonic() + 5
    while "close 1006 (connection lost)" not in log and time.monotonic() < deadline:
        time.sleep(0.1)
        log = live_server.log()
    stalled = re.search(rf"the client read nothing for {SEND_TIMEOUT:g} s with (\d+) bytes waiting", log)
    assert stalled and int(stalled[1]) > 64 * 1024, log  # over the transport's high-water mark
    assert re.search(r"live 127\.0\.0\.1:\d+ wavesep v1 44100 Hz 2 ch block 2205 f32le: frames \d+, [\d.]+ s, "
                     r"close 1006 \(connection lost\)", log), log
    print(f"aborted {aborted_after:.1f} s after the first frame, {sent} frames sent")
    assert SEND_TIMEOUT < aborted_after < SEND_TIMEOUT + 10
    open_session(live_server).close()
