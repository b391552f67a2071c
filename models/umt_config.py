"""UMT's configuration and length arithmetic (``models.umt`` builds the networks,
``models.generation`` runs the full decoder): configs, variants, training presets,
the receptive fields, input lengths and chunk plans. No Keras here."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from models.framing import ChunkPlan

DEFAULT_CONFIG = "small"
VARIANTS = ("a", "full")  # the first is the default
DOMAINS = ("input-kind", "none")
HEADS = ("classification", "regression")
# UMT's pooling kernel at its 16 kHz; other rates scale it.
POOL_RATE = 16000


def pool_length(config: "UMTConfig") -> int:
    """The full variant's pooling kernel (and stride) in samples at the config's rate."""
    return max(1, round(config.pool_kernel * config.sample_rate / POOL_RATE))


@dataclass(frozen=True)
class UMTConfig:
    """One UMT separator. Defaults are the CPU-sized "small" Structure A."""

    variant: str = VARIANTS[0]
    # Structure A's output: 256 mu-law classes (UMT's), or a waveform trained with MSE: the mix
    # plus a learned correction, so an untrained model starts from the mix (see CONFIGS).
    head: str = "classification"
    encoder_blocks: int = 1
    encoder_layers: int = 10  # dilations 1, 2, ..., 2**(encoder_layers - 1) in each block
    encoder_channels: int = 24
    encoder_kernel_size: int = 3  # odd: non-causal, symmetric (also Structure A's decoder)
    latent_channels: int = 16
    decoder_blocks: int = 1  # Structure A: built like the encoder; full: causal WaveNet blocks
    decoder_layers: int = 10
    decoder_channels: int = 24  # Structure A's decoder width; full: the residual channels
    skip_channels: int = 24  # full decoder only
    causal_kernel_size: int = 2  # full decoder only
    pool_kernel: int = 800  # full only: average pooling at 16 kHz, scaled with sample_rate
    classifier_layers: int = 3  # full only: the domain classifier
    classifier_channels: int = 32
    confusion_weight: float = 1e-2  # full only: scale of the reversed gradient into the encoder
    domains: str = "input-kind"  # full only: see the module docstring
    channels: int = 1  # UMT is mono; a stereo song is separated channel by channel
    sample_rate: int = 16000
    num_frames: int = 4000  # output length of a training example (full: a multiple of the pool)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.head not in HEADS or (self.variant == "full" and self.head != "classification"):
            raise ValueError(f"head must be one of {HEADS} (full: classification, it samples), got {self.head!r}")
        if self.domains not in DOMAINS:
            raise ValueError(f"domains must be one of {DOMAINS}, got {self.domains!r}")
        if self.encoder_kernel_size < 3 or self.encoder_kernel_size % 2 == 0:
            raise ValueError(f"encoder_kernel_size must be odd and at least 3, got {self.encoder_kernel_size}")
        if self.causal_kernel_size < 2:
            raise ValueError(f"causal_kernel_size must be at least 2, got {self.causal_kernel_size}")
        if min(self.encoder_blocks, self.encoder_layers, self.encoder_channels, self.latent_channels,
               self.decoder_blocks, self.decoder_layers, self.decoder_channels, self.skip_channels,
               self.classifier_layers, self.classifier_channels, self.num_frames, self.pool_kernel) < 1:
            raise ValueError("block, layer and channel counts, pool_kernel and num_frames must be positive")
        if self.confusion_weight < 0:
            raise ValueError(f"confusion_weight must not be negative, got {self.confusion_weight}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if self.variant == "full" and self.num_frames % pool_length(self):
            raise ValueError(f"num_frames ({self.num_frames}) must be a multiple of the pool "
                             f"({pool_length(self)} samples at {self.sample_rate} Hz)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "UMTConfig":
        return cls(**values)


_PAPER = dict(encoder_blocks=3, encoder_channels=128, latent_channels=64, decoder_blocks=3, decoder_channels=128,
              skip_channels=128, classifier_channels=100, num_frames=12000)  # UMT's sequence length 12000

# "<name>" is Structure A, "<name>-full" the full variant (train.py --variant full).
CONFIGS: dict[str, UMTConfig] = {
    # Train in minutes on a 2-core CPU (README): one block of 10 layers on each side, 24 channels.
    "small": UMTConfig(),
    "small-full": UMTConfig(variant="full"),
    # music-translation's sizes (3 x 10 encoder layers of 128 channels, latent 64; a 4 x 10 layer
    # causal decoder for full, 3 x 10 non-causal layers for Structure A); for GPUs.
    "paper": UMTConfig(**_PAPER),
    "paper-full": UMTConfig(**{**_PAPER, "decoder_blocks": 4}, variant="full"),
}

# train.py's settings (their defaults are in train.TRAINING_DEFAULTS). UMT: Adam at 1e-3 with
# decay, gradients clipped; pitch shift of a random 0.25-0.5 s segment by up to half a semitone.
_SMALL_PRESET = {"steps": 600, "batch_size": 8, "learning_rate": 1e-3, "learning_rate_decay": 0.98,
                 "clip_norm": 1.0, "validate_every": 300, "pitch_shift_semitones": 0.5}
_PAPER_PRESET = {"batch_size": 16, "learning_rate": 1e-3, "learning_rate_decay": 0.98, "clip_norm": 1.0,
                 "validate_every": 2000, "pitch_shift_semitones": 0.5}
# The full variant generates each validation excerpt sample by sample: 8 of them, not 80.
TRAINING_PRESETS = {"small": _SMALL_PRESET, "small-full": {**_SMALL_PRESET, "validation_excerpts": 8},
                    "paper": _PAPER_PRESET, "paper-full": {**_PAPER_PRESET, "validation_excerpts": 8}}


# ---------------------------------------------------------------- length arithmetic


def dilations(blocks: int, layers_per_block: int) -> list[int]:
    return [2**layer for _ in range(blocks) for layer in range(layers_per_block)]


def encoder_field(config: UMTConfig) -> int:
    """Input samples one encoder output sees: the first conv and every dilated layer add
    ``(kernel - 1) * dilation``, half on each side."""
    return 1 + (config.encoder_kernel_size - 1) * (1 + sum(dilations(config.encoder_blocks, config.encoder_layers)))


def decoder_field(config: UMTConfig) -> int:
    """Structure A: latent samples one output sees, centred like the encoder's. Full: past
    decoder inputs one output sees (the causal input conv and layers, ending at its own)."""
    if config.variant == "a":
        return 1 + (config.encoder_kernel_size - 1) * (
            1 + sum(dilations(config.decoder_blocks, config.decoder_layers)))
    return 1 + (config.causal_kernel_size - 1) * (1 + sum(dilations(config.decoder_blocks, config.decoder_layers)))


def receptive_field(config: UMTConfig) -> int:
    """Structure A: mix samples one output depends on, centred on it. Full: the encoder's
    (the decoder's causal field over its own samples is ``decoder_field``; the pool
    widens what one latent frame sees to ``encoder_field + pool_length - 1``)."""
    if config.variant == "a":
        return encoder_field(config) + decoder_field(config) - 1
    return encoder_field(config)


def input_length_for(config: UMTConfig, output_length: int) -> tuple[int, int]:
    """``(input_length, output_length)``. Structure A: any output length, plus the field minus one.
    Full: the output rounded up to whole pools; the input is as long (the encoder pads)."""
    if output_length < 1:
        raise ValueError(f"output_length must be positive, got {output_length}")
    if config.variant == "a":
        return output_length + receptive_field(config) - 1, output_length
    pool = pool_length(config)
    output_length = -(-output_length // pool) * pool
    return output_length, output_length


def chunk_plan(config: UMTConfig, chunk_output_length: int) -> ChunkPlan:
    """Structure A: chunks carrying half the field on both sides (one pass, cut in pieces).
    Full: chunks of whole pools from the song's start, so pooling frames sit where one
    pass would put them; each chunk's decoder starts from silence (``models.generation``)."""
    input_length, output_length = input_length_for(config, chunk_output_length)
    offset = (receptive_field(config) - 1) // 2 if config.variant == "a" else 0
    return ChunkPlan(input_length, offset, output_length, 0, output_length)
