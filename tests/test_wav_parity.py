"""The server's WAV check against the two readers behind it. ``check_wav_bytes`` reads a
``separate_audio`` WAV's rate, channels and length from its headers before the graph decodes
it with ``tf.audio.decode_wav``; libsndfile reads the same uploads on the page. Every WAV the
check accepts must be what both readers decode; anything they could read differently is
refused. Generated, restructured, metadata-laden (LIST/INFO as ffmpeg writes it, cue, smpl,
id3, padding; well-formed and broken) and randomly mutated WAVs (fixed seeds), WAVs from the
real ffmpeg, then the two-fmt-chunk attack against a server on 127.0.0.1."""
import base64
import io
import shutil
import struct
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from data_pipeline.audio import AudioError, wav_layout
from serve.client import wav_bytes
from serve.upload import MAX_HEADER_BYTES, MAX_METADATA_CHUNKS, UploadLimits, check_wav_bytes
from tests.serve_helpers import Server, audio_request, save_stand_in

# No duration limit here: the parity is about what is read, not how long it lasts.
UNLIMITED = UploadLimits(max_seconds=1e9)
BASES = [(8000, 1, 37), (44100, 2, 400), (100, 1, 1), (22050, 2, 0), (192000, 1, 250)]
FFMPEG = shutil.which("ffmpeg")


def chunk(chunk_id: bytes, body: bytes, size: int | None = None, pad: bool = True) -> bytes:
    """A chunk whose header announces ``size`` (its body's length unless given), padded to even."""
    header = chunk_id + struct.pack("<I", len(body) if size is None else size)
    return header + body + (b"\0" if pad and len(body) % 2 else b"")


def fmt_chunk(rate: int, channels: int, bits: int = 16, tag: int = 1, byte_rate: int | None = None,
              frame_bytes: int | None = None, extra: bytes = b"") -> bytes:
    frame_bytes = channels * bits // 8 if frame_bytes is None else frame_bytes
    byte_rate = rate * frame_bytes if byte_rate is None else byte_rate
    return chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, byte_rate % 2 ** 32, frame_bytes, bits) + extra)


def riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


def samples(rng: np.random.Generator, frames: int, channels: int) -> bytes:
    return rng.integers(-2 ** 15, 2 ** 15, frames * channels, dtype=np.int16).astype("<i2").tobytes()


def restructured(rate: int, channels: int, frames: int, rng: np.random.Generator) -> dict[str, bytes]:
    """One song as a canonical WAV and as the ways a WAV's chunks can be duplicated, missing,
    reordered, odd-sized, mis-sized, truncated or in another format."""
    pcm = samples(rng, frames, channels)
    fmt, data = fmt_chunk(rate, channels), chunk(b"data", pcm)
    liar = fmt_chunk(100, channels, byte_rate=2 ** 31)  # a second format: 100 Hz, any length "fits"
    wav = riff(fmt, data)
    cases = {
        "canonical": wav,
        "fmt of 18 bytes": riff(fmt_chunk(rate, channels, extra=b"\0\0"), data),
        "two fmt chunks": riff(fmt, liar, data),
        "two fmt chunks, the liar first": riff(liar, fmt, data),
        "fmt after data": riff(fmt, data, liar),
        "two data chunks": riff(fmt, data, data),
        "data before fmt": riff(data, fmt),
        "no fmt": riff(data),
        "no data": riff(fmt),
        "nothing after WAVE": riff(),
        "JUNK before fmt": riff(chunk(b"JUNK", bytes(28)), fmt, data),
        "odd JUNK before fmt": riff(chunk(b"JUNK", bytes(27)), fmt, data),
        "LIST before data": riff(fmt, chunk(b"LIST", b"INFOISFT\x06\0\0\0Lavf\0\0"), data),
        "odd LIST before data, padded": riff(fmt, chunk(b"LIST", b"INFOa"), data),
        "odd LIST before data, unpadded": riff(fmt, chunk(b"LIST", b"INFOa", pad=False), data),
        "LIST holding a data marker": riff(fmt, chunk(b"LIST", b"INFO" + chunk(b"data", pcm[:8])), data),
        "fact after data": riff(fmt, data, chunk(b"fact", struct.pack("<I", frames))),
        "short fact before data": riff(fmt, chunk(b"fact", b"\0\0\0\0"), data),
        "PEAK before data": riff(fmt, chunk(b"PEAK", bytes(8 + 8 * channels)), data),
        "unknown chunk after data": riff(fmt, data, chunk(b"id3 ", bytes(10))),
        "odd data, padded": riff(fmt, chunk(b"data", pcm + b"\1")),
        "odd data, unpadded": riff(fmt, chunk(b"data", pcm + b"\1", pad=False)),
        "data announcing 2 bytes more": riff(fmt, chunk(b"data", pcm, size=len(pcm) + 2)),
        "data announcing 0x7FFFFFFF bytes": riff(fmt, chunk(b"data", pcm, size=0x7FFFFFFF)),
        "data announcing 0xFFFFFFFF bytes": riff(fmt, chunk(b"data", pcm, size=0xFFFFFFFF)),
        "fmt announcing 0xFFFFFFFF bytes": riff(chunk(b"fmt ", fmt[8:24], size=0xFFFFFFFF), data),
        "RIFF size 0": riff(fmt, data, size=0),
        "RIFF size 2 short": riff(fmt, data, size=len(wav) - 10),
        "RIFF size 0xFFFFFFFF": riff(fmt, data, size=0xFFFFFFFF),
        "3 trailing bytes": wav + b"abc",
        "8 trailing bytes": wav + b"abcdefgh",
        "fmt of 14 bytes": riff(chunk(b"fmt ", fmt[8:22]), data),
        "fmt of 17 bytes": riff(fmt_chunk(rate, channels, extra=b"\0"), data),
        "fmt of 20 bytes": riff(fmt_chunk(rate, channels, extra=bytes(4)), data),
        "extensible PCM": riff(fmt_chunk(rate, channels, tag=0xFFFE, extra=struct.pack(
            "<HHI", 22, 16, 4 if channels == 1 else 3) + bytes.fromhex("0100000000001000800000aa00389b71")), data),
        "32-bit float": riff(fmt_chunk(rate, channels, bits=32, tag=3), chunk(b"data", pcm * 2)),
        "8-bit PCM": riff(fmt_chunk(rate, channels, bits=8), data),
        "24-bit PCM": riff(fmt_chunk(rate, channels, bits=24), chunk(b"data", pcm[:len(pcm) // 6 * 6])),
        "wrong byte rate": riff(fmt_chunk(rate, channels, byte_rate=rate * 2 * channels + 2), data),
        "wrong frame size": riff(fmt_chunk(rate, channels, frame_bytes=4 * channels), data),
        "zero channels": riff(fmt_chunk(rate, 0, frame_bytes=0), data),
        "three channels": riff(fmt_chunk(rate, 3), chunk(b"data", pcm[:len(pcm) // 6 * 6])),
        "1500 channels": riff(fmt_chunk(rate, 1500), chunk(b"data", bytes(3000))),
        "rate 0": riff(fmt_chunk(0, channels), data),
        "rate 1 MHz": riff(fmt_chunk(1_000_000, channels), data),
        "rate 2^31 - 2": riff(fmt_chunk(2 ** 31 - 2, channels), data),
        "RIFX": b"RIFX" + wav[4:],
        "RF64": b"RF64" + wav[4:],
        "not WAVE": wav[:8] + b"AVI " + wav[12:],
    }
    if len(pcm) >= 4:
        cases["data announcing 2 bytes fewer"] = riff(fmt, chunk(b"data", pcm, size=len(pcm) - 2))
        cases["WavPack data"] = riff(fmt, chunk(b"data", b"wvpk" + pcm[4:]))
    if channels == 2:
        cases["data not whole frames"] = riff(fmt, chunk(b"data", pcm + b"\0\0"))
    for cut in sorted({*rng.integers(1, len(wav), 4).tolist(), 43, 44} - {len(wav)}):
        cases[f"cut at {cut} bytes"] = wav[:cut]
    return cases


def info_list(*entries: tuple[bytes, bytes], list_type: bytes = b"INFO") -> bytes:
    """A LIST chunk of ``list_type`` and (id, text) entries, odd texts padded as ffmpeg writes them."""
    return chunk(b"LIST", list_type + b"".join(chunk(entry_id, text) for entry_id, text in entries))


def cue_chunk(points: int, counted: int | None = None) -> bytes:
    """``points`` cue points behind a count of ``counted`` (``points`` unless given)."""
    body = struct.pack("<I", points if counted is None else counted)
    body += b"".join(struct.pack("<II4sIII", index, 10 * index, b"data", 0, 0, 10 * index) for index in range(points))
    return chunk(b"cue ", body)


def smpl_chunk(loops: int, sampler_data: bytes = b"") -> bytes:
    """A sampler chunk: its 36-byte header, ``loops`` loops of 24 bytes, then ``sampler_data``."""
    header = struct.pack("<9I", 0, 0, 22675, 60, 0, 0, 0, loops, len(sampler_data))
    return chunk(b"smpl", header + bytes(24 * loops) + sampler_data)


# Bytes a reader could take for chunk headers were it to look for them inside a body.
MARKER_TEXT = b"data\x04\0\0\0fmt \x10\0\0\0LIST\x04\0\0\0INFOadtlexif\0\0\0\0RIFF"
ACCEPTED_METADATA = {"ffmpeg's LIST", "LIST of tags, odd ones padded", "INFO texts holding chunk markers",
                     "an INFO text over 2 KiB", "an empty INFO text", "an empty LIST of INFO", "two LIST chunks",
                     f"{MAX_METADATA_CHUNKS} metadata chunks", "cue points", "no cue points", "smpl",
                     "smpl with loops and sampler data", "id3 tag", "JUNK, PAD and FLLR", "every kind",
                     "samples where the headers end at their bound"}


def metadata_layouts(rate: int, channels: int, frames: int, rng: np.random.Generator) -> dict[str, bytes]:
    """One song with metadata between 'fmt ' and 'data' as tools write it (``ACCEPTED_METADATA``),
    and the ways metadata can be broken, misplaced, excessive or read otherwise by libsndfile."""
    pcm = samples(rng, frames, channels)
    fmt, data = fmt_chunk(rate, channels), chunk(b"data", pcm)
    ffmpeg_list = info_list((b"ISFT", b"Lavf59.27.100\0"))
    tags = info_list((b"IART", b"Some Body\0"), (b"ICMT", b"odd\0"), (b"INAM", b"A title\0"), (b"ISFT", b"Lavf\0"))
    tags_body = tags[8:]
    junk_to_bound = MAX_HEADER_BYTES - len(riff(fmt)) - 16  # the samples then start at the bound
    # libsndfile backs out of a LIST at an entry named 'data' and reads it as the samples.
    inner_samples = b"data" + struct.pack("<I", 8 + len(data)) + samples(rng, 4, 1)
    return {
        "ffmpeg's LIST": riff(fmt, ffmpeg_list, data),
        "LIST of tags, odd ones padded": riff(fmt, tags, data),
        "INFO texts holding chunk markers": riff(fmt, info_list(
            (b"ICMT", MARKER_TEXT), (b"INAM", b"data" + struct.pack("<I", len(pcm)) + pcm[:6])), data),
        "an INFO text over 2 KiB": riff(fmt, info_list((b"ICMT", b"x" * 3001), (b"ISFT", MARKER_TEXT)), data),
        "an empty INFO text": riff(fmt, info_list((b"ICMT", b"")), data),
        "an empty LIST of INFO": riff(fmt, info_list(), data),
        "two LIST chunks": riff(fmt, ffmpeg_list, tags, data),
        f"{MAX_METADATA_CHUNKS} metadata chunks": riff(fmt, *[ffmpeg_list] * MAX_METADATA_CHUNKS, data),
        "cue points": riff(fmt, cue_chunk(3), data),
        "no cue points": riff(fmt, cue_chunk(0), data),
        "smpl": riff(fmt, smpl_chunk(0), data),
        "smpl with loops and sampler data": riff(fmt, smpl_chunk(2, b"abcd"), data),
        "id3 tag": riff(fmt, chunk(b"id3 ", b"ID3\4\0\0\0\0\0\0"), data),
        "JUNK, PAD and FLLR": riff(fmt, chunk(b"JUNK", bytes(28)), chunk(b"PAD ", bytes(4)), chunk(b"FLLR", bytes(4000)),
                                   data),
        "every kind": riff(fmt, tags, cue_chunk(1), smpl_chunk(1), chunk(b"ID3 ", bytes(10)), chunk(b"JUNK", bytes(8)),
                           data),
        "samples where the headers end at their bound": riff(fmt, chunk(b"JUNK", bytes(junk_to_bound)), data),
        "samples past the headers' bound": riff(fmt, chunk(b"JUNK", bytes(junk_to_bound + 2)), data),
        f"{MAX_METADATA_CHUNKS + 1} metadata chunks": riff(fmt, *[ffmpeg_list] * (MAX_METADATA_CHUNKS + 1), data),
        "odd LIST, padded": riff(fmt, chunk(b"LIST", b"INFO" + chunk(b"ISFT", b"Lavf\0", pad=False)), data),
        "odd LIST, unpadded": riff(fmt, chunk(b"LIST", b"INFO" + chunk(b"ISFT", b"Lavf\0", pad=False), pad=False), data),
        "INFO texts of odd sizes, unpadded": riff(fmt, chunk(b"LIST", b"INFO" + chunk(b"ISFT", b"abc", pad=False) +
                                                             chunk(b"INAM", b"abc", pad=False)), data),
        "a data entry in LIST": riff(fmt, info_list((b"data", pcm[:8])), data),
        "a data entry in LIST that runs to the end": riff(fmt, chunk(b"LIST", b"INFO" + inner_samples), data),
        "an fmt entry in LIST": riff(fmt, info_list((b"fmt ", fmt[8:])), data),
        "LIST in LIST": riff(fmt, info_list((b"ISFT", b"ab"), (b"LIST", tags_body)), data),
        "an INFO entry in LIST": riff(fmt, info_list((b"INFO", b"ISFT")), data),
        "a lowercase entry in LIST": riff(fmt, info_list((b"isft", b"ab")), data),
        "a zero entry id in LIST": riff(fmt, info_list((b"\0\0\0\0", b"ab")), data),
        "LIST of adtl labels": riff(fmt, info_list((b"labl", struct.pack("<I", 1) + b"x\0"), list_type=b"adtl"), data),
        "an adtl label of no bytes": riff(fmt, info_list((b"labl", b""), list_type=b"adtl"), data),
        "LIST of exif": riff(fmt, info_list((b"ever", b"0220"), list_type=b"exif"), data),
        "LIST of type data": riff(fmt, info_list((b"ISFT", b"ab"), list_type=b"data"), data),
        "LIST of 0 bytes": riff(fmt, chunk(b"LIST", b""), data),
        "LIST of 2 bytes": riff(fmt, chunk(b"LIST", b"IN"), data),
        "LIST whose entry runs past it": riff(fmt, chunk(b"LIST", b"INFO" + chunk(b"ISFT", b"ab", size=40)), data),
        "LIST ending in an entry's header": riff(fmt, chunk(b"LIST", b"INFO" + chunk(b"ISFT", b"ab") + b"IN"), data),
        "LIST announcing 2 bytes more": riff(fmt, chunk(b"LIST", tags_body, size=len(tags_body) + 2), data),
        "LIST announcing 2 bytes fewer": riff(fmt, chunk(b"LIST", tags_body, size=len(tags_body) - 2), data),
        "LIST of 65 entries": riff(fmt, info_list(*[(b"ICMT", b"ab")] * 65), data),
        "LIST before fmt": riff(ffmpeg_list, fmt, data),
        "LIST after data": riff(fmt, data, ffmpeg_list),
        "LIST before and after data": riff(fmt, ffmpeg_list, data, ffmpeg_list),
        "cue counting more points than it holds": riff(fmt, cue_chunk(1, counted=2), data),
        "cue counting fewer points than it holds": riff(fmt, cue_chunk(2, counted=1), data),
        "smpl of 34 bytes": riff(fmt, chunk(b"smpl", bytes(34)), data),
        "smpl of 32 bytes": riff(fmt, chunk(b"smpl", bytes(32)), data),
        "odd id3 tag": riff(fmt, chunk(b"id3 ", bytes(7)), data),
        "odd JUNK after fmt, unpadded": riff(fmt, chunk(b"JUNK", bytes(7), pad=False), data),
        "bext after fmt": riff(fmt, chunk(b"bext", bytes(602)), data),
        "an unknown chunk after fmt": riff(fmt, chunk(b"abcd", bytes(4)), data),
    }


# For random metadata: what tools write, and what they do not.
GOOD_ENTRY_IDS = [b"ISFT", b"IART", b"ICMT", b"INAM", b"ICRD", b"ITRK", b"I2X9"]
BAD_ENTRY_IDS = [b"INFO", b"data", b"fmt ", b"LIST", b"adtl", b"labl", b"exif", b"isft", b"\0\0\0\0", b"RIFF"]
OTHER_LIST_TYPES = [b"adtl", b"exif", b"data", b"wavl"]
SKIPPED_IDS = [b"id3 ", b"ID3 ", b"JUNK", b"PAD ", b"FLLR"]
FOREIGN_IDS = [b"fact", b"PEAK", b"bext", b"abcd", b"TAG!", b"INFO", b"fmt ", b"data", b"LIST"]


def pick(rng: np.random.Generator, choices: list):
    return choices[int(rng.integers(0, len(choices)))]


def random_text(rng: np.random.Generator, length: int | None = None) -> bytes:
    """``length`` (else 0 to 40) bytes of text, a third of the time cut from chunk markers."""
    length = int(rng.integers(0, 41)) if length is None else length
    if rng.random() < 1 / 3:
        return (MARKER_TEXT * 3)[int(rng.integers(0, len(MARKER_TEXT))):][:length]
    return rng.integers(32, 127, length, dtype=np.uint8).tobytes()


def random_metadata_chunk(rng: np.random.Generator) -> bytes:
    """A LIST of INFO entries, cue points, a sampler chunk, an ID3 tag or padding as tools write
    them, one time in six with a flaw; or now and then a chunk of another kind."""
    flawed, kind = rng.random() < 1 / 6, rng.random()
    odd_length = 2 * int(rng.integers(0, 20)) + 1
    if kind < 0.5:
        entries = [chunk(pick(rng, GOOD_ENTRY_IDS), random_text(rng)) for _ in range(int(rng.integers(0, 5)))]
        list_type, size_error, pad = b"INFO", 0, True
        flaw = int(rng.integers(0, 4)) if flawed else None
        if flaw == 0:
            entries.insert(int(rng.integers(0, len(entries) + 1)), chunk(pick(rng, BAD_ENTRY_IDS), random_text(rng)))
        elif flaw == 1:
            list_type = pick(rng, OTHER_LIST_TYPES)
        elif flaw == 2:  # an odd text left unpadded, and the LIST with it
            entries.append(chunk(pick(rng, GOOD_ENTRY_IDS), random_text(rng, odd_length), pad=False))
            pad = rng.random() < 0.5
        elif flaw == 3:
            size_error = pick(rng, [-4, -2, -1, 1, 2, 8])
        body = list_type + b"".join(entries)
        return chunk(b"LIST", body, size=max(len(body) + size_error, 0), pad=pad)
    if kind < 0.6:
        points = int(rng.integers(0, 4))
        return cue_chunk(points, (points + pick(rng, [-1, 1]) if points else 1) if flawed else None)
    if kind < 0.7:
        smpl = smpl_chunk(int(rng.integers(0, 3)), random_text(rng, 2 * int(rng.integers(0, 4))))
        return chunk(b"smpl", smpl[8:8 + int(rng.integers(28, 36))]) if flawed else smpl
    if kind < 0.95:
        length = odd_length if flawed else 2 * int(rng.integers(0, 20))
        return chunk(pick(rng, SKIPPED_IDS), random_text(rng, length), pad=rng.random() < 0.5 or not flawed)
    return chunk(pick(rng, FOREIGN_IDS), random_text(rng))


def random_metadata_wav(rate: int, channels: int, frames: int, rng: np.random.Generator) -> bytes:
    """fmt, up to one more than the allowed number of random metadata chunks and data; now and
    then one more metadata chunk before fmt or after data."""
    chunks = [fmt_chunk(rate, channels),
              *[random_metadata_chunk(rng) for _ in range(int(rng.integers(0, MAX_METADATA_CHUNKS + 2)))],
              chunk(b"data", samples(rng, frames, channels))]
    if rng.random() < 0.1:
        chunks.insert(pick(rng, [0, len(chunks)]), random_metadata_chunk(rng))
    return riff(*chunks)


def mutated(wav: bytes, rng: np.random.Generator, header_bytes: int = 44) -> bytes:
    """``wav`` with a few random bytes anywhere replaced (mostly samples, which the check must
    not mind), or one byte of its first ``header_bytes``, or cut anywhere."""
    data = bytearray(wav)
    kind = rng.random()
    if kind < 0.5:
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    elif kind < 0.8:
        data[int(rng.integers(0, header_bytes))] = int(rng.integers(0, 256))
    else:
        del data[int(rng.integers(0, len(data))):]
    return bytes(data)


def shuffled_chunks(rate: int, channels: int, frames: int, rng: np.random.Generator) -> bytes:
    """A WAV of chunks drawn at random from good, lying and foreign ones, in random order."""
    pcm = samples(rng, frames, channels)
    pool = [fmt_chunk(rate, channels), fmt_chunk(rate, channels), fmt_chunk(int(rng.integers(1, 10 ** 6)), channels),
            chunk(b"data", pcm), chunk(b"data", pcm), chunk(b"data", pcm[:len(pcm) // 2 + 1], pad=False),
            chunk(b"LIST", b"INFO"), chunk(b"JUNK", bytes(int(rng.integers(0, 9)))), chunk(b"fact", b"\0" * 4),
            chunk(b"bext", bytes(3), pad=False)]
    count = int(rng.integers(1, 5))
    picked = [pool[i] for i in rng.choice(len(pool), count, replace=False)]
    return riff(*picked)


def generated_cases() -> dict[str, bytes]:
    rng = np.random.default_rng(27)
    cases = {}
    for base in BASES:
        cases.update({f"{base}: {name}": wav for name, wav in restructured(*base, rng).items()})
    # Longer songs to mutate: most bytes anywhere are then samples.
    canonical = [riff(fmt_chunk(rate, channels), chunk(b"data", samples(rng, 4 * frames + 500, channels)))
                 for rate, channels, frames in BASES]
    for index in range(300):
        cases[f"mutation {index}"] = mutated(canonical[index % len(canonical)], rng)
    for index in range(80):
        cases[f"shuffle {index}"] = shuffled_chunks(*BASES[index % len(BASES)], rng)
    for base in BASES:
        cases.update({f"{base}: {name}": wav for name, wav in metadata_layouts(*base, rng).items()})
    for index in range(4000):
        cases[f"metadata {index}"] = random_metadata_wav(*BASES[index % len(BASES)], rng)
    # Header bytes to mutate: LIST entries, cue points, a sampler loop and an ID3 tag.
    metadata = b"".join([info_list((b"IART", b"Some Body\0"), (b"ISFT", b"Lavf59.27.100\0")), cue_chunk(1),
                         smpl_chunk(1), chunk(b"id3 ", b"ID3\4\0\0\0\0\0\0")])
    tagged = [riff(fmt_chunk(rate, channels), metadata, chunk(b"data", samples(rng, 4 * frames + 500, channels)))
              for rate, channels, frames in BASES]
    for index in range(1500):
        cases[f"metadata mutation {index}"] = mutated(tagged[index % len(tagged)], rng, 44 + len(metadata))
    return cases


CASES = generated_cases()


def read_by_tensorflow(data: bytes):
    """(rate, channels, frames, int16 samples) as the exported graph's decoder reads ``data``, or None."""
    try:
        audio, rate = tf.audio.decode_wav(data)
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError):  # the latter: raw bytes in its message
        return None
    return int(rate), audio.shape[1], audio.shape[0], np.round(audio.numpy() * 2 ** 15).astype(np.int16)


def read_by_libsndfile(data: bytes):
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        return None
    return rate, audio.shape[1], audio.shape[0], audio


def checked(data: bytes):
    """What the server's check accepts ``data`` as: its header, None (not RIFF/WAVE), or "refused"."""
    try:
        return check_wav_bytes(data, "case", UNLIMITED)
    except AudioError:
        return "refused"


def test_every_wav_the_check_accepts_is_what_tensorflow_and_libsndfile_decode():
    started = time.monotonic()
    verdicts = {}  # per family of cases ("mutation 7" is a "mutation"; the layouts start with their base)
    for name, data in CASES.items():
        family = "layouts" if name.startswith("(") else name.rsplit(" ", 1)[0]
        counts = verdicts.setdefault(family, {"accepted": 0, "refused": 0, "not a WAV": 0})
        header = checked(data)
        by_tensorflow = read_by_tensorflow(data)
        if header == "refused":
            counts["refused"] += 1
            continue
        if header is None:  # not RIFF/WAVE: the graph's decoder refuses it itself
            counts["not a WAV"] += 1
            assert by_tensorflow is None, name
            continue
        counts["accepted"] += 1
        by_libsndfile = read_by_libsndfile(data)
        facts = (header.sample_rate, header.channels, header.frames)
        assert by_tensorflow is not None and by_tensorflow[:3] == facts, (name, facts, by_tensorflow)
        assert by_libsndfile is not None and by_libsndfile[:3] == facts, (name, facts, by_libsndfile)
        np.testing.assert_array_equal(by_tensorflow[3], by_libsndfile[3], err_msg=name)
    seconds = time.monotonic() - started
    print(f"\n{len(CASES)} WAVs in {seconds:.1f} s:")
    for family, counts in verdicts.items():
        print(f"  {family}: {counts}")
    # The random families reach both sides: most mutated samples and well-formed metadata pass.
    for family in ("mutation", "metadata", "metadata mutation"):
        counts = verdicts[family]
        assert counts["accepted"] >= 0.25 * sum(counts.values()) <= counts["refused"], (family, counts)


@pytest.mark.parametrize("base", BASES)
def test_the_accepted_layouts_pass_and_every_other_is_refused(base):
    """The restructured and metadata variants are refused unless named here, whatever the
    readers make of them (both agree on some, e.g. a trailing fact chunk, which no tool needs)."""
    rng = np.random.default_rng(0)
    cases = {**restructured(*base, rng), **metadata_layouts(*base, rng)}
    passed = {name for name, data in cases.items() if checked(data) != "refused"}
    not_wav = {"RIFX", "RF64", "not WAVE"} | {name for name in cases if name.startswith("cut at") and
                                               int(name.split()[2]) < 12}
    rate, channels, frames = base
    assert passed - not_wav == {"canonical", "fmt of 18 bytes", "LIST before data", *ACCEPTED_METADATA}
    for name in passed - not_wav:
        assert checked(cases[name]) == checked(cases["canonical"]), name
    assert (checked(cases["canonical"]).sample_rate, checked(cases["canonical"]).frames) == (rate, frames)


@pytest.mark.parametrize("name", ["odd LIST, padded", "odd id3 tag", "a data entry in LIST that runs to the end",
                                  "an adtl label of no bytes", "cue counting more points than it holds",
                                  "smpl of 34 bytes"])
def test_the_readers_part_ways_on_metadata_that_is_refused(name):
    data = metadata_layouts(8000, 1, 37, np.random.default_rng(0))[name]
    by_tensorflow, by_libsndfile = read_by_tensorflow(data), read_by_libsndfile(data)
    assert checked(data) == "refused"
    assert (by_tensorflow is None or by_libsndfile is None or by_tensorflow[:3] != by_libsndfile[:3]
            or not np.array_equal(by_tensorflow[3], by_libsndfile[3])), (by_tensorflow, by_libsndfile)


@pytest.mark.parametrize("name,fragment", [
    ("two fmt chunks", "its chunks are 'fmt ', 'fmt ', 'data'"),
    ("data before fmt", "its chunks are 'data', 'fmt '"),
    ("LIST before fmt", "its chunks are 'LIST', 'fmt ', 'data'"),
    ("odd LIST, padded", "its 'LIST' chunk is odd-sized: libsndfile skips a pad byte after it"),
    ("a data entry in LIST", "its 'LIST' chunk holds an entry named 'data', not an INFO text"),
    ("LIST of adtl labels", "its 'LIST' chunk is not a LIST of INFO entries"),
    ("LIST whose entry runs past it", "its 'LIST' chunk is not filled exactly by at most 64 entries"),
    ("cue counting more points than it holds", "its 'cue ' chunk does not hold the 2 cue points it counts"),
    ("smpl of 34 bytes", "its 'smpl' chunk is shorter than a sampler header (36 bytes)"),
    ("samples past the headers' bound", f"its headers take {MAX_HEADER_BYTES + 2} bytes before the samples; "
                                        f"at most {MAX_HEADER_BYTES} are read"),
    ("fmt of 20 bytes", "its 'fmt ' chunk is 20 bytes"),
    ("extensible PCM", "is not 16-bit PCM (format tag 0xfffe, 16 bits)"),
    ("wrong byte rate", "says 2 bytes per frame and 16002 per second; 1 x 16 bits at 8000 Hz make 2 and 16000"),
    ("data announcing 2 bytes more", "its 'data' chunk announces 76 bytes and 74 follow its header"),
    ("3 trailing bytes", "its 'data' chunk announces 74 bytes and 77 follow its header"),
    ("odd data, unpadded", "not a whole number of 2-byte frames"),
    ("RIFF size 0", "its RIFF header announces 0 bytes and 110 follow it"),
    ("WavPack data", "WavPack"),
])
def test_a_refusal_says_what_is_wrong(name, fragment):
    rng = np.random.default_rng(0)
    cases = {**restructured(8000, 1, 37, rng), **metadata_layouts(8000, 1, 37, rng)}
    with pytest.raises(AudioError) as refused:
        check_wav_bytes(cases[name], "input 'audio_bytes' item 0", UNLIMITED)
    assert str(refused.value).startswith("input 'audio_bytes' item 0: ") and fragment in str(refused.value)


def test_wavs_from_soundfile_tensorflow_and_ffmpeg_bitexact_pass():
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (300, 2)).astype(np.float32)
    for data in (wav_bytes(audio, 44100), tf.audio.encode_wav(audio, 44100).numpy()):
        header = checked(data)
        assert (header.sample_rate, header.channels, header.frames) == (44100, 2, 300)


def ffmpeg_wav(folder, rate: int, channels: int, seconds: float, *options: str) -> bytes:
    """A tone written to FLAC by soundfile, then converted by ffmpeg as a user would: ``ffmpeg -i x.flac x.wav``."""
    times = np.arange(int(rate * seconds)) / rate
    tone = np.stack([0.3 * np.sin(2 * np.pi * 440 * (index + 1) * times) for index in range(channels)], axis=1)
    sf.write(folder / "tone.flac", tone, rate)
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-i", str(folder / "tone.flac"), *options,
                    str(folder / "tone.wav")], check=True, capture_output=True, timeout=60)
    return (folder / "tone.wav").read_bytes()


@pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg")
@pytest.mark.parametrize("rate,channels,options", [
    (44100, 2, ()),
    (8000, 1, ("-metadata", "title=A title", "-metadata", "artist=Some Body", "-metadata", "comment=an odd one")),
])
def test_a_wav_from_ffmpeg_passes_as_both_readers_read_it(tmp_path, rate, channels, options):
    data = ffmpeg_wav(tmp_path, rate, channels, 0.25, *options)
    # ffmpeg's default layout, the one this is about: its LIST of INFO entries before data.
    assert [chunk.id for chunk in wav_layout(io.BytesIO(data)).chunks] == [b"fmt ", b"LIST", b"data"]
    header = checked(data)
    facts = (rate, channels, rate // 4)
    assert (header.sample_rate, header.channels, header.frames) == facts
    by_tensorflow, by_libsndfile = read_by_tensorflow(data), read_by_libsndfile(data)
    assert by_tensorflow[:3] == facts == by_libsndfile[:3]
    np.testing.assert_array_equal(by_tensorflow[3], by_libsndfile[3])


# --- the attack, end to end --------------------------------------------------------------------


def two_fmt_attack(first_rate: int) -> bytes:
    """1300 s of 100 Hz samples behind a true fmt chunk at ``first_rate`` and a second one at
    100 Hz that claims 2^31 bytes per second, so its 260 kB seem to last a tenth of a millisecond."""
    pcm = bytes(2 * 100 * 1300)
    return riff(fmt_chunk(first_rate, 1), fmt_chunk(100, 1, byte_rate=2 ** 31), chunk(b"data", pcm))


def test_the_attack_is_real_the_graphs_decoder_reads_the_first_fmt_chunk():
    for first_rate in (100, 1_000_000):
        rate, channels, frames, _ = read_by_tensorflow(two_fmt_attack(first_rate))
        assert (rate, channels, frames) == (first_rate, 1, 130_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The stand-in model (its separate_audio decodes with tf.audio.decode_wav) with the default
    10-minute song limit."""
    base = tmp_path_factory.mktemp("parity-base")
    save_stand_in(base, 1, 0.5)
    server = Server(base, "tiny", tmp_path_factory.mktemp("log") / "parity.log")
    server.wait_for({1})
    yield server
    server.stop()


@pytest.mark.parametrize("first_rate", [100, 1_000_000])
def test_the_two_fmt_chunk_attack_gets_a_400_in_tf_servings_error_shape(server, first_rate):
    response = server.post("/v1/models/tiny:predict", audio_request(two_fmt_attack(first_rate)))
    assert response.status_code == 400, response.text
    [(key, message)] = response.json().items()
    assert key == "error" and message.startswith("input 'audio_bytes' item 0: its chunks are 'fmt ', 'fmt ', 'data'; "
                                                 "separate_audio reads 16-bit PCM WAVs"), message
    # The same song in a canonical WAV is refused for its length, and a short one is separated.
    honest = riff(fmt_chunk(100, 1), chunk(b"data", bytes(2 * 100 * 1300)))
    response = server.post("/v1/models/tiny:predict", audio_request(honest))
    assert response.status_code == 400 and "at most 10 minutes" in response.json()["error"], response.text
    short = riff(fmt_chunk(100, 1), chunk(b"data", bytes(2 * 100 * 60)))
    assert server.post("/v1/models/tiny:predict", audio_request(short)).status_code == 200


@pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg")
def test_a_wav_from_ffmpeg_is_separated_whole(server, tmp_path):
    data = ffmpeg_wav(tmp_path, 8000, 2, 1.0, "-metadata", "title=A title")
    response = server.post("/v1/models/tiny:predict", audio_request(data))
    assert response.status_code == 200, response.text
    [prediction] = response.json()["predictions"]
    vocals = check_wav_bytes(base64.b64decode(prediction["vocals_bytes"]["b64"]), "vocals", UNLIMITED)
    assert (vocals.sample_rate, vocals.channels, vocals.frames) == (8000, 2, 8000)
