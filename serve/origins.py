"""Only the server's own hosts and the page's own origin.

A web page the user visits elsewhere can make the browser send requests to this server:
through DNS rebinding (the page's own name, re-resolved to 127.0.0.1, then sent as the
``Host``) or across sites (a form POST, a fetch whose answer it cannot read, a
WebSocket, which the same-origin policy does not stop). Either would let it stream
audio through the model or upload songs. So ``OriginGuard`` lets a request through only

- when its ``Host`` names one of the server's hosts: the address it listens on, the
  loopback names and ``--allowed-host`` values (400 otherwise: a rebound name never is);
- and, when it carries an ``Origin`` (browsers send one with every WebSocket and POST,
  and with cross-origin fetches), when that origin is the server's own, the host and
  port it was asked under, or an ``--allowed-origin`` (403 otherwise). Clients that send
  no ``Origin`` (curl, TF Serving's clients) are not pages, and pass.

Refusals are TF Serving's ``{"error": ...}``; a WebSocket's refuses its handshake with it.
"""
from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

log = logging.getLogger("serve.origins")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
HOST_HEADER = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]@/?#\s]+)(?::\d{1,5})?")


def host_name(authority: str) -> str | None:
    """The host of a ``Host`` header (``name[:port]``, ``[v6]:port``) lowercased, without port or
    brackets; None when it is not one."""
    match = HOST_HEADER.fullmatch(authority)
    return match[1].strip("[]").lower() if match else None


def origin_authority(origin: str) -> str | None:
    """``host[:port]`` of an http(s) ``Origin`` header, lowercased; None for ``null`` and other schemes."""
    parts = urllib.parse.urlsplit(origin)
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None


class OriginGuard:
    """ASGI middleware: requests and WebSocket handshakes for the ``hosts`` (besides the loopback
    names) from no origin, their own, or one of ``origins``."""

    def __init__(self, app, hosts: Iterable[str] = (), origins: Iterable[str] = ()):
        self.app = app
        self.hosts = {name.lower().strip("[]") for name in (*LOOPBACK_NAMES, *hosts)}
        self.origins = {origin.lower().rstrip("/") for origin in origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host, origin = headers.get("host", ""), headers.get("origin")
        if host_name(host) not in self.hosts:
            refusal = (400, f"this server does not answer to the host {host[:100]!r}; start it with "
                            f"--allowed-host NAME to serve another name")
        elif origin is not None and origin.lower().rstrip("/") not in self.origins and \
                origin_authority(origin) != host.lower():
            refusal = (403, f"requests from pages of {origin[:100]!r} are refused: only this server's own page "
                            f"(or an --allowed-origin) may send them")
        else:
            return await self.app(scope, receive, send)
        client = "%s:%d" % tuple(scope["client"]) if scope.get("client") else "-"
        log.info("refused %s %s %s: %s", client, scope["type"], scope["path"], refusal[1])
        await JSONResponse({"error": refusal[1]}, refusal[0])(scope, receive, send)
