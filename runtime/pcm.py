"""Raw interleaved little-endian PCM, as live streams carry it (a pipe from ffmpeg, the
WebSocket's binary frames): its formats, and the one conversion each way."""
from __future__ import annotations

import numpy as np

# format name -> numpy dtype; the names are ffmpeg's (-f s16le, -f f32le)
PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def frame_bytes(pcm_format: str, channels: int) -> int:
    """Bytes per sample frame (one sample of every channel)."""
    return PCM_FORMATS[pcm_format].itemsize * channels


def decode_pcm(data: bytes, pcm_format: str, channels: int) -> np.ndarray:
    """Whole frames of PCM -> float32 ``[frames, channels]`` in [-1, 1] (s16le: / 32768)."""
    if len(data) % frame_bytes(pcm_format, channels):
        raise ValueError(f"{len(data)} bytes is not a whole number of {frame_bytes(pcm_format, channels)}-byte "
                         f"frames ({channels} channel{'s' if channels > 1 else ''} of {pcm_format})")
    samples = np.frombuffer(data, PCM_FORMATS[pcm_format]).reshape(-1, channels)
    if pcm_format == "s16le":
        return samples.astype(np.float32) / 32768
    return np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)  # hostile floats: no NaN into the model


def encode_pcm(audio: np.ndarray, pcm_format: str) -> bytes:
    """float32 ``[frames, channels]`` -> PCM; s16le clips to [-1, 1) and rounds (x 32768, as decode divides)."""
    if pcm_format == "s16le":
        return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()
    return np.asarray(audio, "<f4").tobytes()
