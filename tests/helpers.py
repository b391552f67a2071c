"""What the test modules share, as plain functions and constants (fixtures are in
tests/conftest.py; no test module imports another): tiny Wave-U-Net configs, run
directories of any architecture, train.py runs on tiny synthetic songs, the best
no-separation baselines a trained model must beat (least-squares gain for waveform
models, and for mu-law class models the non-separating class predictors), and
running code where TensorFlow is absent."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.architecture import SOURCES

REPOSITORY = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- tiny models and run directories


def tiny_waveunet(context: bool = True, channels: int = 2, num_frames: int = 1024):
    """A 3-level Wave-U-Net of 8 initial filters at 8 kHz with a difference output."""
    from models.waveunet import WaveUNetConfig

    return WaveUNetConfig(num_layers=3, num_initial_filters=8, context=context, output_type="difference",
                          channels=channels, sample_rate=8000, num_frames=num_frames)


TINY_WAVEUNET = tiny_waveunet()
# What write_run trains by default.
TINY_TRAINED_WAVEUNET = tiny_waveunet(num_frames=2048)


def _tiny_umt():
    import dataclasses

    from models.umt import UMTConfig

    # Encoder field 1 + 2 * (1 + 1 + 2 + 4) = 17; Structure A's whole field 17 + 17 - 1 = 33.
    structure_a = UMTConfig(encoder_layers=3, encoder_channels=8, latent_channels=4, decoder_layers=3,
                            decoder_channels=8, sample_rate=8000, num_frames=400)
    # Pool 40 samples at 8 kHz (80 at 16 kHz); a causal decoder of 2 x 3 layers: field 1 + (1 + 2 * 7) = 16.
    full = dataclasses.replace(structure_a, variant="full", decoder_blocks=2, skip_channels=8, pool_kernel=80,
                               classifier_channels=8, num_frames=400)
    return structure_a, full


TINY_UMT_A, TINY_UMT_FULL = _tiny_umt()


def _tiny_wavenet():
    from models.wavenet import WaveNetConfig

    # Field 1 + 2 * 2 * (1 + 2 + 4) = 29 samples.
    return WaveNetConfig(stacks=2, layers_per_stack=3, residual_channels=8, skip_channels=8, sample_rate=8000,
                         num_frames=512)


TINY_WAVENET = _tiny_wavenet()


def make_run_dir(path, config=TINY_WAVEUNET, arch: str = "waveunet"):
    """A run directory holding an untrained (random) model of ``arch``: enough to test the plumbing."""
    from models.registry import ARCHITECTURES
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
    from models import mulaw

    return np.asarray(mulaw.encode(np.asarray(waveform, np.float32))).astype(np.int64)


def silence_class() -> int:
    """The class a causal decoder hears before the first sample (silence)."""
    return int(mulaw_classes(np.zeros(1))[0])


def class_entropy(batches, source: str = "vocals") -> float:
    """Cross-entropy of the best constant predictor on ``batches``: the entropy of the
    ``source`` targets' class histogram there (fitted on the same batches: a lower bound
    for any constant predictor)."""
    from models import mulaw

    classes = np.concatenate([mulaw_classes(targets[source]).ravel() for _, targets in numpy_batches(batches)])
    frequencies = np.bincount(classes, minlength=mulaw.CLASSES) / classes.size
    frequencies = frequencies[frequencies > 0]
    return float(-np.sum(frequencies * np.log(frequencies)))


def class_contexts(pairs) -> dict:
    """Flattened class streams of ``(mix, target)`` waveform pairs ``[b, t, c]`` (each example
    and channel a stream): the target class, the mix class at the same sample, the target's
    previous class (silence before the first sample, as a causal decoder hears it)."""
    mix = np.concatenate([mulaw_classes(m) for m, _ in pairs])
    target = np.concatenate([mulaw_classes(t) for _, t in pairs])
    previous = np.concatenate([np.full_like(target[:, :1], silence_class()), target[:, :-1]], axis=1)
    return {"target": target.ravel(), "mix": mix.ravel(), "previous": previous.ravel()}


def conditional_log_probabilities(fit_context: np.ndarray, fit_target: np.ndarray, context: np.ndarray,
                                  target: np.ndarray) -> np.ndarray:
    """``log p(target | context)`` for each evaluated sample, p estimated by counting
    ``(context, target)`` in the fit samples with add-one (Laplace) smoothing over the 256
    classes. Contexts are integers (of any range); only those evaluated are counted."""
    from models import mulaw

    classes = mulaw.CLASSES
    fit_keys, keys = fit_context * classes + fit_target, context * classes + target
    pair_values, pair_counts = np.unique(fit_keys, return_counts=True)
    context_values, context_counts = np.unique(fit_context, return_counts=True)

    def lookup(values, counts, wanted):
        index = np.clip(np.searchsorted(values, wanted), 0, max(len(values) - 1, 0))
        return np.where(values[index] == wanted, counts[index], 0) if len(values) else np.zeros_like(wanted)

    joint, marginal = lookup(pair_values, pair_counts, keys), lookup(context_values, context_counts, context)
    return np.log(joint + 1.0) - np.log(marginal + classes)


def non_separating_cross_entropies(fit_pairs, evaluation_pairs) -> dict:
    """Cross-entropies in nats on ``evaluation_pairs`` of the predictors that do not
    separate, each estimated on ``fit_pairs`` (both lists of ``(mix, target)`` waveforms
    ``[b, t, c]``, the mix aligned with the target):

    - ``marginal``: the target classes' own histogram on the evaluation pairs (``class_entropy``);
    - ``pointwise``: p(target_t | mix_t), any function of the current mix sample's class;
    - ``bigram``: p(target_t | target_t-1), the previous target sample (what a teacher-forced
      autoregressive decoder hears);
    - ``pointwise+bigram``: p(target_t | mix_t, target_t-1)."""
    fit, evaluation = class_contexts(fit_pairs), class_contexts(evaluation_pairs)

    def cross_entropy(*names):
        def context(streams):
            values = np.zeros_like(streams["target"])
            for name in names:
                values = values * 256 + streams[name]
            return values

        return float(-np.mean(conditional_log_probabilities(context(fit), fit["target"], context(evaluation),
                                                            evaluation["target"])))

    from models import mulaw

    frequencies = np.bincount(evaluation["target"], minlength=mulaw.CLASSES) / evaluation["target"].size
    frequencies = frequencies[frequencies > 0]
    return {"marginal": float(-np.sum(frequencies * np.log(frequencies))),
            "pointwise": cross_entropy("mix"),
            "bigram": cross_entropy("previous"),
            "pointwise+bigram": cross_entropy("mix", "previous")}


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

    def pairs(self):
        return centred_pairs(self.evaluation, self.source)


def class_model_batches(run: dict, arch: str, config, source: str, fit_batches: int = 1024,
                        evaluation_batches: int = 32, batch_size: int = 4) -> ClassBatches:
    """Fit and evaluation batches of the run's training songs, each from its own seed
    (the model trained on other crops of the same songs: 3 songs of 3 s are too few to
    generalise from), and the non-separating predictors' cross-entropies."""
    import keras

    from data_pipeline.crops import CropSpec
    from data_pipeline.pipeline import make_dataset
    from models.registry import ARCHITECTURES
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
    from models.registry import ARCHITECTURES

    batch_function = ARCHITECTURES[batches.arch].training_batch(batches.config)
    if batch_function is None:
        return mix
    inputs, _ = batch_function(mix, targets)
    return {**{name: np.asarray(value) for name, value in inputs.items()}, "mix": mix}


def class_cross_entropy(predict_logits, batches: ClassBatches) -> float:
    """Mean cross-entropy in nats, per sample and channel, of ``predict_logits`` (model
    inputs -> class logits of ``batches.source``) on the evaluation batches, with the
    architecture's own loss function."""
    from models.registry import ARCHITECTURES

    loss = ARCHITECTURES[batches.arch].losses(batches.config)[batches.source]
    values = [np.asarray(loss(targets[batches.source], predict_logits(model_inputs(batches, mix, targets))))
              for mix, targets in batches.evaluation]
    return float(np.mean(np.concatenate([value.ravel() for value in values])))


def non_separating_stand_in(batches: ClassBatches, context_names=("mix",)):
    """A predictor that does not separate, in a model's place: ``predict_logits`` whose
    logits at each output sample are the log-probabilities, counted on the fit pairs with
    add-one smoothing, of the target class given the mix sample's class there (``"mix"``)
    and/or the target's previous class (``"previous"``, read from a teacher-forced input).
    Its cross-entropy is the baseline's of the same name."""
    from models import mulaw

    fit = class_contexts(batches.fit_pairs)
    context = np.zeros_like(fit["target"])
    for name in context_names:
        context = context * mulaw.CLASSES + fit[name]
    contexts = mulaw.CLASSES ** len(context_names)
    counts = np.bincount(context * mulaw.CLASSES + fit["target"], minlength=contexts * mulaw.CLASSES)
    counts = counts.reshape(contexts, mulaw.CLASSES) + 1.0
    table = (np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))).astype(np.float32)

    def predict_logits(inputs):
        mix = inputs["mix"] if isinstance(inputs, dict) else inputs
        classes = {"mix": mulaw_classes(centre(mix, batches.output_length))}
        if "previous" in context_names:
            heard = mulaw_classes(inputs[f"{batches.source}_in"])
            classes["previous"] = np.concatenate([np.full_like(heard[:, :1], silence_class()), heard[:, :-1]], axis=1)
        index = np.zeros_like(classes["mix"])
        for name in context_names:
            index = index * mulaw.CLASSES + classes[name]
        return table[index]

    return predict_logits
