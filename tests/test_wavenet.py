"""The non-causal WaveNet separator: receptive-field arithmetic, a field symmetric about
each output, the heads and the loss, the regression head's .keras round trip, and training
through train.py past every predictor that does not separate (and that check failing such
a predictor in the model's place). What every architecture must do (builds, lengths,
chunking, export, training, JAX) is in test_architecture_contract.py."""
import dataclasses

import keras
import numpy as np
import pytest

import train
from data_pipeline.crops import CropSpec
from models import mulaw
from models.registry import ARCHITECTURES
from models.wavenet import (
    CONFIGS,
    WaveNetConfig,
    build_wavenet,
    chunk_plan,
    input_length_for,
    losses,
    mulaw_cross_entropy,
    receptive_field,
    sources_from_outputs,
)
from runtime.run_directory import RunDirectory
from tests.helpers import (TINY_WAVENET as TINY, assert_beats_non_separating_baselines, class_cross_entropy,
                           class_model_batches, non_separating_stand_in, write_run)

# TINY's field: 1 + 2 * 2 * (1 + 2 + 4) = 29 samples.
TINY_REGRESSION = dataclasses.replace(TINY, head="regression", channels=1)
# What train.py trains below: field 1 + 2 * (1 + 2 + ... + 32) = 127 samples.
TRAINED = WaveNetConfig(stacks=1, layers_per_stack=6, residual_channels=16, skip_channels=32, sample_rate=8000,
                        num_frames=512)
TRAINING_STEPS = 240


def random_mix(length, channels=2, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (batch, length, channels)).astype(np.float32)


# ---------------------------------------------------------------- length arithmetic and field


def test_receptive_field_of_the_named_and_tiny_configs():
    assert receptive_field(TINY) == 29
    assert receptive_field(dataclasses.replace(TINY, kernel_size=5)) == 57
    assert receptive_field(CONFIGS["small"]) == 1 + 2 * 1023
    assert receptive_field(CONFIGS["paper"]) == 1 + 2 * 3 * 1023
    with pytest.raises(ValueError, match="odd"):
        WaveNetConfig(kernel_size=4)


@pytest.mark.parametrize("config", [TINY, dataclasses.replace(TINY_REGRESSION, kernel_size=5)],
                         ids=["classification-k3", "regression-k5"])
def test_output_is_the_input_less_the_field_plus_one(config):
    model = build_wavenet(config)  # one set of weights for every length
    field = receptive_field(config)
    for input_length in (field, field + 1, 100, 777):
        outputs = model(random_mix(input_length, config.channels))
        sources = sources_from_outputs(outputs)
        for source in ("vocals", "accompaniment"):
            assert tuple(sources[source].shape) == (1, input_length - field + 1, config.channels)
        assert input_length_for(config, input_length - field + 1) == (input_length, input_length - field + 1)


def test_chunk_plan_has_no_grid_and_centres_the_output_like_the_training_crops():
    field = receptive_field(TINY)
    plan = chunk_plan(TINY, 1000)
    assert (plan.input_length, plan.output_offset, plan.output_length, plan.keep_from, plan.stride) == (
        1000 + field - 1, (field - 1) // 2, 1000, 0, 1000)
    assert CropSpec(*input_length_for(TINY, 1000)).context_left == plan.output_offset


def test_output_at_t_sees_the_input_up_to_half_the_field_on_each_side_and_no_further():
    """Non-causal and symmetric: output t depends on input t - r .. t + r, r = (field - 1) / 2."""
    model = build_wavenet(TINY)
    radius = (receptive_field(TINY) - 1) // 2
    mix = random_mix(200)
    t = 50  # an output index; its input sample is t + radius
    probes = {offset: mix.copy() for offset in (-radius - 1, -radius, radius, radius + 1)}
    for offset, probe in probes.items():
        probe[0, t + radius + offset] += 1.0
    logits = {offset: model(probe)["vocals"].numpy()[0, t] for offset, probe in probes.items()}
    reference = model(mix)["vocals"].numpy()[0, t]
    # The field's edge reaches the output through one tap of every layer: a small but real change
    # (measured: 2e-5 with random weights), while beyond it the output is exactly the same.
    assert np.abs(logits[-radius] - reference).max() > 1e-7 and np.abs(logits[radius] - reference).max() > 1e-7
    np.testing.assert_array_equal(logits[-radius - 1], reference)
    np.testing.assert_array_equal(logits[radius + 1], reference)


# ---------------------------------------------------------------- heads and loss


@pytest.mark.parametrize("config", [TINY, TINY_REGRESSION], ids=["classification", "regression"])
def test_inference_head_gives_waveforms_that_add_up_to_the_centred_mix(config):
    model = build_wavenet(config)
    mix = random_mix(300, config.channels, batch=2)
    outputs = model(mix)
    if config.head == "classification":
        assert tuple(outputs["vocals"].shape) == (2, 300 - 28, 2, mulaw.CLASSES)
    sources = sources_from_outputs(outputs)
    assert ARCHITECTURES["wavenet"].inference_head is sources_from_outputs
    centre = mix[:, 14:-14]
    np.testing.assert_allclose(sources["vocals"].numpy() + sources["accompaniment"].numpy(), centre, atol=1e-6)
    assert np.abs(sources["vocals"].numpy()).max() <= 1.0


def test_classification_loss_encodes_the_waveform_target():
    vocals = np.random.default_rng(1).uniform(-1, 1, (2, 10, 2)).astype(np.float32)
    classes = mulaw.encode(vocals).numpy()
    right = 20.0 * np.eye(mulaw.CLASSES, dtype=np.float32)[classes]  # confident and right
    assert mulaw_cross_entropy(vocals, right).numpy().max() < 1e-6
    uniform = np.zeros((2, 10, 2, mulaw.CLASSES), np.float32)
    np.testing.assert_allclose(mulaw_cross_entropy(vocals, uniform).numpy(), np.log(mulaw.CLASSES), rtol=1e-6)
    assert losses(TINY) == {"vocals": mulaw_cross_entropy, "accompaniment": None}
    assert losses(TINY_REGRESSION) == {"vocals": "mse", "accompaniment": None}


def test_keras_checkpoint_round_trip_of_the_regression_head(tmp_path):
    """(The classification head's: test_architecture_contract.py.)"""
    config = TINY_REGRESSION
    model = build_wavenet(config)
    model.compile(optimizer="adam", loss=losses(config))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    mix = random_mix(100, config.channels)
    for source in ("vocals", "accompaniment"):
        np.testing.assert_array_equal(loaded(mix)[source].numpy(), model(mix)[source].numpy())
    assert WaveNetConfig.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run directory, run, model, history) of a tiny WaveNet trained through train.py."""
    run_dir = tmp_path_factory.mktemp("wavenet") / "run"
    run = write_run(run_dir, tmp_path_factory.mktemp("cache"), TRAINING_STEPS, TRAINING_STEPS // 2, arch="wavenet",
                    model=TRAINED, learning_rate=5e-3)
    model, history = train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir)])))
    return run_dir, run, model, history


# The checks the trained model must pass: in nats of the vocals' mu-law classes, below the
# constant class distribution's cross-entropy and below that of any function of the current
# mix sample (tests/helpers.py, non_separating_cross_entropies).
MUST_BEAT = ("marginal", "pointwise")


@pytest.fixture(scope="module")
def class_batches(trained):
    return class_model_batches(trained[1], "wavenet", TRAINED, "vocals")


def test_training_beats_every_predictor_that_does_not_separate(trained, class_batches):
    run_dir, run, model, history = trained
    assert int(model.optimizer.iterations.numpy()) == TRAINING_STEPS
    assert "val_sdr_vocals" in history.history and RunDirectory(run_dir).best_checkpoint.is_file()
    model_loss = class_cross_entropy(lambda inputs: model(inputs, training=False)["vocals"], class_batches)
    print(f"wavenet: {model_loss:.3f} nats; baselines {class_batches.baselines}")
    # Of 5.55 for a uniform guess. Measured: 4.50 against the pointwise predictor's 4.73 and the
    # marginal's 4.90 (the previous-sample predictor's 3.99 is none: the model never hears the vocals).
    assert_beats_non_separating_baselines(model_loss, class_batches.baselines, MUST_BEAT)
    best = keras.saving.load_model(RunDirectory(run_dir).best_checkpoint)
    mix = random_mix(2000)
    np.testing.assert_allclose(best(mix)["vocals"].numpy(), model(mix)["vocals"].numpy(), atol=1e-5)


def test_the_pointwise_predictor_in_the_models_place_fails_that_check(class_batches):
    """The check rejects a model that does not separate: the best function of the current mix
    sample (counted on the fit crops), scored as the model is, beats the constant class
    distribution (which the check used to ask for) but not the check."""
    loss = class_cross_entropy(non_separating_stand_in(class_batches, "pointwise"), class_batches)
    assert loss == pytest.approx(class_batches.baselines["pointwise"], abs=1e-4)
    assert loss < class_batches.baselines["marginal"]
    with pytest.raises(AssertionError, match=r"(: |, )pointwise \d") as failure:
        assert_beats_non_separating_baselines(loss, class_batches.baselines, MUST_BEAT)
    print(f"wavenet, the pointwise predictor in the model's place: {failure.value}")
