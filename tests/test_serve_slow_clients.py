"""Clients that are slow or never leave (serve/limits.py, serve/live.py), each attack on
127.0.0.1 while a good client at another loopback address (127.0.0.2) is served: a body
sent a byte a second (408), headers sent a byte a second and connections that send
nothing (408, closed), one client holding its share of the queue (429 for it alone), and
live sessions beyond a client's share or past their maximum length (1013, 1008).
Servers run in subprocesses with limits of seconds."""
import contextlib
import json
import select
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.serve_helpers import MIX, Server, open_request, read_response, save_stand_in

READ_TIMEOUT, MAX_PER_CLIENT, LIVE_MAX_SECONDS = 2, 2, 4
BODY = json.dumps({"instances": MIX[:1].tolist()}).encode()
GOOD_ADDRESS = "127.0.0.2"  # the per-client limits count by address: the good client is another one


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The stand-in with a 2 s read deadline, bodies of at least 1 kB/s, two places per client."""
    base = tmp_path_factory.mktemp("stand-in")
    save_stand_in(base, 1, 0.5)
    server = Server(base, "tiny", tmp_path_factory.mktemp("log") / "slow.log", "--read-timeout", str(READ_TIMEOUT),
                    "--min-body-rate", "1", "--max-per-client", str(MAX_PER_CLIENT), "--max-concurrent", "1",
                    "--max-waiting", "8")
    server.wait_for({1})
    yield server
    assert server.process.poll() is None, server.log()
    server.stop()


class GoodClient:
    """Predicts in a loop from GOOD_ADDRESS while an attack runs: every status and latency."""

    def __init__(self, server: Server):
        self.server, self.answers, self.stop = server, [], threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        transport = httpx.HTTPTransport(local_address=GOOD_ADDRESS)
        with httpx.Client(transport=transport, timeout=30) as client:
            while not self.stop.is_set():
                asked = time.monotonic()
                status = client.post(f"{self.server.url}/v1/models/tiny:predict", content=BODY).status_code
                self.answers.append((status, time.monotonic() - asked))
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join()
        statuses = sorted({status for status, _ in self.answers})
        latencies = [latency for _, latency in self.answers]
        print(f"good client meanwhile: {len(self.answers)} answers, statuses {statuses}, latency median "
              f"{np.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
        if exc_info[0] is None:
            assert len(self.answers) >= 5 and statuses == [200] and max(latencies) < 2, self.answers


def until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    # A byte sent after the server's close makes its kernel answer with a reset, after its answer.
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            data += chunk
    return data


def test_a_body_sent_a_byte_a_second_is_answered_408(server):
    """Two requests (the client's share) admitted to the queue trickle their bodies: each is
    answered 408 once READ_TIMEOUT has passed (plus a second per kB received) and closed."""
    with GoodClient(server):
        began = time.monotonic()
        slow = [open_request(server.url, len(BODY)) for _ in range(MAX_PER_CLIENT)]
        answered = {}
        while len(answered) < len(slow) and time.monotonic() - began < READ_TIMEOUT + 5:
            for connection in slow:
                if connection not in answered:
                    with contextlib.suppress(OSError):  # the server may have closed it already
                        connection.send(BODY[:1])
            for connection in select.select([c for c in slow if c not in answered], [], [], 1)[0]:
                answered[connection] = read_response(connection), time.monotonic() - began
    for connection, ((status, body), seconds) in answered.items():
        print(f"slow body: {status} after {seconds:.2f} s: {body.decode()}")
        assert status == 408 and "the request body arrived too slowly" in json.loads(body)["error"]
        assert READ_TIMEOUT - 0.1 < seconds < READ_TIMEOUT + 2
        assert until_closed(connection) == b""
        connection.close()
    assert len(answered) == MAX_PER_CLIENT
    assert server.post("/v1/models/tiny:predict", BODY).status_code == 200  # its places are free again


def test_headers_sent_a_byte_a_second_or_never_are_cut_off(server):
    """Slowloris: 20 connections trickling a header, 5 sending nothing at all."""
    host, port = server.url.removeprefix("http://").split(":")
    with GoodClient(server):
        began = time.monotonic()
        trickling = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
        silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(5)]
        for connection in trickling:
            connection.sendall(f"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slow: ".encode())
        ended = {}
        while len(ended) < 25 and time.monotonic() - began < READ_TIMEOUT + 5:
            for connection in trickling:
                if connection not in ended:
                    with contextlib.suppress(OSError):
                        connection.send(b"x")
            for connection in select.select([c for c in trickling + silent if c not in ended], [], [], 0.5)[0]:
                ended[connection] = until_closed(connection), time.monotonic() - began
    seconds = [ended[c][1] for c in trickling + silent if c in ended]
    print(f"slowloris: {len(ended)} of 25 connections ended after {min(seconds):.2f}-{max(seconds):.2f} s")
    assert len(ended) == 25 and all(READ_TIMEOUT - 0.1 < s < READ_TIMEOUT + 2 for s in seconds)
    for connection in trickling:
        head, body = ended[connection][0].split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408 ") and json.loads(body) == {
            "error": f"the request's headers did not arrive within {READ_TIMEOUT} s"}
    assert all(ended[connection][0] == b"" for connection in silent)  # closed as idle connections are
    for connection in trickling + silent:
        connection.close()


def test_one_client_gets_429_beyond_its_share_while_another_is_served(server):
    """127.0.0.1 holds its two places (bodies unsent): its further predict and upload are
    answered 429 at once; 127.0.0.2 is served. Its held requests then end in 408."""
    held = [open_request(server.url, len(BODY)) for _ in range(MAX_PER_CLIENT)]
    time.sleep(0.3)
    began = time.monotonic()
    refused = [server.post("/v1/models/tiny:predict", BODY),
               httpx.post(f"{server.url}/api/separate", files={"file": ("notes.txt", b"not a song")})]
    for response in refused:
        assert response.status_code == 429, response.text
        assert response.json()["error"] == (f"127.0.0.1 has {MAX_PER_CLIENT} requests or page songs running or "
                                            f"waiting, this server's limit per client; try again when one is done")
    assert time.monotonic() - began < 1  # refused at once, not after the held requests
    with GoodClient(server), httpx.Client(transport=httpx.HTTPTransport(local_address=GOOD_ADDRESS)) as good:
        upload = good.post(f"{server.url}/api/separate", files={"file": ("notes.txt", b"not a song")})
        assert upload.status_code == 202, upload.text
        time.sleep(1)
    for connection in held:
        status, _ = read_response(connection)
        assert status == 408
        connection.close()
    assert server.post("/v1/models/tiny:predict", BODY).status_code == 200


# --- live sessions, against the shipped model --------------------------------------------------


@pytest.fixture(scope="module")
def live_server(shipped_export, tmp_path_factory):
    server = Server(shipped_export, "wavesep", tmp_path_factory.mktemp("log") / "live.log",
                    "--live-max-seconds", str(LIVE_MAX_SECONDS), "--max-live-sessions", "3")
    server.wait_for({1})
    yield server
    server.stop()


def live_connection(server: Server, source: str):
    """A WebSocket to the stream from the address ``source``."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
    return connect(server.url.replace("http://", "ws://") + "/v1/models/wavesep:stream", sock=connection)


def start_stream(client) -> dict:
    """Streams of 50 ms blocks at 22.05 kHz, stereo: the server's answer to the start message."""
    client.send(json.dumps({"sample_rate": 22050, "channels": 2, "block_size": 1102}))
    return json.loads(client.recv(timeout=30))


def close_of(client) -> tuple:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            client.recv(timeout=30)
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_live_sessions_beyond_a_clients_share_or_past_their_length_are_closed(live_server):
    """127.0.0.1 streams in real time and tries a second session (1013: one per client by
    default); meanwhile 127.0.0.2 streams, answered frame by frame; 127.0.0.1's session is
    closed LIVE_MAX_SECONDS after it opened (1008)."""
    frame = np.zeros((1102, 2), "<f4").tobytes()  # 50 ms at 22.05 kHz
    began = time.monotonic()
    attacker = live_connection(live_server, "127.0.0.1")
    start_stream(attacker)
    second = live_connection(live_server, "127.0.0.1")
    assert close_of(second) == (1013, "127.0.0.1 has 1 live sessions, this server's limit per client; try again later")
    attack = {}

    def stream_until_closed() -> None:
        with contextlib.suppress(ConnectionClosed):
            for index in range(200):
                time.sleep(max(0.0, began + index * 0.05 - time.monotonic()))
                attacker.send(frame)
                attacker.recv(timeout=30)
        attack["close"], attack["seconds"] = close_of(attacker), time.monotonic() - began

    streaming = threading.Thread(target=stream_until_closed)
    streaming.start()
    good, round_trips = live_connection(live_server, GOOD_ADDRESS), []
    start_stream(good)
    for _ in range(40):  # 2 s of audio, paced
        sent = time.monotonic()
        good.send(frame)
        good.recv(timeout=30)
        round_trips.append(time.monotonic() - sent)
        time.sleep(max(0.0, 0.05 - (time.monotonic() - sent)))
    good.close()
    streaming.join()
    print(f"attacker closed {attack['close']} after {attack['seconds']:.2f} s; good client's 40 frames answered in "
          f"median {np.median(round_trips) * 1000:.0f} ms, max {max(round_trips) * 1000:.0f} ms")
    assert attack["close"] == (1008, f"a live session lasts at most {LIVE_MAX_SECONDS} s on this server; "
                                     f"open another to go on")
    assert LIVE_MAX_SECONDS - 0.1 < attack["seconds"] < LIVE_MAX_SECONDS + 2
    assert max(round_trips) < 1


def test_a_client_that_closed_its_session_may_open_the_next_at_once(live_server):
    """A client closes and reconnects before the server has seen its close: the server waits a
    moment for the place to come back instead of refusing (1013) the client's one session."""
    frame = np.zeros((1102, 2), "<f4").tobytes()
    for _ in range(10):
        client = live_connection(live_server, GOOD_ADDRESS)
        assert "delay_samples" in start_stream(client)
        client.send(frame)
        client.recv(timeout=30)
        client.close()
