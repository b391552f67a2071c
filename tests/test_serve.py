"""serve/: TensorFlow Serving's REST API v1 (status, metadata, predict in both formats and
both signatures, explicit versions, errors), new versions picked up while serving, the
access log, shutdown on SIGTERM, and serve.client's round trip.

A tiny stand-in SavedModel with the exported signatures (vocals = gain * mix) keeps the
API and error checks fast; the shipped model, exported once per session, checks the
real thing end to end. Every server runs in a subprocess on 127.0.0.1."""
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from serve.client import wav_bytes
from tests.serve_helpers import MIX, REPOSITORY, Server, audio_request, b64, free_port, save_stand_in


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal over difference in dB; infinite for identical signals."""
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2)))


def from_b64(value: dict) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(base64.b64decode(value["b64"])), dtype="float32", always_2d=True)


# --- the API, against the stand-in --------------------------------------------------------

GAIN = 0.5


@pytest.fixture(scope="module")
def stand_in_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("stand-in")
    save_stand_in(base, 1, GAIN)
    return base


@pytest.fixture(scope="module")
def server(stand_in_base, tmp_path_factory):
    server = Server(stand_in_base, "tiny", tmp_path_factory.mktemp("log") / "server.log",
                    "--poll-seconds", "0.2", "--num-versions", "2", "--max-request-mb", "1")
    server.wait_for({1})
    yield server
    server.stop()


def test_status_and_metadata_are_tf_servings_json(server):
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{server.url}/v1/models/tiny").json() == status
    assert httpx.get(f"{server.url}/v1/models/tiny/versions/1").json() == status

    for path in ("/v1/models/tiny/metadata", "/v1/models/tiny/versions/1/metadata"):
        metadata = httpx.get(f"{server.url}{path}").json()
        assert metadata["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
        signatures = metadata["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "separate_audio", "__saved_model_init_op"} <= set(signatures)

        def dims(*sizes):
            return {"dim": [{"size": size, "name": ""} for size in sizes], "unknown_rank": False}

        default = signatures["serving_default"]
        assert default["method_name"] == "tensorflow/serving/predict"
        assert default["inputs"] == {"waveform": {"name": "serving_default_waveform:0", "dtype": "DT_FLOAT",
                                                  "tensor_shape": dims("-1", "-1", "2")}}
        assert {name: (o["dtype"], o["tensor_shape"]) for name, o in default["outputs"].items()} == {
            "vocals": ("DT_FLOAT", dims("-1", "-1", "2")), "accompaniment": ("DT_FLOAT", dims("-1", "-1", "2"))}
        audio = signatures["separate_audio"]
        assert audio["inputs"]["audio_bytes"]["dtype"] == "DT_STRING"
        assert audio["inputs"]["audio_bytes"]["tensor_shape"] == dims("-1")
        assert {name: o["dtype"] for name, o in audio["outputs"].items()} == {
            "vocals_bytes": "DT_STRING", "accompaniment_bytes": "DT_STRING"}


@pytest.mark.parametrize("path", ["/v1/models/tiny:predict", "/v1/models/tiny/versions/1:predict"])
def test_predict_in_row_and_columnar_formats(server, path):
    row = server.post(path, {"instances": MIX.tolist()})
    assert row.status_code == 200, row.text
    predictions = row.json()["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == {"vocals", "accompaniment"}
    np.testing.assert_array_equal(np.array([p["vocals"] for p in predictions], np.float32), GAIN * MIX)
    np.testing.assert_array_equal(np.array([p["accompaniment"] for p in predictions], np.float32), (1 - GAIN) * MIX)

    # Floats print as TF Serving prints them: 6 significant digits where they read back the same.
    assert server.post(path, {"instances": [[[0.1, 0.2]]]}).json()["predictions"] == [
        {"vocals": [[0.05, 0.1]], "accompaniment": [[0.05, 0.1]]}]
    for inputs in ({"waveform": MIX.tolist()}, MIX.tolist()):  # named, or the single input's plain value
        columnar = server.post(path, {"signature_name": "serving_default", "inputs": inputs})
        assert columnar.status_code == 200, columnar.text
        outputs = columnar.json()["outputs"]
        np.testing.assert_array_equal(np.array(outputs["vocals"], np.float32), GAIN * MIX)
        np.testing.assert_array_equal(np.array(outputs["accompaniment"], np.float32), (1 - GAIN) * MIX)


def test_separate_audio_takes_and_returns_base64_wavs(server):
    songs = [(np.random.default_rng(1).uniform(-0.5, 0.5, (800, 1)), 8000),
             (np.random.default_rng(2).uniform(-0.5, 0.5, (441, 2)), 44100)]
    row = server.post("/v1/models/tiny:predict",
                      {"signature_name": "separate_audio", "instances": [b64(wav_bytes(*songs[0]))]})
    assert row.status_code == 200, row.text
    [prediction] = row.json()["predictions"]
    vocals, rate = from_b64(prediction["vocals_bytes"])
    assert rate == 8000 and vocals.shape == (800, 1)
    np.testing.assert_allclose(vocals, GAIN * songs[0][0], atol=2 ** -15)

    columnar = server.post("/v1/models/tiny:predict", {"signature_name": "separate_audio", "inputs": {
        "audio_bytes": [b64(wav_bytes(audio, rate)) for audio, rate in songs]}})
    assert columnar.status_code == 200, columnar.text
    outputs = columnar.json()["outputs"]
    for (audio, rate), encoded in zip(songs, outputs["accompaniment_bytes"]):
        accompaniment, returned_rate = from_b64(encoded)
        assert returned_rate == rate and accompaniment.shape == audio.shape
        np.testing.assert_allclose(accompaniment, (1 - GAIN) * audio, atol=2 ** -15)


PREDICT = "/v1/models/tiny:predict"
BAD_REQUESTS = {
    # name: (method, path, body, status)
    "malformed JSON": ("POST", PREDICT, b'{"instances": [', 400),
    "empty body": ("POST", PREDICT, b"", 400),
    "JSON that is not an object": ("POST", PREDICT, b"[1, 2]", 400),
    "neither instances nor inputs": ("POST", PREDICT, {"signature_name": "serving_default"}, 400),
    "both instances and inputs": ("POST", PREDICT, {"instances": [[[0, 0]]], "inputs": [[[0, 0]]]}, 400),
    "instances not a list": ("POST", PREDICT, {"instances": {"b64": "AAAA"}}, 400),
    "no instances": ("POST", PREDICT, {"instances": []}, 400),
    "ragged lists": ("POST", PREDICT, {"instances": [[[0.1, 0.2], [0.3]]]}, 400),
    "wrong rank": ("POST", PREDICT, {"instances": [[0.1, 0.2]]}, 400),
    "wrong channel count": ("POST", PREDICT, {"instances": [[[0.1, 0.2, 0.3]]]}, 400),
    "zero-length waveform": ("POST", PREDICT, {"inputs": {"waveform": [[]]}}, 400),
    "strings for DT_FLOAT": ("POST", PREDICT, {"instances": [[["0.1", "0.2"]]]}, 400),
    "booleans for DT_FLOAT": ("POST", PREDICT, {"instances": [[[True, False]]]}, 400),
    "NaN": ("POST", PREDICT, b'{"instances": [[[NaN, 0.5]]]}', 400),
    "infinity": ("POST", PREDICT, b'{"inputs": [[[0.5, -Infinity]]]}', 400),
    "numbers for DT_STRING": ("POST", PREDICT, {"signature_name": "separate_audio", "instances": [1.5]}, 400),
    "not base64": ("POST", PREDICT, {"signature_name": "separate_audio", "instances": [{"b64": "no base64!"}]}, 400),
    "bytes that are not a WAV": ("POST", PREDICT, audio_request(b"RIFF but not really a wave file"), 400),
    "a WAV with 5 channels": ("POST", PREDICT, audio_request(wav_bytes(np.zeros((100, 5)), 8000)), 400),
    "a WAV without samples": ("POST", PREDICT, audio_request(wav_bytes(np.zeros((0, 2)), 8000)), 400),
    "signature_name not a string": ("POST", PREDICT, {"signature_name": 3, "instances": [[[0, 0]]]}, 400),
    "unknown signature": ("POST", PREDICT, {"signature_name": "nope", "instances": [[[0, 0]]]}, 400),
    "unknown model": ("POST", "/v1/models/nope:predict", {"instances": [[[0, 0]]]}, 404),
    "unknown version": ("POST", "/v1/models/tiny/versions/99:predict", {"instances": [[[0, 0]]]}, 404),
    "status of an unknown model": ("GET", "/v1/models/nope", None, 404),
    "status of an unknown version": ("GET", "/v1/models/tiny/versions/99", None, 404),
    "metadata of an unknown version": ("GET", "/v1/models/tiny/versions/99/metadata", None, 404),
    "malformed path": ("GET", "/v1/models", None, 400),
    "body over the limit": ("POST", PREDICT, b" " * (1024 * 1024 + 1), 413),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(server, name):
    method, path, body, status = BAD_REQUESTS[name]
    if method == "GET":
        response = httpx.get(f"{server.url}{path}")
    else:
        response = server.post(path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and 0 < len(error) < 400, error
    assert server.post(PREDICT, {"instances": MIX[:1].tolist()}).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(server):
    def body():
        for _ in range(40):
            yield b" " * 65536

    response = httpx.post(f"{server.url}{PREDICT}", content=body(), timeout=60)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_the_graphs_own_error_message_comes_back_short(server):
    response = server.post(PREDICT, audio_request(b"hello, not a WAV"))
    assert response.json() == {"error": "Header mismatch: Expected RIFF but found hell"}


def test_a_new_version_is_served_once_loaded_and_a_removed_one_unloaded(server, stand_in_base):
    """Version 2 is written while requests keep coming: none fails, each answer is
    version 1's until version 2's start and version 2's after; version 1 stays
    reachable by number (--num-versions 2) until its folder is removed."""
    save_stand_in(stand_in_base, 2, 0.25)
    gains = []
    deadline = time.monotonic() + 60
    while not gains or gains[-1] != 0.25:
        assert time.monotonic() < deadline, server.log()
        response = server.post(PREDICT, {"instances": MIX[:1].tolist()})
        assert response.status_code == 200, response.text
        gains.append(round(float(np.array(response.json()["predictions"][0]["vocals"])[0, 0] / MIX[0, 0, 0]), 3))
    assert set(gains) <= {GAIN, 0.25} and gains == sorted(gains, reverse=True)
    server.wait_for({1, 2})
    states = httpx.get(f"{server.url}/v1/models/tiny").json()["model_version_status"]
    assert [s["version"] for s in states] == ["2", "1"]
    by_number = server.post("/v1/models/tiny/versions/1:predict", {"instances": MIX[:1].tolist()})
    np.testing.assert_array_equal(np.array(by_number.json()["predictions"][0]["vocals"], np.float32), GAIN * MIX[0])

    shutil.rmtree(stand_in_base / "1")
    server.wait_for({2})
    assert server.post("/v1/models/tiny/versions/1:predict", {"instances": MIX[:1].tolist()}).status_code == 404
    assert "unloading tiny version 1" in server.log()


def test_each_request_gets_an_access_log_line(server):
    log = server.log()
    for method, path, status in [("GET", "/v1/models/tiny/metadata", 200), ("POST", PREDICT, 200),
                                 ("POST", PREDICT, 400), ("POST", "/v1/models/nope:predict", 404),
                                 ("POST", PREDICT, 413)]:
        assert re.search(rf'127\.0\.0\.1:\d+ "{method} {re.escape(path)}" {status} \d+\.\d ms$', log, re.MULTILINE), \
            f"no access line for {method} {path} {status}:\n{log}"


def test_sigterm_stops_the_server_gracefully(server):
    """Last of the stand-in's tests: it stops the module's server."""
    assert server.stop() == 0
    assert "Finished server process" in server.log()


# --- the shipped model, exported ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(shipped_model_server):
    return shipped_model_server


@pytest.fixture(scope="module")
def in_process(shipped_export):
    """The same export as a runtime Separator in this process."""
    from runtime.loading import load_separator

    return load_separator(shipped_export / "1")


@pytest.fixture(scope="module")
def in_process_saved_model(shipped_export):
    return tf.saved_model.load(str(shipped_export / "1"))


def test_real_model_serving_default_matches_in_process_separation(real_server, in_process):
    mix = np.random.default_rng(3).uniform(-0.3, 0.3, (1, 22050, 2)).astype(np.float32)
    response = real_server.post("/v1/models/wavesep:predict", {"inputs": {"waveform": mix.tolist()}})
    assert response.status_code == 200, response.text
    from runtime.chunking import separate_song

    # The shipped export runs its post-filter (the facts' post_filter) in the graph; the numpy path takes it too.
    expected = separate_song(in_process, mix[0], 22050, wiener=in_process.wiener)
    for source in ("vocals", "accompaniment"):
        np.testing.assert_allclose(np.array(response.json()["outputs"][source], np.float32)[0], expected[source],
                                   atol=1e-5)


@pytest.mark.parametrize("rate, channels, seconds", [(22050, 2, 20.3), (44100, 1, 14.1), (16000, 1, 14.1)])
def test_client_round_trip_agrees_with_in_process_separation(real_server, in_process, in_process_saved_model,
                                                             tmp_path, rate, channels, seconds):
    """Chunks of 6 s with 1.5 s margins asked (several requests) through the server, cut on
    the served plan: the files have the input's rate, channels and length and, where a
    stride of the plan is a whole number of the file's samples (22.05 and 44.1 kHz for the
    22.05 kHz model), equal one separate_audio call on the whole file in this process and
    the numpy path (separate_song: the same resampling and channel rules) up to the 16-bit
    rounding of the answers. At 16 kHz requests start up to half a sample off the model's
    plan, and the model hears them resampled at another phase."""
    from runtime.chunking import separate_song

    time_axis = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(4).standard_normal((len(time_axis), channels))
    song = (0.3 * np.sin(2 * np.pi * 220 * time_axis * (1 + 0.2 * np.sin(time_axis)))[:, None] + 0.05 * noise)
    sf.write(tmp_path / "song.wav", song.astype(np.float32), rate, subtype="PCM_16")
    result = subprocess.run([sys.executable, "-m", "serve.client", str(tmp_path / "song.wav"), "--url", real_server.url,
                             "--model", "wavesep", "--out", str(tmp_path / "out"), "--chunk-seconds", "6",
                             "--margin-seconds", "1.5"], cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "note" not in result.stderr, result.stderr

    audio, _ = sf.read(tmp_path / "song.wav", dtype="float32", always_2d=True)
    expected = separate_song(in_process, audio, rate, wiener=in_process.wiener)
    whole_file = in_process_saved_model.signatures["separate_audio"](audio_bytes=tf.constant([wav_bytes(audio, rate)]))
    for source in ("vocals", "accompaniment"):
        separated, separated_rate = sf.read(tmp_path / "out" / "song" / f"{source}.wav", dtype="float32",
                                            always_2d=True)
        assert separated_rate == rate and separated.shape == audio.shape
        one_call, _ = sf.read(io.BytesIO(whole_file[f"{source}_bytes"][0].numpy()), dtype="float32", always_2d=True)
        if rate in (22050, 44100):
            # Measured: at most one 16-bit step from one call (100-132 dB), and half a step
            # plus 2.1e-7 from the numpy path (83-86 dB, the answers' rounding).
            np.testing.assert_allclose(separated, one_call, atol=2 ** -15 + 1e-6, err_msg=source)
            np.testing.assert_allclose(separated, np.clip(expected[source], -1, 1), atol=2 ** -16 + 2e-6,
                                       err_msg=source)
        else:  # Measured: 40.1 dB from one call and from the numpy path (48.5 dB at 48 kHz, stereo).
            assert sdr(one_call, separated) > 37 and sdr(expected[source], separated) > 37, source


def test_metadata_carries_the_exports_facts_beside_the_signatures(real_server, shipped_export):
    """What serve.client cuts on: an export's facts, chunk plan included, as the metadata
    field model_facts; a version without facts gets TF Serving's metadata alone."""
    metadata = httpx.get(f"{real_server.url}/v1/models/wavesep/metadata").json()["metadata"]
    facts = json.loads((shipped_export / "1" / "assets" / "model.json").read_text())
    assert "serving_default" in metadata["signature_def"]["signature_def"]
    assert metadata["model_facts"]["chunk_plan"] == facts["chunk_plan"]
    assert metadata["model_facts"]["sample_rate"] == facts["sample_rate"] == 22050
    from serve import rest

    assert set(rest.metadata_json("tiny", 1, {}, facts=None)["metadata"]) == {"signature_def"}


def test_client_says_when_the_server_is_unreachable_or_refuses(real_server, tmp_path):
    sf.write(tmp_path / "song.wav", np.zeros((22050, 2), np.float32), 22050)

    def client(url, model):
        return subprocess.run([sys.executable, "-m", "serve.client", str(tmp_path / "song.wav"), "--url", url,
                               "--model", model, "--out", str(tmp_path / "out")], cwd=REPOSITORY,
                              capture_output=True, text=True, timeout=120)

    unreachable = client(f"http://127.0.0.1:{free_port()}", "wavesep")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    refused = client(real_server.url, "nope")
    assert refused.returncode == 2 and "answered 404: Servable not found for request: Latest(nope)" in refused.stderr
    assert not (tmp_path / "out" / "song" / "vocals.wav").exists()


# A plan whose numbers are easy to tell apart: context of 60 samples before the kept
# 640 (the stride) and 300 after, at the mock model's 8 kHz.
MOCK_PLAN = {"input_length": 1000, "output_offset": 60, "output_length": 880, "keep_from": 0, "stride": 640}
HTTPX_CLIENT = httpx.Client  # the real one, where a test puts a stand-in in its place


def run_client_against_a_mock(monkeypatch, tmp_path, facts, rate: int, *args) -> tuple[int, np.ndarray, list]:
    """serve.client's main against a stand-in server in this process: its metadata holds
    ``facts`` as serve gives them (None: signatures only, as TF Serving gives them), its
    predict answers vocals = mix / 4 and records each request's audio. Returns the exit
    code, the song (2.5 s of distinct 16-bit values) and where each request started in it."""
    import serve.client

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            metadata = {"signature_def": {"signature_def": {}}} | ({} if facts is None else {"model_facts": facts})
            return httpx.Response(200, json={"model_spec": {"name": "tiny", "signature_name": "", "version": "1"},
                                             "metadata": metadata})
        audio, audio_rate = sf.read(io.BytesIO(base64.b64decode(json.loads(request.content)["instances"][0]["b64"])),
                                    dtype="float32", always_2d=True)
        requests.append(audio)
        answers = {f"{source}_bytes": {"b64": base64.b64encode(wav_bytes(audio * gain, audio_rate)).decode()}
                   for source, gain in (("vocals", 0.25), ("accompaniment", 0.75))}
        return httpx.Response(200, json={"predictions": [answers]})

    requests = []
    monkeypatch.setattr(serve.client.httpx, "Client",
                        lambda **kwargs: HTTPX_CLIENT(transport=httpx.MockTransport(handle), **kwargs))
    song = np.random.default_rng(5).permutation(np.arange(-20000, 20000, dtype=np.int16))[:int(2.5 * rate), None]
    tmp_path.mkdir(parents=True, exist_ok=True)
    sf.write(tmp_path / "song.wav", song, rate, subtype="PCM_16")
    code = serve.client.main([str(tmp_path / "song.wav"), "--url", "http://mock", "--model", "tiny",
                              "--out", str(tmp_path / "out"), *args])
    song = song[:, 0] / 32768
    # Each request is a stretch of the song; its first 4 (distinct) values say where it starts.
    starts = [int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(song, 4) == r[:4, 0], axis=1))[0])
              for r in requests]
    if code == 0:
        vocals, _ = sf.read(tmp_path / "out" / "song" / "vocals.wav", dtype="float32")
        np.testing.assert_allclose(vocals, song / 4, atol=2 ** -15)  # the kept centres tile the song
    return code, song, list(zip(starts, map(len, requests)))


def test_client_cuts_on_the_servers_chunk_plan(monkeypatch, tmp_path, capsys):
    """At the model's rate every request starts on a multiple of the plan's stride (640), keeps
    whole strides (0.25 s asked: 2000 samples -> 3 strides, 1920) and carries at least the
    plan's context: 0.01 s of margin asked (80 samples) -> 640 before (a stride, >= its 60
    of context) and 300 after (its context after the stride)."""
    facts = {"arch": "waveunet", "sample_rate": 8000, "channels": 1, "chunk_plan": MOCK_PLAN}
    code, song, requests = run_client_against_a_mock(monkeypatch, tmp_path, facts, 8000,
                                                     "--chunk-seconds", "0.25", "--margin-seconds", "0.01")
    assert code == 0 and "note" not in capsys.readouterr().err
    hop, before, after = 1920, 640, 300
    expected = [(max(0, keep - before), min(len(song), keep + hop + after) - max(0, keep - before))
                for keep in range(0, len(song), hop)]
    assert requests == expected
    assert all(start % MOCK_PLAN["stride"] == 0 for start, _ in requests)
    # A file at twice the model's rate: the same cuts in the model's time, twice the samples.
    code, song, requests = run_client_against_a_mock(monkeypatch, tmp_path / "16k", facts, 16000,
                                                     "--chunk-seconds", "0.25", "--margin-seconds", "0.01")
    assert code == 0
    assert requests == [(2 * start, 2 * length) for start, length in expected]


def test_client_without_a_plan_cuts_on_its_grid_with_a_note_and_refuses_a_bad_plan(monkeypatch, tmp_path, capsys):
    # Signatures only (the official TF Serving image), or facts without a plan: the 4096 grid, said once.
    for index, facts in enumerate([None, {"arch": "waveunet", "sample_rate": 8000, "chunk_plan": {}}]):
        code, song, requests = run_client_against_a_mock(monkeypatch, tmp_path / str(index), facts, 8000,
                                                         "--chunk-seconds", "1", "--margin-seconds", "0.1")
        assert code == 0 and "note: http://mock gives no chunk plan" in capsys.readouterr().err
        # 1 s (8000 samples) -> 2 grid steps kept (8192); a margin of 800 -> one grid step before (4096).
        assert requests == [(0, 8192 + 800), (4096, 4096 + 8192 + 800), (12288, len(song) - 12288)]
    # A plan that is there but cannot be used: a clear error before any request, exit code 2.
    for bad in [{**MOCK_PLAN, "stride": 0}, {**MOCK_PLAN, "stride": 640.5}, {"input_length": 1000},
                {**MOCK_PLAN, "stride": 950}]:
        facts = {"arch": "waveunet", "sample_rate": 8000, "chunk_plan": bad}
        code, _, requests = run_client_against_a_mock(monkeypatch, tmp_path / "bad", facts, 8000)
        error = capsys.readouterr().err
        assert code == 2 and requests == [] and "gives a chunk plan that cannot be used" in error, error
