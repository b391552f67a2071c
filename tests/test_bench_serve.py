"""bench/serve.py's mixed-traffic phase: the request mix, what counts as a failure, and one
short run against a server of the shipped model (the session's export, conftest.py's shipped_export)."""
import base64
import json
import re

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
