"""Separate a whole catalog on Apache Beam: any number of songs, on one machine or many.

    python -m pipelines.catalog --input 'music/**/*.mp3' --output separated/ \\
        --model pretrained/waveunet-small-musdb [--format flac] [--runner DirectRunner] \\
        [--direct-num-workers N] [any Beam pipeline option...]

writes OUT/<path under the glob's root, without extension>/{vocals,accompaniment}.wav
(or .flac), the same as separate.py's outputs for the same model (to 16-bit rounding).
Workers decode the songs, cut them into the model's chunk-plan windows and feed them to
Beam's RunInference, which loads the model once per worker and runs windows of several
songs as one batch; each song's outputs are put together and written as soon as its
last window is through. A second run skips the songs already done with the same model
(their record in the song's folder), so a killed run resumes where it stopped. Songs
that cannot be separated (unreadable, undecodable, longer than --max-seconds) are
written to the dead letter (OUT/dead-letter.jsonl: path and reason), and the rest go on.
docs/catalog.md: the output layout, resuming, counters, and other runners' flags.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.transforms.window import GlobalWindows  # noqa: E402

from data_pipeline.audio import AudioError  # noqa: E402
from models.framing import ChunkPlan  # noqa: E402
from models.registry import PRECISIONS  # noqa: E402
from pipelines import outputs  # noqa: E402
from pipelines.model_handler import SeparatorModelHandler, fingerprint, is_local, local_model  # noqa: E402
from pipelines.songs import DECODED, DecodedSong, InputError, Song, cut, decode, find_songs, window_count  # noqa: E402
from runtime.chunking import join_outputs, kept_outputs, positive_seconds, song_from_model  # noqa: E402
from runtime.loading import PRETRAINED_MODEL  # noqa: E402
from runtime.separator import Separator  # noqa: E402
from runtime.wiener import add_wiener_arguments, model_wiener  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
NAMESPACE = "wavesep_catalog"  # the counters' namespace (and RunInference's)
DEAD, REGROUP = "dead", "regroup"
DEFAULT_CHUNK_SECONDS = 10.0
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_SECONDS = 3600.0
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class Settings:
    """What every step needs to know, decided before the pipeline starts."""

    output: str
    audio_format: str
    model: str  # the fingerprint (runtime.model_handler.fingerprint)
    model_rate: int
    model_channels: int
    plan: ChunkPlan
    max_seconds: float
    wiener: object = None  # the post-filter (runtime.wiener.WienerSettings), as separate.py chooses it; None: off

    def model_facts(self) -> Separator:
        """The model's rate, channels and plan, as ``song_from_model`` needs them (no model)."""
        plan = self.plan
        return Separator(forward=None, sample_rate=self.model_rate, channels=self.model_channels,
                         chunk_plan=lambda length: plan, source="the catalog pipeline", description="model facts")


@dataclass(frozen=True)
class WindowKey:
    """Which song a window belongs to, and where in it; travels beside the window through RunInference."""

    song: Song
    index: int
    count: int  # windows of the song
    kept: int  # of the window's kept outputs, how many are the song's


class Counters:
    songs = Metrics.counter(NAMESPACE, "songs_separated")
    audio_ms = Metrics.counter(NAMESPACE, "audio_milliseconds")
    failed = Metrics.counter(NAMESPACE, "songs_failed")
    skipped = Metrics.counter(NAMESPACE, "songs_skipped")
    windows = Metrics.counter(NAMESPACE, "windows")
    regrouped = Metrics.counter(NAMESPACE, "songs_regrouped")


def dead_letter(path: str, reason: str):
    Counters.failed.inc()
    print(f"catalog: failed {path}: {reason}", file=sys.stderr, flush=True)
    return beam.pvalue.TaggedOutput(DEAD, {"path": path, "reason": reason})


class SkipFinished(beam.DoFn):
    """Passes on the songs whose outputs are not complete for this model, input and format."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def process(self, song: Song):
        if outputs.finished(self.settings.output, song, self.settings.model, self.settings.audio_format):
            Counters.skipped.inc()
            return
        yield song


class CutSongs(beam.DoFn):
    """A song -> its windows, keyed; a song that cannot be decoded -> the dead letter."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def process(self, song: Song):
        try:
            decoded = decode(song, self.settings.model_rate, self.settings.max_seconds)
        except AudioError as error:
            yield dead_letter(song.path, error.reason)
            return
        DECODED.put(decoded)  # for FinishSongs, in this process: no second decoding
        count = window_count(len(decoded.model_input), self.settings.plan)
        for index, window, kept in cut(decoded, self.settings.plan):
            Counters.windows.inc()
            yield WindowKey(song, index, count, kept), window


def final_sources(settings: Settings, decoded: DecodedSong, model_outputs: dict) -> dict:
    """The one place where a song's model outputs (its windows' kept outputs, joined, at
    the model's rate) become its final sources, as separate.py's path makes them
    (``runtime.chunking.song_from_model``: the Wiener post-filter, if any, the sources
    back at the song's rate). Whatever separate.py's path adds after the model goes here."""
    return song_from_model(settings.model_facts(), decoded.audio, decoded.sample_rate, decoded.model_input,
                           model_outputs, settings.wiener)


class SongParts:
    """A song's windows' kept outputs as they come back from the model."""

    def __init__(self, key: WindowKey):
        self.song, self.count, self.pieces = key.song, key.count, {}

    def add(self, index: int, pieces: dict) -> None:
        self.pieces[index] = pieces

    def merge(self, other: "SongParts") -> None:
        self.pieces.update(other.pieces)

    @property
    def complete(self) -> bool:
        return len(self.pieces) == self.count


def finish_song(settings: Settings, parts: SongParts):
    """Writes a complete song's outputs and record: yields its summary, or a dead letter."""
    song = parts.song
    try:
        decoded = DECODED.take(song, settings.model_rate, settings.max_seconds)
        channels = decoded.audio.shape[1]
        model_outputs = join_outputs([parts.pieces[index] for index in range(parts.count)], channels)
        sources = final_sources(settings, decoded, model_outputs)
        seconds = len(decoded.audio) / decoded.sample_rate
        outputs.write_song(settings.output, song, sources, decoded.sample_rate, settings.audio_format,
                           settings.model, seconds)
    except AudioError as error:  # e.g. changed or removed since it was cut
        yield dead_letter(song.path, error.reason)
        return
    except OSError as error:
        yield dead_letter(song.path, f"outputs could not be written ({error})")
        return
    Counters.songs.inc()
    Counters.audio_ms.inc(round(seconds * 1000))
    yield {"path": song.path, "seconds": seconds}


class FinishSongs(beam.DoFn):
    """Windows' model outputs -> each song's outputs, written once its last window is in.

    Runners fuse the steps from cutting to here, so a song's windows all come back in the
    bundle that cut it; a song still incomplete at the bundle's end (a runner that did not
    fuse them) goes on, its parts grouped by song, to ``FinishRegrouped``."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def start_bundle(self):
        self.parts: dict[str, SongParts] = {}

    def process(self, element):
        key, result = element
        parts = self.parts.setdefault(key.song.path, SongParts(key))
        kept = kept_outputs(result.inference, self.settings.plan, key.kept)
        parts.add(key.index, {source: np.array(samples) for source, samples in kept.items()})  # not the whole window
        if parts.complete:
            del self.parts[key.song.path]
            yield from finish_song(self.settings, parts)

    def finish_bundle(self):
        for path, parts in self.parts.items():
            yield beam.pvalue.TaggedOutput(REGROUP, GlobalWindows.windowed_value((path, parts)))
        self.parts = {}


class FinishRegrouped(beam.DoFn):
    """A song's parts from several bundles, grouped: finished if all its windows are there."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def process(self, element):
        path, groups = element
        groups = list(groups)
        parts = groups[0]
        for other in groups[1:]:
            parts.merge(other)
        Counters.regrouped.inc()
        if not parts.complete:
            yield dead_letter(path, f"{parts.count - len(parts.pieces)} of its {parts.count} windows never came "
                                    f"back from the model")
            return
        yield from finish_song(self.settings, parts)


def build_pipeline(pipeline: beam.Pipeline, songs: list[Song], settings: Settings, handler: SeparatorModelHandler,
                   dead_letter_path: str):
    """The catalog's steps on ``pipeline``; returns the PCollection of finished songs' summaries."""
    cut_songs = (pipeline
                 | "Songs" >> beam.Create(songs)  # reshuffled: spread over the workers
                 | "Skip finished songs" >> beam.ParDo(SkipFinished(settings))
                 | "Decode and cut" >> beam.ParDo(CutSongs(settings)).with_outputs(DEAD, main="windows"))
    finished = (cut_songs.windows
                | "Separate windows" >> RunInference(KeyedModelHandler(handler))
                | "Finish songs" >> beam.ParDo(FinishSongs(settings)).with_outputs(DEAD, REGROUP, main="songs"))
    regrouped = (finished[REGROUP]
                 | "Group a song's parts" >> beam.GroupByKey()
                 | "Finish regrouped songs" >> beam.ParDo(FinishRegrouped(settings)).with_outputs(DEAD, main="songs"))
    _ = ((cut_songs[DEAD], finished[DEAD], regrouped[DEAD])
         | "Failures" >> beam.Flatten()
         | "As JSON lines" >> beam.Map(lambda failure: json.dumps(failure, ensure_ascii=False))
         | "Dead letter" >> beam.io.WriteToText(dead_letter_path, shard_name_template="", num_shards=1))
    return (finished.songs, regrouped.songs) | "Finished songs" >> beam.Flatten()


# ---------------------------------------------------------------- the command line


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Other options are Beam pipeline options, passed on as they are "
                                            "(e.g. --project, --region, --temp_location for Dataflow).")
    parser.add_argument("--input", required=True,
                        help="a glob on any Beam file system (music/**/*.mp3, gs://bucket/music/**), or a folder "
                             "(every WAV/FLAC/MP3/OGG file in it, at any depth)")
    parser.add_argument("--output", required=True, help="output folder (local, gs://, s3://...)")
    parser.add_argument("--model", default=str(PRETRAINED_MODEL),
                        help="a run directory, an exported SavedModel version folder or a model.onnx, local or on "
                             f"shared storage (default: the shipped {PRETRAINED_MODEL.name})")
    parser.add_argument("--format", choices=outputs.FORMATS, default="wav", help="output format (default: wav)")
    parser.add_argument("--precision", choices=["auto", *sorted(PRECISIONS)], default="auto",
                        help="as separate.py's --precision (default: auto)")
    add_wiener_arguments(parser, "Default: the model's own, as separate.py (a run directory's config.json "
                                 "post_filter, an export's facts; the shipped model's is mask).")
    parser.add_argument("--chunk-seconds", type=positive_seconds, default=DEFAULT_CHUNK_SECONDS,
                        help=f"audio per window (default: {DEFAULT_CHUNK_SECONDS:g})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"windows per model call, from any songs (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--max-seconds", type=positive_seconds, default=DEFAULT_MAX_SECONDS,
                        help=f"longer songs go to the dead letter (default: {DEFAULT_MAX_SECONDS:g})")
    parser.add_argument("--dead-letter", help="the dead letter's path (default: OUTPUT/dead-letter.jsonl)")
    parser.add_argument("--runner", default="DirectRunner", help="Beam runner (default: DirectRunner)")
    parser.add_argument("--direct-num-workers", type=int, default=os.cpu_count() or 1,
                        help="DirectRunner worker processes (default: the CPU count, here %(default)s)")
    parser.add_argument("--direct-running-mode", default="multi_processing",
                        choices=["multi_processing", "multi_threading", "in_memory"],
                        help="how the DirectRunner runs its workers (default: multi_processing)")
    parser.add_argument("--worker-threads", type=int, default=0,
                        help="TensorFlow threads per worker process (default: the CPU count divided among the "
                             "DirectRunner's worker processes; TensorFlow's own default on other runners)")
    args, beam_args = parser.parse_known_args(argv)
    if args.batch_size < 1 or args.direct_num_workers < 1 or args.worker_threads < 0:
        parser.error("--batch-size and --direct-num-workers must be at least 1, --worker-threads at least 0")
    return args, beam_args


def pipeline_options(args, beam_args: list[str]) -> PipelineOptions:
    flags = [f"--runner={args.runner}", *beam_args]
    if args.runner in ("DirectRunner", "direct"):
        flags += [f"--direct_running_mode={args.direct_running_mode}",
                  f"--direct_num_workers={args.direct_num_workers}",
                  "--default_sdk_harness_log_level=ERROR"]
        # The worker processes import this repository's modules, wherever the command was started.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    return PipelineOptions(flags)


def worker_threads(args) -> int:
    if args.worker_threads or args.runner not in ("DirectRunner", "direct"):
        return args.worker_threads
    processes = args.direct_num_workers if args.direct_running_mode == "multi_processing" else 1
    return max(1, (os.cpu_count() or 1) // processes)


def load_model_facts(model: str, precision: str):
    """(the model as a Separator, the precision it runs in), loaded here once before any
    worker starts: a model that cannot be loaded is an error before the pipeline runs."""
    from runtime.loading import load_separator, resolve_precision

    local = local_model(model)
    precision = resolve_precision(precision, local)
    return load_separator(local, precision), precision


class Progress:
    """A line on stderr every ``PROGRESS_SECONDS`` while the pipeline runs: songs done in
    this run, as their records appear (local outputs only: another file system would be
    listed song by song)."""

    def __init__(self, songs: list[Song], output: str, model: str, start: float):
        self.songs, self.output, self.model, self.start = songs, output, model, start
        self.done: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def scan(self) -> None:
        for song in self.songs:
            if song.path in self.done:
                continue
            record_path = os.path.join(outputs.song_folder(self.output, song), outputs.RECORD)
            try:
                if os.path.getmtime(record_path) < self.start:
                    continue
                record = json.loads(Path(record_path).read_text())
            except (OSError, ValueError):
                continue
            if record.get("model") == self.model:
                self.done[song.path] = float(record.get("seconds", 0))

    def line(self) -> str:
        elapsed = time.time() - self.start
        seconds = sum(self.done.values())
        return (f"catalog: {len(self.done)} of {len(self.songs)} songs separated so far, {seconds / 60:.1f} min of "
                f"audio, {seconds / max(elapsed, 1e-9):.1f}x realtime, {elapsed / 60:.1f} min elapsed")

    def run(self) -> None:
        while not self.stop.wait(PROGRESS_SECONDS):
            self.scan()
            print(self.line(), file=sys.stderr, flush=True)

    def __enter__(self):
        if is_local(self.output):
            self.thread.start()
        return self

    def __exit__(self, *exception):
        self.stop.set()


def counter_values(result) -> dict:
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    values = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (value or 0)
    return values


def main(argv=None) -> int:
    args, beam_args = parse_args(argv)
    output = args.output.rstrip("/") or "/"
    dead_letter_path = args.dead_letter or FileSystems.join(output, "dead-letter.jsonl")
    try:
        songs = find_songs(args.input, output)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        separator, precision = load_model_facts(args.model, args.precision)
        wiener = model_wiener(separator, args.wiener, args.wiener_fft)
        post_filter = "off" if wiener is None else wiener.describe(separator.sample_rate)
        model = fingerprint(args.model, precision, post_filter)
    except Exception as error:  # whatever the model's files or loaders raise: none can be separated
        print(f"error: --model {args.model} cannot be loaded: {error}", file=sys.stderr)
        return 2
    plan = separator.chunk_plan(max(1, int(args.chunk_seconds * separator.sample_rate)))
    settings = Settings(output, args.format, model, separator.sample_rate, separator.channels, plan, args.max_seconds,
                        wiener)
    handler = SeparatorModelHandler(args.model, precision, args.batch_size, worker_threads(args))
    options = pipeline_options(args, beam_args)
    print(f"catalog: {len(songs)} songs from {args.input} -> {output}/ ({args.format}); model {separator.source} "
          f"({separator.description}, {separator.sample_rate} Hz, {precision}; post-filter: {post_filter}; "
          f"fingerprint {model[:12]}); windows "
          f"of {plan.input_length} samples, {args.batch_size} per model call; {args.runner}"
          + (f", {args.direct_num_workers} workers ({args.direct_running_mode})"
             if args.runner in ("DirectRunner", "direct") else ""), file=sys.stderr, flush=True)
    # Beam's workers and runner speak up at INFO and WARNING about their own set-up; failed songs are printed.
    for name in ("apache_beam", "root"):
        logging.getLogger(None if name == "root" else name).setLevel(logging.ERROR)
    start = time.time()
    with Progress(songs, output, model, start):
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, songs, settings, handler, dead_letter_path)
        result = pipeline.run()
        result.wait_until_finish()
    wall = time.time() - start
    counts = counter_values(result)
    seconds = counts.get("audio_milliseconds", 0) / 1000
    done, skipped, failed = (counts.get(name, 0) for name in ("songs_separated", "songs_skipped", "songs_failed"))
    print(f"catalog: done in {wall:.1f} s: {done} songs separated, {skipped} skipped (already done), {failed} failed"
          f"{f' (see {dead_letter_path})' if failed else ''}; {seconds:.1f} s of audio, "
          f"{seconds / wall:.1f}x realtime", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    # Workers find the steps by module name: run them as pipelines.catalog's, not __main__'s.
    from pipelines.catalog import main as catalog_main

    sys.exit(catalog_main())
