"""Score a separator with museval (BSSEval v4, 1 s windows) on a dataset's test split.

    python evaluate.py --model runs/waveunet-small-... --dataset musdb --data-root ~/data/musdb18

Prints per-track and median SDR/SIR/SAR for vocals and accompaniment, beside the
same scores for the mixture used as the estimate of both sources (the baseline a
separator has to beat), and writes them all as JSON. Songs are scored at their
own sample rate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data_pipeline.datasets import DATASETS, SPLITS, SyntheticOptions, get_tracks, load_track, \
    native_sample_rate  # noqa: E402
from data_pipeline.pipeline import SOURCES  # noqa: E402
from inference import load_separator, separate_song  # noqa: E402

METRICS = ("SDR", "SIR", "SAR")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory of a trained model")
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic")
    parser.add_argument("--data-root", help="dataset folder (every dataset but synthetic)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--cache-dir", help="synthetic song cache (default: $WAVESEP_CACHE or ~/.cache/wavesep)")
    parser.add_argument("--max-tracks", type=int, help="score only the first N tracks")
    parser.add_argument("--json", help="where to write the scores (default: <model>/evaluation-<dataset>-<split>.json)")
    return parser.parse_args(argv)


def bss_scores(references: dict, estimates: dict, sample_rate: int) -> dict:
    """Per-source median over 1 s windows of BSSEval v4 SDR/SIR/SAR (NaN windows, e.g.
    silent references, are skipped as in SiSEC)."""
    import museval  # imported lazily: slow to import

    stacked_references = np.stack([references[s] for s in SOURCES])
    stacked_estimates = np.stack([estimates[s] for s in SOURCES])
    sdr, _, sir, sar = museval.evaluate(stacked_references, stacked_estimates, win=sample_rate, hop=sample_rate)
    return {source: {name: float(np.nanmedian(values[index])) for name, values in zip(METRICS, (sdr, sir, sar))}
            for index, source in enumerate(SOURCES)}


def evaluate_track(separator, track) -> dict:
    sample_rate = native_sample_rate(track)
    audio = load_track(track, sample_rate)
    estimates = separate_song(separator, audio["mixture"], sample_rate)
    mixture_as_estimate = {source: audio["mixture"] for source in SOURCES}
    references = {source: audio[source] for source in SOURCES}
    return {"model": bss_scores(references, estimates, sample_rate),
            "mixture": bss_scores(references, mixture_as_estimate, sample_rate)}


def medians(per_track: dict) -> dict:
    return {system: {source: {metric: float(np.nanmedian([t[system][source][metric] for t in per_track.values()]))
                              for metric in METRICS} for source in SOURCES}
            for system in ("model", "mixture")}


def format_row(name: str, scores: dict) -> str:
    cells = [f"{scores[system][source][metric]:6.2f}" for source in SOURCES for system in ("model", "mixture")
             for metric in ("SDR",)]
    details = "  ".join(f"{source[:5]} SIR {scores['model'][source]['SIR']:6.2f} SAR {scores['model'][source]['SAR']:6.2f}"
                        for source in SOURCES)
    return f"{name[:40]:40s} " + " ".join(cells) + "   " + details


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        separator = load_separator(args.model)
        synthetic = SyntheticOptions(cache_dir=args.cache_dir)
        tracks = get_tracks(args.dataset, args.split, data_root=args.data_root, sample_rate=separator.sample_rate,
                            synthetic=synthetic)[:args.max_tracks]
    except (FileNotFoundError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Scoring {separator.source} on {len(tracks)} {args.dataset} {args.split} tracks (BSSEval v4, 1 s windows)")
    print(f"{'track':40s} {'vocals SDR':>13s} {'accomp. SDR':>13s}\n{'':40s} {'model':>6s} {'mix':>6s} {'model':>6s} {'mix':>6s}")
    per_track = {}
    for track in tqdm(tracks, desc="tracks", leave=False):
        per_track[track.name] = evaluate_track(separator, track)
        tqdm.write(format_row(track.name, per_track[track.name]))
    summary = medians(per_track)
    print(format_row("MEDIAN", summary))
    for source in SOURCES:
        gain = summary["model"][source]["SDR"] - summary["mixture"][source]["SDR"]
        print(f"{source}: median SDR {summary['model'][source]['SDR']:.2f} dB, mixture baseline "
              f"{summary['mixture'][source]['SDR']:.2f} dB, improvement {gain:+.2f} dB")
    destination = Path(args.json or Path(args.model) / f"evaluation-{args.dataset}-{args.split}.json")
    destination.write_text(json.dumps({"model": separator.source, "dataset": args.dataset, "split": args.split,
                                       "median": summary, "tracks": per_track}, indent=2))
    print(f"Scores written to {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
