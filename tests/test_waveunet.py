"""Wave-U-Net: f90's length arithmetic, the custom layers against f90's ops, the named
configs, the difference output, .keras round trips and a few training steps."""
import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import CenterCrop1D, CropConcat, Decimate, LearnedUpsample, LinearUpsample
from models.waveunet import (
    CONFIGS,
    WaveUNetConfig,
    build_waveunet,
    context_length,
    get_config,
    input_length_for,
)
from tests.helpers import best_constant_gain_loss

# Tiny stereo models that keep f90's kernel sizes (15 down, 5 up) but few levels and filters.
TINY = WaveUNetConfig(num_layers=3, num_initial_filters=4, context=True, output_type="difference", channels=2)
TINY_LEARNED = dataclasses.replace(TINY, upsampling="learned")
TINY_DIRECT_MONO = dataclasses.replace(TINY, output_type="direct", channels=1)
TINY_SAME = dataclasses.replace(TINY, context=False)
TINY_SAME_LEARNED = dataclasses.replace(TINY_SAME, upsampling="learned")


def random_mix(config, length, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (batch, length, config.channels)).astype("float32")


def center_crop(array, length):
    start = (array.shape[1] - length) // 2
    return array[:, start:start + length]


# ---------------------------------------------------------------- length arithmetic


def test_m4_lengths_match_f90():
    m4 = get_config("M4")
    assert input_length_for(m4, 16384) == (147443, 16389)
    assert context_length(m4) == 147443 - 16389


def test_model_built_for_f90_input_has_f90_output_length():
    model = build_waveunet(get_config("M4"), input_length=147443)
    assert {source: tuple(output.shape) for source, output in model.output.items()} == {
        "vocals": (None, 16389, 2),
        "accompaniment": (None, 16389, 2),
    }


def test_without_context_lengths_round_up_to_a_multiple_of_the_decimation():
    m1 = get_config("M1")
    assert input_length_for(m1, 16384) == (16384, 16384)
    assert input_length_for(m1, 16385) == (16384 + 4096, 16384 + 4096)
    assert context_length(m1) == 0


@pytest.mark.parametrize("config", [TINY, TINY_LEARNED, TINY_DIRECT_MONO], ids=["linear", "learned", "direct-mono"])
def test_forward_pass_output_length_matches_arithmetic(config):
    model = build_waveunet(config)  # one set of weights for every valid length
    for desired in (1, 100, 777):
        input_length, output_length = input_length_for(config, desired)
        # The smallest valid output at least as long as desired; valid ones are 2**L apart.
        assert desired <= output_length < desired + 2**config.num_layers
        outputs = model(np.zeros((1, input_length, config.channels), "float32"))
        for source in ("vocals", "accompaniment"):
            assert tuple(outputs[source].shape) == (1, output_length, config.channels)


@pytest.mark.parametrize("config", [TINY_SAME, TINY_SAME_LEARNED], ids=["linear", "learned"])
def test_same_padding_keeps_the_length(config):
    length, output_length = input_length_for(config, 50)
    assert length == output_length == 56
    outputs = build_waveunet(config)(random_mix(config, length))
    assert tuple(outputs["vocals"].shape) == tuple(outputs["accompaniment"].shape) == (2, length, 2)


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("skip_length, length, start", [(10, 6, 2), (10, 7, 1), (7, 7, 0)])
def test_crop_concat_crops_the_skip_centrally_like_f90(skip_length, length, start):
    # f90's Utils.crop: an odd surplus loses its extra step at the end.
    skip = np.arange(skip_length, dtype="float32").reshape(1, skip_length, 1)
    upsampled = np.full((1, length, 2), -1.0, "float32")
    combined = CropConcat()([skip, upsampled]).numpy()
    assert combined.shape == (1, length, 3)
    np.testing.assert_array_equal(combined[0, :, 0], np.arange(start, start + length))
    np.testing.assert_array_equal(combined[0, :, 1:], -1.0)
    np.testing.assert_array_equal(CenterCrop1D()([skip, upsampled]).numpy(), combined[..., :1])


@pytest.mark.parametrize("length", [9, 10])
def test_decimate_keeps_every_other_step(length):
    steps = np.arange(length, dtype="float32").reshape(1, length, 1)
    np.testing.assert_array_equal(Decimate()(steps).numpy()[0, :, 0], np.arange(0, length, 2))


@pytest.mark.parametrize("valid", [True, False])
def test_linear_upsample_matches_f90_resize_bilinear(valid):
    features = np.random.default_rng(1).normal(size=(2, 6, 3)).astype("float32")
    size = 11 if valid else 12
    expected = tf.compat.v1.image.resize_bilinear(features[:, None], [1, size], align_corners=valid)[:, 0]
    np.testing.assert_allclose(LinearUpsample(valid=valid)(features).numpy(), expected.numpy(), atol=1e-6)


def f90_learned_interpolation(features, weights, padding):
    """f90's InterpolationLayer: a width-2 conv with kernels diag(w), diag(1 - w), interleaved."""
    conv_weights = tf.stack([tf.linalg.diag(weights), tf.linalg.diag(1.0 - weights)])[None]
    in_between = tf.nn.conv2d(features[:, None], conv_weights, strides=1, padding=padding)[:, 0]
    length = features.shape[1]
    output_length = 2 * length - 1 if padding == "VALID" else 2 * length
    order = [t // 2 if t % 2 == 0 else length + t // 2 for t in range(output_length)]
    return tf.gather(tf.concat([features, in_between], axis=1), order, axis=1)


@pytest.mark.parametrize("valid", [True, False])
def test_learned_upsample_matches_f90_interpolation_layer(valid):
    features = np.random.default_rng(2).normal(size=(2, 6, 3)).astype("float32")
    layer = LearnedUpsample(valid=valid)
    layer.build(features.shape)
    layer.logits.assign([-1.0, 0.0, 2.0])
    expected = f90_learned_interpolation(features, tf.sigmoid(layer.logits), "VALID" if valid else "SAME")
    np.testing.assert_allclose(layer(features).numpy(), expected.numpy(), atol=1e-6)


# ---------------------------------------------------------------- configs


def test_named_configs_follow_f90():
    paper = {name: get_config(name) for name in ("M1", "M2", "M3", "M4", "M5", "M5-HighSR")}
    assert [c.output_type == "difference" for c in paper.values()] == [False] + [True] * 5
    assert [c.context for c in paper.values()] == [False, False] + [True] * 4
    assert [c.channels for c in paper.values()] == [1, 1, 1, 2, 2, 2]
    assert [c.predicted_source for c in paper.values()][1:] == ["accompaniment"] * 5  # vocals = mix - accompaniment
    assert [c.upsampling for c in paper.values()] == ["linear"] * 4 + ["learned"] * 2
    assert [c.sample_rate for c in paper.values()] == [22050] * 5 + [44100]
    assert all((c.num_layers, c.num_initial_filters, c.filter_size, c.merge_filter_size) == (12, 24, 15, 5)
               for c in paper.values())
    assert get_config() == get_config("small")


def test_named_configs_build_with_expected_parameter_counts():
    counts = {name: build_waveunet(config).count_params() for name, config in CONFIGS.items()}
    for name in ("M1", "M2", "M3", "M4"):
        assert 10.2e6 < counts[name] < 10.3e6, name
    # Learned upsampling adds one weight per channel it upsamples: 24 * (13 + 12 + ... + 2).
    assert counts["M5"] - counts["M4"] == 24 * sum(range(2, 14))
    assert counts["M5-HighSR"] == counts["M5"]
    assert 1e6 < counts["small"] < 2e6


def test_layers_are_named_by_level():
    model = build_waveunet(get_config("M5"))
    names = {layer.name for layer in model.layers}
    expected = {"mix", "bottleneck_conv", "concat_mix", "crop_mix", "vocals", "accompaniment"}
    for level in range(12):
        expected |= {f"down_conv_{level}", f"decimate_{level}", f"upsample_{level}", f"concat_{level}", f"up_conv_{level}"}
    assert expected <= names
    assert model.get_layer("down_conv_3").filters == model.get_layer("up_conv_3").filters == 96


def test_config_round_trips_through_json():
    for config in CONFIGS.values():
        assert WaveUNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        WaveUNetConfig(upsampling="nearest")
    with pytest.raises(ValueError):
        WaveUNetConfig(output_type="difference", predicted_source="drums")
    with pytest.raises(KeyError):
        get_config("M9")


# ---------------------------------------------------------------- behaviour


@pytest.mark.parametrize("predicted", ["vocals", "accompaniment"])
def test_difference_output_sources_add_up_to_the_mix(predicted):
    config = dataclasses.replace(TINY, predicted_source=predicted)
    input_length, output_length = input_length_for(config, 300)
    mix = random_mix(config, input_length)
    model = build_waveunet(config)
    outputs = model(mix)
    total = outputs["vocals"].numpy() + outputs["accompaniment"].numpy()
    np.testing.assert_allclose(total, center_crop(mix, output_length), atol=1e-7)
    derived = "vocals" if predicted == "accompaniment" else "accompaniment"
    assert isinstance(model.get_layer(predicted), keras.layers.Conv1D)
    assert isinstance(model.get_layer(derived), keras.layers.Subtract)


@pytest.mark.parametrize("config", [TINY_LEARNED, TINY_DIRECT_MONO], ids=["learned-difference", "linear-direct"])
def test_keras_file_round_trip_gives_identical_outputs(config, tmp_path):
    model = build_waveunet(config)
    mix = random_mix(config, input_length_for(config, 200)[0])
    path = tmp_path / "waveunet.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    before, after = model(mix), restored(mix)
    for source in ("vocals", "accompaniment"):
        np.testing.assert_allclose(after[source].numpy(), before[source].numpy(), atol=1e-6)


def test_training_steps_beat_the_best_constant_gain():
    keras.utils.set_random_seed(0)
    input_length, output_length = input_length_for(TINY, 256)
    mix = random_mix(TINY, input_length, batch=8, seed=3)
    # A learnable split: vocals are the low-passed mix (moving average), accompaniment the rest.
    lowpassed = np.apply_along_axis(lambda signal: np.convolve(signal, np.ones(9) / 9, "same"), 1, mix)
    vocals = center_crop(lowpassed, output_length)
    mix_centre = center_crop(mix, output_length)
    targets = {"vocals": vocals, "accompaniment": mix_centre - vocals}
    model = build_waveunet(TINY)
    model.compile(keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(mix, targets, batch_size=8, epochs=100, verbose=0)
    trained_loss = model.evaluate(mix, targets, verbose=0)[0]
    assert trained_loss < 0.3 * best_constant_gain_loss([(mix, targets)])  # measured: 0.20
