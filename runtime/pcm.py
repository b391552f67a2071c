"""Raw interleaved little-endian PCM, as live streams carry it (a pipe from ffmpeg, the
WebSocket's binary frames): its formats, and the one conversion each way, scaled as
WAV files are read and written here (libsndfile: 16-bit read as x / 32768, written as
x * 32767)."""
from __future__ import annotations

import numpy as np

# format name -> numpy dtype; the names are ffmpeg's (-f s16le, -f f32le)
PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class PcmError(ValueError):
    """Bytes that are not whole frames, or float samples that are not finite numbers."""


def frame_bytes(pcm_format: str, channels: int) -> int:
    """Bytes per sample frame (one sample of every channel)."""
    return PCM_FORMATS[pcm_format].itemsize * channels


def decode_pcm(data: bytes, pcm_format: str, channels: int) -> np.ndarray:
    """Whole frames of PCM -> float32 ``[frames, channels]``. A NaN or infinity is refused:
    it would spread through a stream's state into every later output."""
    if len(data) % frame_bytes(pcm_format, channels):
        raise PcmError(f"{len(data)} bytes is not a whole number of {frame_bytes(pcm_format, channels)}-byte "
                       f"frames ({channels} channel(s) of {pcm_format})")
    samples = np.frombuffer(data, PCM_FORMATS[pcm_format]).reshape(-1, channels)
    if pcm_format == "s16le":
        return samples.astype(np.float32) / 32768
    if not np.isfinite(samples).all():
        raise PcmError("a frame holds NaN or infinity")
    return samples.astype(np.float32)


def encode_pcm(audio: np.ndarray, pcm_format: str) -> bytes:
    """float32 ``[frames, channels]`` -> PCM; 16-bit clipped to [-1, 1] and rounded."""
    if pcm_format == "s16le":
        return np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return np.asarray(audio, "<f4").tobytes()
