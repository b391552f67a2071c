"""bench/stream.py: its rows' arithmetic (latency = delay + block, compute as fractions of the block,
the ratio to offline compute), the simulated real-time schedule's misses on hand-made compute
times, a whole in-process run on a tiny untrained Wave-U-Net, and its WebSocket client against a
stand-in server that speaks the :stream protocol."""
import asyncio
import json
import threading

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.server import serve

import bench.stream as bench
from bench.stream import Row, deadline_misses, stream_row, websocket_round_trips, with_websocket
from models.registry import ARCHITECTURES
from runtime.cpu import this_cpu
from runtime.separator import keras_separator
from runtime.streaming import StreamSeparation
from tests.helpers import TINY_WAVEUNET as TINY, make_run_dir

RATE = TINY.sample_rate


@pytest.fixture(scope="module")
def separator():
    return keras_separator(ARCHITECTURES["waveunet"].build(TINY), "waveunet", TINY, "tiny")


@pytest.mark.parametrize("compute, misses", [
    ([0.5, 0.5, 0.5], 0),
    ([1.0, 1.0], 0),  # done exactly when due: in time
    ([1.5, 0.25, 0.25], 1),  # late, and the next block starts late but catches up
    ([1.75, 0.75, 0.75, 0.75, 0.25], 3),  # block 2 alone would fit: block 0's backlog makes it late
    ([1.25] * 8, 8),  # slower than real time: every block late
])
def test_deadline_misses_follow_the_real_time_schedule(compute, misses):
    assert deadline_misses(compute, block_seconds=1.0) == misses
    assert deadline_misses([seconds / 50 for seconds in compute], block_seconds=1 / 50) == misses


def test_a_row_is_the_arithmetic_of_its_measured_times(separator):
    stream = StreamSeparation(separator, RATE, 2, block_size=400)  # 50 ms
    compute = np.array([0.025] * 99 + [0.1])  # half a block each, then one of two blocks: the last is late
    row = stream_row("tiny", stream, RATE, 50, compute, offline_per_second=0.25)
    assert (row.block_size, row.delay_samples, row.blocks, row.misses) == (400, stream.delay_samples, 100, 1)
    assert row.delay_ms == pytest.approx(1000 * stream.delay_samples / RATE)
    assert row.latency_ms == pytest.approx(row.delay_ms + 50)
    assert row.compute_mean == pytest.approx((99 * 0.5 + 2) / 100)
    assert row.compute_p99 == pytest.approx(np.percentile(compute / 0.05, 99))
    assert row.vs_offline == pytest.approx(row.compute_mean / 0.25)


def test_a_run_on_a_tiny_model_prints_writes_and_records_consistent_rows(tmp_path, capsys, monkeypatch):
    from bench import records

    monkeypatch.setattr(records, "RESULTS", tmp_path)
    (tmp_path / "live.json").write_text(json.dumps({"rows": [], "columns": [
        {"header": "block", "cell": "{block_ms:g} ms"}, {"header": "latency", "cell": "{latency_ms:.1f} ms"}]}))
    run_dir = make_run_dir(tmp_path / "tiny")
    assert bench.main(["--model", str(run_dir), "--seconds", "2", "--blocks-ms", "50", "100",
                       "--json", str(tmp_path / "rows.json"), "--record", "live"]) == 0
    written = json.loads((tmp_path / "rows.json").read_text())
    recorded = json.loads((tmp_path / "live.json").read_text())["rows"]
    assert [row["key"] for row in recorded] == [f"tiny-{RATE}-50ms", f"tiny-{RATE}-100ms"]
    assert [row["figures"] for row in recorded] == written["rows"]
    assert recorded[0]["measured"]["command"].startswith("python bench/stream.py --model ")
    assert records.render_table("live", tmp_path)[2] == f"| 50 ms | {written['rows'][0]['latency_ms']:.1f} ms |"
    assert written["cpu"] == this_cpu().describe()
    rows = [Row(**row) for row in written["rows"]]
    assert [(row.model, row.rate, row.block_ms, row.block_size) for row in rows] == [
        ("tiny", RATE, 50, 400), ("tiny", RATE, 100, 800)]
    for row in rows:
        assert row.blocks == 2 * RATE // row.block_size - bench.WARMUP_BLOCKS
        assert row.latency_ms == pytest.approx(row.delay_ms + 1000 * row.block_size / RATE)
        assert 0 < row.compute_mean <= row.compute_p99 and 0 <= row.misses <= row.blocks
        assert row.vs_offline > 0 and row.ws_round_trip_p50_ms is None
    printed = capsys.readouterr().out
    assert "CPU: " in printed and "simulated from the measured compute times" in printed
    table = [line for line in printed.splitlines() if line.startswith("| tiny |")]
    assert len(table) == 2 and table[0].startswith(f"| tiny | {RATE} | 50 | {rows[0].delay_ms:.1f} |")
    assert f"| {rows[1].misses}/{rows[1].blocks} |" in table[1]


def stand_in_stream_server(separator):
    """The :stream protocol over StreamSeparation (the server's work is not what the test times)."""
    def handle(connection):
        opening = json.loads(connection.recv())
        if opening["block_size"] > RATE:  # as serve/live.py refuses: a close code and a reason
            connection.close(1008, "block_size too large")
            return
        stream = StreamSeparation(separator, opening["sample_rate"], opening["channels"], opening["block_size"])
        connection.send(json.dumps(stream.describe()))
        for frame in connection:
            estimates = stream.push(np.frombuffer(frame, "<f4").reshape(-1, opening["channels"]))
            connection.send(estimates["vocals"].tobytes() + estimates["accompaniment"].tobytes())

    return handle


@pytest.fixture(scope="module")
def stream_url(separator):
    with serve(stand_in_stream_server(separator), "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1/models/wavesep:stream"
        server.shutdown()
        thread.join()


def test_the_websocket_client_times_every_frame_after_the_warm_up(separator, stream_url):
    audio = np.random.default_rng(0).uniform(-0.3, 0.3, (RATE // 2, 2)).astype(np.float32)  # 10 blocks of 50 ms
    row = stream_row("tiny", StreamSeparation(separator, RATE, 2, 400), RATE, 50, np.full(5, 0.01), 0.25)
    trips, announced = asyncio.run(websocket_round_trips(stream_url, audio, RATE, 400))
    assert len(trips) == 10 - bench.WARMUP_BLOCKS and (trips > 0).all()
    assert announced["delay_samples"] == row.delay_samples

    measured = with_websocket(row, stream_url, audio)
    assert measured.ws_delay_ms == pytest.approx(row.delay_ms)  # the stand-in streams the same model
    assert 0 < measured.ws_round_trip_p50_ms <= measured.ws_round_trip_p99_ms
    assert measured.end_to_end_p50_ms == pytest.approx(row.latency_ms + measured.ws_round_trip_p50_ms)
    assert measured.end_to_end_p99_ms == pytest.approx(row.latency_ms + measured.ws_round_trip_p99_ms)


def test_a_stream_the_server_refuses_fails_with_its_reason(stream_url):
    with pytest.raises(ConnectionClosedError, match="block_size too large"):
        asyncio.run(websocket_round_trips(stream_url, np.zeros((2 * RATE, 2), np.float32), RATE, 2 * RATE))


def test_untrained_configs_are_checked_against_the_registry(capsys):
    assert bench.parse_args(["--untrained", "waveunet:lowlatency"]).untrained == ["waveunet:lowlatency"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--untrained", "waveunet:nosuch"])
    assert "no config 'nosuch'" in capsys.readouterr().err
