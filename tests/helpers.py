"""What the test modules share, as plain functions and constants (fixtures are in
tests/conftest.py; no test module imports another): tiny Wave-U-Net configs, run
directories of any architecture, train.py runs on tiny synthetic songs, the best
no-separation baselines a trained model must beat (least-squares gain for waveform
models, and for mu-law class models the non-separating class predictors), and
running code where TensorFlow is absent."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import mulaw
from models.architecture import SOURCES
from models.registry import ARCHITECTURES
from models.umt import UMTConfig
from models.wavenet import WaveNetConfig
from models.waveunet import WaveUNetConfig

REPOSITORY = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- tiny models and run directories


def tiny_waveunet(context: bool = True, channels: int = 2, num_frames: int = 1024) -> WaveUNetConfig:
    """A 3-level Wave-U-Net of 8 initial filters at 8 kHz with a difference output."""
    return WaveUNetConfig(num_layers=3, num_initial_filters=8, context=context, output_type="difference",
                          channels=channels, sample_rate=8000, num_frames=num_frames)


TINY_WAVEUNET = tiny_waveunet()
# What write_run trains by default.
TINY_TRAINED_WAVEUNET = tiny_waveunet(num_frames=2048)
# Field 1 + 2 * 2 * (1 + 2 + 4) = 29 samples.
TINY_WAVENET = WaveNetConfig(stacks=2, layers_per_stack=3, residual_channels=8, skip_channels=8, sample_rate=8000,
                             num_frames=512)
# Encoder field 1 + 2 * (1 + 1 + 2 + 4) = 17; Structure A's whole field 17 + 17 - 1 = 33.
TINY_UMT_A = UMTConfig(encoder_layers=3, encoder_channels=8, latent_channels=4, decoder_layers=3, decoder_channels=8,
                       sample_rate=8000, num_frames=400)
# Pool 40 samples at 8 kHz (80 at 16 kHz); a causal decoder of 2 x 3 layers: field 1 + (1 + 2 * 7) = 16.
TINY_UMT_FULL = dataclasses.replace(TINY_UMT_A, variant="full", decoder_blocks=2, skip_channels=8, pool_kernel=80,
                                    classifier_channels=8, num_frames=400)


def make_run_dir(path, config=TINY_WAVEUNET, arch: str = "waveunet"):
    """A run directory holding an untrained (random) model of ``arch``: enough to test the plumbing."""
    from runtime.run_directory import RunDirectory

    run_directory = RunDirectory(path)
    run_directory.write_config({"arch": arch, "config_name": "tiny", "model": config.to_dict()})
    run_directory.checkpoints.mkdir()
    ARCHITECTURES[arch].build(config).save(run_directory.last_checkpoint)
    return path


def write_run(run_dir: Path, cache_dir: Path, steps: int, validate_every: int, arch: str = "waveunet",
              model=TINY_TRAINED_WAVEUNET, **training) -> dict:
    """A run directory training a tiny model on 3 tiny synthetic songs; ``training`` overrides settings."""
    from runtime.run_directory import RunDirectory
    from training.run_config import TRAINING_DEFAULTS

    run = {
        "arch": arch,
        "config_name": "tiny",
        "model": model.to_dict(),
        "data": {"dataset": "synthetic", "data_root": None, "cache_dir": str(cache_dir), "synthetic_duration": 3.0,
                 "synthetic_songs": {"train": 3, "valid": 1, "test": 1}},
        "training": {**TRAINING_DEFAULTS, "steps": steps, "batch_size": 4, "learning_rate": 3e-3,
                     "validate_every": validate_every, "validation_excerpts": 2, **training},
    }
    RunDirectory(run_dir).write_config(run)
    return run


def run_without_tensorflow(code: str, *arguments) -> str:
    """Runs ``code`` in a fresh Python under ``KERAS_BACKEND=jax`` where importing
    TensorFlow (or tensorflow-io) fails, as on a host that lacks it."""
    blocker = "import sys; sys.modules.update(dict.fromkeys(['tensorflow', 'tensorflow_io'], None))\n"
    result = subprocess.run([sys.executable, "-c", blocker + code, *arguments], cwd=REPOSITORY,
                            env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---------------------------------------------------------------- batches


def numpy_batches(batches):
    """``(mix, targets)`` numpy pairs of a tf.data dataset or of any iterable of them."""
    return list(batches.as_numpy_iterator()) if hasattr(batches, "as_numpy_iterator") else list(batches)


def centre(mix: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` samples in the middle of ``mix`` ``[b, t, c]``: what an output of that length is aligned with
    (an odd surplus loses its extra sample at the end)."""
    start = (mix.shape[1] - length) // 2
    return mix[:, start:start + length]


def centred_pairs(batches, source: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(mix centred on the target, target)`` of ``source`` in every batch."""
    pairs = []
    for mix, targets in numpy_batches(batches):
        pairs.append((centre(mix, targets[source].shape[1]), targets[source]))
    return pairs


# ---------------------------------------------------------------- the best no-separation baselines


def best_constant_gain_loss(batches) -> float:
    """Summed per-source MSE, over ``batches`` (a dataset or ``(mix, targets)`` pairs), of
    the best predictor that does not separate: each source as the centred mix times its
    least-squares gain (one gain per source over all the batches)."""
    from runtime.metrics import best_gain_estimates

    mixes, targets = [], {source: [] for source in SOURCES}
    for mix, batch_targets in numpy_batches(batches):
        mixes.append(centre(mix, batch_targets[SOURCES[0]].shape[1]))
        for source in SOURCES:
            targets[source].append(batch_targets[source])
    mix = np.concatenate(mixes)
    targets = {source: np.concatenate(t) for source, t in targets.items()}
    estimates, _ = best_gain_estimates(mix, targets)
    return float(sum(np.mean((targets[source] - estimates[source]) ** 2) for source in SOURCES))


# Mu-law class models (WaveNet, UMT) are scored in nats per sample and channel; a uniform
# guess costs ln 256 = 5.55. A model that separates must beat every predictor below, none
# of which separates: the constant class distribution (the marginal), any function of the
# current mix sample (pointwise), and, for an autoregressive decoder that hears the target's
# past, the previous target sample (bigram) or both.


def mulaw_classes(waveform) -> np.ndarray:
    return np.asarray(mulaw.encode(np.asarray(waveform, np.float32))).astype(np.int64)


def silence_class() -> int:
    """The class a causal decoder hears before the first sample (silence)."""
    return int(mulaw_classes(np.zeros(1))[0])


def previous_classes(classes: np.ndarray) -> np.ndarray:
    """Each sample's previous class along time (axis 1), silence before the first."""
    return np.concatenate([np.full_like(classes[:, :1], silence_class()), classes[:, :-1]], axis=1)


def class_streams(pairs) -> dict:
    """Flattened class streams of ``(mix, target)`` waveform pairs ``[b, t, c]`` (each example
    and channel a stream): the target class, the mix class at the same sample, the target's
    previous class (silence before the first sample, as a causal decoder hears it)."""
    mix = np.concatenate([mulaw_classes(m) for m, _ in pairs])
    target = np.concatenate([mulaw_classes(t) for _, t in pairs])
    return {"target": target.ravel(), "mix": mix.ravel(), "previous": previous_classes(target).ravel()}


def contexts_of(classes: dict, names) -> np.ndarray:
    """One integer per sample for the classes named (e.g. ``("mix", "previous")``)."""
    context = np.zeros_like(classes[names[0]])
    for name in names:
        context = context * mulaw.CLASSES + classes[name]
    return context


class ConditionalClasses:
    """p(target class | context), counted on fit samples with add-one (Laplace) smoothing
    over the 256 classes; contexts are integers of any range (``contexts_of``)."""

    def __init__(self, context: np.ndarray, target: np.ndarray):
        self.pairs, self.pair_counts = np.unique(context * mulaw.CLASSES + target, return_counts=True)
        self.contexts, self.context_counts = np.unique(context, return_counts=True)

    @staticmethod
    def _count(values, counts, wanted):
        index = np.clip(np.searchsorted(values, wanted), 0, len(values) - 1)
        return np.where(values[index] == wanted, counts[index], 0)

    def log_distributions(self, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, index)``: ``rows[index[i]]`` is log p(. | context[i]) over the 256 classes
        (one row per distinct context, to keep memory small)."""
        distinct, index = np.unique(context, return_inverse=True)
        pairs = self._count(self.pairs, self.pair_counts, distinct[:, None] * mulaw.CLASSES + np.arange(mulaw.CLASSES))
        totals = self._count(self.contexts, self.context_counts, distinct)
        return np.log(pairs + 1.0) - np.log(totals + float(mulaw.CLASSES))[:, None], index.reshape(context.shape)

    def cross_entropy(self, context: np.ndarray, target: np.ndarray) -> float:
        rows, index = self.log_distributions(context)
        return float(-np.mean(rows[index, target]))


def entropy(classes: np.ndarray) -> float:
    """The entropy of the classes' histogram: the cross-entropy, on those very classes, of
    the best constant predictor (a lower bound for any constant predictor)."""
    frequencies = np.bincount(classes.ravel(), minlength=mulaw.CLASSES) / classes.size
    frequencies = frequencies[frequencies > 0]
    return float(-np.sum(frequencies * np.log(frequencies)))


# The non-separating predictors and the classes each conditions on.
NON_SEPARATING_CONTEXTS = {"pointwise": ("mix",), "bigram": ("previous",), "pointwise+bigram": ("mix", "previous")}


def non_separating_cross_entropies(fit_pairs, evaluation_pairs) -> dict:
    """Cross-entropies in nats on ``evaluation_pairs`` of the predictors that do not
    separate, each estimated on ``fit_pairs`` (both lists of ``(mix, target)`` waveforms
    ``[b, t, c]``, the mix aligned with the target):

    - ``marginal``: the target classes' own histogram on the evaluation pairs (``entropy``);
    - ``pointwise``: p(target_t | mix_t), any function of the current mix sample's class;
    - ``bigram``: p(target_t | target_t-1), the previous target sample (what a teacher-forced
      autoregressive decoder hears);
    - ``pointwise+bigram``: p(target_t | mix_t, target_t-1)."""
    fit, evaluation = class_streams(fit_pairs), class_streams(evaluation_pairs)
    scores = {"marginal": entropy(evaluation["target"])}
    for name, names in NON_SEPARATING_CONTEXTS.items():
        predictor = ConditionalClasses(contexts_of(fit, names), fit["target"])
        scores[name] = predictor.cross_entropy(contexts_of(evaluation, names), evaluation["target"])
    return scores


# How far below each baseline a model's cross-entropy must be: more than float32 rounding and
# than the evaluation crops' sampling noise between the model's score and the baselines'.
MARGIN_NATS = 0.02


def assert_beats_non_separating_baselines(model_loss: float, baselines: dict, names) -> None:
    """The check every mu-law class model's training test makes: its cross-entropy is at
    least ``MARGIN_NATS`` below each named non-separating predictor's
    (``non_separating_cross_entropies``)."""
    missed = [name for name in names if not model_loss < baselines[name] - MARGIN_NATS]
    assert not missed, (
        f"cross-entropy {model_loss:.3f} nats does not beat by {MARGIN_NATS} nats: " +
        ", ".join(f"{name} {baselines[name]:.3f}" for name in missed) +
        f" (all baselines: {', '.join(f'{k} {v:.3f}' for k, v in baselines.items())})")


@dataclass
class ClassBatches:
    """What a mu-law class model's training test scores on: fresh augmented crops of the
    run's training songs (as numpy, drawn once: the pipeline's draws depend on the global
    seed, so a dataset iterated twice may not give the same batches), the fit pairs the
    non-separating predictors are counted on, and their cross-entropies on the evaluation
    batches (``non_separating_cross_entropies``)."""

    arch: str
    config: object
    source: str  # the output the model scores in classes
    output_length: int
    evaluation: list  # (mix, targets) numpy batches
    fit_pairs: list  # (mix aligned with the target, target)
    baselines: dict


def class_model_batches(run: dict, arch: str, config, source: str, fit_batches: int = 1024,
                        evaluation_batches: int = 32, batch_size: int = 4) -> ClassBatches:
    """Fit and evaluation batches of the run's training songs, each from its own seed
    (the model trained on other crops of the same songs: 3 songs of 3 s are too few to
    generalise from), and the non-separating predictors' cross-entropies."""
    import keras

    from data_pipeline.crops import CropSpec
    from data_pipeline.pipeline import make_dataset
    from training.data import training_groups

    crop = CropSpec(*ARCHITECTURES[arch].input_length_for(config, config.num_frames))
    tracks = training_groups(run, config.sample_rate)[0]

    def draw(seed, count):
        keras.utils.set_random_seed(seed)
        return numpy_batches(make_dataset(tracks, sample_rate=config.sample_rate, crop=crop, channels=config.channels,
                                          batch_size=batch_size, seed=seed).take(count))

    evaluation = draw(123, evaluation_batches)
    fit_pairs = centred_pairs(draw(7, fit_batches), source)
    baselines = non_separating_cross_entropies(fit_pairs, centred_pairs(evaluation, source))
    return ClassBatches(arch, config, source, crop.output_length, evaluation, fit_pairs, baselines)


def model_inputs(batches: ClassBatches, mix: np.ndarray, targets: dict):
    """The model's inputs for a batch: the mix; for a teacher-forced decoder (an architecture
    with ``training_batch``) its training inputs, with every example's real mix."""
    batch_function = ARCHITECTURES[batches.arch].training_batch(batches.config)
    if batch_function is None:
        return mix
    inputs, _ = batch_function(mix, targets)
    return {**{name: np.asarray(value) for name, value in inputs.items()}, "mix": mix}


def class_cross_entropy(predict_logits, batches: ClassBatches) -> float:
    """Mean cross-entropy in nats, per sample and channel, of ``predict_logits`` (model
    inputs -> class logits of ``batches.source``) on the evaluation batches, with the
    architecture's own loss function."""
    loss = ARCHITECTURES[batches.arch].losses(batches.config)[batches.source]
    values = [np.asarray(loss(targets[batches.source], predict_logits(model_inputs(batches, mix, targets))))
              for mix, targets in batches.evaluation]
    return float(np.mean(np.concatenate([value.ravel() for value in values])))


def non_separating_stand_in(batches: ClassBatches, name: str):
    """The non-separating predictor ``name`` (``NON_SEPARATING_CONTEXTS``) in a model's place:
    ``predict_logits`` whose logits at each output sample are its log-probabilities, counted
    on the fit pairs, given the mix sample's class there and/or the target's previous class
    (read from the teacher-forced input). Its cross-entropy is that baseline's."""
    names = NON_SEPARATING_CONTEXTS[name]
    fit = class_streams(batches.fit_pairs)
    predictor = ConditionalClasses(contexts_of(fit, names), fit["target"])

    def predict_logits(inputs):
        mix = inputs["mix"] if isinstance(inputs, dict) else inputs
        classes = {"mix": mulaw_classes(centre(mix, batches.output_length))}
        if "previous" in names:
            classes["previous"] = previous_classes(mulaw_classes(inputs[f"{batches.source}_in"]))
        rows, index = predictor.log_distributions(contexts_of(classes, names))
        return rows[index].astype(np.float32)

    return predict_logits
