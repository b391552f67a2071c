"""The architecture registry train.py, separate.py and export.py share.

Each entry knows its named configs, how to rebuild a config from the run
directory's JSON, how to build the Keras model and which input length gives a
wanted output length."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from models import waveunet


@dataclass(frozen=True)
class Architecture:
    configs: dict
    default_config: str
    config_from_dict: Callable
    build: Callable  # (config, input_length=None) -> keras.Model
    input_length_for: Callable  # (config, output_length) -> (input_length, output_length)
    chunk_plan: Callable  # (config, chunk_output_length) -> models.framing.ChunkPlan


ARCHITECTURES = {
    "waveunet": Architecture(
        configs=waveunet.CONFIGS,
        default_config=waveunet.DEFAULT_CONFIG,
        config_from_dict=waveunet.WaveUNetConfig.from_dict,
        build=waveunet.build_waveunet,
        input_length_for=waveunet.input_length_for,
        chunk_plan=waveunet.chunk_plan,
    ),
}
