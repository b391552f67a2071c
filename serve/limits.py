"""How much of the server one request, and one client, can hold.

- ``WorkQueue``: model work, REST requests and page songs alike, at most ``running`` at
  once and ``waiting`` more; beyond them, or beyond a client's share (``ClientQuota``,
  by address), 429 before the body is read.
- ``BodyLimit``: a body over the size limit is refused (413), and so is one that arrives
  too slowly (408): a client trickling its body a byte a second would otherwise keep
  its place in the queue for ever.
- ``HeaderDeadlineProtocol``: the same for a request's headers, which uvicorn waits for
  without end, before the app sees the request.
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable

import h11
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from serve.rest import RestError


def client_address(connection: HTTPConnection) -> str:
    """The address a request or WebSocket came from: what per-client limits count by."""
    return connection.client.host if connection.client else "-"


def once(action: Callable[[], None]) -> Callable[[], None]:
    """``action`` on the first call, nothing on later ones."""
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()
    return run


class ClientQuota:
    """At most ``limit`` places held at once by each client address."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held: Counter[str] = Counter()

    def take(self, client: str) -> Callable[[], None] | None:
        """A place for ``client`` and the function that gives it back (once however often called),
        or None when the client holds ``limit`` already."""
        if self.held[client] >= self.limit:
            return None
        self.held[client] += 1

        def give_back() -> None:
            self.held[client] -= 1
            if not self.held[client]:
                del self.held[client]
        return once(give_back)


class WorkQueue:
    """Model work, REST requests and page songs alike: at most ``running`` at once (``slots``)
    and at most ``waiting`` more admitted to wait, at most ``per_client`` of them from one
    address. Beyond that a request is answered 429 at once, before its body is read, so
    waiting work holds at most (running + waiting) bodies."""

    def __init__(self, running: int, waiting: int, per_client: int):
        self.slots = asyncio.Semaphore(running)
        self.capacity = running + waiting
        self.admitted = 0
        self.clients = ClientQuota(per_client)

    def enter(self, client: str) -> Callable[[], None]:
        """Admits one piece of work of ``client``, or raises 429; returns the function that lets it
        go (idempotent)."""
        if self.admitted >= self.capacity:
            raise RestError(429, f"the server is busy: {self.capacity} requests are running or waiting; "
                                 f"try again shortly")
        client_place = self.clients.take(client)
        if client_place is None:
            raise RestError(429, f"{client} has {self.clients.limit} requests or page songs running or waiting, "
                                 f"this server's limit per client; try again when one is done")
        self.admitted += 1

        def release() -> None:
            self.admitted -= 1
            client_place()
        return once(release)


class BodyLimit:
    """ASGI middleware for request bodies, answered in TF Serving's JSON shape:

    - over ``max_bytes``: 413, by the Content-Length before reading, or once a chunked body
      passes the limit (Starlette's own ``max_body_size`` answers in plain text);
    - too slow: each part must arrive by ``read_timeout`` seconds after the request's headers,
      plus a second per ``min_rate`` bytes received before it, else 408 and the connection
      is closed. A body at ``min_rate`` or faster always makes it, one at a byte a second is
      refused ``read_timeout`` seconds in."""

    def __init__(self, app, max_bytes: int, read_timeout: float, min_rate: float):
        self.app, self.max_bytes = app, max_bytes
        self.read_timeout, self.min_rate = read_timeout, min_rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body larger than the server's limit of {self.max_bytes / 2 ** 20:g} MB"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"error": message}, 413)(scope, receive, send)
        loop = asyncio.get_running_loop()
        started, received, more_body = loop.time(), 0, True

        async def limited_receive():
            nonlocal received, more_body
            if not more_body:  # the body is whole: what is left to receive is the disconnection, whenever it comes
                return await receive()
            try:
                async with asyncio.timeout_at(started + self.read_timeout + received / self.min_rate):
                    event = await receive()
            except TimeoutError:
                # Answered by the app's HTTPException handler; "close" stops uvicorn reading the rest.
                raise HTTPException(408, f"the request body arrived too slowly: {received} bytes in "
                                         f"{loop.time() - started:.1f} s (this server waits {self.read_timeout:g} s "
                                         f"plus a second per {self.min_rate / 1024:g} kB)",
                                    headers={"Connection": "close"}) from None
            received += len(event.get("body", b""))
            more_body = event["type"] == "http.request" and event.get("more_body", False)
            if received > self.max_bytes:
                raise RestError(413, message)  # answered by the app's RestError handler
            return event

        await self.app(scope, limited_receive, send)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's headers. uvicorn closes
    a connection idle between requests after its keep-alive timeout (5 s), but waits without
    end for the first request's headers, and for any request's once a byte of them came: a
    client sending headers a byte a second holds its connection for ever, and enough of them
    every file descriptor. Here headers not whole ``header_timeout`` seconds after the
    connection opened, or after the previous answer, get 408 and the connection is closed."""

    header_timeout = 10.0

    @classmethod
    def with_header_timeout(cls, seconds: float) -> type:
        return type(cls.__name__, (cls,), {"header_timeout": seconds})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.header_deadline = None
        self.start_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.start_header_deadline()

    def connection_lost(self, exc) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        super().connection_lost(exc)

    def start_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        self.header_deadline = self.loop.call_later(self.header_timeout, self.refuse_slow_headers)

    def refuse_slow_headers(self) -> None:
        self.header_deadline = None
        # Past IDLE, the request's headers came in time (the app has it, or a WebSocket took the connection).
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self.conn.trailing_data[0]:  # not a byte of a request: closed as uvicorn closes idle connections
            self.transport.close()
            return
        body = json.dumps({"error": f"the request's headers did not arrive within {self.header_timeout:g} s"}).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")]
        self.transport.write(self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"))
                             + self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
        self.transport.close()
