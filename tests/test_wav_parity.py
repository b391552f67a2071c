"""The server's WAV check against the two readers behind it. ``check_wav_bytes`` reads a
``separate_audio`` WAV's rate, channels and length from its headers before the graph decodes
it with ``tf.audio.decode_wav``; libsndfile reads the same uploads on the page. Every WAV the
check accepts must be what both readers decode; anything they could read differently is
refused. Generated, restructured and randomly mutated WAVs (fixed seeds), then the
two-fmt-chunk attack against a server on 127.0.0.1."""
import io
import struct
import time

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from data_pipeline.audio import AudioError
from serve.client import wav_bytes
from serve.upload import UploadLimits, check_wav_bytes
from tests.serve_helpers import Server, audio_request, save_stand_in

# No duration limit here: the parity is about what is read, not how long it lasts.
UNLIMITED = UploadLimits(max_seconds=1e9)
BASES = [(8000, 1, 37), (44100, 2, 400), (100, 1, 1), (22050, 2, 0), (192000, 1, 250)]


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


def mutated(wav: bytes, rng: np.random.Generator) -> bytes:
    """``wav`` with a few random bytes anywhere replaced (mostly samples, which the check must
    not mind), or one byte of its headers, or cut anywhere."""
    data = bytearray(wav)
    kind = rng.random()
    if kind < 0.5:
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    elif kind < 0.8:
        data[int(rng.integers(0, 44))] = int(rng.integers(0, 256))
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
    verdicts = {"accepted": 0, "refused": 0, "not a WAV": 0}
    for name, data in CASES.items():
        header = checked(data)
        by_tensorflow = read_by_tensorflow(data)
        if header == "refused":
            verdicts["refused"] += 1
            continue
        if header is None:  # not RIFF/WAVE: the graph's decoder refuses it itself
            verdicts["not a WAV"] += 1
            assert by_tensorflow is None, name
            continue
        verdicts["accepted"] += 1
        by_libsndfile = read_by_libsndfile(data)
        facts = (header.sample_rate, header.channels, header.frames)
        assert by_tensorflow is not None and by_tensorflow[:3] == facts, (name, facts, by_tensorflow)
        assert by_libsndfile is not None and by_libsndfile[:3] == facts, (name, facts, by_libsndfile)
        np.testing.assert_array_equal(by_tensorflow[3], by_libsndfile[3], err_msg=name)
    seconds = time.monotonic() - started
    print(f"\n{len(CASES)} WAVs in {seconds:.1f} s: {verdicts}")
    # Most mutations of samples pass, and every layout beyond the canonical one is refused.
    assert verdicts["accepted"] >= 0.2 * len(CASES) and verdicts["refused"] >= 0.5 * len(CASES), verdicts


@pytest.mark.parametrize("base", BASES)
def test_canonical_wavs_pass_and_every_other_layout_is_refused(base):
    """The restructured variants are refused whatever the readers make of them (both readers
    agree on some, e.g. a trailing fact chunk, but a canonical WAV is all the graph needs)."""
    cases = restructured(*base, np.random.default_rng(0))
    passed = {name for name, data in cases.items() if checked(data) != "refused"}
    not_wav = {"RIFX", "RF64", "not WAVE"} | {name for name in cases if name.startswith("cut at") and
                                               int(name.split()[2]) < 12}
    rate, channels, frames = base
    assert passed - not_wav == {"canonical", "fmt of 18 bytes"}
    assert checked(cases["canonical"]) == checked(cases["fmt of 18 bytes"])
    assert (checked(cases["canonical"]).sample_rate, checked(cases["canonical"]).frames) == (rate, frames)


@pytest.mark.parametrize("name,fragment", [
    ("two fmt chunks", "its chunks are 'fmt ', 'fmt ', 'data'"),
    ("data before fmt", "its chunks are 'data', 'fmt '"),
    ("LIST before data", "its chunks are 'fmt ', 'LIST', 'data'"),
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
    with pytest.raises(AudioError) as refused:
        check_wav_bytes(restructured(8000, 1, 37, np.random.default_rng(0))[name], "input 'audio_bytes' item 0",
                        UNLIMITED)
    assert str(refused.value).startswith("input 'audio_bytes' item 0: ") and fragment in str(refused.value)


def test_wavs_from_soundfile_tensorflow_and_ffmpeg_bitexact_pass():
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (300, 2)).astype(np.float32)
    for data in (wav_bytes(audio, 44100), tf.audio.encode_wav(audio, 44100).numpy()):
        header = checked(data)
        assert (header.sample_rate, header.channels, header.frames) == (44100, 2, 300)


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
