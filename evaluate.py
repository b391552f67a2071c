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

from tqdm import tqdm  # noqa: E402

from bench import records  # noqa: E402
from data_pipeline.datasets import DATASETS, SPLITS, SyntheticOptions, get_tracks  # noqa: E402
from models.architecture import SOURCES  # noqa: E402
from models.registry import PRECISIONS  # noqa: E402
from runtime.chunking import positive_seconds  # noqa: E402
from runtime.ensemble import ensemble_separator  # noqa: E402
from runtime.loading import load_separator  # noqa: E402
from runtime.wiener import add_wiener_arguments, model_wiener  # noqa: E402
from runtime.scoring import default_json_path, format_comparison, format_header, format_row, format_summary, \
    model_sdrs, paired_comparison, score_tracks, summary  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a run directory, an exported SavedModel version folder or an exported model.onnx")
    parser.add_argument("--ensemble-with", action="append", metavar="MODEL", default=[],
                        help="also run this model (same rate, channels and framing, e.g. another seed or "
                             "fine-tune of the same config) and score the mean of their outputs; once per "
                             "model. The post-filter is --model's. Needs --json (docs/averaging.md)")
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
    add_wiener_arguments(parser, "Default: the model's own (off; an export made with export.py --wiener has "
                                 "the variant it was made with), as separate.py.")
    parser.add_argument("--wiener-soft-mask", action="store_true",
                        help="older spelling: start from the soft mask (--wiener N becomes mask+emN; alone: mask)")
    parser.add_argument("--paired-with", metavar="SCORES_JSON",
                        help="another evaluate.py --json of the same songs (e.g. the model before a change): also "
                             "print on how many tracks this one scores higher and the per-track SDR differences, "
                             "which --record keeps beside the medians")
    parser.add_argument("--record", metavar="NAME:ROW",
                        help="also put the medians into row ROW of docs/results/NAME.json with this command line, "
                             "the commit, the CPU and the date (python -m bench.records then renders the tables "
                             "of the README and docs/ from it)")
    return parser


def record_figures(report: dict) -> dict:
    """The medians a results table shows, by name (``bench.records``), and with
    --paired-with each source's ``<source>_better`` (tracks), ``<source>_paired_median``
    and ``<source>_paired_mean`` (dB) against the other scores."""
    median, gains = report["median"], report["median_sdr_gain_over_best_gain_baseline"]
    figures = {"tracks": len(report["tracks"]), "dataset": report["dataset"], "split": report["split"],
               "precision": report["precision"], "post_filter": report["post_filter"]}
    for source in SOURCES:
        figures.update({f"{source}_sdr": round(median["model"][source]["SDR"], 2),
                        f"{source}_gain": round(gains[source], 2),
                        f"{source}_baseline": round(median["best_gain_baseline"][source]["SDR"], 2),
                        f"{source}_mixture": round(median["mixture"][source]["SDR"], 2)})
    if "paired" in report:
        paired = report["paired"]
        figures["paired_with"], figures["paired_tracks"] = paired["with"], paired["tracks"]
        for source in SOURCES:
            figures.update({f"{source}_better": paired[source]["better"],
                            f"{source}_paired_median": round(paired[source]["median_difference"], 2),
                            f"{source}_paired_mean": round(paired[source]["mean_difference"], 2)})
    return figures


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.record is not None:
        record, _, row = args.record.partition(":")
        try:
            records.load_record(record)
        except records.RecordError as error:
            print(f"error: --record {args.record}: {error}", file=sys.stderr)
            return 2
        if not row:
            print(f"error: --record takes NAME:ROW, not {args.record!r}", file=sys.stderr)
            return 2
    if args.ensemble_with and not args.json:
        print("error: --ensemble-with needs --json (the default file is --model's own scores)", file=sys.stderr)
        return 2
    destination = Path(args.json) if args.json else default_json_path(args.model, args.dataset, args.split)
    # Checked before scoring, which can take long. The default destination's folder is the run
    # directory (which load_separator checks) or the current folder.
    if args.json and (destination.is_dir() or not destination.parent.is_dir()):
        problem = "it is a folder" if destination.is_dir() else f"{destination.parent} is not a folder"
        print(f"error: cannot write the scores to {destination}: {problem}", file=sys.stderr)
        return 2
    reference = None
    if args.paired_with:
        try:
            reference = model_sdrs(json.loads(Path(args.paired_with).read_text()))
        except (OSError, ValueError) as error:
            print(f"error: --paired-with {args.paired_with}: {error}", file=sys.stderr)
            return 2
    try:
        separator = load_separator(args.model, args.precision)
        if args.ensemble_with:
            separator = ensemble_separator([separator] + [load_separator(model, args.precision)
                                                          for model in args.ensemble_with])
        synthetic = SyntheticOptions(cache_dir=args.cache_dir)
        tracks = get_tracks(args.dataset, args.split, data_root=args.data_root, sample_rate=separator.sample_rate,
                            synthetic=synthetic)[:args.max_tracks]
    except (FileNotFoundError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    if reference is not None and not {track.name for track in tracks} & set(reference):
        print(f"error: --paired-with {args.paired_with} scored none of these {len(tracks)} tracks", file=sys.stderr)
        return 2
    wiener = model_wiener(separator, args.wiener, args.wiener_fft, args.wiener_soft_mask)
    print(f"Scoring {separator.source} ({args.precision}"
          f"{'; ' + wiener.describe(separator.sample_rate) if wiener else ''}) on {len(tracks)} {args.dataset} {args.split} tracks "
          f"(BSSEval v4, 1 s windows)")
    print(format_header())
    per_track, skipped = score_tracks(
        separator, tqdm(tracks, desc="tracks", leave=False), args.chunk_seconds,
        on_scored=lambda name, scores: tqdm.write(format_row(name, scores)),
        on_skipped=lambda name, error: tqdm.write(f"error: track {name}: {error} (skipped)", file=sys.stderr),
        wiener=wiener)
    report = {"model": separator.source, "dataset": args.dataset, "split": args.split, "precision": args.precision,
              "post_filter": wiener.describe(separator.sample_rate) if wiener else None,
              "tracks": per_track, "skipped": skipped, **summary(per_track)}
    if per_track:
        print(format_row("MEDIAN", report["median"]))
        for source in SOURCES:
            print(format_summary(source, report["median"], report["median_sdr_gain_over_best_gain_baseline"][source]))
        if reference is not None and set(per_track) & set(reference):
            report["paired"] = {"with": args.paired_with, **paired_comparison(per_track, reference)}
            print("\n".join(format_comparison(report["paired"], args.paired_with)))
    destination.write_text(json.dumps(report, indent=2))
    print(f"Scores written to {destination}")
    if args.record is not None and per_track and not skipped:
        how = records.measurement("evaluate.py", sys.argv[1:] if argv is None else list(argv))
        print(f"Recorded in {records.record_row(record, row, record_figures(report), how)} (row {row})")
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
