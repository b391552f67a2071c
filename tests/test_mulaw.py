"""Mu-law companding: the round-trip error stays within half a quantisation level at
every amplitude, the classes cover 0..255 in order, and the expectation decodes."""
import numpy as np
from keras import ops

from models import mulaw


def numpy(tensor) -> np.ndarray:
    return ops.convert_to_numpy(tensor)


def test_round_trip_error_is_within_half_a_level_at_every_amplitude():
    ramp = np.linspace(-1.0, 1.0, 400_001, dtype=np.float32)
    error = np.abs(numpy(mulaw.decode(mulaw.encode(ramp))) - ramp)
    bound = mulaw.max_error(np.abs(ramp))
    assert np.all(error <= bound + 1e-6), np.max(error - bound)
    # The bound is tight: a ramp this fine gets within 1% of it...
    assert np.max(error / bound) > 0.99
    # ...and it is fine near zero and coarse at full scale (8.6e-5 and 0.022).
    assert error[np.abs(ramp) < 0.001].max() < 1.2e-4 and 0.02 < error.max() < 0.0222


def test_classes_cover_0_to_255_in_order_and_levels_decode_to_themselves():
    ramp = np.linspace(-1.0, 1.0, 100_001, dtype=np.float32)
    classes = numpy(mulaw.encode(ramp))
    assert classes.dtype == np.int32 and classes[0] == 0 and classes[-1] == mulaw.CLASSES - 1
    assert np.all(np.diff(classes) >= 0) and len(np.unique(classes)) == mulaw.CLASSES
    every_class = np.arange(mulaw.CLASSES)
    np.testing.assert_array_equal(numpy(mulaw.encode(mulaw.decode(every_class))), every_class)
    # Out-of-range samples clip to the end classes.
    np.testing.assert_array_equal(numpy(mulaw.encode(np.array([-3.0, 3.0]))), [0, mulaw.CLASSES - 1])


def test_compand_and_expand_are_inverse():
    ramp = np.linspace(-1.0, 1.0, 10_001, dtype=np.float32)
    np.testing.assert_allclose(numpy(mulaw.expand(mulaw.compand(ramp))), ramp, atol=2e-6)


def test_decoded_expectation_is_the_probability_weighted_mean_of_the_levels():
    levels = numpy(mulaw.decode(np.arange(mulaw.CLASSES)))
    one_hot = np.eye(mulaw.CLASSES, dtype=np.float32)[[0, 17, 128, 255]]
    np.testing.assert_allclose(numpy(mulaw.decode_expectation(one_hot)), levels[[0, 17, 128, 255]], atol=1e-7)
    probabilities = np.random.default_rng(0).dirichlet(np.ones(mulaw.CLASSES), size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(numpy(mulaw.decode_expectation(probabilities)), probabilities @ levels, atol=1e-6)
