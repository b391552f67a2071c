"""The training data of a GPU campaign, small enough to travel with the code
(a lent GPU host gets at most 64 MiB of code, wheels and data per call):

    python -m training.gpu_pack --out gpu-pack \\
        --musdb-root path/to/musdb18-train-previews --mir1k-root path/to/mir-1k

writes two datasets that the normal loaders read unchanged:

    gpu-pack/musdb-22k/{train,valid}/<song>/{vocals,accompaniment}.ogg
        the MUSDB18 songs (80 training, 14 validation) at the model's rate
        (22.05 kHz stereo), Ogg Vorbis: ``--dataset folder --data-root gpu-pack/musdb-22k``
    gpu-pack/mir-1k/train/<clip>/{vocals,accompaniment}.ogg
        MIR-1K's training clips at their own 16 kHz mono, Ogg Opus (the loaders
        resample on reading): ``--dataset mir-1k --data-root gpu-pack/mir-1k``

and ``gpu-pack/manifest.json``: each part's codec, setting, size and duration, and
each file's SNR against its source (the samples the loader gives for the original,
clipped to [-1, 1] as written), decoded by the normal loader
(``data_pipeline.audio.load_audio``). It prints each part's size, the pack's total
and what a call would carry: the repository's files (tracked and untracked but not
ignored), the wheels folder (``--wheels``, default ``.whl``) and the pack, against
the 64 MiB limit.

Why these codecs (measured on 10 MIR-1K clips and 5 MUSDB18 previews, SNR median of
each source): at the model's 22.05 kHz, Vorbis (compression 0.4: 95 kbps a stereo
source, 21 / 22 dB) beats Opus, which only runs at 8/12/16/24/48 kHz (24 kHz, 89 kbps:
21 / 19 dB) and would need resampling on every read; at MIR-1K's 16 kHz mono Vorbis
cannot go below about 25 kbps a source, which would make MIR-1K alone 45 MB, while
Opus at 14 kbps (17 / 11 dB) makes it 25 MB.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TRAVEL_LIMIT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Codec:
    """One part's encoding: libsndfile's subtype and compression level (0: best, 1: smallest;
    Opus maps it to a bit rate, about 6 + 250 * (1 - level) kbps a channel)."""

    subtype: str  # "VORBIS" or "OPUS", in an Ogg container (.ogg)
    level: float

    def write(self, path, audio: np.ndarray, sample_rate: int) -> None:
        import soundfile as sf

        sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, format="OGG", subtype=self.subtype,
                 compression_level=self.level)


MUSDB_CODEC = Codec("VORBIS", 0.4)
MIR1K_CODEC = Codec("OPUS", 0.97)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# The least SNR each part's files must decode within (tests/test_gpu_pack.py, manifest check):
# under the smallest measured on the real data, with room for other songs.
MIN_SNR_DB = {"musdb-22k": 12.0, "mir-1k": 2.0}


def snr_db(source: np.ndarray, decoded: np.ndarray) -> float | None:
    """10 log10(source energy / error energy) over the common length; None for a silent source."""
    length = min(len(source), len(decoded))
    source, decoded = source[:length].astype(np.float64), decoded[:length].astype(np.float64)
    energy = float(np.sum(source ** 2))
    if energy == 0.0:
        return None
    error = float(np.sum((source - decoded) ** 2))
    return float("inf") if error == 0.0 else 10 * np.log10(energy / error)


def encode_and_check(path: Path, audio: np.ndarray, sample_rate: int, codec: Codec, write: bool = True) -> dict:
    """Writes ``audio`` with ``codec`` (``write=False``: finds it written) and decodes it back with
    the normal loader; returns its record."""
    from data_pipeline.audio import load_audio

    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        codec.write(path, audio, sample_rate)
    decoded, decoded_rate = load_audio(path, channels=audio.shape[1])
    if decoded_rate != sample_rate:
        raise ValueError(f"{path}: decodes at {decoded_rate} Hz, written at {sample_rate} Hz")
    if abs(len(decoded) - len(audio)) > 0:
        raise ValueError(f"{path}: decodes to {len(decoded)} samples, written {len(audio)}")
    snr = snr_db(np.clip(audio, -1.0, 1.0), decoded)
    return {"path": str(path), "bytes": path.stat().st_size, "seconds": len(audio) / sample_rate,
            "snr_db": None if snr is None else round(snr, 2)}


def _musdb_song(job) -> list[dict]:
    from data_pipeline.datasets import load_track

    track, folder, sample_rate, codec, write = job
    audio = load_track(track, sample_rate, channels=2)
    return [dict(encode_and_check(folder / f"{source}.ogg", audio[source], sample_rate, codec, write),
                 source=source, original=[f.path for f in getattr(track, source)])
            for source in ("vocals", "accompaniment")]


def _folder_clip(job) -> list[dict]:
    from data_pipeline.audio import load_audio

    track, folder, codec, write = job
    records = []
    for source in ("vocals", "accompaniment"):
        (original,) = getattr(track, source)
        audio, rate = load_audio(original.path)
        if codec.subtype == "OPUS" and rate not in OPUS_RATES:
            raise ValueError(f"{original.path}: Opus cannot hold {rate} Hz (only {OPUS_RATES})")
        records.append(dict(encode_and_check(folder / f"{source}.ogg", audio, rate, codec, write), source=source,
                            original=[original.path]))
    return records


def _summary(name: str, codec: Codec, layout: str, records: list[dict]) -> dict:
    snrs = [r["snr_db"] for r in records if r["snr_db"] is not None]
    by_source = {}
    for source in ("vocals", "accompaniment"):
        values = [r["snr_db"] for r in records if r["source"] == source and r["snr_db"] is not None]
        by_source[source] = {"min": min(values), "median": float(np.median(values))} if values else None
    total = sum(r["bytes"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    return {"part": name, "codec": asdict(codec), "layout": layout, "files": len(records), "bytes": total,
            "seconds": round(seconds, 1), "kbps_per_file": round(8 * total / seconds / 1000, 1),
            "snr_db": {"min": min(snrs) if snrs else None, "median": float(np.median(snrs)) if snrs else None,
                       **by_source},
            "min_snr_db": MIN_SNR_DB.get(name), "records": records}


def _run_jobs(function, jobs, workers: int) -> list[dict]:
    from tqdm import tqdm

    records = []
    if workers <= 1:
        for job in tqdm(jobs, unit="song"):
            records += function(job)
        return records
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in tqdm(pool.map(function, jobs, chunksize=8), total=len(jobs), unit="song"):
            records += result
    return records


def pack_musdb(root, out: Path, *, sample_rate: int = 22050, codec: Codec = MUSDB_CODEC, workers: int = 1,
               dataset: str = "musdb", splits=("train", "valid"), write: bool = True) -> dict:
    """``dataset``'s ``splits`` at ``sample_rate`` stereo in the folder layout under ``out``
    (``write=False``: only checks what an earlier call wrote there)."""
    from data_pipeline.datasets import get_tracks

    jobs = [(track, out / split / track.name, sample_rate, codec, write)
            for split in splits for track in get_tracks(dataset, split, data_root=root, sample_rate=sample_rate)]
    return _summary(out.name, codec, f"--dataset folder --data-root {out}", _run_jobs(_musdb_song, jobs, workers))


def pack_folder(root, out: Path, *, codec: Codec = MIR1K_CODEC, workers: int = 1, splits=("train",),
                dataset_name: str = "mir-1k", write: bool = True) -> dict:
    """A folder-layout dataset (one vocals and one accompaniment file a song) at its own rate and
    channels (``write=False``: only checks what an earlier call wrote)."""
    from data_pipeline.datasets import get_tracks

    jobs = []
    for split in splits:
        for track in get_tracks("folder", split, data_root=root):
            if len(track.vocals) != 1 or len(track.accompaniment) != 1:
                raise ValueError(f"{track.name}: expected one vocals and one accompaniment file")
            jobs.append((track, out / split / track.name, codec, write))
    return _summary(out.name, codec, f"--dataset {dataset_name} --data-root {out}",
                    _run_jobs(_folder_clip, jobs, workers))


def travelling_bytes(repo: Path, extra=(), skip=None) -> dict:
    """What a device call carries from ``repo``: its tracked and untracked-but-not-ignored files
    (but those under ``skip``), plus each of ``extra`` (ignored folders named in carry)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.split(b"\0")
    paths = [repo / name.decode() for name in listed if name]
    code = sum(p.stat().st_size for p in paths
               if p.is_file() and not (skip and p.resolve().is_relative_to(Path(skip).resolve())))
    sizes = {"code (git ls-files --cached --others --exclude-standard)": code}
    for path in extra:
        path = Path(path)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        sizes[str(path)] = sum(p.stat().st_size for p in files)
    return sizes


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB ({size / 1e6:.1f} MB)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the pack's folder (keep it out of git, e.g. gpu-pack)")
    parser.add_argument("--musdb-root", help="MUSDB18 (musdb layout) whose train and valid splits go in")
    parser.add_argument("--mir1k-root", help="MIR-1K in the folder layout whose train clips go in")
    parser.add_argument("--rate", type=int, default=22050, help="the MUSDB18 part's rate: the model's (22050)")
    parser.add_argument("--musdb-level", type=float, default=MUSDB_CODEC.level,
                        help=f"Vorbis compression level of the MUSDB18 part (default {MUSDB_CODEC.level})")
    parser.add_argument("--mir1k-level", type=float, default=MIR1K_CODEC.level,
                        help=f"Opus compression level of the MIR-1K part (default {MIR1K_CODEC.level}: ~14 kbps)")
    parser.add_argument("--workers", type=int, default=2, help="encoding processes (default 2)")
    parser.add_argument("--wheels", default=".whl", help="the wheels folder that travels too (default .whl)")
    parser.add_argument("--verify", action="store_true",
                        help="write nothing but the manifest: decode the pack's files of the named parts and "
                             "measure each against its source again")
    args = parser.parse_args(argv)
    if not (args.musdb_root or args.mir1k_root):
        parser.error("name --musdb-root, --mir1k-root or both")
    for flag in ("musdb_level", "mir1k_level"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag.replace('_', '-')} must be within [0, 1]")
    from data_pipeline.audio import AudioError
    from data_pipeline.datasets import DatasetError

    out = Path(args.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"parts": {}, "files": []}
    try:
        built = []
        if args.musdb_root:
            built.append((pack_musdb(args.musdb_root, out / "musdb-22k", sample_rate=args.rate,
                                     codec=Codec("VORBIS", args.musdb_level), workers=args.workers,
                                     write=not args.verify), "musdb-22k"))
        if args.mir1k_root:
            built.append((pack_folder(args.mir1k_root, out / "mir-1k", codec=Codec("OPUS", args.mir1k_level),
                                      workers=args.workers, write=not args.verify), "mir-1k"))
    except (DatasetError, AudioError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # A part built again replaces its earlier records.
    for summary, name in built:
        manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith(str(out / name) + "/")]
    for summary, name in built:
        manifest["files"] += summary.pop("records")
        manifest["parts"][name] = summary
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return report(out, Path(args.wheels))


def report(out: Path, wheels: Path) -> int:
    """Prints the pack's parts, total and what a call would carry; 1 when a part misses its SNR bound."""
    manifest = json.loads((out / "manifest.json").read_text())
    failing = 0
    for name, part in manifest["parts"].items():
        snr = part["snr_db"]
        bound = part.get("min_snr_db")
        ok = bound is None or snr["min"] is None or snr["min"] >= bound
        failing += not ok
        print(f"{name}: {part['files']} files, {mib(part['bytes'])}, {part['seconds'] / 60:.1f} min, "
              f"{part['codec']['subtype']} level {part['codec']['level']}, {part['kbps_per_file']} kbps a file; "
              f"SNR vocals min/median {snr['vocals']['min']:.1f}/{snr['vocals']['median']:.1f} dB, "
              f"accompaniment {snr['accompaniment']['min']:.1f}/{snr['accompaniment']['median']:.1f} dB"
              f" (bound {bound} dB: {'ok' if ok else 'MISSED'})")
    pack = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"pack total (with manifest): {mib(pack)}")
    repo = Path(__file__).resolve().parent.parent
    try:
        sizes = travelling_bytes(repo, [p for p in (wheels,) if p.exists()], skip=out)
    except (OSError, subprocess.CalledProcessError):
        return 1 if failing else 0
    inside = out.resolve().is_relative_to(repo)
    for what, size in sizes.items():
        print(f"carried: {what}: {mib(size)}")
    total = sum(sizes.values()) + pack
    print(f"a call would carry {mib(total)} of the {mib(TRAVEL_LIMIT_BYTES)} limit"
          + ("" if inside else " (the pack lies outside the repository: copy it in to carry it)")
          + ("" if wheels.exists() else f"; no wheels folder {wheels} yet"))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
