"""Separation speed and memory, measured side by side in one run.

    python -m bench.separate

For the default preset and M4/M5/M5-HighSR-sized Wave-U-Nets (random weights:
speed does not depend on them) on a 30 s stereo 44.1 kHz clip it prints:
  - x realtime: seconds of audio separated per wall-clock second;
  - achieved FLOP/s as a percentage of this machine's measured float32 matmul FLOP/s
    (in float32 and in bfloat16, which AVX512-BF16 CPUs run faster);
  - context overhead: input samples computed per output sample, for our chunking
    against f90's (which runs the network on its 147443 -> 16389 training frame).
Then the peak RSS of separate.py separating a 10-minute stereo file.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import tensorflow as tf  # noqa: E402

from inference import PRECISIONS, PRETRAINED_MODEL, Separator, build_in_precision, keras_separator, \
    separate_song  # noqa: E402
from models.registry import ARCHITECTURES  # noqa: E402
from run_directory import RunDirectory  # noqa: E402

WAVEUNET = ARCHITECTURES["waveunet"]

CLIP_RATE = 44100
REPOSITORY = Path(__file__).resolve().parents[1]


def matmul_flops_per_second(size: int = 2048, repeats: int = 20) -> float:
    """The machine's own limit: float32 matmul throughput with every core busy."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    tf.linalg.matmul(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        c = tf.linalg.matmul(a, b)
    c.numpy()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def model_flops(model: keras.Model) -> float:
    """Multiply-adds of every convolution, counted twice (FLOPs), for the model's fixed input length."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv1D):
            kernel, channels_in, channels_out = layer.kernel.shape
            total += 2 * kernel * channels_in * channels_out * layer.output.shape[1]
    return float(total)


def random_separator(name: str, precision: str) -> Separator:
    model = build_in_precision(WAVEUNET.build, WAVEUNET.configs[name], precision)
    return keras_separator(model, "waveunet", WAVEUNET.configs[name], f"{name} (random weights)")


def measure(name: str, precision: str, clip: np.ndarray, chunk_seconds: float, peak: float) -> dict:
    config = WAVEUNET.configs[name]
    separator = random_separator(name, precision)
    plan = separator.chunk_plan(int(chunk_seconds * config.sample_rate))
    separate_song(separator, clip[: CLIP_RATE // 2], CLIP_RATE, chunk_seconds)  # warm-up: traces the graph
    start = time.perf_counter()
    separate_song(separator, clip, CLIP_RATE, chunk_seconds)
    seconds = time.perf_counter() - start
    chunks = -(-int(len(clip) / CLIP_RATE * config.sample_rate) // plan.stride)
    flops = model_flops(WAVEUNET.build(config, plan.input_length)) * chunks * separator.passes(clip.shape[1])
    f90_input, f90_output = WAVEUNET.input_length_for(config, config.num_frames)
    return {"config": name, "precision": precision, "rate": config.sample_rate, "realtime": len(clip) / CLIP_RATE / seconds,
            "flops_percent": 100 * flops / seconds / peak, "overhead": plan.overhead,
            "f90_overhead": f90_input / f90_output, "seconds": seconds}


def peak_rss_of_long_separation(minutes: float, model_dir: Path, scratch: Path) -> float:
    """Peak RSS (GiB) of separate.py on a long stereo file, in a child process of its own."""
    song = scratch / "long.wav"
    frames = int(minutes * 60 * CLIP_RATE)
    with sf.SoundFile(song, "w", CLIP_RATE, 2, subtype="PCM_16") as file:
        rng = np.random.default_rng(0)
        for start in range(0, frames, 60 * CLIP_RATE):  # written a minute at a time: the bench stays small too
            file.write(rng.uniform(-0.3, 0.3, (min(60 * CLIP_RATE, frames - start), 2)))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report
    # this (large) benchmark process's memory at the fork.
    script = ("import sys, separate; code = separate.main(sys.argv[1:]); "
              "print('VMHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, str(song), "--model", str(model_dir), "--out",
                             str(scratch / "out")], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    kilobytes = int(result.stdout.split("VMHWM")[1].split()[0])
    return kilobytes / 2 ** 20


def save_random_run(name: str, folder: Path) -> Path:
    run_directory = RunDirectory(folder)
    run_directory.write_config({"arch": "waveunet", "model": WAVEUNET.configs[name].to_dict()})
    run_directory.checkpoints.mkdir()
    WAVEUNET.build(WAVEUNET.configs[name]).save(run_directory.last_checkpoint)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "M4", "M5", "M5-HighSR"],
                        help="Wave-U-Net configs to time, with random weights (default: small M4 M5 M5-HighSR)")
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=["float32", "bfloat16"],
                        help="precisions to time each config in (default: both)")
    parser.add_argument("--chunk-seconds", type=float, default=30.0, help="separate.py's default")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="length of the memory test file")
    parser.add_argument("--model", help="run directory for the memory test (default: the shipped pretrained "
                                        "model, else a random small model)")
    args = parser.parse_args()

    clip = np.random.default_rng(0).uniform(-0.3, 0.3, (30 * CLIP_RATE, 2)).astype(np.float32)
    peak = matmul_flops_per_second()
    print(f"Machine: {os.cpu_count()} CPU cores, float32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"clip: 30 s stereo at {CLIP_RATE} Hz; chunks of {args.chunk_seconds:g} s")
    print(f"{'model':10s} {'precision':9s} {'rate':>6s} {'x realtime':>11s} {'% fp32 peak':>12s} "
          f"{'context overhead':>17s} {'f90 framing':>12s}")
    for name in args.configs:
        for precision in args.precisions:
            row = measure(name, precision, clip, args.chunk_seconds, peak)
            print(f"{row['config']:10s} {precision:9s} {row['rate']:6d} {row['realtime']:10.1f}x "
                  f"{row['flops_percent']:11.1f}% {row['overhead']:16.2f}x {row['f90_overhead']:11.2f}x")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = Path(args.model) if args.model else (
            PRETRAINED_MODEL if PRETRAINED_MODEL.is_dir() else save_random_run("small", scratch / "run"))
        rss = peak_rss_of_long_separation(args.long_minutes, model_dir, scratch)
        audio_gib = args.long_minutes * 60 * CLIP_RATE * 2 * 4 / 2 ** 30
        print(f"Peak RSS separating a {args.long_minutes:g}-minute stereo file with {model_dir.name}: {rss:.2f} GiB "
              f"(limit 2 GiB; the song itself is {audio_gib:.2f} GiB as float32)")


if __name__ == "__main__":
    main()
