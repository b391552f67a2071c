"""Examples per second of the tf.data pipeline against a naive Python loop doing
the same decode + crop + augment, measured side by side in one run.

    python -m bench.pipeline            # 147443-sample stereo crops at 22.05 kHz, batch 16

Both read the same songs from disk and do the same work: each decoded song
gives --crops-per-decode crops (train.py's crops_per_track) and lends its
accompaniment to the next song for about half of that song's crops (the cross-song
remix), then gains and channel swaps. The naive loop is what a first training
script does: decode with soundfile, crop, remix, swap, stack a batch, one step
after another. The pipeline decodes in parallel inside tf.data (and, cached, once).
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


def naive_examples(tracks, crop: CropSpec, sample_rate: int, crops_per_decode: int, seed: int):
    """Decode + crop + augment in a plain Python loop, one example at a time."""
    rng = np.random.default_rng(seed)
    padding = ((crop.context_left, crop.context_right), (0, 0))
    centre = slice(crop.context_left, crop.context_left + crop.output_length)

    def random_start(signal):
        return rng.integers(len(signal) - crop.input_length + 1)

    donor = None
    while True:
        track = tracks[rng.integers(len(tracks))]
        vocals, accompaniment = (np.pad(load_audio(files[0].path, sample_rate, channels=2)[0], padding)
                                 for files in (track.vocals, track.accompaniment))
        for _ in range(crops_per_decode):
            start = random_start(vocals)
            vocals_window = vocals[start:start + crop.input_length]
            if donor is not None and rng.random() < 0.5:
                donor_start = random_start(donor)
                accompaniment_window = donor[donor_start:donor_start + crop.input_length]
            else:
                accompaniment_window = accompaniment[start:start + crop.input_length]
            vocals_window = vocals_window * rng.uniform(0.7, 1.0)
            accompaniment_window = accompaniment_window * rng.uniform(0.7, 1.0)
            if rng.random() < 0.5:
                vocals_window, accompaniment_window = vocals_window[:, ::-1], accompaniment_window[:, ::-1]
            yield vocals_window + accompaniment_window, vocals_window[centre], accompaniment_window[centre]
        donor = accompaniment


def naive_batches(examples, batch_size: int):
    while True:
        mixes, vocals, accompaniment = zip(*(next(examples) for _ in range(batch_size)))
        yield np.stack(mixes), {"vocals": np.stack(vocals), "accompaniment": np.stack(accompaniment)}


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
    parser.add_argument("--sample-rate", type=int, default=22050, help="rate of the songs (default: 22050)")
    parser.add_argument("--input-length", type=int, default=147443, help="crop fed to the model (f90 M4)")
    parser.add_argument("--output-length", type=int, default=16389, help="centred target length (f90 M4)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per batch (default: 16)")
    parser.add_argument("--crops-per-decode", type=int, default=8, help="crops taken from each decoded song")
    parser.add_argument("--songs", type=int, default=16, help="synthetic songs of 20 s read from disk")
    parser.add_argument("--batches", type=int, default=20, help="batches timed per contender")
    parser.add_argument("--cache-dir", default=None, help="synthetic cache (default: a temporary folder)")
    args = parser.parse_args()

    crop = CropSpec(args.input_length, args.output_length)
    with tempfile.TemporaryDirectory() as scratch:
        options = SyntheticOptions(songs={"train": args.songs, "valid": 1, "test": 1}, cache_dir=args.cache_dir or scratch)
        tracks = get_tracks("synthetic", "train", sample_rate=args.sample_rate, synthetic=options)
        print(f"{len(tracks)} songs x 20 s, crops {args.input_length} -> {args.output_length} stereo at "
              f"{args.sample_rate} Hz, {args.crops_per_decode} crops per decoded song, batch {args.batch_size}, "
              f"{os.cpu_count()} CPU cores")
        naive = naive_examples(tracks, crop, args.sample_rate, args.crops_per_decode, seed=0)
        pipeline = dict(sample_rate=args.sample_rate, crop=crop, batch_size=args.batch_size,
                        crops_per_track=args.crops_per_decode)
        contenders = {
            "naive Python loop": naive_batches(naive, args.batch_size),
            "tf.data, decode per song (no cache)": make_dataset(tracks, cache=False, **pipeline).as_numpy_iterator(),
            "tf.data, cached in memory": make_dataset(tracks, cache=True, **pipeline).as_numpy_iterator(),
        }
        rates = {}
        for name, batches in contenders.items():
            # The cached pipeline's first pass decodes every song; warm up past it.
            warmup = 3 + (args.songs * args.crops_per_decode // args.batch_size if "cached" in name else 0)
            rates[name] = examples_per_second(batches, args.batch_size, warmup, args.batches)
    baseline = rates["naive Python loop"]
    for name, rate in rates.items():
        print(f"{name:40s} {rate:8.1f} examples/s   {rate / baseline:5.2f}x naive")


if __name__ == "__main__":
    main()
