"""bench/generation.py: with few steps it prints both tables, the incremental generator
is faster than the naive one once the decoder is deep (2 blocks of 10 layers), and the
two generators' samples agree."""
import re

from bench.generation import main


def test_tiny_generation_bench_prints_its_rows(capsys):
    code = main(["--depths", "1x2,2x10", "--steps", "40", "--naive-steps", "8", "--realtime-configs", "small-full",
                 "--clip-seconds", "0.1", "--segment-seconds", "0.05", "--segment-steps", "0"])
    output = capsys.readouterr().out
    assert code == 0, output
    depth_rows = {match[0]: match for match in re.findall(
        r"^(\d+x\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)x\s+(\S+)$", output, re.MULTILINE)}
    assert set(depth_rows) == {"1x2", "2x10"}, output
    for depth, field, incremental, from_silence, full_field, ratio, ratio_from_silence, same in depth_rows.values():
        assert int(field) > 1 and float(incremental) > 0 and float(full_field) > 0
        assert float(ratio) > 0 and float(ratio_from_silence) > 0
        assert same == "yes"
    # At 2x10 (a field of 2048 samples) the naive generator reruns the decoder over the whole
    # field every step: measured 16-33x slower over a full field (0.9-2.3x over its first
    # steps, where its window is still short: not asserted).
    assert float(depth_rows["2x10"][5]) > 3, output
    assert "grows with depth:" in output
    # 0.1 s at 16 kHz as 0.05 s segments: a batch of 2 x 800 steps, then batch 1 over 1600 (40 timed).
    realtime_rows = re.findall(r"^small-full\s+1x10\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)x\s+(.*)$", output, re.MULTILINE)
    assert [(batch, steps) for batch, steps, *_ in realtime_rows] == [("2", "800"), ("1", "1600")], output
    assert all(float(realtime) > 0 for *_, realtime, _ in realtime_rows)
    assert realtime_rows[0][-1].startswith("all 800 steps") and "extrapolated" in realtime_rows[1][-1]
