"""A separated song's files: OUT/<relative>/{vocals,accompaniment}.<format>, each
written atomically (complete under its name, or not there), with the mode the user's
umask gives new files, then the song's record ``.wavesep-catalog.json`` beside them.

The record says what the outputs were made from and with: the model's fingerprint, the
input's path, size and modification time, the format, and each output's size. A song
is finished when its record says so for this run's model, input and format and every
output it lists is there at its size; a run skips finished songs and redoes the rest
(a song cut off by a kill has no record yet, or the previous model's). Local outputs
go through ``data_pipeline.audio.WavWriter``; on other file systems (gs://, s3://...)
a file is written under a temporary name and renamed.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
from apache_beam.io.filesystems import FileSystems

from data_pipeline.audio import WavWriter, creation_mode
from models.architecture import SOURCES
from pipelines.model_handler import is_local
from pipelines.songs import Song

RECORD = ".wavesep-catalog.json"
FORMATS = ("wav", "flac")


def song_folder(output: str, song: Song) -> str:
    return FileSystems.join(output, *song.relative.split("/"))


def output_names(audio_format: str) -> list[str]:
    return [f"{source}.{audio_format}" for source in SOURCES]


def write_bytes(path: str, data: bytes) -> None:
    """``data`` as the file ``path``, atomically, with the mode the umask gives new files."""
    if is_local(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.")
        try:
            os.fchmod(handle, creation_mode())
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        return
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temporary) as file:
        file.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def write_song(output: str, song: Song, sources: dict, sample_rate: int, audio_format: str,
               model: str, seconds: float) -> dict:
    """Writes a song's sources (16-bit) and then its record; returns the record."""
    folder = song_folder(output, song)
    sizes = {}
    for source, name in zip(SOURCES, output_names(audio_format)):
        path = FileSystems.join(folder, name)
        if is_local(path):
            _remove_leftovers(Path(folder), name)
            with WavWriter(path, sample_rate, sources[source].shape[1]) as writer:
                writer.write(sources[source])
            sizes[name] = os.path.getsize(path)
        else:
            buffer = io.BytesIO()
            sf.write(buffer, np.clip(sources[source], -1.0, 1.0), sample_rate, subtype="PCM_16",
                     format=audio_format.upper())
            write_bytes(path, buffer.getvalue())
            sizes[name] = len(buffer.getvalue())
    record = {"model": model, "input": song.path, "input_size": song.size, "input_mtime": song.mtime,
              "format": audio_format, "outputs": sizes, "seconds": round(seconds, 3), "sample_rate": sample_rate,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if is_local(folder):
        _remove_leftovers(Path(folder), RECORD)
    write_bytes(FileSystems.join(folder, RECORD), (json.dumps(record, indent=1) + "\n").encode())
    return record


def _remove_leftovers(folder: Path, name: str) -> None:
    """The temporary files of ``name`` (WavWriter's, write_bytes') left by a run killed while writing it."""
    stem, suffix = os.path.splitext(name)
    for pattern in (f".{stem}.*{suffix}", f".{name}.*"):
        for leftover in folder.glob(pattern) if folder.is_dir() else []:
            leftover.unlink(missing_ok=True)


def read_record(output: str, song: Song) -> dict | None:
    path = FileSystems.join(song_folder(output, song), RECORD)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as file:
            return json.loads(file.read())
    except Exception:  # absent, unreadable or not JSON: not finished
        return None


def finished(output: str, song: Song, model: str, audio_format: str) -> bool:
    """Whether the song's outputs are complete for this model, input and format."""
    record = read_record(output, song)
    if not isinstance(record, dict) or not isinstance(record.get("outputs"), dict):
        return False
    same = (record.get("model") == model and record.get("input") == song.path and record.get("input_size") == song.size
            and record.get("input_mtime") == song.mtime and record.get("format") == audio_format
            and set(record["outputs"]) == set(output_names(audio_format)))
    if not same:
        return False
    return all(_size(FileSystems.join(song_folder(output, song), name)) == size
               for name, size in record["outputs"].items())


def _size(path: str) -> int | None:
    """A file's size in bytes, None where it is not there."""
    try:
        if is_local(path):
            return os.path.getsize(path)
        found = FileSystems.match([path])[0].metadata_list  # remote names hold no wildcards in practice
        return found[0].size_in_bytes if len(found) == 1 else None
    except Exception:
        return None
