"""bench/serve.py's mixed-traffic and soak phases: the request mix, what counts as a failure,
the soak's hostile WAVs and slopes, and one short run of each against a server of the shipped
model (the session's export, conftest.py's shipped_export)."""
import base64
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

import bench.serve as bench
from serve.client import wav_bytes

RATE = 22050


def test_the_mix_has_its_shares_in_a_seeded_order():
    good = wav_bytes(bench.clip(0.1, RATE), RATE)
    mix = bench.request_mix(500, 0, good, RATE)
    categories = [request.category for request in mix]
    assert (categories.count("good"), categories.count("malformed"), categories.count("too big")) == (425, 50, 25)
    assert len({request.kind for request in mix if request.category == "malformed"}) == 6
    assert [r.kind for r in bench.request_mix(500, 0, good, RATE)] == [r.kind for r in mix]
    assert [r.kind for r in bench.request_mix(500, 1, good, RATE)] != [r.kind for r in mix]
    too_big = {request.kind: request.body for request in mix if request.category == "too big"}
    sizes = sorted(len(body) for body in too_big.values())
    assert sizes[0] < 30_000 and sizes[1] > bench.MIXED_MAX_REQUEST_MB * 2 ** 20  # the over-long WAV is tiny


def answer(status: int, seconds: float) -> httpx.Response:
    wav = {"b64": base64.b64encode(wav_bytes(np.zeros((int(seconds * RATE), 2)), RATE)).decode()}
    return httpx.Response(status, content=json.dumps(
        {"predictions": [{"vocals_bytes": wav, "accompaniment_bytes": wav}]}).encode())


def test_a_good_request_counts_only_when_answered_200_with_both_sources_at_its_length():
    assert bench.good_answer(answer(200, 1.0), RATE, RATE)
    assert not bench.good_answer(answer(200, 0.5), RATE, RATE)
    assert not bench.good_answer(httpx.Response(429, json={"error": "the server is busy"}), RATE, RATE)
    assert not bench.good_answer(httpx.Response(200, json={"predictions": []}), RATE, RATE)


def test_a_non_4xx_for_a_bad_request_or_a_failed_good_one_is_a_failure():
    outcomes = [bench.Outcome("good", "separate_audio", "200", 0.5, True),
                bench.Outcome("malformed", "NaN", "400", 0.1, True),
                bench.Outcome("malformed", "bad JSON", "500", 0.1, False),
                bench.Outcome("hostile upload", "playlist", "202 -> done, vocals.wav 200", 1.0, False)]
    assert bench.verdict(outcomes) == (0, 2)
    assert bench.verdict(outcomes + [bench.Outcome("good", "separate_audio", "429", 0.1, False)]) == (1, 2)
    table = "\n".join(bench.mixed_table(outcomes))
    assert re.search(r"malformed +bad JSON +1 .* 500: 1 +FAILED 1", table)
    assert re.search(r"malformed +\(all\) +2 .* 400: 1, 500: 1 +FAILED 1", table)


@pytest.mark.slow  # a minute on 2 cores; the bench itself is run by hand
def test_the_mixed_phase_passes_against_the_shipped_model(shipped_export, capsys):
    """60 requests (51 good, 6 malformed, 3 too big) and 2 + 2 uploads: about 40 s on 2 busy cores,
    plus the shipped model's export (about 25 s) unless another serve test made it already."""
    code = bench.main(["--phases", "mixed", "--model-base-path", str(shipped_export), "--mixed-requests", "60",
                       "--uploads", "2", "--mixed-seconds", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "phases: mixed" in printed and "Load:" not in printed and "in process" not in printed
    assert re.search(r"^  good +separate_audio +51 .* 200: 51$", printed, re.M), printed
    for kind in ("bad JSON", "wrong shape", "NaN", "not base64", "bytes not a WAV", "unknown signature"):
        assert re.search(rf"malformed +{kind} +1 .* 400: 1$", printed, re.M), printed
    assert re.search(r"too big +body over 2 MB .* 413: 2$", printed, re.M), printed
    assert re.search(r"too big +1\.5 min WAV at 100 Hz +1 .* 400: 1$", printed, re.M), printed
    assert re.search(r"good upload +1 s WAV +2 .* 202 -> done, vocals\.wav 200: 2$", printed, re.M), printed
    assert re.search(r"hostile upload +\(all\) +2 .* 202 -> error, vocals\.wav 404: 2$", printed, re.M), printed
    assert "FAILED" not in printed and "failures 0" in printed and "answered other than 4xx: 0" in printed
    peaks = re.search(r"VmHWM\) (\d+) MB before .* (\d+) MB after", printed)
    assert peaks and 0 < int(peaks[1]) <= int(peaks[2]), printed


def test_the_soak_builds_its_hostile_wavs_and_fits_its_slopes():
    good = wav_bytes(bench.clip(1.0, RATE), RATE)
    lying = bench.lying_wav(good, RATE)
    assert len(lying) == 44 + RATE // 10 * 4 and lying[:4] == b"RIFF"
    assert int.from_bytes(lying[40:44], "little") / (RATE * 4) / 3600 > 13  # hours claimed, a tenth of a second sent
    assert int.from_bytes(lying[4:8], "little") == int.from_bytes(lying[40:44], "little") + 36
    fuzzed = [bench.fuzzed_wav(good, np.random.default_rng(0)) for _ in range(2)]
    assert fuzzed[0] == fuzzed[1] != good
    assert bench.status_code(b"HTTP/1.1 408 Request Timeout\r\n") == "408" and bench.status_code(b"") == "closed"
    samples = [{"minute": minute, "rss_mb": 1000 + minute, "open_files": 12, "threads": 10 + minute / 60,
                "temp_files": 0} for minute in (0, 1, 2, 3)]
    assert bench.slopes_per_hour(samples) == pytest.approx({"rss_mb": 60, "open_files": 0, "threads": 1,
                                                            "temp_files": 0}, abs=1e-9)
    tmpdir = Path("/tmp/server")
    assert bench.job_result(tmpdir / "wavesep-jobs-x1" / "0123abcd" / "vocals.wav", tmpdir)
    assert not bench.job_result(tmpdir / "wavesep-jobs-x1" / "0123abcd" / "upload", tmpdir)
    assert not bench.job_result(tmpdir / "vocals.wav", tmpdir)


@pytest.mark.slow  # a minute on 2 cores, besides the export; the full soak is run by hand
def test_a_short_soak_passes_and_its_figures_agree(shipped_export, tmp_path, capsys):
    """Half a minute: a hostile client every 2 s (every kind at least once), slow ones for 4 s,
    the server read every 10 s."""
    figures_path = tmp_path / "soak.json"
    code = bench.main(["--phases", "soak", "--model-base-path", str(shipped_export), "--soak-minutes", "0.5",
                       "--sample-seconds", "10", "--hostile-seconds", "2", "--slow-seconds", "4",
                       "--json", str(figures_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    figures = json.loads(figures_path.read_text())
    assert figures["ok"] and figures["good_failures"] == 0 and figures["hostile_not_refused"] == 0, printed
    kinds = {row["kind"]: row for row in figures["kinds"] if row["kind"] != "(all)"}
    good = {kind: row for kind, row in kinds.items() if row["category"].startswith("good")}
    assert set(good) == {"serving_default", "separate_audio", "1 s WAV", "3 s, 20 ms blocks"}, printed
    assert all(set(row["statuses"]) <= {"200", "202 -> done, vocals.wav 200", "1000"} for row in good.values())
    hostile = {kind: row for kind, row in kinds.items() if row["category"].startswith("hostile")}
    assert len(hostile) == 9 and all(row["failed"] == 0 for row in hostile.values()), printed
    for kind, row in hostile.items():
        if not kind.startswith(("burst", "fuzzed")):  # those may be served: each request of a burst is a good one
            assert all(re.fullmatch(r"4\d\d|closed|202 -> error, vocals\.wav 4\d\d", status)
                       for status in row["statuses"]), (kind, row)
    assert figures["live_round_trip_ms"]["n"] > 0
    samples = figures["samples"]
    assert len(samples) >= 4 and all(sample["rss_mb"] > 0 and sample["threads"] > 0 for sample in samples)
    assert all(np.isfinite(slope) for slope in figures["slopes_per_hour"].values())
    assert figures["temp_files"]["stray_after_traffic"] == [] and figures["temp_files"]["left_after_stop"] == []
    assert figures["server_errors"] == [] and figures["server_ran_to_the_end"]
    assert "failures 0" in printed and "not refused 0" in printed and "after it stopped 0" in printed
    assert re.search(r"slope per hour \(least squares, \d+ samples\): RSS [+-]\d+ MB", printed), printed
