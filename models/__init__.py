"""Separation model builders; each architecture lives in its own module."""
from models.waveunet import (
    CONFIGS,
    SOURCES,
    WaveUNetConfig,
    build_waveunet,
    context_length,
    get_config,
    input_length_for,
)

__all__ = [
    "CONFIGS",
    "SOURCES",
    "WaveUNetConfig",
    "build_waveunet",
    "context_length",
    "get_config",
    "input_length_for",
]
