"""Examples per second of the tf.data pipeline against a naive Python loop doing
the same decode + crop + augment, measured side by side in one run.

    python -m bench.pipeline            # 147443-sample stereo crops at 22.05 kHz, batch 16

Both read the same songs from disk. The naive loop is what a first training
script does: pick a song, decode it with soundfile, crop, remix, swap, stack a
batch. The pipeline decodes in parallel inside tf.data (and, with --cache, once).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from data_pipeline.audio import load_audio  # noqa: E402
from data_pipeline.datasets import SyntheticOptions, get_tracks  # noqa: E402
from data_pipeline.pipeline import CropSpec, make_dataset  # noqa: E402


def naive_batches(tracks, crop: CropSpec, sample_rate: int, batch_size: int, seed: int):
    """Decode + crop + augment in a plain Python loop, one example at a time."""
    rng = np.random.default_rng(seed)
    while True:
        mixes, vocals_batch, accompaniment_batch = [], [], []
        for _ in range(batch_size):
            track = tracks[rng.integers(len(tracks))]
            vocals, _ = load_audio(track.vocals[0].path, sample_rate, channels=2)
            accompaniment, _ = load_audio(track.accompaniment[0].path, sample_rate, channels=2)
            padding = ((crop.context_left, crop.context_right), (0, 0))
            vocals, accompaniment = np.pad(vocals, padding), np.pad(accompaniment, padding)
            start = rng.integers(len(vocals) - crop.input_length + 1)
            window = slice(start, start + crop.input_length)
            vocals, accompaniment = vocals[window] * rng.uniform(0.7, 1.0), accompaniment[window] * rng.uniform(0.7, 1.0)
            if rng.random() < 0.5:
                vocals, accompaniment = vocals[:, ::-1], accompaniment[:, ::-1]
            centre = slice(crop.context_left, crop.context_left + crop.output_length)
            mixes.append(vocals + accompaniment)
            vocals_batch.append(vocals[centre])
            accompaniment_batch.append(accompaniment[centre])
        yield np.stack(mixes), {"vocals": np.stack(vocals_batch), "accompaniment": np.stack(accompaniment_batch)}


def examples_per_second(batches, batch_size: int, warmup: int, measured: int) -> float:
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(measured):
        next(iterator)
    return measured * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample-rate", type=int, default=22050)
    parser.add_argument("--input-length", type=int, default=147443, help="crop fed to the model (f90 M4)")
    parser.add_argument("--output-length", type=int, default=16389, help="centred target length (f90 M4)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--songs", type=int, default=16, help="synthetic songs of 20 s read from disk")
    parser.add_argument("--batches", type=int, default=20, help="batches timed per contender")
    parser.add_argument("--cache-dir", default=None, help="synthetic cache (default: a temporary folder)")
    args = parser.parse_args()

    crop = CropSpec(args.input_length, args.output_length)
    with tempfile.TemporaryDirectory() as scratch:
        options = SyntheticOptions(songs={"train": args.songs, "valid": 1, "test": 1}, cache_dir=args.cache_dir or scratch)
        tracks = get_tracks("synthetic", "train", sample_rate=args.sample_rate, synthetic=options)
        print(f"{len(tracks)} songs x 20 s, crops {args.input_length} -> {args.output_length} stereo at "
              f"{args.sample_rate} Hz, batch {args.batch_size}, {os.cpu_count()} CPU cores")
        contenders = {
            "naive Python loop": naive_batches(tracks, crop, args.sample_rate, args.batch_size, seed=0),
            "tf.data, decode per song (no cache)": make_dataset(
                tracks, sample_rate=args.sample_rate, crop=crop, batch_size=args.batch_size, cache=False).as_numpy_iterator(),
            "tf.data, cached in memory": make_dataset(
                tracks, sample_rate=args.sample_rate, crop=crop, batch_size=args.batch_size, cache=True).as_numpy_iterator(),
        }
        rates = {}
        for name, batches in contenders.items():
            # The cached pipeline's first pass decodes every song; warm up past it.
            warmup = 3 + (args.songs * 8 // args.batch_size if "cached" in name else 0)
            rates[name] = examples_per_second(batches, args.batch_size, warmup, args.batches)
    baseline = rates["naive Python loop"]
    for name, rate in rates.items():
        print(f"{name:40s} {rate:8.1f} examples/s   {rate / baseline:5.2f}x naive")


if __name__ == "__main__":
    main()
