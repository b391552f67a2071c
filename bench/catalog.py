"""Catalog separation, three ways, measured in one run on the same generated catalog.

    python -m bench.catalog [--songs 100] [--max-song-seconds 300] [--model pretrained/waveunet-small-musdb]

Generates --songs files (tones, chords and noise beats; --min-song-seconds to
--max-song-seconds long, seeded; WAV, FLAC and MP3 mixed, mostly 44.1 kHz stereo, some
48 kHz, 22.05 kHz and mono; in nested artist/album folders, every name unique), two of
them bad (bytes that are no audio, a WAV cut short of its header's length), then
separates the catalog with:
  (a) the Beam pipeline, ``python -m pipelines.catalog`` on the DirectRunner with its
      defaults (a worker process per core);
  (b) ``python separate.py`` over the folder;
  (c) the server: the model exported, ``python -m serve`` on 127.0.0.1 (its start and the
      export not timed), and ``python -m serve.client`` over the files, as a user would.
Each is a fresh command, timed from its start to its end (model loading included), and
prints songs separated and failed, seconds of audio, wall and CPU seconds (user + system
of all its processes: on a shared machine, what the others left it shows there), songs
per hour, x realtime, and the peak RSS (VmHWM, read from /proc while it runs): the
pipeline's per worker process and of its driver, separate.py's, the server's. Then the pipeline's throughput over
separate.py's (same cores, same run: the target is >= 0.8), and a resume check: the
pipeline over the first artist's folder, killed (with its workers) once a quarter of its
songs are finished, then run again: it must skip every song finished before the kill,
rewrite none of their files, and finish the rest. Exits 1 if the check fails or the
bad files are not the only failures.

--songs-dir keeps the generated catalog (reused by a later run with the same settings).
--record puts the figures into docs/results/catalog-speed.json (docs/catalog.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from bench import records  # noqa: E402
from runtime.cpu import this_cpu  # noqa: E402
from runtime.loading import PRETRAINED_MODEL  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
RECORD = ".wavesep-catalog.json"  # pipelines.outputs.RECORD (not imported: it would load Beam here)
FORMATS = ("wav", "flac", "wav", "mp3", "flac")  # MP3 encoding is slow (~16x realtime): a fifth of the songs
RATES = (44100, 44100, 44100, 48000, 44100, 22050, 44100)
BAD_FILES = ("bad/not-audio.mp3", "bad/cut-short.wav")
SPEC_FILE = "catalog-spec.json"


@dataclass(frozen=True)
class SongSpec:
    path: str  # relative to the catalog's root
    seconds: float
    rate: int
    channels: int
    seed: int


def catalog_spec(songs: int, min_seconds: float, max_seconds: float, seed: int = 0) -> list[SongSpec]:
    """The good songs of a catalog of ``songs`` files (two more are bad)."""
    rng = np.random.default_rng(seed)
    specs = []
    for index in range(max(0, songs - len(BAD_FILES))):
        folder = f"artist{index % 7}/album{index % 3}"
        specs.append(SongSpec(f"{folder}/track{index:03d}.{FORMATS[index % len(FORMATS)]}",
                              round(float(rng.uniform(min_seconds, max_seconds)), 2), RATES[index % len(RATES)],
                              1 if index % 8 == 5 else 2, index))
    return specs


def music(spec: SongSpec) -> np.ndarray:
    """Chords of harmonic tones on a beat, a bass line and noise hits: quick to make, not silence."""
    rng = np.random.default_rng(spec.seed)
    t = np.arange(int(spec.seconds * spec.rate), dtype=np.float64) / spec.rate
    beat = 60 / rng.uniform(70, 160)
    phase = (t % beat) / beat
    bar = (t // (4 * beat)).astype(int)
    roots = 110 * 2 ** (rng.integers(0, 12, 16) / 12)
    root = roots[bar % len(roots)]
    chord = sum(np.sin(2 * np.pi * root * ratio * t) / (1 + k) for k, ratio in enumerate((1, 1.25, 1.5, 2, 3)))
    left = 0.15 * chord * (0.6 + 0.4 * np.exp(-4 * phase)) + 0.2 * np.sin(np.pi * root * t) * np.exp(-3 * phase)
    noise = rng.standard_normal((len(t), spec.channels)) * (0.2 * np.exp(-30 * phase))[:, None]
    audio = left[:, None] * np.linspace(1.0, 0.8, spec.channels)[None] + noise
    return (0.8 * audio / max(1e-9, np.abs(audio).max())).astype(np.float32)


def write_song(root: Path, spec: SongSpec) -> None:
    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, music(spec), spec.rate, format=path.suffix[1:].upper())


def write_catalog(root: Path, specs: list[SongSpec], settings: dict) -> float:
    """Writes the songs (in parallel) and the two bad files; reuses a catalog already there with
    the same settings. Returns the seconds it took."""
    start = time.perf_counter()
    spec_path = root / SPEC_FILE
    if spec_path.is_file() and json.loads(spec_path.read_text()) == settings:
        return 0.0
    root.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_song, [root] * len(specs), specs))
    (root / BAD_FILES[0]).parent.mkdir(parents=True, exist_ok=True)
    (root / BAD_FILES[0]).write_bytes(b"ID3 this is not an MP3 " * 100)
    whole = root / BAD_FILES[1]
    sf.write(whole, np.zeros((44100, 2), np.float32), 44100)
    whole.write_bytes(whole.read_bytes()[:40_000])  # the header announces 176 kB of samples
    spec_path.write_text(json.dumps(settings))
    return time.perf_counter() - start


class PeakMemory:
    """The peak RSS (VmHWM) of a process and each of its descendants, read from /proc every
    ``seconds`` while it runs (a process's VmHWM is its peak so far)."""

    def __init__(self, pid: int, seconds: float = 0.5):
        self.pid, self.seconds = pid, seconds
        self.peaks: dict[int, tuple[float, str]] = {}  # pid -> (GiB, command line)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry.name))
        found, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            queue.extend(children.get(pid, []))
        return found

    def sample(self) -> None:
        for pid in self.descendants():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "VmHWM:" in status:
                gib = int(status.split("VmHWM:")[1].split()[0]) / 2 ** 20
                self.peaks[pid] = (max(gib, self.peaks.get(pid, (0.0, ""))[0]), command)

    def run(self) -> None:
        while not self.stop.wait(self.seconds):
            self.sample()

    def finish(self) -> dict[int, tuple[float, str]]:
        self.stop.set()
        self.thread.join()
        return self.peaks


@dataclass
class Outcome:
    method: str
    songs: int
    failed: int
    audio_seconds: float
    wall_seconds: float
    cpu_seconds: float  # user + system, every process of the method
    peak: str  # peak RSS, in words

    @property
    def realtime(self) -> float:
        return self.audio_seconds / self.wall_seconds

    @property
    def songs_per_hour(self) -> float:
        return self.songs * 3600 / self.wall_seconds

    def row(self) -> str:
        return (f"{self.method:34s} {self.songs:6d} {self.failed:7d} {self.audio_seconds:9.0f} {self.wall_seconds:8.1f} "
                f"{self.cpu_seconds:7.0f} {self.songs_per_hour:9.0f} {self.realtime:11.1f}x  {self.peak}")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(command: list[str], log: Path) -> tuple[float, int, dict, float]:
    """(wall seconds, exit status, peaks, CPU seconds of it and the processes it waited for)
    of a command run to its end, its output in ``log``."""
    with open(log, "wb") as output:
        start, cpu = time.perf_counter(), children_cpu()
        process = subprocess.Popen(command, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT)
        memory = PeakMemory(process.pid)
        code = process.wait()
        wall = time.perf_counter() - start
    return wall, code, memory.finish(), children_cpu() - cpu


def outputs_done(out: Path) -> list[Path]:
    return [path.parent for path in out.rglob("vocals.wav")]


def song_seconds(folders: list[Path]) -> float:
    return sum(sf.info(folder / "vocals.wav").duration for folder in folders)


def worker_peaks(peaks: dict) -> str:
    workers = [gib for gib, command in peaks.values()  # not the shell that starts each worker
               if "sdk_worker_main" in command and not command.startswith(("/bin/sh", "sh "))]
    driver = max((gib for gib, command in peaks.values() if "pipelines.catalog" in command), default=0.0)
    return (f"workers {', '.join(f'{gib:.2f}' for gib in sorted(workers, reverse=True))} GiB each; "
            f"driver {driver:.2f} GiB")


def pipeline_command(root: Path, out: Path, model: str, mode: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.catalog", "--input", str(root), "--output", str(out), "--model", model,
            "--direct-running-mode", mode]


def run_pipeline(root: Path, out: Path, model: str, folder: Path, mode: str) -> Outcome:
    wall, code, peaks, cpu = timed(pipeline_command(root, out, model, mode), folder / "pipeline.log")
    if code not in (0, 1):
        raise SystemExit(f"the pipeline failed ({code}):\n{(folder / 'pipeline.log').read_text()[-3000:]}")
    failed = len((out / "dead-letter.jsonl").read_text().splitlines())
    done = outputs_done(out)
    return Outcome("(a) Beam pipeline (DirectRunner)", len(done), failed, song_seconds(done), wall, cpu,
                   worker_peaks(peaks))


def run_separate(root: Path, out: Path, model: str, folder: Path, mode: str) -> Outcome:
    wall, code, peaks, cpu = timed([sys.executable, "separate.py", str(root), "--model", model, "--out", str(out)],
                                   folder / "separate.log")
    failed = (folder / "separate.log").read_text().count("(skipped)")
    done = outputs_done(out)
    peak = max(gib for gib, _ in peaks.values())
    return Outcome("(b) separate.py", len(done), failed, song_seconds(done), wall, cpu, f"{peak:.2f} GiB")


def run_server(root: Path, out: Path, model: str, folder: Path, mode: str) -> Outcome:
    from bench.serve import start_server, stop_server
    from runtime.export import export_run

    base = folder / "export" / "wavesep"
    export_run(model, base, log=lambda message: None)
    server, url = start_server(base, folder / "server.log")
    try:
        memory, server_cpu = PeakMemory(server.pid), process_cpu(server.pid)
        files = sorted(str(path) for path in root.rglob("*") if path.suffix in (".wav", ".flac", ".mp3"))
        wall, code, _, cpu = timed([sys.executable, "-m", "serve.client", *files, "--url", url, "--out", str(out)],
                                   folder / "client.log")
        cpu += process_cpu(server.pid) - server_cpu
        server_peak = max(gib for gib, _ in memory.finish().values())
    finally:
        stop_server(server)
    failed = (folder / "client.log").read_text().count("(skipped)")
    done = outputs_done(out)
    return Outcome("(c) server + serve.client", len(done), failed, song_seconds(done), wall, cpu,
                   f"server {server_peak:.2f} GiB")


def resume_check(root: Path, specs: list[SongSpec], model: str, folder: Path, mode: str) -> tuple[bool, str]:
    """The pipeline over the first artist's folder (the whole catalog if that holds fewer than
    4 songs), killed once a quarter of its songs are finished, then run again."""
    first = [spec for spec in specs if spec.path.startswith("artist0/")]
    songs_root, total = (root / "artist0", len(first)) if len(first) >= 4 else (root, len(specs))
    out = folder / "resume"
    command = pipeline_command(songs_root, out, model, mode)
    with open(folder / "killed.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        while len(list(out.rglob(RECORD))) < max(1, total // 4) and process.poll() is None:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = {path.parent for path in out.rglob(RECORD)}
    stamps = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for folder_ in finished for path in folder_.iterdir()}
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    summary = next((line for line in result.stderr.splitlines() if "catalog: done" in line), result.stderr[-500:])
    unchanged = all(path.exists() and (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
                    for path, stamp in stamps.items())
    complete = len(list(out.rglob(RECORD))) == total
    ok = (result.returncode in (0, 1) and unchanged  # 1: the whole catalog's bad files and complete and f"{len(finished)} skipped" in summary
          and 0 < len(finished) < total)
    return ok, (f"killed with {len(finished)} of {total} songs finished; the rerun: {summary.split(': ', 1)[-1]}; "
                f"finished songs' files untouched: {'yes' if unchanged else 'NO'}; every song complete: "
                f"{'yes' if complete else 'NO'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=100, help="files in the catalog, two of them bad (default: 100)")
    parser.add_argument("--min-song-seconds", type=float, default=30.0, help="shortest song (default: 30)")
    parser.add_argument("--max-song-seconds", type=float, default=300.0, help="longest song (default: 300)")
    parser.add_argument("--model", default=str(PRETRAINED_MODEL),
                        help=f"a run directory (default: the shipped {PRETRAINED_MODEL.name})")
    parser.add_argument("--songs-dir", type=Path, help="where to generate the catalog, kept and reused "
                                                       "(default: a temporary folder)")
    parser.add_argument("--methods", default="pipeline,separate,server",
                        help="which of pipeline, separate, server to time (default: all three)")
    parser.add_argument("--pipeline-mode", default="multi_processing",
                        choices=["multi_processing", "multi_threading", "in_memory"],
                        help="the DirectRunner's running mode for the pipeline's runs (default: multi_processing, "
                             "the pipeline's own default)")
    parser.add_argument("--record", action="store_true",
                        help="put the figures into docs/results/catalog-speed.json (rendered in docs/catalog.md)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if args.songs < 3 or not 0 < args.min_song_seconds <= args.max_song_seconds or \
            not set(methods) <= {"pipeline", "separate", "server"}:
        parser.error("--songs must be at least 3, 0 < --min-song-seconds <= --max-song-seconds, and --methods "
                     "a comma-separated list of pipeline, separate, server")
    specs = catalog_spec(args.songs, args.min_song_seconds, args.max_song_seconds)
    settings = {"songs": args.songs, "min": args.min_song_seconds, "max": args.max_song_seconds, "version": 1}
    print(f"Machine: {this_cpu().describe()}; load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as scratch:
        folder = Path(scratch)
        root = args.songs_dir or folder / "music"
        made = write_catalog(root, specs, settings)
        audio = sum(spec.seconds for spec in specs)
        print(f"Catalog: {len(specs)} songs + {len(BAD_FILES)} bad files, {audio / 60:.1f} min of audio "
              f"({args.min_song_seconds:g}-{args.max_song_seconds:g} s each; WAV/FLAC/MP3; "
              f"{'made in %.0f s' % made if made else 'reused'}) at {root}; model {args.model}")
        print(f"{'method':34s} {'songs':>6s} {'failed':>7s} {'audio s':>9s} {'wall s':>8s} {'CPU s':>7s} {'songs/h':>9s} "
              f"{'x realtime':>12s}  peak RSS")
        outcomes = {}
        runs = {"pipeline": run_pipeline, "separate": run_separate, "server": run_server}
        for method in methods:
            outcomes[method] = runs[method](root, folder / f"out-{method}", args.model, folder, args.pipeline_mode)
            print(outcomes[method].row(), flush=True)
        ok = all(o.songs == len(specs) and o.failed == len(BAD_FILES) for o in outcomes.values())
        if not ok:
            print("FAILED: a method did not separate every good song, or failed on more than the two bad files")
        ratio = None
        if {"pipeline", "separate"} <= set(outcomes):
            ratio = outcomes["pipeline"].realtime / outcomes["separate"].realtime
            print(f"Pipeline / separate.py throughput: {ratio:.2f} (target >= 0.8 at equal cores; both on "
                  f"{os.cpu_count()} cores, model loading included)")
        if "pipeline" in methods:
            resumed, words = resume_check(root, specs, args.model, folder, args.pipeline_mode)
            print(f"Resume after a kill: {words}" + ("" if resumed else "  FAILED"))
            ok &= resumed
    if args.record:
        how = records.measurement("-m bench.catalog", sys.argv[1:] if argv is None else list(argv))
        for method, outcome in outcomes.items():
            records.record_row("catalog-speed", method, {
                "songs": outcome.songs, "audio_hours": round(outcome.audio_seconds / 3600, 2),
                "songs_per_hour": round(outcome.songs_per_hour), "realtime": round(outcome.realtime, 1),
                "wall_seconds": round(outcome.wall_seconds), "cpu_seconds": round(outcome.cpu_seconds),
                "ratio": round(outcome.realtime / outcomes["separate"].realtime, 2) if "separate" in outcomes else 0,
                "peak": outcome.peak}, how)
        print("Recorded in docs/results/catalog-speed.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
