"""Songs from strangers: an uploaded file or WAV bytes decoded from their own bytes
only, at a bounded cost.

An upload is a file of unknown content under a name we chose (never its own, whose
suffix would steer format guessing). libsndfile reads it when it can (WAV, FLAC, OGG,
MP3, AIFF, ...): it knows no references to other files. Anything else goes to ffmpeg
with two allow-lists: the ``file`` protocol alone (no http, no data:, no pipe to
elsewhere) and the container formats in ``FFMPEG_FORMATS`` (audio and common video
files; not HLS or other playlists, concat lists, image sequences or devices, which
read other files or URLs). ffmpeg's probe runs first, under the same allow-lists.

Every path checks the duration the header announces before decoding and counts the
samples while decoding, so a file whose header lies costs no more than an honest one:
at most ``max_seconds`` of audio at ``MAX_SAMPLE_RATE`` on two channels.
"""
from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from data_pipeline.audio import (MAX_CHANNELS, MAX_WAV_CHUNKS, AudioError, AudioInfo, WavChunk, read_blocks,
                                 riff_chunks, validate_audio, wav_layout)

# ffmpeg demuxers that read the one file they are given: the formats of songs and of videos'
# sound. Playlists (hls, dash), concat, image2, tee, lavfi and the like are not on it.
FFMPEG_FORMATS = ("wav", "w64", "flac", "mp3", "ogg", "mov", "matroska", "aac", "ac3", "eac3", "aiff", "caf",
                  "asf", "wv", "ape", "tta", "amr", "avi")
MAX_SAMPLE_RATE = 192_000
BLOCK_FRAMES = 1 << 16
# ffmpeg decodes audio at hundreds of times real time: a file that keeps ffprobe or ffmpeg
# busy for longer than this is refused.
PROBE_SECONDS, DECODE_SECONDS_PER_AUDIO_SECOND = 30, 0.1


class UploadLimits:
    """What one song may cost: its duration (and through it, memory and compute)."""

    def __init__(self, max_seconds: float):
        self.max_seconds = max_seconds

    def describe(self) -> str:
        return f"{self.max_seconds / 60:g} minutes"

    def check_header(self, name: str, seconds: float, sample_rate: int, channels: int) -> None:
        if not 0 < sample_rate <= MAX_SAMPLE_RATE:
            raise AudioError(name, f"sample rate {sample_rate} Hz is outside 1..{MAX_SAMPLE_RATE} Hz")
        if channels < 1:
            raise AudioError(name, "has no audio channels")
        if seconds > self.max_seconds:
            raise AudioError(name, f"lasts {seconds / 60:.1f} minutes; this server separates songs of at most "
                                   f"{self.describe()}")

    def check_decoded(self, name: str, frames: int, sample_rate: int) -> None:
        if frames > self.max_seconds * sample_rate:
            raise AudioError(name, f"holds more than {self.describe()} of audio (more than its header said); "
                                   f"this server separates songs of at most {self.describe()}")


def check_channels(name: str, channels: int) -> None:
    if channels > MAX_CHANNELS:
        raise AudioError(name, f"has {channels} channels; only mono and stereo are supported")


def decode_upload(path: Path, name: str, limits: UploadLimits) -> tuple[np.ndarray, int]:
    """An uploaded file as float32 ``[time, 1 or 2]`` at its own rate (at most 48 kHz through
    ffmpeg), or an ``AudioError`` naming ``name`` (the uploader's file name)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return _decode_with_ffmpeg(path, name, limits)
    return _decode_with_soundfile(path, name, limits, info)


def _decode_with_soundfile(path: Path, name: str, limits: UploadLimits, info) -> tuple[np.ndarray, int]:
    if info.frames <= 0:
        raise AudioError(name, "contains no audio samples")
    check_channels(name, info.channels)
    limits.check_header(name, info.frames / info.samplerate, info.samplerate, info.channels)
    header = AudioInfo(info.samplerate, info.channels, info.frames, info.format, info.subtype)
    blocks, frames = [], 0
    try:
        for block in read_blocks(path, BLOCK_FRAMES, info=header):
            frames += len(block)
            limits.check_decoded(name, frames, info.samplerate)
            blocks.append(block)
    except AudioError as error:
        raise AudioError(name, error.reason) from None
    return np.concatenate(blocks), info.samplerate


def _ffmpeg_guards(path: Path) -> list[str]:
    return ["-protocol_whitelist", "file", "-format_whitelist", ",".join(FFMPEG_FORMATS), "-i", f"file:{path}"]


def _probe(path: Path, name: str) -> dict:
    """The container and first audio stream as ffprobe reads them under the allow-lists."""
    command = ["ffprobe", "-v", "error", *_ffmpeg_guards(path), "-select_streams", "a:0",
               "-show_entries", "format=format_name,duration:stream=sample_rate,channels,duration", "-of", "json"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_SECONDS, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AudioError(name, "not WAV/FLAC/MP3/OGG, and ffmpeg is not installed to read other formats") from None
    except subprocess.TimeoutExpired:
        raise AudioError(name, "reading its header took too long") from None
    if result.returncode != 0:
        if "not on whitelist" in result.stderr:
            raise AudioError(name, "is in a format this server does not read: it takes audio and video files, "
                                   "not playlists, lists of files or links")
        raise AudioError(name, f"cannot be read as audio ({_last_line(result.stderr, path)})")
    facts = json.loads(result.stdout or "{}")
    if not facts.get("streams"):
        raise AudioError(name, "holds no audio stream")
    return facts


def _decode_with_ffmpeg(path: Path, name: str, limits: UploadLimits) -> tuple[np.ndarray, int]:
    facts = _probe(path, name)
    stream = facts["streams"][0]
    try:
        sample_rate, channels = int(stream["sample_rate"]), int(stream["channels"])
    except (KeyError, ValueError):
        raise AudioError(name, "its audio stream has no sample rate or channel count") from None
    duration = _seconds(stream.get("duration")) or _seconds(facts.get("format", {}).get("duration")) or 0.0
    limits.check_header(name, duration, sample_rate, channels)
    # More channels are mixed down to stereo and rates above 48 kHz resampled, by ffmpeg.
    rate, out_channels = min(sample_rate, 48_000), min(channels, MAX_CHANNELS)
    frame_bytes = 4 * out_channels
    # One sample beyond the limit is enough to know the file is too long.
    limit_bytes = (int(limits.max_seconds * rate) + 1) * frame_bytes
    command = ["ffmpeg", "-nostdin", "-v", "error", *_ffmpeg_guards(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
               "-ac", str(out_channels), "-ar", str(rate), "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
    deadline = PROBE_SECONDS + limits.max_seconds * DECODE_SECONDS_PER_AUDIO_SECOND
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: ffmpeg never blocks on its messages
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        watchdog = threading.Timer(deadline, process.kill)  # a file that keeps ffmpeg busy without output
        watchdog.start()
        data = bytearray()
        try:
            while chunk := process.stdout.read(BLOCK_FRAMES * frame_bytes):
                data += chunk
                if len(data) >= limit_bytes:
                    limits.check_decoded(name, len(data) // frame_bytes, rate)
            returncode = process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        errors.seek(max(0, errors.seek(0, 2) - 2000))
        message = errors.read().decode(errors="replace")
    if returncode != 0:
        reason = "it took too long" if returncode < 0 else _last_line(message, path)
        raise AudioError(name, f"ffmpeg cannot decode it ({reason})")
    audio = np.frombuffer(data, np.float32, count=len(data) // 4 // out_channels * out_channels)
    audio = audio.reshape(-1, out_channels)
    validate_audio(audio, name)
    return audio, rate


def _last_line(messages: str, path: Path) -> str:
    """ffmpeg's last message, without the server's own path in it."""
    line = (messages.strip().splitlines() or ["unknown error"])[-1]
    return line.replace(f"file:{path}", "the upload").replace(str(path), "the upload")[:300]


def _seconds(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value >= 0 else None


@dataclass(frozen=True)
class WavHeader:
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


# What may stand between 'fmt ' and 'data'. tf.audio.decode_wav skips every chunk after 'fmt '
# by the size it announces, without a pad byte. libsndfile 1.2 (wav.c, wavlike.c) skips ID3 tags
# and padding (id3, JUNK, PAD, FLLR) by their size too, reads 'cue ' and 'smpl' field by field,
# and walks a LIST's entries, taking one named 'data' for the samples: ``metadata_problem``
# refuses whatever could make it go on reading anywhere but at the next chunk.
METADATA_CHUNKS = (b"LIST", b"cue ", b"smpl", b"id3 ", b"ID3 ", b"JUNK", b"PAD ", b"FLLR")
MAX_METADATA_CHUNKS = 8
# libsndfile caches the headers it reads in at most 64 KiB and stops reading beyond.
MAX_HEADER_BYTES = 32 * 1024
# INFO entries (ISFT, INAM, IART, ...): libsndfile reads each by its size, and
# 'INFO' itself as a marker without one.
INFO_ENTRY = re.compile(rb"I[A-Z0-9]{3}")
ACCEPTED_WAVS = ("separate_audio reads 16-bit PCM WAVs made of a 16- or 18-byte 'fmt ' chunk, at most "
                 f"{MAX_METADATA_CHUNKS} metadata chunks (LIST/INFO, cue, smpl, id3, JUNK, PAD, FLLR) of even "
                 "sizes and then one 'data' chunk that ends the file (as soundfile and ffmpeg write them)")


def metadata_problem(chunk: WavChunk, file: io.BytesIO) -> str | None:
    """Why libsndfile might not go on reading at the end of a metadata chunk, where
    tf.audio.decode_wav reads the next chunk; None when it does."""
    if chunk.size % 2:
        return "is odd-sized: libsndfile skips a pad byte after it, tf.audio.decode_wav does not"
    file.seek(chunk.start)
    if chunk.id == b"cue ":  # the count, then 24 bytes a point
        points = int.from_bytes(file.read(4), "little")
        return None if chunk.size == 4 + 24 * points else f"does not hold the {points} cue points it counts"
    if chunk.id == b"smpl":
        return None if chunk.size >= 36 else "is shorter than a sampler header (36 bytes)"
    if chunk.id != b"LIST":
        return None
    if chunk.size < 4 or file.read(4) != b"INFO":
        return "is not a LIST of INFO entries"
    entries = riff_chunks(file, chunk.start + 4, chunk.end)
    strange = [entry.id for entry in entries if entry.id == b"INFO" or not INFO_ENTRY.fullmatch(entry.id)]
    if strange:
        return f"holds an entry named {strange[0].decode('latin-1')!r}, not an INFO text"
    if (entries[-1].next_start if entries else chunk.start + 4) != chunk.end:
        return f"is not filled exactly by at most {MAX_WAV_CHUNKS} entries"
    return None


def wav_header(data: bytes, name: str = "the WAV") -> WavHeader | None:
    """What WAV bytes hold, from their headers, as the graph's decoder (``tf.audio.decode_wav``)
    and libsndfile both read them; None when ``data`` is not RIFF/WAVE at all (the decoder refuses
    it with its own message). The readers part ways on chunks before the format, several format
    or data chunks, odd sizes and pad bytes, metadata libsndfile parses on its own terms, a data
    chunk longer or shorter than the file, so anything but ``ACCEPTED_WAVS`` is refused with an
    ``AudioError`` naming what is wrong (tests/test_wav_parity.py holds the readers to this)."""
    file = io.BytesIO(data)
    layout = wav_layout(file)
    if layout is None:
        return None
    ids = [chunk.id for chunk in layout.chunks]
    metadata = layout.chunks[1:-1]
    if (ids[:1] != [b"fmt "] or ids[-1:] != [b"data"] or len(metadata) > MAX_METADATA_CHUNKS
            or any(chunk.id not in METADATA_CHUNKS for chunk in metadata)):
        names = ", ".join(repr(chunk_id.decode("latin-1")) for chunk_id in ids) or "none"
        raise AudioError(name, f"its chunks are {names}; {ACCEPTED_WAVS}")
    fmt, samples = layout.chunks[0], layout.chunks[-1]
    # The format first: an extensible or float WAV is better named as such than by its fmt size.
    if fmt.size >= 16:
        format_tag, channels, rate, byte_rate, frame_bytes, bits = struct.unpack("<HHIIHH", layout.fmt)
        if format_tag != 1 or bits != 16:
            raise AudioError(name, f"is not 16-bit PCM (format tag {format_tag:#06x}, {bits} bits); {ACCEPTED_WAVS}")
    if fmt.size not in (16, 18):
        raise AudioError(name, f"its 'fmt ' chunk is {fmt.size} bytes; {ACCEPTED_WAVS}")
    if channels == 0 or rate == 0:
        raise AudioError(name, f"its 'fmt ' chunk says {channels} channels at {rate} Hz")
    if frame_bytes != 2 * channels or byte_rate != rate * frame_bytes:
        raise AudioError(name, f"its 'fmt ' chunk says {frame_bytes} bytes per frame and {byte_rate} per second; "
                               f"{channels} x 16 bits at {rate} Hz make {2 * channels} and {2 * channels * rate}")
    if samples.end != layout.file_bytes:
        raise AudioError(name, f"its 'data' chunk announces {samples.size} bytes and "
                               f"{layout.file_bytes - samples.start} follow its header; {ACCEPTED_WAVS}")
    if samples.size % frame_bytes:
        raise AudioError(name, f"its 'data' chunk of {samples.size} bytes is not a whole number of "
                               f"{frame_bytes}-byte frames")
    if layout.riff_size != layout.file_bytes - 8:
        raise AudioError(name, f"its RIFF header announces {layout.riff_size} bytes and {layout.file_bytes - 8} "
                               f"follow it")
    if samples.start > MAX_HEADER_BYTES:
        raise AudioError(name, f"its headers take {samples.start} bytes before the samples; at most "
                               f"{MAX_HEADER_BYTES} are read")
    for chunk in metadata:
        if problem := metadata_problem(chunk, file):
            raise AudioError(name, f"its {chunk.id.decode('latin-1')!r} chunk {problem}")
    # libsndfile refuses PCM data that starts like a WavPack or Ogg stream.
    if data[samples.start:samples.start + 4] in (b"wvpk", b"OggS"):
        raise AudioError(name, "its samples start like a WavPack or Ogg stream")
    return WavHeader(rate, channels, samples.size // frame_bytes)


def check_wav_bytes(data: bytes, name: str, limits: UploadLimits) -> WavHeader | None:
    """WAV bytes of a request checked from their header before the graph decodes them; returns
    the header (None: not a WAV, which the graph's decoder refuses)."""
    header = wav_header(data, name)
    if header is not None:
        check_channels(name, header.channels)
        limits.check_header(name, header.seconds, header.sample_rate, header.channels)
    return header
