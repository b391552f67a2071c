"""Serve an exported separator over TensorFlow Serving's REST API v1, plus a web page.

    python -m serve --model-base-path export/wavesep --model-name wavesep --port 8501

The same paths and JSON as ``tensorflow_model_server --rest_api_port=8501
--model_name=wavesep --model_base_path=...``: status, metadata and predict (row and
columnar formats) under /v1/models/wavesep; a song upload page at /; live separation
over a WebSocket at ws://.../v1/models/wavesep:stream. New versions exported into the
base path are picked up without a restart.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import uvicorn  # noqa: E402

from serve.app import create_app  # noqa: E402
from serve.limits import HeaderDeadlineProtocol  # noqa: E402
from serve.live import MAX_MESSAGE_BYTES, LiveLimits, LiveWebSocketProtocol, QuietWebSocketLines  # noqa: E402
from serve.repository import ModelRepository  # noqa: E402


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above zero, not {text}")
        return value
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base-path", required=True,
                        help="folder of numbered version folders, as export.py writes them (export/NAME)")
    parser.add_argument("--model-name", required=True, help="the NAME in /v1/models/NAME")
    parser.add_argument("--port", type=int, default=8501, help="TF Serving's REST port by default (8501)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a name (or address) in the Host header that the server answers to besides --host and "
                             "localhost, 127.0.0.1 and ::1: the names clients use with --host 0.0.0.0, or a proxy's; "
                             "other hosts are refused with 400, against DNS rebinding (repeatable)")
    parser.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                        help="a site (scheme://host[:port]) whose pages may call the server, besides its own page; "
                             "requests and WebSockets from other pages are refused with 403 (repeatable)")
    parser.add_argument("--poll-seconds", type=positive(float), default=1.0,
                        help="how often the base path is checked for new or removed versions (default: 1)")
    parser.add_argument("--num-versions", type=positive(int), default=1,
                        help="how many of the newest versions are loaded, as TF Serving's latest policy (default: 1)")
    parser.add_argument("--max-request-mb", type=positive(float), default=64,
                        help="larger request bodies are refused with 413 (default: 64)")
    parser.add_argument("--max-concurrent", type=positive(int), default=2,
                        help="model calls (and page decodes) running at once; further requests wait their "
                             "turn (default: 2)")
    parser.add_argument("--max-waiting", type=positive(int), default=16,
                        help="requests and page songs waiting for a model call; beyond them the server answers "
                             "429 at once, before reading the body (default: 16)")
    parser.add_argument("--max-per-client", type=positive(int), default=4,
                        help="requests and page songs running or waiting at once from one client address; beyond "
                             "them its further ones are answered 429 at once (default: 4)")
    parser.add_argument("--read-timeout", type=positive(float), default=10.0,
                        help="a request's headers must arrive within this many seconds of the connection (or of the "
                             "answer before), and its body within this plus a second per --min-body-rate; slower "
                             "clients are answered 408 and disconnected (default: 10)")
    parser.add_argument("--min-body-rate", type=positive(float), default=32, metavar="KB_PER_S",
                        help="the slowest a request body may arrive on average, after --read-timeout, in kB/s "
                             "(default: 32)")
    parser.add_argument("--max-song-minutes", type=positive(float), default=10,
                        help="longest song accepted, page uploads and separate_audio WAVs alike, checked from "
                             "the header and again while decoding (default: 10)")
    parser.add_argument("--max-jobs", type=positive(int), default=8,
                        help="songs of the web page kept with their results (default: 8)")
    parser.add_argument("--max-live-sessions", type=positive(int), default=2,
                        help="live separations (WebSocket :stream) at once; further ones are closed at once with "
                             "code 1013, try again later (default: 2)")
    parser.add_argument("--max-live-per-client", type=positive(int), default=1,
                        help="live sessions at once from one client address; further ones are closed at once with "
                             "code 1013 (default: 1)")
    parser.add_argument("--live-max-seconds", type=positive(float), default=3600.0,
                        help="how long a live session may last; it is then closed with 1008 (default: 3600)")
    parser.add_argument("--live-burst-seconds", type=positive(float), default=2.0,
                        help="how far a live client's audio may run ahead of the wall clock before it is closed "
                             "with 1008, sending faster than real time (default: 2)")
    parser.add_argument("--live-idle-seconds", type=positive(float), default=10.0,
                        help="a live session closes (1008) without its start message, or a frame, for this long "
                             "(default: 10)")
    parser.add_argument("--live-send-timeout", type=positive(float), default=5.0,
                        help="a WebSocket whose client has read nothing while answers waited this long is "
                             "aborted (default: 5)")
    return parser.parse_args(argv)


def exit_cleanly(signum, frame):
    """uvicorn re-raises SIGTERM once its graceful shutdown is over; without this handler the
    process would then die by the signal (exit code 143) although it stopped as asked."""
    sys.exit(0)


def main(argv=None) -> int:
    args = parse_args(argv)
    base_path = Path(args.model_base_path)
    if not base_path.is_dir():
        print(f"error: --model-base-path {base_path} is not a folder", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").addFilter(QuietWebSocketLines())
    repository = ModelRepository(args.model_name, base_path, args.num_versions, args.poll_seconds)
    live_limits = LiveLimits(args.max_live_sessions, args.live_burst_seconds, args.live_idle_seconds,
                             args.max_live_per_client, args.live_max_seconds)
    app = create_app(repository, int(args.max_request_mb * 2 ** 20), args.max_concurrent, args.max_jobs,
                     args.max_waiting, args.max_song_minutes * 60, live_limits,
                     allowed_hosts=[args.host, *args.allowed_host], allowed_origins=args.allowed_origin,
                     read_timeout=args.read_timeout, min_body_rate=args.min_body_rate * 1024,
                     max_per_client=args.max_per_client)
    signal.signal(signal.SIGTERM, exit_cleanly)
    # Our AccessLog middleware logs each request with its latency: uvicorn's own access log is off.
    # HTTP: uvicorn's h11 protocol with a deadline for the request's headers (serve/limits.py).
    # WebSockets: the websockets library's sans-I/O protocol with a send timeout; no compression (PCM
    # hardly compresses, and inflating costs the server); messages up to a second of 192 kHz stereo.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=30,
                log_config=None, http=HeaderDeadlineProtocol.with_header_timeout(args.read_timeout),
                ws=LiveWebSocketProtocol.with_send_timeout(args.live_send_timeout),
                ws_max_size=MAX_MESSAGE_BYTES, ws_per_message_deflate=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
