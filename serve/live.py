"""Live separation over a WebSocket: ``ws://HOST:PORT/v1/models/NAME[/versions/N]:stream``.

The client's first message (JSON text) says what it will send: sample rate,
channels, block size and sample format. The server answers with the stream's
figures (``runtime.streaming.StreamSeparation.describe``: the delay above all), then
takes binary frames of one block of interleaved PCM each and answers every one with
a frame of the same length per source, the vocals block then the accompaniment
block: the offline separation ``delay_samples`` earlier. ``{"end": true}`` asks for
the tail (the last ``delay_samples`` of each source) and a normal close.

A session is bounded from outside in every direction:

- at most ``max_sessions`` at once, counted from the connection, and at most
  ``max_per_client`` of them from one address (1013 beyond, after waiting
  ``REOPEN_GRACE_SECONDS`` for a session of the client's that has just closed);
- at most ``max_seconds`` long (1008);
- a start message within ``idle_seconds``, then a frame at least every
  ``idle_seconds`` (1008);
- audio no further ahead of the wall clock than ``burst_seconds``, counted from the
  first frame (1008): a live stream is not a way round the REST queue;
- frames read ahead of the model are held in a queue of at most ``burst_seconds``
  plus a second of audio; beyond it the session stops reading, and the client's
  socket fills;
- answers to a client that stops reading: ``LiveWebSocketProtocol`` keeps the
  kernel's send buffer small and aborts the connection once its writes have waited
  longer than ``send_timeout`` (no close frame could get through either).

The model computes each block in a worker thread (beside the REST queue's
``--max-concurrent`` calls: at most one block per session at a time), so the event
loop keeps answering. uvicorn's websockets implementation reads no further message
until the session has taken the last one, and refuses messages over
``MAX_MESSAGE_BYTES`` (1009).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
import time
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from models.architecture import SOURCES
from runtime.pcm import PCM_FORMATS, PcmError, decode_pcm, encode_pcm, frame_bytes
from runtime.streaming import MAX_BLOCK_SECONDS, StreamError, StreamSeparation
from serve.limits import ClientQuota, client_address
from serve.repository import ModelRepository
from serve.rest import RestError
from serve.upload import MAX_SAMPLE_RATE

log = logging.getLogger("serve.live")
STREAM_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:stream", re.IGNORECASE)
START_KEYS = ("sample_rate", "channels", "block_size", "format")
# RFC 6455 5.5: a control frame carries at most 125 bytes, two of them the close code.
MAX_REASON_BYTES = 123
# uvicorn's ws_max_size: the largest frame a session takes (a block of MAX_BLOCK_SECONDS, stereo float32
# at the highest rate: 1.5 MB) and no more, so that a message costs at most that before it is refused (1009).
MAX_MESSAGE_BYTES = int(MAX_BLOCK_SECONDS * MAX_SAMPLE_RATE) * frame_bytes("f32le", 2)
# The kernel's send buffer of a WebSocket, which Linux doubles: 512 kB carry the 0.8 MB/s of answers to
# 48 kHz stereo float32 over a 500 ms round trip. Autotuning would grow it to 4 MB (measured on 127.0.0.1:
# 2.9-4.0 MB sent before the transport's buffer filled, 0.45-0.6 MB with this size), megabytes that a
# client that stops reading would hold before the session noticed.
SEND_BUFFER_BYTES = 256 * 1024
# What a session's log line says of a close frame without a reason that it did not send.
DISCONNECTIONS = {1006: "connection lost", 1012: "the server is stopping"}
# A client that closes its session and opens the next at once may arrive before this server has
# seen the close: its share is waited for this long before the new session is refused.
REOPEN_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class LiveLimits:
    """The bounds of live sessions (the flags of ``python -m serve``)."""

    max_sessions: int = 2
    burst_seconds: float = 2.0  # how far a client's audio may run ahead of the wall clock
    idle_seconds: float = 10.0  # for the start message, then between frames
    max_per_client: int = 1  # sessions at once from one address
    max_seconds: float = 3600.0  # a session's length, from its connection


class Refusal(Exception):
    """Ends a session with a close code and a reason for the client."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def fit_reason(text: str) -> str:
    """A close reason within the protocol's 123 bytes."""
    return text.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


@dataclass(frozen=True)
class Start:
    """What the client's first message announces."""

    sample_rate: int
    channels: int
    block_size: int
    format: str = "f32le"

    @property
    def frame_bytes(self) -> int:
        return self.block_size * frame_bytes(self.format, self.channels)


def parse_start(message: dict) -> Start:
    """The first message, or the Refusal that says what is wrong with it."""
    example = '{"sample_rate": 44100, "channels": 2, "block_size": 882, "format": "f32le"}'
    if message.get("text") is None:
        raise Refusal(1003, f"the first message is JSON text: {example}")
    try:
        fields = json.loads(message["text"])
    except ValueError:
        raise Refusal(1003, f"the first message is not JSON; send {example}") from None
    if not isinstance(fields, dict):
        raise Refusal(1008, f"the first message is a JSON object: {example}")
    if unknown := sorted(set(fields) - set(START_KEYS)):
        raise Refusal(1008, f"unknown keys {', '.join(unknown)[:40]}; the keys are {', '.join(START_KEYS)}")
    for key in START_KEYS[:3]:
        if type(fields.get(key)) is not int:  # bool is an int subclass; JSON's true is not a sample rate
            raise Refusal(1008, f"{key} must be a whole number, not {json.dumps(fields.get(key))[:30]}")
    if fields.get("format", "f32le") not in PCM_FORMATS:
        raise Refusal(1008, f"format must be f32le or s16le, not {json.dumps(fields['format'])[:30]}")
    if fields["sample_rate"] > MAX_SAMPLE_RATE:
        raise Refusal(1008, f"sample rate {fields['sample_rate']} Hz is above this server's {MAX_SAMPLE_RATE} Hz")
    return Start(**fields)


def is_end(text: str | None) -> bool:
    """Whether a text message is ``{"end": true}`` (and not ``{"end": 1}``, which Python finds equal)."""
    try:
        fields = json.loads(text) if text is not None else None
    except ValueError:
        return False
    return isinstance(fields, dict) and list(fields) == ["end"] and fields["end"] is True


def encode_sources(estimates: dict, audio_format: str) -> bytes:
    """The answer frame: each source's block in turn, interleaved."""
    return encode_pcm(np.concatenate([estimates[source] for source in SOURCES]), audio_format)


class LiveSessions:
    """The WebSocket endpoint: admits at most ``limits.max_sessions`` sessions at once, at most
    ``limits.max_per_client`` of them from one address."""

    def __init__(self, repository: ModelRepository, limits: LiveLimits):
        self.repository, self.limits = repository, limits
        self.active = 0
        self.clients = ClientQuota(limits.max_per_client)

    async def serve(self, websocket: WebSocket) -> None:
        # Accepted before any refusal: a close code and reason reach the client only on an open socket.
        await websocket.accept()
        session = Session(websocket, self.limits)
        if self.active >= self.limits.max_sessions:
            await session.close(1013, f"{self.active} live sessions are running, this server's limit; try again later")
            return
        client = client_address(websocket)
        client_place = await self.place_for(client)
        if client_place is None:
            await session.close(1013, f"{client} has {self.limits.max_per_client} live sessions, this server's limit "
                                      f"per client; try again later")
            return
        self.active += 1
        try:
            await session.run(self.repository)
        finally:
            self.active -= 1
            client_place()


    async def place_for(self, client: str):
        """The client's place (its give-back function), or None if it still holds its share
        after ``REOPEN_GRACE_SECONDS``."""
        deadline = time.monotonic() + REOPEN_GRACE_SECONDS
        while (place := self.clients.take(client)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return place


class Session:
    """One client's stream, from its start message to its close."""

    def __init__(self, websocket: WebSocket, limits: LiveLimits):
        self.websocket, self.limits = websocket, limits
        client = websocket.scope.get("client")
        self.client = "%s:%d" % tuple(client) if client else "-"
        self.started = time.monotonic()
        self.description = websocket.url.path
        self.start: Start | None = None
        self.separation: StreamSeparation | None = None
        self.frames = self.samples = 0
        self.first_frame_at: float | None = None
        self.queue: asyncio.Queue | None = None

    async def run(self, repository: ModelRepository) -> None:
        """The whole session; every way it ends is logged in one line with its close code."""
        try:
            async with asyncio.timeout(self.limits.max_seconds):
                await self.open(repository)
                await self.stream()
            await self.close(1000, "")
        except Refusal as refusal:
            await self.close(refusal.code, refusal.reason)
        except TimeoutError:  # the session's own deadline: receive() turns the idle ones into Refusals
            await self.close(1008, f"a live session lasts at most {self.limits.max_seconds:g} s on this server; "
                                   f"open another to go on")
        except WebSocketDisconnect as gone:  # the client closed or vanished; nothing more can be sent
            self.log(gone.code, gone.reason or DISCONNECTIONS.get(gone.code, "closed by the client"))
        except Exception:
            log.exception("live session %s %s failed", self.client, self.description)
            await self.close(1011, "internal error; the server log has the details")

    async def open(self, repository: ModelRepository) -> None:
        """The model from the path, the start message, the stream, and the answer that announces it."""
        match = STREAM_PATH.fullmatch(self.websocket.url.path)
        if not match:
            raise Refusal(1008, "no WebSocket here; live separation is at /v1/models/NAME[/versions/N]:stream")
        try:
            version = repository.get(match[1], int(match[2]) if match[2] else None)
        except RestError as error:
            raise Refusal(1008, error.message) from None
        idle = self.limits.idle_seconds
        start = self.start = parse_start(await self.receive(f"no start message within {idle:g} s"))
        separator = await run_in_threadpool(version.separator)
        try:
            self.separation = await run_in_threadpool(StreamSeparation, separator, start.sample_rate, start.channels,
                                                      start.block_size)
        except StreamError as error:
            raise Refusal(1008, str(error)) from None
        self.description = (f"{match[1]} v{version.number} {start.sample_rate} Hz {start.channels} ch "
                            f"block {start.block_size} {start.format}")
        frames_ahead = math.ceil((self.limits.burst_seconds + 1) * start.sample_rate / start.block_size)
        self.queue = asyncio.Queue(frames_ahead)
        await self.websocket.send_text(json.dumps({"model": match[1], "version": version.number,
                                                   "format": start.format, "sources": list(SOURCES),
                                                   **self.separation.describe()}))

    async def stream(self) -> None:
        """Reads frames and separates them side by side, so that a client that runs ahead is seen
        doing so while the model works; the first refusal or disconnection ends both."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.read_frames())
                tasks.create_task(self.separate_frames())
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None

    async def receive(self, silence: str) -> dict:
        """The next message, or a Refusal saying ``silence`` after ``idle_seconds`` without one."""
        try:
            message = await asyncio.wait_for(self.websocket.receive(), self.limits.idle_seconds)
        except TimeoutError:
            raise Refusal(1008, silence) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1005), message.get("reason"))
        return message

    async def read_frames(self) -> None:
        """Checks each frame (size, values, pace) and queues its block; ``{"end": true}`` queues the end."""
        start = self.start
        while True:
            message = await self.receive(f"no audio frame for {self.limits.idle_seconds:g} s")
            data = message.get("bytes")
            if data is None:
                if not is_end(message.get("text")):
                    raise Refusal(1003, 'expected a binary audio frame or {"end": true}')
                await self.queue.put(None)
                return
            if len(data) != start.frame_bytes:
                raise Refusal(1003, f"frame of {len(data)} bytes; expected {start.frame_bytes} "
                                    f"({start.block_size} samples x {start.channels} channels, {start.format})")
            try:  # the frame's size is checked above: what is left to refuse is NaN or infinity, as REST does
                block = decode_pcm(data, start.format, start.channels)
            except PcmError as error:
                raise Refusal(1007, str(error)) from None
            self.check_pace()
            self.frames += 1
            self.samples += start.block_size
            await self.queue.put(block)

    def check_pace(self) -> None:
        """Refuses audio more than ``burst_seconds`` ahead of the wall clock since the first frame
        (a real-time client is at zero: each frame arrives a block after the one before it)."""
        now = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = now
        ahead = self.samples / self.start.sample_rate - (now - self.first_frame_at)
        if ahead > self.limits.burst_seconds:
            raise Refusal(1008, f"sending faster than real time: {ahead:.2f} s of audio ahead of the clock "
                                f"(at most {self.limits.burst_seconds:g} s)")

    async def separate_frames(self) -> None:
        """Separates queued blocks in a worker thread and answers each; at the end, the tail."""
        while (block := await self.queue.get()) is not None:
            estimates = await run_in_threadpool(self.separation.push, block)
            await self.websocket.send_bytes(encode_sources(estimates, self.start.format))
        tail = await run_in_threadpool(self.separation.finish)
        await self.websocket.send_bytes(encode_sources(tail, self.start.format))

    async def close(self, code: int, reason: str) -> None:
        reason = fit_reason(reason)
        # The client may be gone already; a client that reads nothing is aborted by the protocol.
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self.websocket.close(code, reason)
        self.log(code, reason)

    def log(self, code: int, reason: str) -> None:
        log.info("live %s %s: frames %d, %.1f s, close %d%s", self.client, self.description, self.frames,
                 time.monotonic() - self.started, code, f" ({reason})" if reason else "")


class QuietWebSocketLines(logging.Filter):
    """For uvicorn's log: drops its two lines for each WebSocket (accepted, connection open); a
    session's own line comes when it ends, with what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (record.levelno == logging.INFO and
                    (message == "connection open" or message.startswith('%s - "WebSocket ')))


class LiveWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (the websockets library's sans-I/O one) for a client that may
    stop reading: a small kernel send buffer, so that a stalled client is noticed after
    ``SEND_BUFFER_BYTES`` rather than megabytes, and an abort once writing has waited (uvicorn's
    transport above its 64 kB high-water mark) for ``send_timeout`` seconds. A close frame would
    queue behind the unread data; the abort frees the connection and wakes the session's send."""

    send_timeout = 5.0

    @classmethod
    def with_send_timeout(cls, seconds: float) -> type:
        return type(cls.__name__, (cls,), {"send_timeout": seconds})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.stall_timer = None
        connection = transport.get_extra_info("socket")
        if connection is not None:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.stall_timer = self.loop.call_later(self.send_timeout, self.abort_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.cancel_stall_timer()

    def connection_lost(self, exc) -> None:
        self.cancel_stall_timer()
        super().connection_lost(exc)

    def cancel_stall_timer(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def abort_stalled(self) -> None:
        self.stall_timer = None
        log.warning("live %s: the client read nothing for %g s with %d bytes waiting to be sent; connection aborted",
                    "%s:%d" % self.client if self.client else "-", self.send_timeout,
                    self.transport.get_write_buffer_size())
        self.transport.abort()
