"""Only the server's own hosts and the page's own origin (serve/origins.py): a DNS-rebinding
Host header, a cross-site WebSocket and a cross-site upload are refused with TF Serving's
{"error": ...}; the loopback names, an --allowed-host, the server's own page, an
--allowed-origin and REST clients that send no Origin are served. Against the stand-in
model, in a subprocess on 127.0.0.1."""
import base64
import os
import socket

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.serve_helpers import MIX, Server, save_stand_in

ALLOWED_HOST, ALLOWED_ORIGIN, EVIL = "separator.test", "http://app.test:3000", "http://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("stand-in")
    save_stand_in(base, 1, 0.5)
    server = Server(base, "tiny", tmp_path_factory.mktemp("log") / "origins.log",
                    "--allowed-host", ALLOWED_HOST, "--allowed-origin", ALLOWED_ORIGIN)
    server.wait_for({1})
    yield server
    server.stop()


def port_of(server: Server) -> str:
    return server.url.rsplit(":", 1)[1]


def predict(server: Server, **headers) -> httpx.Response:
    return server.post("/v1/models/tiny:predict", {"instances": MIX[:1].tolist()}, headers=headers)


def test_a_rebound_host_is_refused_on_every_path(server):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, and the browser says so in Host."""
    evil_host = f"evil.example:{port_of(server)}"
    for response in (httpx.get(f"{server.url}/api/model", headers={"Host": evil_host}),
                     httpx.get(f"{server.url}/v1/models/tiny", headers={"Host": evil_host}),
                     predict(server, Host=evil_host),
                     httpx.post(f"{server.url}/api/separate", files={"file": ("song.wav", b"RIFF")},
                                headers={"Host": evil_host})):
        assert response.status_code == 400, response.text
        assert "does not answer to the host 'evil.example:" in response.json()["error"]
    # The live stream's handshake too, as a browser would send it after rebinding.
    with socket.create_connection(("127.0.0.1", int(port_of(server))), timeout=10) as connection:
        key = base64.b64encode(os.urandom(16)).decode()
        connection.sendall(f"GET /v1/models/tiny:stream HTTP/1.1\r\nHost: {evil_host}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Origin: http://{evil_host}\r\n\r\n".encode())
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"does not answer to the host" in answer, answer


def test_the_servers_own_hosts_are_served(server):
    port = port_of(server)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                 f"{ALLOWED_HOST}:{port}", ALLOWED_HOST):
        response = httpx.get(f"{server.url}/api/model", headers={"Host": host})
        assert response.status_code == 200 and response.json()["name"] == "tiny", (host, response.text)
        assert predict(server, Host=host).status_code == 200, host


def test_a_cross_site_websocket_is_refused_in_its_handshake(server):
    url = server.url.replace("http://", "ws://") + "/v1/models/tiny:stream"
    for origin in (EVIL, "null", f"http://evil.example:{port_of(server)}"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=origin, open_timeout=10)
        response = refused.value.response
        assert response.status_code == 403 and b"requests from pages of" in response.body, (origin, response.body)
    # The page's own origin and an --allowed-origin reach the session, which then reads the start message.
    for origin in (server.url, ALLOWED_ORIGIN):
        with connect(url, origin=origin, open_timeout=10) as client:
            client.send(b"\x00" * 8)
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
        assert closed.value.rcvd.code == 1003 and "the first message is JSON text" in closed.value.rcvd.reason
    assert "refused 127.0.0.1" in server.log() and "websocket /v1/models/tiny:stream" in server.log()


def test_a_cross_site_upload_or_predict_is_refused(server):
    """A page elsewhere can POST a form or a text/plain body without a preflight: refused unread."""
    upload = httpx.post(f"{server.url}/api/separate", files={"file": ("notes.txt", b"not a song")},
                        headers={"Origin": EVIL})
    assert upload.status_code == 403 and "requests from pages of 'http://evil.example'" in upload.json()["error"]
    assert predict(server, Origin=EVIL, **{"Content-Type": "text/plain"}).status_code == 403
    assert httpx.get(f"{server.url}/api/jobs/0", headers={"Origin": EVIL}).status_code == 403
    # The page's own upload, and REST clients that send no Origin, are served.
    own = httpx.post(f"{server.url}/api/separate", files={"file": ("notes.txt", b"not a song")},
                     headers={"Origin": server.url})
    assert own.status_code == 202 and own.json()["filename"] == "notes.txt", own.text
    assert predict(server, Origin=ALLOWED_ORIGIN).status_code == 200
    assert predict(server).status_code == 200
