"""bench/train_step.py: both precisions train the same tiny Wave-U-Net, timed per step."""
import math

import keras

import bench.train_step as bench
from tests.helpers import TINY_WAVEUNET as TINY


def test_both_precisions_train_and_are_timed(monkeypatch):
    built = {}
    build_model = bench.build_model

    def recording_build(run, strategy):
        model, config = build_model(run, strategy)
        built[run["training"]["precision"]] = model
        return model, config

    monkeypatch.setattr(bench, "build_model", recording_build)
    seconds = bench.seconds_per_step(TINY, "tiny", batch_size=2, steps=2, repeats=2)
    assert set(seconds) == {"float32", "bfloat16"}
    assert all(0 < value < math.inf for value in seconds.values())
    assert built["float32"].dtype_policy.compute_dtype == "float32"
    assert built["bfloat16"].dtype_policy.compute_dtype == "bfloat16"
    assert all(variable.dtype == "float32" for model in built.values() for variable in model.trainable_weights)
    assert all(int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1 + 2 * 2 for model in built.values())
