"""Scoring a separator as evaluate.py does: museval's BSSEval v4 (1 s windows) of the
model beside two systems that do not separate, the best no-separation baseline (each
source as the mixture times its least-squares gain, per track) and the plain mixture;
the model's gain is its SDR over the best-gain baseline. Tracks are scored at their
own sample rate; the per-track and median scores, and the tables evaluate.py prints."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.audio import AudioError
from data_pipeline.datasets import load_track, native_sample_rate
from models.architecture import SOURCES
from runtime.chunking import separate_song
from runtime.loading import is_exported
from runtime.metrics import best_gain_estimates

METRICS = ("SDR", "SIR", "SAR")
SYSTEMS = ("model", "best_gain_baseline", "mixture")
SYSTEM_LABELS = {"model": "model", "best_gain_baseline": "best-g", "mixture": "mix"}
# DatasetError is a ValueError; decoders report some broken files as RuntimeError.
TRACK_LOAD_ERRORS = (AudioError, ValueError, RuntimeError)


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


def evaluate_track(separator, audio: dict, sample_rate: int, chunk_seconds: float, post_filter=None,
                   wiener=None) -> dict:
    """Scores of the model (with the Wiener post-filter ``wiener`` in its chunked path, and
    its outputs through ``post_filter(mix, estimates)``, if any) and
    of the two no-separation systems on one track, the least-squares gains of the best-gain
    baseline and the model's SDR gain over it."""
    references = {source: audio[source] for source in SOURCES}
    best_gain, gains = best_gain_estimates(audio["mixture"], references)
    separated = separate_song(separator, audio["mixture"], sample_rate, chunk_seconds=chunk_seconds, wiener=wiener)
    if post_filter is not None:
        separated = post_filter(audio["mixture"], separated)
    estimates = {"model": separated,
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


def score_tracks(separator, tracks, chunk_seconds: float, on_scored=None, on_skipped=None,
                 post_filter=None, wiener=None) -> tuple[dict, list]:
    """Scores every track of ``tracks`` (any iterable of dataset tracks, e.g. in a progress
    bar); a track that cannot be read is skipped, the others are still scored. Returns the
    scores by track name and ``{"track", "reason"}`` of each skipped track;
    ``on_scored(name, scores)`` and ``on_skipped(name, error)`` hear of each as it goes."""
    per_track, skipped = {}, []
    for track in tracks:
        try:
            audio, sample_rate = load_track_audio(track)
        except TRACK_LOAD_ERRORS as error:
            skipped.append({"track": track.name, "reason": str(error)})
            if on_skipped is not None:
                on_skipped(track.name, error)
            continue
        per_track[track.name] = evaluate_track(separator, audio, sample_rate, chunk_seconds, post_filter, wiener)
        if on_scored is not None:
            on_scored(track.name, per_track[track.name])
    return per_track, skipped


def summary(per_track: dict) -> dict:
    """The medians over tracks of every score and of the model's gain ({} when none was scored)."""
    if not per_track:
        return {}
    return {"median": medians(per_track), "median_sdr_gain_over_best_gain_baseline": median_gains(per_track)}


def model_sdrs(report) -> dict:
    """``{track: {source: SDR}}`` of the model in an evaluate.py score file's content;
    ValueError if it is not one."""
    try:
        return {str(name): {source: float(scores["model"][source]["SDR"]) for source in SOURCES}
                for name, scores in report["tracks"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"not an evaluate.py score file (no model SDR: {error!r})") from None


def paired_comparison(per_track: dict, reference: dict) -> dict:
    """Each source's model SDR against another system's on the same tracks (``reference``:
    ``model_sdrs`` of its score file): on how many of the tracks both scored it is higher, and
    the median and mean of the per-track differences. A median over 14 songs can move
    by 0.1 dB when one song does; the per-track differences show whether a change holds
    on most songs. Raises ValueError when no track was scored in both."""
    shared = [name for name in per_track if name in reference]
    if not shared:
        raise ValueError("the two score files share no track")
    comparison = {"tracks": len(shared)}
    for source in SOURCES:
        differences = np.array([per_track[name]["model"][source]["SDR"] - reference[name][source]
                                for name in shared])
        comparison[source] = {"better": int((differences > 0).sum()), "median_difference": float(np.median(differences)),
                              "mean_difference": float(differences.mean())}
    return comparison


def format_comparison(comparison: dict, reference_name: str) -> list[str]:
    return [f"{source} against {reference_name}: better on {comparison[source]['better']} of {comparison['tracks']} "
            f"tracks, per-track difference median {comparison[source]['median_difference']:+.2f} dB, "
            f"mean {comparison[source]['mean_difference']:+.2f} dB" for source in SOURCES]
