"""The non-causal WaveNet separator: receptive-field arithmetic, a field symmetric about
each output, the heads and the loss, .keras round trips, training through train.py
past the best constant predictor, export parity and separate.py on a trained run,
and training under JAX without TensorFlow."""
import dataclasses

import keras
import numpy as np
import pytest
import soundfile as sf

import export
import separate
import train
from data_pipeline.crops import CropSpec
from data_pipeline.pipeline import make_dataset
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
from tests.test_numpy_loader import run_without_tensorflow
from tests.test_train import write_run

# Field 1 + 2 * 2 * (1 + 2 + 4) = 29 samples.
TINY = WaveNetConfig(stacks=2, layers_per_stack=3, residual_channels=8, skip_channels=8, sample_rate=8000,
                     num_frames=512)
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


@pytest.mark.parametrize("config", [TINY, TINY_REGRESSION], ids=["classification", "regression"])
def test_keras_checkpoint_round_trip(config, tmp_path):
    model = build_wavenet(config)
    model.compile(optimizer="adam", loss=losses(config))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    mix = random_mix(100, config.channels)
    for source in ("vocals", "accompaniment"):
        np.testing.assert_array_equal(loaded(mix)[source].numpy(), model(mix)[source].numpy())
    assert WaveNetConfig.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------- training, export, separation


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run directory, run, model, history) of a tiny WaveNet trained through train.py."""
    run_dir = tmp_path_factory.mktemp("wavenet") / "run"
    run = write_run(run_dir, tmp_path_factory.mktemp("cache"), TRAINING_STEPS, TRAINING_STEPS // 2, arch="wavenet",
                    model=TRAINED, learning_rate=5e-3)
    model, history = train.train(*train.resolve_run(train.parse_args(["--resume", str(run_dir)])))
    return run_dir, run, model, history


def class_entropy(dataset) -> float:
    """Cross-entropy of the best constant predictor: the entropy of the targets' class histogram."""
    classes = np.concatenate([mulaw.encode(targets["vocals"]).numpy().ravel() for _, targets in dataset])
    frequencies = np.bincount(classes, minlength=mulaw.CLASSES) / classes.size
    frequencies = frequencies[frequencies > 0]
    return float(-np.sum(frequencies * np.log(frequencies)))


def test_training_beats_the_best_constant_class_distribution(trained):
    run_dir, run, model, history = trained
    assert int(model.optimizer.iterations.numpy()) == TRAINING_STEPS
    assert "val_sdr_vocals" in history.history and RunDirectory(run_dir).best_checkpoint.is_file()
    crop = CropSpec(*input_length_for(TRAINED, TRAINED.num_frames))
    batches = make_dataset(train.training_groups(run, TRAINED.sample_rate)[0], sample_rate=TRAINED.sample_rate,
                           crop=crop, batch_size=4, seed=123).take(8).cache()
    model_loss, constant_loss = model.evaluate(batches, verbose=0, return_dict=True)["loss"], class_entropy(batches)
    # In nats, of 5.5 for a uniform guess; measured: 4.63 against 4.91.
    assert model_loss < constant_loss - 0.15, (model_loss, constant_loss)
    best = keras.saving.load_model(RunDirectory(run_dir).best_checkpoint)
    mix = random_mix(2000)
    np.testing.assert_allclose(best(mix)["vocals"].numpy(), model(mix)["vocals"].numpy(), atol=1e-5)


def test_export_parity_and_separate_py_on_the_trained_run(trained, tmp_path):
    run_dir = trained[0]
    # export_run fails if the SavedModel and the Keras chunked path differ by more than 1e-4.
    version_dir = export.export_run(run_dir, tmp_path / "export", chunk_seconds=0.1, log=lambda message: None)
    assert (version_dir / "saved_model.pb").is_file()
    sf.write(tmp_path / "song.wav", np.random.default_rng(3).uniform(-0.4, 0.4, (5000, 2)), 16000)
    song, _ = sf.read(tmp_path / "song.wav", always_2d=True, dtype="float32")  # as 16-bit samples
    assert separate.main([str(tmp_path / "song.wav"), "--model", str(run_dir), "--out", str(tmp_path / "out"),
                          "--precision", "float32"]) == 0
    vocals, rate = sf.read(tmp_path / "out" / "song" / "vocals.wav", always_2d=True, dtype="float32")
    accompaniment, _ = sf.read(tmp_path / "out" / "song" / "accompaniment.wav", always_2d=True, dtype="float32")
    assert rate == 16000 and vocals.shape == song.shape
    # Resampling to 8 kHz and back: what it loses goes to the accompaniment, so the sum is the input.
    np.testing.assert_allclose(vocals + accompaniment, song, atol=2.05 / 2**15 + 1e-5)


JAX_SCRIPT = """
import sys
import keras
import numpy as np
from models.wavenet import WaveNetConfig, build_wavenet, losses, sources_from_outputs

assert keras.backend.backend() == "jax"
config = WaveNetConfig(**eval(sys.argv[1]))
keras.utils.set_random_seed(0)
model = build_wavenet(config)
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=losses(config))
mix = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 300, 2)).astype("float32")
vocals = 0.3 * mix[:, 14:-14]
first = [model.train_on_batch(mix, {"vocals": vocals, "accompaniment": mix[:, 14:-14] - vocals}) for _ in range(20)]
print(first[0] > first[-1], tuple(sources_from_outputs(model(mix))["vocals"].shape))
"""


def test_trains_under_jax_without_tensorflow():
    assert run_without_tensorflow(JAX_SCRIPT, repr(TINY.to_dict())).split("\n")[0] == "True (4, 272, 2)"
