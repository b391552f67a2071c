"""The catalog's songs: found by a glob on any Beam file system, each with the output
folder its path gives it, decoded and cut into the model's windows in a worker.

    --input 'music/**/*.mp3'   root music/   music/rock/a/01.mp3 -> OUT/rock/a/01/

The root is the glob's part before its first wildcard, up to its last ``/``; a folder
named without a wildcard is the glob ``FOLDER/**``. Of the files matched, those with an
audio extension (WAV, FLAC, MP3, OGG) are songs; the rest are passed over.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from apache_beam.io.filesystems import FileSystems

from data_pipeline.audio import SUPPORTED_EXTENSIONS, AudioError, open_audio, read_blocks
from models.framing import ChunkPlan
from pipelines.model_handler import is_local
from runtime.chunking import PlanWindows, song_to_model

WILDCARD = re.compile(r"[*?\[]")  # what Beam's globs treat as wildcards
DECODE_BLOCK_SECONDS = 60  # read a minute at a time


class InputError(Exception):
    """An --input that gives nothing to separate, or songs that would share an output folder."""


@dataclass(frozen=True)
class Song:
    """One input file: where it is, its output folder under OUT (``relative``), and the
    size and modification time that tell a finished song's input from a changed one."""

    path: str
    relative: str
    size: int
    mtime: float


def glob_and_root(pattern: str) -> tuple[str, str]:
    """(the glob to match, its root: the part before the first wildcard, to its last ``/``)."""
    if not WILDCARD.search(pattern):
        folder = (is_local(pattern) and os.path.isdir(pattern)) or pattern.endswith("/")
        if folder:
            root = pattern.rstrip("/") + "/"
            return root + "**", root
        return pattern, pattern[:pattern.rfind("/") + 1]
    prefix = pattern[:WILDCARD.search(pattern).start()]
    return pattern, prefix[:prefix.rfind("/") + 1]


def find_songs(pattern: str, output: str) -> list[Song]:
    """The songs ``pattern`` matches (not those under ``output``), sorted by path; an
    ``InputError`` for no songs, or for two songs that would share an output folder
    (a/01.wav and a/01.mp3)."""
    glob, root = glob_and_root(pattern)
    try:
        matched = FileSystems.match([glob])[0].metadata_list
    except Exception as error:  # Beam's BeamIOError, or a file system it does not have
        raise InputError(f"--input {pattern}: cannot be matched ({error})") from None
    outside = _absolute(output).rstrip("/") + "/"
    songs = [Song(m.path, os.path.splitext(m.path[len(root):] if m.path.startswith(root) else
                                         os.path.relpath(m.path, root))[0],
                  m.size_in_bytes, m.last_updated_in_seconds)
             for m in matched if os.path.splitext(m.path)[1].lower() in SUPPORTED_EXTENSIONS
             and not _absolute(m.path).startswith(outside)]
    if not songs:
        kinds = "/".join(e[1:].upper() for e in SUPPORTED_EXTENSIONS)
        found = f"matches {len(matched)} file(s), none of them {kinds} audio" if matched else "matches no file"
        raise InputError(f"--input {pattern}: {found}")
    by_folder: dict[str, list[str]] = {}
    for song in songs:
        by_folder.setdefault(song.relative, []).append(song.path)
    clashes = [f"  {folder}/: {', '.join(paths)}" for folder, paths in sorted(by_folder.items()) if len(paths) > 1]
    if clashes:
        raise InputError("songs that would be written to the same output folder (rename one of them):\n"
                         + "\n".join(clashes))
    return sorted(songs, key=lambda song: song.path)


def _absolute(path: str) -> str:
    return os.path.abspath(path) if is_local(path) else path


@dataclass
class DecodedSong:
    """A song as the model's path needs it: its samples at its own rate and at the model's."""

    song: Song
    audio: np.ndarray  # [frames, channels] float32 at sample_rate
    sample_rate: int
    model_input: np.ndarray  # song_to_model's


def decode(song: Song, model_rate: int, max_seconds: float) -> DecodedSong:
    """Reads the whole song (from any Beam file system) and resamples it for the model;
    an ``AudioError`` names what is wrong (unreadable, undecodable, too long...)."""
    with _local_copy(song.path) as path:
        info = open_audio(path)
        seconds = info.frames / info.sample_rate
        if seconds > max_seconds:
            raise AudioError(song.path, f"too long: {seconds:.0f} s, over --max-seconds {max_seconds:g}")
        blocks = list(read_blocks(path, DECODE_BLOCK_SECONDS * info.sample_rate, info))
    audio = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return DecodedSong(song, audio, info.sample_rate, song_to_model(audio, info.sample_rate, model_rate))


class _local_copy:
    """The path itself for a local file; for another file system, a temporary local copy."""

    def __init__(self, path: str):
        self.path, self.copy = path, None

    def __enter__(self) -> str:
        if is_local(self.path):
            return self.path
        handle, self.copy = tempfile.mkstemp(suffix=os.path.splitext(self.path)[1])
        try:
            with os.fdopen(handle, "wb") as target, FileSystems.open(self.path, compression_type="uncompressed") as f:
                shutil.copyfileobj(f, target, 1 << 20)
        except Exception as error:
            os.unlink(self.copy)
            raise AudioError(self.path, f"cannot be read ({error})") from None
        return self.copy

    def __exit__(self, *exception):
        if self.copy is not None:
            os.unlink(self.copy)


def window_count(frames: int, plan: ChunkPlan) -> int:
    """How many windows ``PlanWindows`` cuts a song of ``frames`` model samples into."""
    return -(-frames // plan.stride)


def cut(decoded: DecodedSong, plan: ChunkPlan):
    """``(index, window, kept)`` of the song's windows, in order (``runtime.chunking.PlanWindows``)."""
    windows = PlanWindows(plan, decoded.audio.shape[1]).push(decoded.model_input, last=True)
    for index, (window, kept) in enumerate(windows):
        yield index, window, kept


class DecodedSongs:
    """The songs a worker process decoded and has not finished yet, by path: the finishing
    step takes a song's samples from here rather than decode it again (it runs in the
    same process when the runner fuses the steps, as runners do). Holds at most
    ``limit`` songs; a song pushed out, or decoded in another process, is decoded again."""

    def __init__(self, limit: int = 8):
        self.songs: OrderedDict[str, DecodedSong] = OrderedDict()
        self.limit = limit

    def put(self, decoded: DecodedSong) -> None:
        self.songs[decoded.song.path] = decoded
        while len(self.songs) > self.limit:
            self.songs.popitem(last=False)

    def take(self, song: Song, model_rate: int, max_seconds: float) -> DecodedSong:
        decoded = self.songs.pop(song.path, None)
        return decoded if decoded is not None else decode(song, model_rate, max_seconds)


DECODED = DecodedSongs()  # this worker process's
