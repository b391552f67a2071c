"""The dataset registry: every CLI names a dataset and gets a list of ``Track``s.

A ``Track`` only says where its audio lives; ``load_track`` (Python) and the
tf.data pipeline (in the graph) read it. Adapters check their root and raise a
``DatasetError`` that spells out the layout they expected. Nothing here
downloads anything.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_pipeline.audio import (MAX_CHANNELS, SUPPORTED_EXTENSIONS, AudioError, audio_info, is_stem_file,
                                  load_audio, open_audio, write_wav)

SPLITS = ("train", "valid", "test")
GENERATED_DATASETS = ("synthetic", "rendered")  # made here on first use, cached; no --data-root


class DatasetError(ValueError):
    """A dataset root that is missing or not in the layout its adapter expects."""


@dataclass(frozen=True)
class AudioFile:
    path: str
    stream: int | None = None  # stream index inside a multi-stream .stem.mp4


@dataclass(frozen=True)
class Track:
    """One song. A source made of several files is their sum; an empty
    ``mixture`` means the mixture is vocals + accompaniment."""

    name: str
    vocals: tuple[AudioFile, ...]
    accompaniment: tuple[AudioFile, ...]
    mixture: tuple[AudioFile, ...] = field(default=())


# Songs in each split of a generated dataset. Every split comes from the same generator
# with the same settings; only the seeds differ (``_song_seed``: split and index), so the
# splits are disjoint and equally hard. What separating gains differs a lot from song to
# song (e.g. the vocals sit 9 dB under to 6 dB over the accompaniment): for the default
# run's checkpoints the per-song vocals gain spreads by 1.4-1.5 dB, so the median of 10
# songs moves by about 0.5 dB between draws (the 10 test songs said +0.61 dB, blocks of 10
# validation songs -0.97 to -0.18, all 40 -0.37: docs/training.md). Validation, which tells
# a run whether it learns and picks its checkpoint, takes 40; the test split stays at the
# 10 songs every published synthetic figure was measured on (an easy draw).
SYNTHETIC_SPLIT_SONGS = {"train": 90, "valid": 40, "test": 10}


@dataclass(frozen=True)
class SyntheticOptions:
    """Size of a generated dataset (synthetic or rendered); songs are cached on disk and reused."""

    songs: dict = field(default_factory=lambda: dict(SYNTHETIC_SPLIT_SONGS))
    duration: float = 20.0
    seed: int = 0
    cache_dir: str | None = None  # default: $WAVESEP_CACHE or ~/.cache/wavesep


def native_sample_rate(track: Track) -> int:
    """The sample rate a track's mixture (or vocals) is stored at."""
    first = (track.mixture or track.vocals)[0]
    if first.stream is not None:
        import stempeg  # imported lazily: it probes ffmpeg on import

        return int(stempeg.Info(first.path).rate(first.stream))
    return audio_info(first.path).sample_rate


def load_track(track: Track, sample_rate: int, channels: int = 2) -> dict[str, np.ndarray]:
    """Reads a track's mixture, vocals and accompaniment at ``sample_rate`` as
    float32 ``[time, channels]``, all cut to the shortest of them."""
    def load_source(files):
        parts = [load_audio(f.path, sample_rate, channels, f.stream)[0] for f in files]
        length = min(len(p) for p in parts)
        return sum(p[:length] for p in parts)

    audio = {"vocals": load_source(track.vocals), "accompaniment": load_source(track.accompaniment)}
    length = min(len(a) for a in audio.values())
    audio = {name: a[:length] for name, a in audio.items()}
    if track.mixture:
        mixture = load_source(track.mixture)
        length = min(length, len(mixture))
        audio = {name: a[:length] for name, a in audio.items()}
        audio["mixture"] = mixture[:length]
    else:
        audio["mixture"] = audio["vocals"] + audio["accompaniment"]
    return audio


def find_problems(tracks: list[Track], *, decode: bool = False) -> list[str]:
    """Every file of ``tracks`` that training or evaluation could not read, as
    ``"<path>: <reason>"`` lines (the first problem of each file; [] when all is well).

    Checks each file's header: it exists, reads, holds samples, has 1 or 2
    channels and, for a WAV, all the data its header announces (``open_audio``);
    for a ``.stem.mp4``, what ffprobe says of each stream the tracks use.
    ``decode=True`` also decodes every file with ``load_audio``, which finds
    what only shows while decoding (corrupt frames, NaN samples).
    """
    streams_by_path: dict[str, list[int | None]] = {}
    for track in tracks:
        for file in (*track.vocals, *track.accompaniment, *track.mixture):
            streams = streams_by_path.setdefault(file.path, [])
            if file.stream not in streams:
                streams.append(file.stream)
    problems = []
    for path, streams in streams_by_path.items():
        try:
            if is_stem_file(path):
                _check_stem_header(path, streams)
            else:
                open_audio(path)
            if decode:
                for stream in streams:
                    load_audio(path, stream=stream)
        except AudioError as error:
            problems.append(str(error))
    return problems


def _check_stem_header(path: str, streams: list[int]) -> None:
    import stempeg  # imported lazily: it probes ffmpeg on import

    try:
        info = stempeg.Info(path)
    except Exception as error:  # ffmpeg-python's Error when ffprobe fails, OSError when ffprobe is missing
        stderr_lines = (getattr(error, "stderr", None) or b"").decode(errors="replace").strip().splitlines()
        raise AudioError(path, f"ffprobe cannot read it ({stderr_lines[-1] if stderr_lines else error})") from None
    for stream in streams:
        if stream >= info.nb_audio_streams:
            raise AudioError(path, f"has {info.nb_audio_streams} audio streams, no stream {stream}")
        if not 1 <= info.channels(stream) <= MAX_CHANNELS:
            raise AudioError(path, f"stream {stream} has {info.channels(stream)} channels; "
                                   "only mono and stereo are supported")
        if info.samples(stream) <= 0:
            raise AudioError(path, f"stream {stream} contains no audio samples")


# --- adapters -----------------------------------------------------------------


def _require_root(name: str, root, layout: str) -> Path:
    if root is None:
        raise DatasetError(f"dataset {name!r} needs --data-root; expected layout: {layout}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset {name!r}: data root {root} is not a folder; expected layout: {layout}")
    return root


def _split_by_order(names: list[str], split: str) -> list[str]:
    """For corpora without an official split: sorted songs, the last ~10%
    (at least one) form 'valid' and also serve as 'test'; the rest 'train'.
    A single song serves every split."""
    names = sorted(names)
    if len(names) == 1:
        return names
    held_out = max(1, len(names) // 10)
    return names[: len(names) - held_out] if split == "train" else names[len(names) - held_out :]


def _audio_files_in(folder: Path) -> dict[str, Path]:
    """Audio files of a song folder keyed by lower-case stem (``vocals.flac`` -> 'vocals')."""
    return {p.name[: -len(p.suffix)].lower(): p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS}


FOLDER_LAYOUT = ("<root>/<song>/mixture.wav, vocals.wav and accompaniment.wav (or other stems such as "
                 "drums.wav, bass.wav, other.wav, summed into the accompaniment); WAV/FLAC/MP3/OGG; "
                 "optional split folders <root>/train, <root>/valid, <root>/test")


def folder_tracks(root, split: str) -> list[Track]:
    root = _require_root("folder", root, FOLDER_LAYOUT)
    split_folder = root / split
    if split_folder.is_dir():
        song_dirs = sorted(p for p in split_folder.iterdir() if p.is_dir())
    else:
        song_dirs = [root / name for name in _split_by_order([p.name for p in root.iterdir() if p.is_dir()
                                                               and p.name not in SPLITS], split)]
    tracks = []
    for song in song_dirs:
        files = _audio_files_in(song)
        if "vocals" not in files:
            raise DatasetError(f"folder dataset: {song} has no vocals file; expected {FOLDER_LAYOUT}")
        mixture = files.pop("mixture", None)
        vocals = files.pop("vocals")
        accompaniment = [files["accompaniment"]] if "accompaniment" in files else list(files.values())
        if not accompaniment:
            raise DatasetError(f"folder dataset: {song} has no accompaniment or other stems; expected {FOLDER_LAYOUT}")
        tracks.append(Track(
            name=song.name,
            vocals=(AudioFile(str(vocals)),),
            accompaniment=tuple(AudioFile(str(p)) for p in accompaniment),
            mixture=(AudioFile(str(mixture)),) if mixture else (),
        ))
    if not tracks:
        raise DatasetError(f"folder dataset: no songs for split {split!r} under {root}; expected {FOLDER_LAYOUT}")
    return tracks


CCMIXTER_LAYOUT = "<root>/<song>/mix.wav, source-01.wav (accompaniment), source-02.wav (vocals)"


def ccmixter_tracks(root, split: str) -> list[Track]:
    root = _require_root("ccmixter", root, CCMIXTER_LAYOUT)
    songs = [p.name for p in root.iterdir() if p.is_dir() and (p / "source-02.wav").exists()]
    if not songs:
        raise DatasetError(f"ccmixter: no song folders under {root}; expected {CCMIXTER_LAYOUT}")
    tracks = []
    for name in _split_by_order(songs, split):
        song = root / name
        missing = [f for f in ("mix.wav", "source-01.wav") if not (song / f).exists()]
        if missing:
            raise DatasetError(f"ccmixter: {song} lacks {', '.join(missing)}; expected {CCMIXTER_LAYOUT}")
        tracks.append(Track(name=name, vocals=(AudioFile(str(song / "source-02.wav")),),
                            accompaniment=(AudioFile(str(song / "source-01.wav")),),
                            mixture=(AudioFile(str(song / "mix.wav")),)))
    return tracks


MUSDB_LAYOUT = "<root>/train/<name>.stem.mp4 and <root>/test/<name>.stem.mp4 (MUSDB18)"
MUSDB_HQ_LAYOUT = "<root>/train/<name>/{mixture,drums,bass,other,vocals}.wav and <root>/test/... (MUSDB18-HQ)"
ACCOMPANIMENT_STEMS = ("drums", "bass", "other")


def _musdb_tracks(name: str, root, split: str, is_wav: bool) -> list[Track]:
    import musdb  # imported lazily: it is slow to import and only these adapters need it

    layout = MUSDB_HQ_LAYOUT if is_wav else MUSDB_LAYOUT
    root = _require_root(name, root, layout)
    subset = "test" if split == "test" else "train"
    if not (root / subset).is_dir():
        raise DatasetError(f"{name}: {root / subset} is missing; expected {layout}")
    database = musdb.DB(root=str(root), is_wav=is_wav, subsets=subset,
                        split=None if split == "test" else split)
    tracks = []
    for entry in database.tracks:
        missing = [s for s in ("vocals",) + ACCOMPANIMENT_STEMS if s not in entry.sources]
        if missing:
            raise DatasetError(f"{name}: track {entry.name!r} lacks {', '.join(missing)}; expected {layout}")
        def stream(path, stem_id):
            return AudioFile(str(path), None if is_wav else int(stem_id))
        tracks.append(Track(
            name=entry.name,
            vocals=(stream(entry.sources["vocals"].path, entry.sources["vocals"].stem_id),),
            accompaniment=tuple(stream(entry.sources[s].path, entry.sources[s].stem_id) for s in ACCOMPANIMENT_STEMS),
            mixture=(stream(entry.path, entry.stem_id),),
        ))
    if not tracks:
        raise DatasetError(f"{name}: no tracks for split {split!r} under {root}; expected {layout}")
    return tracks


def musdb_tracks(root, split: str) -> list[Track]:
    return _musdb_tracks("musdb", root, split, is_wav=False)


def musdb_hq_tracks(root, split: str) -> list[Track]:
    return _musdb_tracks("musdb-hq", root, split, is_wav=True)


# --- synthetic ------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("WAVESEP_CACHE", Path.home() / ".cache" / "wavesep"))


def _song_seed(seed: int, split: str, index: int, kind: str) -> int:
    # synthetic keeps its original stream; rendered songs get their own scores and singers
    entropy = [seed, SPLITS.index(split), index] + ([GENERATED_DATASETS.index(kind)] if kind != "synthetic" else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _generate(kind: str, song_seed: int, sample_rate: int, duration: float) -> dict[str, np.ndarray]:
    if kind == "rendered":
        from data_pipeline.rendered_music import generate_rendered_song

        return generate_rendered_song(song_seed, sample_rate, duration)
    from data_pipeline.synthetic_music import generate_song

    return generate_song(song_seed, sample_rate, duration)


def _generated_root(kind: str, options: SyntheticOptions, sample_rate: int) -> Path:
    """The cache folder of a generated dataset; its name holds everything the audio depends on."""
    from data_pipeline.synthetic_music import GENERATOR_VERSION

    version = f"v{GENERATOR_VERSION}"
    if kind == "rendered":
        from data_pipeline.rendered_music import RENDERER_VERSION, SoundFontMissing, check_renderer, soundfont_tag

        try:
            version += f".{RENDERER_VERSION}-{soundfont_tag(check_renderer())}"
        except SoundFontMissing as error:
            raise DatasetError(str(error)) from None
    cache = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    return cache / f"{kind}-{version}-seed{options.seed}-{sample_rate}Hz-{options.duration:g}s"


def _write_generated_song(folder: Path, kind: str, song_seed: int, sample_rate: int, duration: float) -> None:
    stems = _generate(kind, song_seed, sample_rate, duration)
    # Per process: the workers of a multi-worker run may fill a shared cache at once.
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for name, audio in stems.items():
        write_wav(staging / f"{name}.wav", audio, sample_rate)
    write_wav(staging / "mixture.wav", stems["vocals"] + stems["accompaniment"], sample_rate)
    try:
        os.replace(staging, folder)  # a song folder exists only once complete
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(staging)  # another process finished the same song first


def generated_tracks(split: str, sample_rate: int, options: SyntheticOptions = SyntheticOptions(),
                     kind: str = "synthetic") -> list[Track]:
    """Generates the split's songs once (in parallel, cached on disk) and returns them:
    ``synthetic`` songs (procedural instruments) or ``rendered`` ones (the same composer
    and singer, sampled instruments; needs FluidSynth and a GM SoundFont).

    The cache key holds everything the audio depends on, so a change of sample
    rate, duration, seed, generator version or SoundFont makes new songs."""
    root = _generated_root(kind, options, sample_rate) / split
    count = options.songs[split]
    folders = [root / f"song{index:04d}" for index in range(count)]
    missing = [(i, f) for i, f in enumerate(folders) if not f.is_dir()]
    if missing:
        root.mkdir(parents=True, exist_ok=True)
        # Fresh worker processes: a fork would copy whatever locks the caller's threads hold
        # (TensorFlow's, FluidSynth's) and can hang.
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(_write_generated_song, folder, kind, _song_seed(options.seed, split, index, kind),
                                sample_rate, options.duration) for index, folder in missing]
            for job in tqdm(jobs, desc=f"generating {kind} {split} songs", unit="song"):
                job.result()
    return [Track(name=f.name, vocals=(AudioFile(str(f / "vocals.wav")),),
                  accompaniment=(AudioFile(str(f / "accompaniment.wav")),),
                  mixture=(AudioFile(str(f / "mixture.wav")),)) for f in folders]


# --- registry -------------------------------------------------------------------

FOLDER_ADAPTERS = {
    "musdb": musdb_tracks,
    "musdb-hq": musdb_hq_tracks,
    "ccmixter": ccmixter_tracks,
    "folder": folder_tracks,
    "mir-1k": folder_tracks,  # MIR-1K (or any second stems folder) in the folder layout, beside "folder" in a mix
}
DATASETS = (*GENERATED_DATASETS, *FOLDER_ADAPTERS)


def get_tracks(dataset: str, split: str, *, data_root=None, sample_rate: int = 22050,
               synthetic: SyntheticOptions = SyntheticOptions()) -> list[Track]:
    """The tracks of ``dataset``'s ``split`` ('train', 'valid' or 'test')."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if dataset in GENERATED_DATASETS:
        return generated_tracks(split, sample_rate, synthetic, kind=dataset)
    return FOLDER_ADAPTERS[dataset](data_root, split)
