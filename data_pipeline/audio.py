"""Audio I/O: the one place that reads, converts and writes audio.

Outside the graph (separate.py, evaluate.py, dataset preparation) audio is read
with soundfile (WAV, FLAC, MP3, OGG through libsndfile) or, for the streams of a
MUSDB18 ``.stem.mp4``, with stempeg/ffmpeg. Inside ``tf.data`` the same formats
are decoded by core ``tf.audio`` and tensorflow-io (see ``decode_in_graph``).
Every array is float32 ``[time, channels]``. Every failure to read is an
``AudioError`` naming the file and the reason.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SUPPORTED_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
MAX_CHANNELS = 2


class AudioError(Exception):
    """Audio that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str  # libsndfile's name: "WAV", "FLAC", "MP3", "OGG"
    subtype: str  # e.g. "PCM_16", "FLOAT", "VORBIS"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "file does not exist")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty")
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS and not is_stem_file(path):
        raise AudioError(
            path, f"unsupported format {path.suffix!r}; expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )


def is_stem_file(path) -> bool:
    return str(path).lower().endswith(".stem.mp4")


def audio_info(path) -> AudioInfo:
    """Header facts of a soundfile-readable file (no decoding)."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(path, f"not a readable audio file ({error})") from None
    if info.frames <= 0:
        raise AudioError(path, "contains no audio samples (empty or truncated)")
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format, info.subtype)


@dataclass(frozen=True)
class WavChunk:
    id: bytes
    start: int  # where its body begins in the file
    size: int  # what its header announces

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def next_start(self) -> int:
        """Where the chunk after it begins: RIFF pads an odd-sized body with one byte."""
        return self.end + (self.size & 1)


@dataclass(frozen=True)
class WavLayout:
    """What a RIFF/WAVE file's headers say, read without its samples."""

    riff_size: int  # what the RIFF header announces
    file_bytes: int
    chunks: tuple[WavChunk, ...]  # in file order, each after the previous one's body and pad byte
    fmt: bytes | None  # the first 16 bytes of the first fmt chunk's body

    def first(self, chunk_id: bytes) -> WavChunk | None:
        return next((chunk for chunk in self.chunks if chunk.id == chunk_id), None)


# Bounds the walk over a hostile file of tiny chunks; real WAVs have a handful.
MAX_WAV_CHUNKS = 64


def riff_chunks(file, start: int, end: int) -> tuple[WavChunk, ...]:
    """The chunks laid one after another from ``start`` in a seekable binary file (odd sizes
    padded), as long as a whole chunk header lies before ``end`` (at most the file's length),
    up to ``MAX_WAV_CHUNKS``: a RIFF file's chunks, or the entries of a LIST chunk."""
    chunks, position = [], start
    while len(chunks) < MAX_WAV_CHUNKS and position + 8 <= end:
        file.seek(position)
        header = file.read(8)
        chunks.append(WavChunk(header[:4], position + 8, int.from_bytes(header[4:], "little")))
        position = chunks[-1].next_start
    return tuple(chunks)


def wav_layout(file) -> WavLayout | None:
    """The layout of a RIFF/WAVE file (a seekable binary file object), or None when it is not
    one. libsndfile silently shortens a cut-off WAV to what is there, and a header's length
    can be a lie: comparing a chunk's ``end`` with ``file_bytes`` finds both."""
    file_bytes = file.seek(0, os.SEEK_END)
    file.seek(0)
    header = file.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:] != b"WAVE":
        return None
    chunks = riff_chunks(file, 12, file_bytes)
    fmt, fmt_body = next((chunk for chunk in chunks if chunk.id == b"fmt "), None), None
    if fmt is not None:
        file.seek(fmt.start)
        fmt_body = file.read(min(fmt.size, 16))
    return WavLayout(int.from_bytes(header[4:8], "little"), file_bytes, chunks, fmt_body)


def _check_not_truncated_wav(path: Path) -> None:
    with open(path, "rb") as file:
        layout = wav_layout(file)
    data = layout.first(b"data") if layout is not None else None
    # 0xFFFFFFFF marks a streamed WAV whose length was never filled in.
    if data is not None and data.size != 0xFFFFFFFF and data.end > layout.file_bytes:
        raise AudioError(path, f"truncated: header announces {data.size} data bytes, "
                               f"file holds {layout.file_bytes - data.start}")


def open_audio(path) -> AudioInfo:
    """Checks a soundfile-readable file before decoding: it exists, has a known
    format, a usable channel count and, for WAV, all the data its header announces."""
    path = Path(path)
    info = audio_info(path)
    if info.format == "WAV":
        _check_not_truncated_wav(path)
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(path, f"has {info.channels} channels; only mono and stereo are supported")
    return info


def read_blocks(path, block_frames: int, info: AudioInfo | None = None):
    """Yields float32 ``[block_frames, channels]`` blocks of a soundfile-readable file
    (the last may be shorter), checking each for NaN/inf and the total against the header.

    ``info``: what ``open_audio`` already returned for this file, to skip checking it again."""
    path = Path(path)
    info = info or open_audio(path)
    decoded = 0
    try:
        for block in sf.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True):
            validate_audio(block, path)
            decoded += len(block)
            yield block
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(path, f"could not decode audio ({error})") from None
    if decoded < info.frames:
        raise AudioError(path, f"truncated: header announces {info.frames} frames, only {decoded} decoded")


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    info = open_audio(path)
    blocks = list(read_blocks(path, block_frames=1 << 20, info=info))
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0], info.sample_rate


def _read_stem_stream(path: Path, stream: int) -> tuple[np.ndarray, int]:
    import stempeg  # imported lazily: it probes ffmpeg on import

    try:
        audio, sample_rate = stempeg.read_stems(str(path), stem_id=stream, dtype=np.float32)
    except Exception as error:  # stempeg surfaces ffmpeg failures as assorted types
        raise AudioError(path, f"could not decode stream {stream} with ffmpeg ({error})") from None
    return np.asarray(audio, dtype=np.float32).reshape(len(audio), -1), int(sample_rate)


def load_audio(path, sample_rate: int | None = None, channels: int | None = None, stream: int | None = None):
    """Reads ``path`` as float32 ``[time, channels]`` and returns ``(audio, sample_rate)``.

    ``sample_rate`` resamples (soxr, high quality); ``channels`` (1 or 2)
    downmixes or duplicates; ``stream`` selects a stream of a ``.stem.mp4``.
    """
    path = Path(path)
    _check_file(path)
    if stream is not None:
        audio, file_rate = _read_stem_stream(path, stream)
    else:
        audio, file_rate = _read_soundfile(path)
    validate_audio(audio, path)
    if channels is not None:
        audio = convert_channels(audio, channels)
    if sample_rate is not None:
        audio = resample(audio, file_rate, sample_rate)
        file_rate = sample_rate
    return audio, file_rate


def validate_audio(audio: np.ndarray, path="<array>") -> None:
    if audio.ndim != 2 or len(audio) == 0:
        raise AudioError(path, "contains no audio samples")
    if not 1 <= audio.shape[1] <= MAX_CHANNELS:
        raise AudioError(path, f"has {audio.shape[1]} channels; only mono and stereo are supported")
    if not np.isfinite(audio).all():
        raise AudioError(path, "contains NaN or infinite samples")


def convert_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono <-> stereo: a downmix averages, an upmix duplicates."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    if audio.shape[1] == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=1, keepdims=True)
    return np.repeat(audio, channels, axis=1)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return audio
    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def creation_mode() -> int:
    """The mode a new file gets from ``open()`` under the process's umask (0644 under
    the usual 022): what an output should have, not a temporary file's 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class WavWriter:
    """Writes a WAV (or, for a ``.flac`` path, FLAC) file block by block, atomically:
    the file appears under its name only when complete, with the mode the user's
    umask gives new files; on an exception the partial file is removed.

    PCM_16 clips to [-1, 1]; ``subtype="FLOAT"`` keeps values beyond it (WAV only)."""

    def __init__(self, path, sample_rate: int, channels: int, subtype: str = "PCM_16"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = "FLAC" if self.path.suffix.lower() == ".flac" else "WAV"
        descriptor, self.temporary = tempfile.mkstemp(suffix=self.path.suffix or ".wav", dir=self.path.parent,
                                                      prefix=f".{self.path.stem}.")
        os.fchmod(descriptor, creation_mode())
        os.close(descriptor)
        self.clip = subtype.startswith("PCM")
        self.file = sf.SoundFile(self.temporary, "w", sample_rate, channels, subtype=subtype, format=container)

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32)
        self.file.write(np.clip(block, -1.0, 1.0) if self.clip else block)

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        self.file.close()
        if error_type is None:
            os.replace(self.temporary, self.path)
        else:
            os.unlink(self.temporary)


def write_wav(path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Writes ``[time, channels]`` audio atomically (see ``WavWriter``; FLAC for a ``.flac`` path)."""
    with WavWriter(path, sample_rate, np.shape(audio)[1], subtype) as writer:
        writer.write(audio)


# --- inside tf.data ---------------------------------------------------------

# How a file is decoded inside the graph; chosen per file from its header.
DECODE_WAV16, DECODE_FLAC16, DECODE_MP3, DECODE_OGG, DECODE_PYTHON = range(5)


def in_graph_decoder(info: AudioInfo, sample_rate: int) -> int:
    """The in-graph decoder for a file, or DECODE_PYTHON when it needs resampling
    or a sample format that core TF / tensorflow-io cannot decode."""
    if info.sample_rate != sample_rate:
        return DECODE_PYTHON
    if info.format == "WAV" and info.subtype == "PCM_16":
        return DECODE_WAV16
    if info.format == "FLAC" and info.subtype == "PCM_16":
        return DECODE_FLAC16
    if info.format == "MP3":
        return DECODE_MP3
    if info.format == "OGG" and info.subtype == "VORBIS":
        return DECODE_OGG
    return DECODE_PYTHON


def decode_in_graph(path, stream, decoder, sample_rate: int):
    """Decodes one file inside a tf.data map into float32 ``[time, 2]``.

    ``decoder`` (an int32 tensor) selects core ``tf.audio.decode_wav``, a
    tensorflow-io decoder, or a ``tf.numpy_function`` around ``load_audio``
    (resampling, other sample formats, .stem.mp4 streams).
    """
    import tensorflow as tf
    import tensorflow_io as tfio  # registers its ops; imported only where decoding happens

    def contents():
        return tf.io.read_file(path)

    def wav16():
        return tf.audio.decode_wav(contents()).audio

    def flac16():
        return tf.cast(tfio.audio.decode_flac(contents(), dtype=tf.int16), tf.float32) / 32768.0

    def mp3():
        return tfio.audio.decode_mp3(contents())

    def ogg():
        return tfio.audio.decode_vorbis(contents())

    def python():
        def load(path_bytes, stream_index):
            path_text = np.asarray(path_bytes).item().decode()
            stream_number = int(stream_index)
            return load_audio(path_text, sample_rate, channels=2, stream=None if stream_number < 0 else stream_number)[0]

        return tf.numpy_function(load, [path, stream], tf.float32, stateful=False)

    audio = tf.switch_case(decoder, [wav16, flac16, mp3, ogg, python])
    audio = tf.reshape(audio, [-1, tf.shape(audio)[-1]])
    # Mono files become stereo here so every track has the same shape.
    stereo = tf.cond(tf.shape(audio)[1] == 1, lambda: tf.tile(audio, [1, 2]), lambda: audio[:, :2])
    return tf.ensure_shape(stereo, [None, 2])
