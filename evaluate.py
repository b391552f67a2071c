"""Score a separator with museval (BSSEval v4, 1 s windows) on a dataset's test split.

    python evaluate.py --model runs/waveunet-small-... --dataset musdb --data-root ~/data/musdb18

Prints per-track and median SDR/SIR/SAR for vocals and accompaniment beside two
systems that do not separate: the best no-separation baseline (each source
estimated as the mixture times its least-squares gain, per track) and the plain
mixture. The model's gain is its SDR over the best-gain baseline: scaling the
mixture alone already beats the plain mixture by several dB. Writes everything as
JSON. Songs are scored at their own sample rate. A track that cannot be read is
reported and skipped (exit code 1); the others are still scored.
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

from data_pipeline.audio import AudioError  # noqa: E402
from data_pipeline.datasets import DATASETS, SPLITS, SyntheticOptions, get_tracks, load_track, \
    native_sample_rate  # noqa: E402
from models.architecture import SOURCES  # noqa: E402
from models.registry import PRECISIONS  # noqa: E402
from runtime.chunking import positive_seconds, separate_song  # noqa: E402
from runtime.loading import is_exported, load_separator  # noqa: E402
from training.metrics import best_gain_estimates  # noqa: E402

METRICS = ("SDR", "SIR", "SAR")
SYSTEMS = ("model", "best_gain_baseline", "mixture")
SYSTEM_LABELS = {"model": "model", "best_gain_baseline": "best-g", "mixture": "mix"}
# DatasetError is a ValueError; decoders report some broken files as RuntimeError.
TRACK_LOAD_ERRORS = (AudioError, ValueError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a run directory, an exported SavedModel version folder or an exported model.onnx")
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic", help="dataset to score on "
                        "(default: synthetic)")
    parser.add_argument("--data-root", help="dataset folder (every dataset but the generated synthetic and rendered)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="dataset split to score (default: test)")
    parser.add_argument("--cache-dir", help="generated song cache (default: $WAVESEP_CACHE or ~/.cache/wavesep)")
    parser.add_argument("--max-tracks", type=int, help="score only the first N tracks")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="float32",
                        help="bfloat16: faster on CPUs with AVX512-BF16 and on GPUs, at bfloat16's ~3 significant "
                             "digits (default: float32)")
    parser.add_argument("--chunk-seconds", type=positive_seconds, default=30.0,
                        help="audio per model call; lower it to use less memory (default: 30)")
    parser.add_argument("--json", help="where to write the scores (default: for a run directory, "
                        "<run>/evaluation-<dataset>-<split>.json; for an exported model, "
                        "evaluation-<name>-<dataset>-<split>.json in the current folder, <name> naming the export: "
                        "x-1 for export/x/1, x-1-onnx for export/x/1/model.onnx. An exported version folder is "
                        "never written to: a model server watches it)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def exported_model_name(path) -> str:
    """A file-name-safe name of an exported model: <base>-<version> for a SavedModel version
    folder (export/x/1 -> x-1), <base>-<version>-onnx for its model.onnx (another .onnx file
    in it: <base>-<version>-<file stem>)."""
    path = Path(path).resolve()
    if path.suffix == ".onnx":
        parts = [path.parent.parent.name, path.parent.name, "onnx" if path.stem == "model" else path.stem]
    else:
        parts = [path.parent.name, path.name]
    return "-".join(part for part in parts if part)


def default_json_path(model, dataset: str, split: str) -> Path:
    """Where the scores go without --json: into a run directory, but never into an exported
    model's version folder (a model server watches it) nor, for a model.onnx, into a file
    path: into the current folder, named after the export."""
    if is_exported(model):
        return Path.cwd() / f"evaluation-{exported_model_name(model)}-{dataset}-{split}.json"
    return Path(model) / f"evaluation-{dataset}-{split}.json"


def bss_scores(references: dict, estimates: dict, sample_rate: int) -> dict:
    """Per-source median over 1 s windows of BSSEval v4 SDR/SIR/SAR (NaN windows, e.g.
    silent references, are skipped as in SiSEC)."""
    import museval  # imported lazily: slow to import

    stacked_references = np.stack([references[s] for s in SOURCES])
    stacked_estimates = np.stack([estimates[s] for s in SOURCES])
    sdr, _, sir, sar = museval.evaluate(stacked_references, stacked_estimates, win=sample_rate, hop=sample_rate)
    return {source: {name: float(np.nanmedian(values[index])) for name, values in zip(METRICS, (sdr, sir, sar))}
            for index, source in enumerate(SOURCES)}


def load_track_audio(track) -> tuple[dict, int]:
    sample_rate = native_sample_rate(track)
    return load_track(track, sample_rate), sample_rate


def evaluate_track(separator, audio: dict, sample_rate: int, chunk_seconds: float) -> dict:
    """Scores of the model and of the two no-separation systems on one track, the
    least-squares gains of the best-gain baseline and the model's SDR gain over it."""
    references = {source: audio[source] for source in SOURCES}
    best_gain, gains = best_gain_estimates(audio["mixture"], references)
    estimates = {"model": separate_song(separator, audio["mixture"], sample_rate, chunk_seconds=chunk_seconds),
                 "best_gain_baseline": best_gain,
                 "mixture": {source: audio["mixture"] for source in SOURCES}}
    scores = {system: bss_scores(references, estimates[system], sample_rate) for system in SYSTEMS}
    scores["least_squares_gains"] = gains
    scores["sdr_gain_over_best_gain_baseline"] = {
        source: scores["model"][source]["SDR"] - scores["best_gain_baseline"][source]["SDR"] for source in SOURCES}
    return scores


def medians(per_track: dict) -> dict:
    return {system: {source: {metric: float(np.nanmedian([t[system][source][metric] for t in per_track.values()]))
                              for metric in METRICS} for source in SOURCES}
            for system in SYSTEMS}


def median_gains(per_track: dict) -> dict:
    return {source: float(np.nanmedian([t["sdr_gain_over_best_gain_baseline"][source] for t in per_track.values()]))
            for source in SOURCES}


def format_header() -> str:
    sources = " ".join(f"{source + ' SDR':^20s}" for source in SOURCES)
    systems = " ".join(f"{SYSTEM_LABELS[system]:>6s}" for _ in SOURCES for system in SYSTEMS)
    return f"{'track':40s} {sources}\n{'':40s} {systems}"


def format_row(name: str, scores: dict) -> str:
    cells = [f"{scores[system][source]['SDR']:6.2f}" for source in SOURCES for system in SYSTEMS]
    details = "  ".join(f"{source[:5]} SIR {scores['model'][source]['SIR']:6.2f} SAR {scores['model'][source]['SAR']:6.2f}"
                        for source in SOURCES)
    return f"{name[:40]:40s} " + " ".join(cells) + "   " + details


def format_summary(source: str, summary: dict, gain: float) -> str:
    return (f"{source}: model median SDR {summary['model'][source]['SDR']:.2f} dB, best-gain baseline "
            f"{summary['best_gain_baseline'][source]['SDR']:.2f} dB, gain over best-gain baseline {gain:+.2f} dB "
            f"(median per track); plain mixture {summary['mixture'][source]['SDR']:.2f} dB")


def main(argv=None) -> int:
    args = parse_args(argv)
    destination = Path(args.json) if args.json else default_json_path(args.model, args.dataset, args.split)
    # Checked before scoring, which can take long. The default destination's folder is the run
    # directory (which load_separator checks) or the current folder.
    if args.json and (destination.is_dir() or not destination.parent.is_dir()):
        problem = "it is a folder" if destination.is_dir() else f"{destination.parent} is not a folder"
        print(f"error: cannot write the scores to {destination}: {problem}", file=sys.stderr)
        return 2
    try:
        separator = load_separator(args.model, args.precision)
        synthetic = SyntheticOptions(cache_dir=args.cache_dir)
        tracks = get_tracks(args.dataset, args.split, data_root=args.data_root, sample_rate=separator.sample_rate,
                            synthetic=synthetic)[:args.max_tracks]
    except (FileNotFoundError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Scoring {separator.source} ({args.precision}) on {len(tracks)} {args.dataset} {args.split} tracks "
          f"(BSSEval v4, 1 s windows)")
    print(format_header())
    per_track, skipped = {}, []
    for track in tqdm(tracks, desc="tracks", leave=False):
        try:
            audio, sample_rate = load_track_audio(track)
        except TRACK_LOAD_ERRORS as error:
            skipped.append({"track": track.name, "reason": str(error)})
            tqdm.write(f"error: track {track.name}: {error} (skipped)", file=sys.stderr)
            continue
        per_track[track.name] = evaluate_track(separator, audio, sample_rate, args.chunk_seconds)
        tqdm.write(format_row(track.name, per_track[track.name]))
    report = {"model": separator.source, "dataset": args.dataset, "split": args.split, "precision": args.precision,
              "tracks": per_track, "skipped": skipped}
    if per_track:
        report["median"] = medians(per_track)
        report["median_sdr_gain_over_best_gain_baseline"] = median_gains(per_track)
        print(format_row("MEDIAN", report["median"]))
        for source in SOURCES:
            print(format_summary(source, report["median"], report["median_sdr_gain_over_best_gain_baseline"][source]))
    destination.write_text(json.dumps(report, indent=2))
    print(f"Scores written to {destination}")
    if not per_track:
        print(f"error: none of the {len(tracks)} tracks could be read; nothing was scored", file=sys.stderr)
        return 2
    if skipped:
        print(f"{len(skipped)} of {len(tracks)} tracks skipped: {', '.join(s['track'] for s in skipped)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
