"""Wave-U-Net (Stoller, Ewert & Dixon, 2018) as a Keras 3 functional model.

Follows the reference implementation f90/Wave-U-Net (``Models/UnetAudioSeparator.py``):

    mix -> L x [conv(filter_size) + LeakyReLU -> skip -> decimate]
        -> conv(filter_size) + LeakyReLU                       (bottleneck)
        -> L x [upsample -> crop-and-concat skip -> conv(merge_filter_size) + LeakyReLU]
        -> crop-and-concat mix -> tanh conv(output_filter_size) per source

Level i (0 = finest) has ``num_initial_filters * (i + 1)`` filters on both
paths; the bottleneck has ``num_initial_filters * (num_layers + 1)``. With
``context`` the convolutions are 'valid', so the input is longer than the
output and only certain lengths fit: ``input_length_for`` finds them. The
paper's models M1..M5 and M5-HighSR are settings in ``CONFIGS``, next to a
CPU-sized ``small`` preset (the default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
from keras import layers

from models.framing import ChunkPlan
from models.layers import CenterCrop1D, CropConcat, Decimate, LearnedUpsample, LinearUpsample
from models.architecture import SOURCES, Architecture

DEFAULT_CONFIG = "small"


@dataclass(frozen=True)
class WaveUNetConfig:
    """Architecture of one Wave-U-Net. Defaults are f90's baseline M1."""

    num_layers: int = 12
    num_initial_filters: int = 24
    filter_size: int = 15  # downsampling blocks and bottleneck
    merge_filter_size: int = 5  # upsampling blocks
    output_filter_size: int = 1
    upsampling: str = "linear"  # "linear" interpolation or f90's "learned" interpolation
    context: bool = False  # True: valid convolutions, the input carries extra context
    output_type: str = "direct"  # "direct": a tanh conv per source; "difference": one source is mix minus the other
    predicted_source: str = "vocals"  # with "difference": the source the network predicts (f90: accompaniment)
    channels: int = 1  # 1 mono, 2 stereo
    sample_rate: int = 22050  # of the audio the model is trained on; the graph does not use it
    num_frames: int = 16384  # desired output length of a training example (f90's num_frames)
    # With context: the outputs sit this many samples right of the input's centre, so the
    # model looks that much less ahead (and as much more back): less latency when live.
    output_shift: int = 0

    def __post_init__(self):
        if self.upsampling not in ("linear", "learned"):
            raise ValueError(f"upsampling must be 'linear' or 'learned', got {self.upsampling!r}")
        if self.output_type not in ("direct", "difference"):
            raise ValueError(f"output_type must be 'direct' or 'difference', got {self.output_type!r}")
        if self.predicted_source not in SOURCES:
            raise ValueError(f"predicted_source must be one of {SOURCES}, got {self.predicted_source!r}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if self.num_layers < 1 or self.num_initial_filters < 1:
            raise ValueError("num_layers and num_initial_filters must be positive")
        if self.output_shift and not (self.context and 0 < self.output_shift <= context_length(self) // 2):
            raise ValueError(f"output_shift needs context and at most half of it ({context_length(self) // 2} "
                             f"samples), got {self.output_shift}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "WaveUNetConfig":
        return cls(**values)

    @property
    def lookahead(self) -> int:
        """Input samples after an output sample that it depends on (its receptive field's right side)."""
        return context_length(self) - context_length(self) // 2 - self.output_shift if self.context else 0


# ---------------------------------------------------------------- length arithmetic


def _bottleneck_length(config: WaveUNetConfig, output_length: int) -> int:
    """Smallest bottleneck length whose output is at least ``output_length``.

    f90's ``get_padding`` inverts each upsampling block, ``out = 2 * in - 1 - (merge - 1)``,
    in floats and rounds up once at the end; this is the same in exact integers."""
    levels = 2**config.num_layers
    before_output_conv = output_length + config.output_filter_size - 1
    numerator = before_output_conv + config.merge_filter_size * (levels - 1)
    return -(-numerator // levels)


def input_length_for(config: WaveUNetConfig, output_length: int) -> tuple[int, int]:
    """``(input_length, actual_output_length)`` for the smallest valid output length
    that is at least ``output_length``.

    With context this is f90's ``get_padding``. Without it the model maps n samples
    to n, but n must be a multiple of 2**num_layers so that every decimated map
    upsamples back to its skip's length (f90 assumed it; here it is rounded up)."""
    if output_length < 1:
        raise ValueError(f"output_length must be positive, got {output_length}")
    if not config.context:
        levels = 2**config.num_layers
        length = -(-output_length // levels) * levels
        return length, length
    output = bottleneck = _bottleneck_length(config, output_length)
    input_ = bottleneck + config.filter_size - 1
    for _ in range(config.num_layers):
        output = 2 * output - 1 - (config.merge_filter_size - 1)  # upsample, valid conv
        input_ = 2 * input_ - 1 + config.filter_size - 1  # undo decimation, valid conv
    return input_, output - (config.output_filter_size - 1)


def context_length(config: WaveUNetConfig) -> int:
    """Input samples beyond the output (split evenly between both ends); the same
    for every valid length, since both lengths grow by 2**num_layers per step."""
    input_, output = input_length_for(config, 1)
    return input_ - output


def crop_starts(config: WaveUNetConfig) -> tuple[list[int], int, int]:
    """Where each centre crop starts, from the layer lengths of the shortest valid input:
    per level (skip against upsampled path), the mix against the last features, the mix
    against the outputs."""
    input_length, output_length = input_length_for(config, 1)
    down, length = [], input_length
    for _ in range(config.num_layers):
        length -= config.filter_size - 1
        down.append(length)
        length = (length + 1) // 2
    length -= config.filter_size - 1  # bottleneck
    starts = [0] * config.num_layers
    for level in reversed(range(config.num_layers)):
        length = 2 * length - 1
        starts[level] = (down[level] - length) // 2
        length -= config.merge_filter_size - 1
    shift = config.output_shift
    return starts, (input_length - length) // 2 + shift, (input_length - output_length) // 2 + shift


def _paper_configs() -> dict[str, WaveUNetConfig]:
    """f90's named configs; each paper model adds one change to the previous one."""
    m1 = WaveUNetConfig()  # cfg.baseline
    # f90's difference output predicts the accompaniment and derives the vocals.
    m2 = dataclasses.replace(m1, output_type="difference", predicted_source="accompaniment")  # cfg.baseline_diff
    m3 = dataclasses.replace(m2, context=True)  # cfg.baseline_context
    m4 = dataclasses.replace(m3, channels=2)  # cfg.baseline_stereo
    m5 = dataclasses.replace(m4, upsampling="learned")  # cfg.full
    m5_high_sr = dataclasses.replace(m5, sample_rate=44100)  # cfg.full_44KHz
    return {"M1": m1, "M2": m2, "M3": m3, "M4": m4, "M5": m5, "M5-HighSR": m5_high_sr}


_SMALL = WaveUNetConfig(num_layers=8, num_initial_filters=16, context=True, output_type="difference", channels=2,
                        num_frames=22050)
CONFIGS: dict[str, WaveUNetConfig] = {
    **_paper_configs(),
    # M4 shrunk to train in minutes on a 2-core CPU: 8 levels, 16..128 filters, ~1 s outputs.
    "small": _SMALL,
    # "small" predicting right of its input's centre (f90's suggestion for low latency):
    # 20 ms of lookahead instead of 185 ms, the rest of the 370 ms window behind.
    "lowlatency": dataclasses.replace(_SMALL, output_shift=4087 - 441),
}


# Training settings per named config; train.py's flags override them. "small" finishes
# in minutes on a 2-core CPU; its half-cosine schedule from 1e-3 ties a constant 5e-4 over
# two seeds at 400 steps (docs/benchmarks.md, recipe probes from scratch) and ends the run
# at a small step. The paper configs take the first stage of f90's recipe
# (batch 16, Adam 1e-4, validation every 2000 steps, patience 20); its second stage
# is a fine-tune with --init-from, batch 32 and 1e-5 (README).
F90_FIRST_STAGE = {"batch_size": 16, "learning_rate": 1e-4, "validate_every": 2000, "patience": 20}
TRAINING_PRESETS = {
    "small": {"steps": 400, "batch_size": 8, "learning_rate": 1e-3, "learning_rate_schedule": "cosine",
              "validate_every": 200},
    "lowlatency": {"steps": 400, "batch_size": 8, "learning_rate": 5e-4, "validate_every": 200},
    **{name: F90_FIRST_STAGE for name in _paper_configs()},
}


def get_config(name: str = DEFAULT_CONFIG) -> WaveUNetConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown Wave-U-Net config {name!r}; known: {sorted(CONFIGS)}") from None


def chunk_plan(config: WaveUNetConfig, chunk_output_length: int) -> ChunkPlan:
    """How to separate a long song in calls of about ``chunk_output_length`` output samples.

    Chunks start on multiples of 2**num_layers, so every decimation keeps the same
    samples as in one pass over the song. A context model needs nothing more; a
    same-padding model gets a margin as wide as its receptive radius on both
    sides, and the outputs computed from zero padding there are dropped."""
    grid = 2**config.num_layers
    if config.context:
        input_length, output_length = input_length_for(config, max(chunk_output_length, grid))
        stride = output_length - output_length % grid
        return ChunkPlan(input_length, (input_length - output_length) // 2 + config.output_shift, output_length, 0,
                         stride)
    # The valid model's context bounds the receptive radius up to the interpolation
    # taps at each level, which one more grid step covers.
    radius = context_length(dataclasses.replace(config, context=True)) // 2
    margin = (-(-radius // grid) + 1) * grid
    input_length = -(-(chunk_output_length + 2 * margin) // grid) * grid
    return ChunkPlan(input_length, 0, input_length, margin, input_length - 2 * margin)


# ---------------------------------------------------------------- model


def _filters(config: WaveUNetConfig, level: int) -> int:
    return config.num_initial_filters * (level + 1)


def _conv(config: WaveUNetConfig, filters: int, kernel_size: int, name: str, activation="leaky_relu"):
    # keras' leaky_relu has slope 0.2, as f90's LeakyReLU.
    padding = "valid" if config.context else "same"
    return layers.Conv1D(filters, kernel_size, padding=padding, activation=activation, name=name)


def _upsample(config: WaveUNetConfig, level: int):
    upsample_layer = LearnedUpsample if config.upsampling == "learned" else LinearUpsample
    return upsample_layer(valid=config.context, name=f"upsample_{level}")


def _downsampling_path(config: WaveUNetConfig, features):
    """Returns the bottleneck features and the skip connections, finest level first."""
    skips = []
    for level in range(config.num_layers):
        features = _conv(config, _filters(config, level), config.filter_size, f"down_conv_{level}")(features)
        skips.append(features)
        features = Decimate(name=f"decimate_{level}")(features)
    bottleneck = _conv(config, _filters(config, config.num_layers), config.filter_size, "bottleneck_conv")
    return bottleneck(features), skips


def _upsampling_path(config: WaveUNetConfig, features, skips):
    for level in reversed(range(config.num_layers)):
        features = _upsample(config, level)(features)
        features = CropConcat(name=f"concat_{level}")([skips[level], features])
        features = _conv(config, _filters(config, level), config.merge_filter_size, f"up_conv_{level}")(features)
    return features


def _source_outputs(config: WaveUNetConfig, mix, features) -> dict:
    def source_conv(name):
        return _conv(config, config.channels, config.output_filter_size, name, activation="tanh")

    if config.output_type == "direct":
        return {source: source_conv(source)(features) for source in SOURCES}
    # Difference output: the sources add up to the (centre-cropped) mix exactly; in
    # float32 whatever the model's precision, so a bfloat16 model does not round the mix.
    predicted = source_conv(config.predicted_source)(features)
    derived_source = next(source for source in SOURCES if source != config.predicted_source)
    aligned_mix = CenterCrop1D(name="crop_mix", dtype="float32", shift=config.output_shift)([mix, predicted])
    derived = layers.Subtract(name=derived_source, dtype="float32")([aligned_mix, predicted])
    return {config.predicted_source: predicted, derived_source: derived}


def build_waveunet(config: WaveUNetConfig, input_length: int | None = None, name: str = "waveunet") -> keras.Model:
    """Functional Wave-U-Net: input "mix" ``[input_length, channels]`` -> ``{"vocals", "accompaniment"}``,
    each ``[output_length, channels]``.

    ``input_length=None`` builds a model for any valid length (see ``input_length_for``)."""
    mix = keras.Input(shape=(input_length, config.channels), name="mix")
    bottleneck, skips = _downsampling_path(config, mix)
    features = _upsampling_path(config, bottleneck, skips)
    features = CropConcat(name="concat_mix", shift=config.output_shift)([mix, features])
    return keras.Model(mix, _source_outputs(config, mix, features), name=name)


def losses(config: WaveUNetConfig) -> dict:
    """f90's loss: the mean squared error of each source."""
    return {source: "mse" for source in SOURCES}


def sources_from_outputs(outputs: dict) -> dict:
    """The model's outputs are the separated sources already."""
    return outputs


def incremental(model, config: WaveUNetConfig):
    """A float32 model with context runs on a stream layer by layer (``models.waveunet_streaming``);
    ``model=None`` asks whether the config could."""
    if not config.context or (model is not None and model.dtype_policy.compute_dtype != "float32"):
        return None
    from models.waveunet_streaming import WaveUNetStream

    return lambda batch: WaveUNetStream(model, config, batch, crop_starts(config))


ARCHITECTURE = Architecture(
    configs=CONFIGS,
    default_config=DEFAULT_CONFIG,
    config_from_dict=WaveUNetConfig.from_dict,
    build=build_waveunet,
    input_length_for=input_length_for,
    chunk_plan=chunk_plan,
    training_presets=TRAINING_PRESETS,
    losses=losses,
    inference_head=sources_from_outputs,
    incremental=incremental,
    output_shift=lambda config: config.output_shift,
    sums_to_input=lambda config: config.output_type == "difference",  # the derived source: a float32 Subtract
)
