"""bench/separate.py: the int8 ONNX model it builds from an exported run separates like Keras float32, and
its rows time any registered architecture's config in the runtimes that apply to it."""
import argparse
import sys

import numpy as np
import pytest

import bench.separate as bench
from bench.separate import CLIP_RATE, BenchModel, Peer, measure, peer_rows, runtime_models, speed_rows
from runtime.chunking import separate_song
from runtime.loading import load_separator
from tests.helpers import TINY_UMT_FULL as TINY_FULL, TINY_WAVEUNET as TINY, make_run_dir


def test_int8_onnx_of_a_tiny_run_separates_like_keras_float32(tmp_path):
    song = np.random.default_rng(0).uniform(-0.3, 0.3, (2 * TINY.sample_rate, 2)).astype(np.float32)
    models = runtime_models(make_run_dir(tmp_path / "run"), tmp_path / "export", ["keras-float32", "onnx-int8"],
                            [(song, TINY.sample_rate)])
    reference = separate_song(load_separator(*models["keras-float32"]), song, TINY.sample_rate)
    int8 = load_separator(*models["onnx-int8"])
    estimates = separate_song(int8, song, TINY.sample_rate)
    for source, expected in reference.items():
        # int8 keeps about 2 significant digits: error energy 2.1e-4 and 5e-5 of the signal's (7-bit weights).
        assert np.sum((estimates[source] - expected) ** 2) < 1e-3 * np.sum(expected ** 2)
    assert measure(int8, np.resize(song, (CLIP_RATE, 2)), chunk_seconds=0.5, repeats=1) > 0


def test_configs_name_any_architecture_and_a_bare_name_is_a_wave_u_net():
    small = BenchModel.parse("small")
    assert (small.arch, small.label, small.generates) == ("waveunet", "small", False)
    full = BenchModel.parse("umt:small-full")
    assert (full.arch, full.name, full.label, full.generates) == ("umt", "small-full", "umt:small-full", True)
    assert not BenchModel.parse("umt:small").generates and BenchModel.parse("wavenet:small").arch == "wavenet"
    for wrong in ("umt:M5", "unet:small"):
        with pytest.raises(argparse.ArgumentTypeError):
            BenchModel.parse(wrong)


def test_rows_of_a_tiny_generating_umt_skip_onnx_and_are_timed_once(tmp_path, capsys):
    clip = np.random.default_rng(0).uniform(-0.3, 0.3, (CLIP_RATE // 4, 2)).astype(np.float32)
    # The SavedModel is left out: exporting even a tiny generator takes 10 s (the real run times it).
    realtime = speed_rows(BenchModel("umt", "tiny-full", TINY_FULL), ["keras-float32", "onnx-float32", "onnx-int8"],
                          clip, chunk_seconds=0.25, repeats=3, peak=1e12, scratch=tmp_path)
    assert list(realtime) == ["keras-float32"] and realtime["keras-float32"] > 0
    assert not (tmp_path / "umt-tiny-full" / "export").exists()  # nothing asked for an export it can do
    printed = capsys.readouterr().out
    assert "onnx-float32, onnx-int8 skipped" in printed
    rows = [line for line in printed.splitlines() if line.startswith("umt:tiny-full ")]
    # Timed once (it generates); FLOPs counted from the teacher-forced graph; no f90 framing.
    assert len(rows) == 1 and rows[0].endswith("n/a  1 run") and "%" in rows[0]


@pytest.mark.parametrize("minutes", ["-1", "nan", "inf", "ten", "0.001"])
def test_long_minutes_must_be_a_second_or_more_or_zero(minutes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.build_parser().parse_args(["--long-minutes", minutes])
    assert exit_info.value.code == 2
    assert "--long-minutes" in capsys.readouterr().err


def test_long_minutes_0_skips_the_memory_test_and_no_peer_figure_without_openunmix(monkeypatch, capsys):
    assert bench.build_parser().parse_args(["--long-minutes", "0"]).long_minutes == 0
    # The timing itself is covered above: stubbed here, so the entry point runs in a second.
    monkeypatch.setattr(bench, "matmul_flops_per_second", lambda: 1e12)
    monkeypatch.setattr(bench, "speed_rows", lambda model, runtimes, *args: {"keras-float32": 20.0})

    def no_memory_test(*args):
        raise AssertionError("--long-minutes 0 ran the memory test")

    monkeypatch.setattr(bench, "peak_rss_of_long_separation", no_memory_test)
    monkeypatch.setattr(bench, "resampling_row", lambda *args: 0.05)
    monkeypatch.setattr(bench, "shipped_separator_row", lambda *args: 20.0)
    monkeypatch.setitem(sys.modules, "openunmix", None)  # not importable, whether or not it is installed
    assert bench.main(["--configs", "small", "--runtimes", "keras-float32", "--long-minutes", "0"]) == 0
    printed = capsys.readouterr().out
    assert "memory test skipped (--long-minutes 0)" in printed
    peer_lines = [line for line in printed.splitlines() if line.startswith("Peer:")]
    assert len(peer_lines) == 1 and "no peer figure is printed" in peer_lines[0]
    assert "pip install openunmix" in peer_lines[0] and "x realtime" not in printed.split("Peer:")[1]


def test_a_peer_is_timed_on_the_same_clip_and_each_config_compared_with_it(capsys):
    clip = np.zeros((CLIP_RATE, 2), np.float32)
    seen = []
    peer = Peer("Fake peer", "two sources", lambda audio: seen.append(audio.shape), "fake 1.0")
    speed = peer_rows({"small": {"keras-float32": 1.0, "onnx-float32": 2.0}, "M5": {"keras-float32": 0.5}}, clip,
                      repeats=2, find_peer=lambda: (peer, ""))
    assert seen == [(CLIP_RATE // 2, 2), clip.shape, clip.shape]  # a warm-up, then 2 timed runs of the clip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"Peer: Fake peer (two sources), measured here on the same clip: {speed:.2f}x")
    assert lines[1] == f"  small (onnx-float32): 2.00x realtime = {2 / speed:.2f} x Fake peer"
    assert lines[2] == f"  M5 (keras-float32): 0.50x realtime = {0.5 / speed:.2f} x Fake peer"


def test_record_writes_each_configs_runtimes_and_the_quality_rows(monkeypatch, tmp_path, capsys):
    import json

    from bench import records

    for name in ("runtime-speed", "runtime-quality"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"columns": [], "rows": []}))
    monkeypatch.setattr(records, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "matmul_flops_per_second", lambda: 1e12)
    monkeypatch.setattr(bench, "speed_rows",
                        lambda model, runtimes, *args: {"keras-float32": 20.0, "savedmodel-float32": 30.0})
    scores = {"keras-float32": {"runtime": "keras-float32", "vocals_sdr": 4.2, "vocals_delta": 0.0}}
    monkeypatch.setattr(bench, "quality", lambda *args: scores)
    monkeypatch.setitem(sys.modules, "openunmix", None)
    argv = ["--configs", "small", "--runtimes", "keras-float32", "savedmodel-float32", "--long-minutes", "0",
            "--quality", "--record"]
    assert bench.main(argv) == 0
    speed = json.loads((tmp_path / "runtime-speed.json").read_text())["rows"]
    assert [(row["key"], row["figures"]["ratio"]) for row in speed] == [
        ("small-keras-float32", 1.0), ("small-savedmodel-float32", 1.5)]
    assert speed[0]["measured"]["command"] == "python -m bench.separate " + " ".join(argv)
    assert json.loads((tmp_path / "runtime-quality.json").read_text())["rows"][0]["figures"] == scores["keras-float32"]


def test_the_shipped_separator_is_timed_with_its_post_filter_against_the_model_and_the_peer(tmp_path, capsys):
    """The shipped model's config.json names the post-filter the row times; the peer runs in the same loop."""
    import json

    assert json.loads(bench.PRETRAINED_MODEL.joinpath("config.json").read_text())["post_filter"] == \
        bench.SHIPPED_POST_FILTER
    clip = np.random.default_rng(0).uniform(-0.3, 0.3, (2 * CLIP_RATE, 2)).astype(np.float32)
    seen = []
    peer = Peer("Fake peer", "two sources", lambda audio: seen.append(audio.shape), "fake 1.0")
    speed = bench.shipped_separator_row(clip, 30.0, 2, tmp_path, peer)
    assert seen == [clip.shape] * 3  # a warm-up, then once per loop
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # the suite runs as an AVX2 machine (conftest.py), where --precision auto computes in float32
    assert line.startswith("Shipped separator (small, Keras float32 (--precision auto on this CPU), Wiener mask, "
                           f"44.1 kHz path): {speed:.2f}x realtime")
    model_speed = float(line.split("of the model alone (")[1].split("x)")[0])
    # the printed ratio, against one from the printed (rounded to 0.005) speed of the model alone
    rounding = 0.005 / model_speed * speed / model_speed
    assert float(line.split("realtime, ")[1].split(" of")[0]) == pytest.approx(speed / model_speed, abs=0.005 + rounding)
    assert "x Open-Unmix UMX-HQ (aim: >= 2.5)" in line
    bench.shipped_separator_row(clip, 30.0, 1, tmp_path / "no-peer", None)
    assert "Open-Unmix" not in capsys.readouterr().out  # no peer installed: no ratio


def test_resampling_is_timed_against_the_model_at_its_rate(tmp_path, capsys):
    clip = np.random.default_rng(0).uniform(-0.3, 0.3, (3 * bench.CLIP_RATE, 2)).astype(np.float32)
    share = bench.resampling_row(bench.BenchModel.parse("small"), clip, 30.0, 2, tmp_path)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Resampling (small"))
    resampling_ms = float(line.split("float32): ")[1].split(" ms per clip")[0])
    model_ms = float(line.split("of the model's ")[1].split(" ms")[0])
    assert 0 < share < 1  # resampling is cheaper than the model even at this clip length
    assert float(line.split(" = ")[1].split(" of")[0]) == pytest.approx(share, abs=5e-4)
    assert share == pytest.approx(resampling_ms / model_ms, rel=0.1, abs=2e-3)  # the printed ms are rounded
    assert "(aim: <= 0.1)" in line and float(line.split("takes ")[1].split("x the")[0]) >= 1 - 0.3


def test_the_post_filter_is_timed_alone_and_after_the_model(tmp_path, capsys):
    clip = np.random.default_rng(0).uniform(-0.3, 0.3, (2 * bench.CLIP_RATE, 2)).astype(np.float32)
    bench.post_filter_rows(bench.BenchModel.parse("small"), 10.0, clip, 30.0, [1, 2], False, 1, tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Post-filter:")]
    assert len(lines) == 2 and "1 EM iteration(s)" in lines[0] and "2 EM iteration(s)" in lines[1]
    for line in lines:
        alone = float(line.split("22050 Hz: ")[1].split("x realtime alone")[0])
        together = float(line.split("with it ")[1].split("x realtime")[0])
        assert together == pytest.approx(1 / (1 / 10.0 + 1 / alone), abs=0.06)
        assert float(line.split(", ")[-1].split(" of")[0]) == pytest.approx(together / 10.0, abs=0.01)
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--wiener", "-1"])
