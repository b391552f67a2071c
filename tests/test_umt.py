"""UMT, both variants: receptive-field arithmetic, non-causality of Structure A and
causality of the full decoder, gradient reversal, incremental generation equal to
the naive generator, training through train.py past every predictor that does not
separate (and that check failing such a predictor in the model's place). What every
architecture must do (builds, lengths, chunking, export, ONNX or its refusal for the
full variant, training, JAX) is in test_architecture_contract.py."""
import dataclasses
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from data_pipeline.crops import CropSpec
from models import generation, mulaw
from models.registry import ARCHITECTURES
from models.umt import (
    CONFIGS,
    GradientReversal,
    UMTConfig,
    build_umt,
    chunk_plan,
    decoder_field,
    encoder_field,
    input_length_for,
    losses,
    pool_length,
    receptive_field,
    training_batch,
)
from runtime.run_directory import RunDirectory
from tests.helpers import (TINY_UMT_A as TINY_A, TINY_UMT_FULL as TINY_FULL, assert_beats_non_separating_baselines,
                           class_cross_entropy, class_model_batches, non_separating_stand_in, write_run)

UMT = ARCHITECTURES["umt"]
# TINY_A: encoder field 1 + 2 * (1 + 1 + 2 + 4) = 17; Structure A's whole field 17 + 17 - 1 = 33.
# TINY_FULL: pool 40 samples at 8 kHz (80 at 16 kHz); a causal decoder of 2 x 3 layers: field 1 + (1 + 2 * 7) = 16.


def random_signal(length, channels=1, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (batch, length, channels)).astype(np.float32)


# ---------------------------------------------------------------- configs and length arithmetic


def test_named_configs_and_variants():
    assert UMT.variants == ("a", "full") and UMT.default_config == "small"
    assert UMT.config_name("paper", "full") == "paper-full" and UMT.config_name("paper", "a") == "paper"
    assert UMT.config_name("small", None) == "small"
    with pytest.raises(ValueError, match="variant"):
        UMT.config_name("small", "b")
    paper, paper_full = CONFIGS["paper"], CONFIGS["paper-full"]
    # music-translation: 3 x 10 encoder layers of 128 channels, latent 64, 4 x 10 decoder layers,
    # pooling 800 at 16 kHz, sequences of 12000, classifier 3 x 100.
    assert (paper.encoder_blocks, paper.encoder_layers, paper.encoder_channels, paper.latent_channels) == (3, 10, 128, 64)
    assert (paper_full.decoder_blocks, paper_full.decoder_layers, paper_full.causal_kernel_size) == (4, 10, 2)
    assert (pool_length(paper_full), paper_full.num_frames, paper_full.confusion_weight) == (800, 12000, 1e-2)
    assert (paper_full.classifier_layers, paper_full.classifier_channels) == (3, 100)
    assert pool_length(dataclasses.replace(paper_full, sample_rate=44100, num_frames=22050)) == 2205
    assert all(UMT.training_presets[name]["pitch_shift_semitones"] == 0.5 for name in CONFIGS)
    with pytest.raises(ValueError, match="multiple of the pool"):
        UMTConfig(variant="full", num_frames=1000)


def test_receptive_field_arithmetic():
    assert encoder_field(TINY_A) == 1 + 2 * (1 + 7) == 17
    assert decoder_field(TINY_A) == 17 and receptive_field(TINY_A) == 33
    assert decoder_field(TINY_FULL) == 1 + 1 * (1 + 2 * 7) == 16 and receptive_field(TINY_FULL) == 17
    assert encoder_field(CONFIGS["paper"]) == 1 + 2 * (1 + 3 * 1023)
    assert receptive_field(CONFIGS["paper"]) == 2 * encoder_field(CONFIGS["paper"]) - 1
    assert decoder_field(CONFIGS["paper-full"]) == 1 + 1 + 4 * 1023  # 4094 samples, 0.26 s at 16 kHz
    model = build_umt(TINY_A)
    for input_length in (33, 34, 100, 513):
        outputs = model(random_signal(input_length))
        assert tuple(outputs["vocals"].shape) == (1, input_length - 32, 1)
        assert tuple(outputs["accompaniment"].shape) == (1, input_length - 32, 1, mulaw.CLASSES)
        assert input_length_for(TINY_A, input_length - 32) == (input_length, input_length - 32)


def test_chunk_plans():
    plan = chunk_plan(TINY_A, 1000)
    assert (plan.input_length, plan.output_offset, plan.output_length, plan.keep_from, plan.stride) == (
        1032, 16, 1000, 0, 1000)
    assert CropSpec(*input_length_for(TINY_A, 1000)).context_left == plan.output_offset
    # Full: whole pools (40 samples here) from the song's start, the encoder pads, no context.
    plan = chunk_plan(TINY_FULL, 1001)
    assert (plan.input_length, plan.output_offset, plan.output_length, plan.stride) == (1040, 0, 1040, 1040)


# ---------------------------------------------------------------- (non-)causality and gradient reversal


def test_structure_a_is_non_causal_with_a_symmetric_field():
    """Output t depends on input t - r .. t + r, r = (field - 1) / 2, and on nothing further."""
    model = build_umt(TINY_A)
    # Random weights everywhere (the residual branches start at zero, which would hide their
    # taps), drawn so that the ReLUs pass the field's edges at t.
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    radius = (receptive_field(TINY_A) - 1) // 2
    mix = random_signal(200)
    t = 60
    probes = {offset: mix.copy() for offset in (-radius - 1, -radius, radius, radius + 1)}
    for offset, probe in probes.items():
        probe[0, t + radius + offset] += 0.3
    reference = model(mix)["accompaniment"].numpy()[0, t]
    logits = {offset: model(probe)["accompaniment"].numpy()[0, t] for offset, probe in probes.items()}
    assert np.abs(logits[-radius] - reference).max() > 1e-7 and np.abs(logits[radius] - reference).max() > 1e-7
    np.testing.assert_array_equal(logits[-radius - 1], reference)
    np.testing.assert_array_equal(logits[radius + 1], reference)


def test_full_decoder_is_causal():
    """The logits at t come from accompaniment samples before t: changing the sample at p
    leaves every output up to p alone and changes output p + 1."""
    model = build_umt(TINY_FULL)
    mix, previous = random_signal(400, seed=1), random_signal(400, seed=2)
    reference = model({"mix": mix, "accompaniment_in": previous})["accompaniment"].numpy()[0]
    p = 200
    changed = previous.copy()
    changed[0, p] = -changed[0, p]
    logits = model({"mix": mix, "accompaniment_in": changed})["accompaniment"].numpy()[0]
    np.testing.assert_array_equal(logits[:p + 1], reference[:p + 1])
    assert np.abs(logits[p + 1] - reference[p + 1]).max() > 1e-6
    # ... and no further than the decoder's field: the sample at p is read by outputs p + 1 .. p + 16.
    field = decoder_field(TINY_FULL)
    assert np.abs(logits[p + field] - reference[p + field]).max() > 1e-7
    np.testing.assert_array_equal(logits[p + field + 1:p + 40], reference[p + field + 1:p + 40])


def test_gradient_reversal_flips_and_scales_the_gradient():
    layer = GradientReversal(0.25)
    x = tf.constant([[1.0, -2.0, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.constant([[2.0, 3.0, 5.0]]))
    np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-0.5, -0.75, -1.25]], rtol=1e-6)


def test_the_domain_classifier_learns_while_the_encoder_gets_the_reversed_gradient():
    """With the reversal, the classifier's weights descend the domain loss and the encoder's
    gradient from that loss is -confusion_weight times what it would be without it."""
    model = build_umt(TINY_FULL)
    batch = training_batch(TINY_FULL)(random_signal(400, batch=4), {"accompaniment": random_signal(400, batch=4,
                                                                                                  seed=3)})
    inputs, targets = keras.tree.map_structure(tf.convert_to_tensor, batch)
    loss_function = losses(TINY_FULL)["domain"]

    def gradients(scale):
        model.get_layer("gradient_reversal").scale = scale
        with tf.GradientTape() as tape:
            loss = loss_function(targets["domain"], model(inputs)["domain"])
        variables = [model.get_layer("latent").kernel, model.get_layer("classifier_0").kernel]
        return [g.numpy() for g in tape.gradient(loss, variables)]

    encoder_reversed, classifier_reversed = gradients(TINY_FULL.confusion_weight)
    encoder_plain, classifier_plain = gradients(-1.0)  # -1: the identity in value and in gradient
    np.testing.assert_allclose(classifier_reversed, classifier_plain, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(encoder_reversed, -TINY_FULL.confusion_weight * encoder_plain, rtol=1e-4, atol=1e-9)
    assert np.abs(encoder_plain).max() > 0


def test_training_batches_of_the_full_variant():
    mix, accompaniment = random_signal(400, batch=4), random_signal(400, batch=4, seed=5)
    inputs, targets = training_batch(TINY_FULL)({"mix": mix}["mix"], {"accompaniment": accompaniment})
    np.testing.assert_array_equal(np.asarray(targets["domain"]), [0, 1, 0, 1])
    np.testing.assert_array_equal(np.asarray(inputs["mix"])[0::2], mix[0::2])
    np.testing.assert_array_equal(np.asarray(inputs["mix"])[1::2], accompaniment[1::2])
    np.testing.assert_array_equal(np.asarray(targets["accompaniment"]), accompaniment)
    assert training_batch(TINY_A) is None
    assert set(training_batch(dataclasses.replace(TINY_FULL, domains="none"))(mix, {"accompaniment": accompaniment})[
        1]) == {"accompaniment"}


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
def test_incremental_generation_equals_the_naive_generator(temperature):
    keras.utils.set_random_seed(4)
    model = build_umt(TINY_FULL)
    pool = pool_length(TINY_FULL)
    frames = tf.random.normal([3, 5, TINY_FULL.latent_channels])
    length = 5 * pool
    incremental = tf.function(lambda f: generation.generate_incremental(
        generation.DecoderWeights(model, TINY_FULL), f, pool, length, seed=7, temperature=temperature))(frames)
    naive = tf.function(lambda f: generation.generate_naive(
        generation.decoder_model(model), TINY_FULL, f, length, seed=7, temperature=temperature))(frames)
    assert incremental.shape == (3, length, 1)
    np.testing.assert_array_equal(incremental.numpy(), naive.numpy())
    assert len(np.unique(incremental.numpy())) > 10  # not a constant sequence
    if temperature == 0:  # the greedy samples are what the teacher-forced decoder predicts from them
        heard = np.pad(mulaw.level(incremental).numpy(), [(0, 0), (1, 0), (0, 0)])[:, :-1]
        logits = generation.decoder_model(model)([heard, np.repeat(frames.numpy(), pool, axis=1)])
        np.testing.assert_array_equal(np.argmax(logits.numpy(), axis=-1), incremental.numpy())
    other_seed = generation.generate_incremental(generation.DecoderWeights(model, TINY_FULL), frames, pool, 50,
                                                 seed=8, temperature=1.0)
    if temperature:
        assert not np.array_equal(other_seed.numpy(), incremental.numpy()[:, :50])


def test_separate_windows_cuts_windows_into_parallel_segments():
    """A window generated as segments of 2 pools equals generating each segment on its own
    from the same latent frames, segment s with noise stream s; the vocals are the rest of
    the mix; and a window's result does not depend on the windows batched with it."""
    keras.utils.set_random_seed(5)
    model = build_umt(TINY_FULL)
    pool = pool_length(TINY_FULL)
    windows = random_signal(6 * pool, batch=2)
    segment_seconds = 2 * pool / TINY_FULL.sample_rate
    separated = generation.separate_windows(model, TINY_FULL, windows, segment_seconds=segment_seconds, seed=3)
    frames = generation.encoder_model(model)(windows)
    segments = tf.reshape(frames, [6, 2, TINY_FULL.latent_channels])
    classes = generation.generate_incremental(generation.DecoderWeights(model, TINY_FULL), segments, pool, 2 * pool,
                                              seed=3, streams=tf.constant([0, 1, 2, 0, 1, 2]))
    expected = np.reshape(mulaw.decode(classes).numpy(), (2, 6 * pool, 1))
    np.testing.assert_allclose(separated["accompaniment"].numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(separated["vocals"].numpy() + separated["accompaniment"].numpy(), windows, atol=1e-6)
    alone = generation.separate_windows(model, TINY_FULL, windows[1:], segment_seconds=segment_seconds, seed=3)
    np.testing.assert_array_equal(alone["accompaniment"].numpy(), separated["accompaniment"].numpy()[1:])


# ---------------------------------------------------------------- training

# train.py steps, learning rate and pitch shift per variant. The full variant: what it takes to
# beat the predictors below (about 90 s on 2 cores), without pitch shift, which cost the tiny
# model about 0.05 nats at these steps (3.90 against 3.84 nats). Structure A, which does not
# beat the pointwise predictor in steps this suite can afford (below): as few as pass the
# rest, with UMT's pitch shift, so train.py's pitch-shifted tf.data path trains a UMT here.
TRAINING = {"a": (120, 3e-3, 0.5), "full": (1200, 1e-2, 0.0)}
# What each variant's trained model must beat, in nats of the accompaniment's mu-law classes
# (tests/helpers.py, non_separating_cross_entropies): Structure A sees only the mix; the
# full decoder also hears the accompaniment's past samples (teacher forcing).
MUST_BEAT = {"a": ("marginal", "pointwise"), "full": ("marginal", "pointwise", "bigram", "pointwise+bigram")}
STRUCTURE_A_IS_NO_BETTER_THAN_POINTWISE = (
    "tiny Structure A does not beat the pointwise predictor (3.91 nats; marginal 5.07) in a test's time: "
    "4.58 nats after the test's 120 steps at 3e-3; at 1e-2, 4.21 after 1000 steps and 4.11 after 2000 "
    "(16-channel layers: 4.18 after 1000; 3e-2: 4.45 after 1000)")


@pytest.fixture(scope="module", params=["a", "full"])
def trained(request, tmp_path_factory):
    """(config, run directory, model, history, class batches) of a tiny UMT of each variant trained by train.py."""
    config = TINY_A if request.param == "a" else TINY_FULL
    steps, learning_rate, pitch_shift = TRAINING[request.param]
    run_dir = tmp_path_factory.mktemp(f"umt-{request.param}") / "run"
    run = write_run(run_dir, tmp_path_factory.mktemp("cache"), steps, steps, arch="umt", model=config,
                    learning_rate=learning_rate, pitch_shift_semitones=pitch_shift, clip_norm=1.0)
    model, history = train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir)])))
    return config, run_dir, model, history, class_model_batches(run, "umt", config, "accompaniment")


def accompaniment_loss(model, batches) -> float:
    """The model's cross-entropy on real mixes (the full variant's training batches hand half
    the examples their accompaniment alone as the mix), teacher-forced for the full variant."""
    return class_cross_entropy(lambda inputs: model(inputs, training=False)["accompaniment"], batches)


def test_training_beats_the_constant_class_distribution(trained):
    config, run_dir, model, history, batches = trained
    assert int(model.optimizer.iterations.numpy()) == TRAINING[config.variant][0]
    assert "val_sdr_vocals" in history.history and RunDirectory(run_dir).best_checkpoint.is_file()
    # Of 5.55 for a uniform guess. Measured: Structure A 4.58, full 3.84 (teacher-forced, on real
    # mixes), against 5.07.
    model_loss = accompaniment_loss(model, batches)
    print(f"umt-{config.variant}: {model_loss:.3f} nats; baselines {batches.baselines}")
    assert model_loss < batches.baselines["marginal"] - 0.3, (model_loss, batches.baselines)
    if config.variant == "full":
        mix = np.concatenate([mix for mix, _ in batches.evaluation])
        targets = {source: np.concatenate([t[source] for _, t in batches.evaluation])
                   for source in ("vocals", "accompaniment")}
        inputs, mapped = keras.tree.map_structure(np.asarray, training_batch(config)(mix, targets))
        scores = model.evaluate(inputs, mapped, batch_size=4, verbose=0, return_dict=True)
        print(f"umt-full: domain loss {scores['domain_loss']:.3f}")
        assert abs(scores["domain_loss"] - math.log(2)) < 0.2  # the encoder works against the classifier


def test_training_beats_every_predictor_that_does_not_separate(trained, request):
    config, _, model, _, batches = trained
    if config.variant == "a":
        request.applymarker(pytest.mark.xfail(strict=True, reason=STRUCTURE_A_IS_NO_BETTER_THAN_POINTWISE))
    model_loss = accompaniment_loss(model, batches)
    print(f"umt-{config.variant}: {model_loss:.3f} nats; baselines {batches.baselines}")
    # Measured, full: 3.84 against pointwise 3.91, pointwise+bigram 4.20, bigram 4.28, marginal 5.07,
    # the predictors counted on 4096 crops, about the 4800 the model trains on. With add-one
    # smoothing over 65536 contexts the joint predictor needs more: on 16384 crops it reaches 3.81
    # (pointwise 3.90), which this model does not beat. Structure A: an expected failure (above).
    assert_beats_non_separating_baselines(model_loss, batches.baselines, MUST_BEAT[config.variant])


def test_a_predictor_that_does_not_separate_in_the_models_place_fails_that_check(trained):
    """The check rejects a model that does not separate: the best function of the current mix
    sample (for the full variant also of the accompaniment's previous sample), counted on
    the fit crops and scored as the model is, fails it."""
    config, batches = trained[0], trained[4]
    for name in ("pointwise",) if config.variant == "a" else ("pointwise", "bigram", "pointwise+bigram"):
        loss = class_cross_entropy(non_separating_stand_in(batches, name), batches)
        assert loss == pytest.approx(batches.baselines[name], abs=1e-4), name
        assert loss < batches.baselines["marginal"] - 0.3, name  # what the check used to ask for
        with pytest.raises(AssertionError, match=rf"(: |, ){re.escape(name)} \d") as failure:
            assert_beats_non_separating_baselines(loss, batches.baselines, MUST_BEAT[config.variant])
        print(f"umt-{config.variant}, the {name} predictor in the model's place: {failure.value}")
