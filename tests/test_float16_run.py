"""runtime.float16_run, the one writer of float16 weights: it writes only weights whose
separation is within 1e-3 of the float32 weights', records that figure, refuses (writing
nothing) otherwise, runs under JAX without TensorFlow, and export.py and
training.gpu_campaign both write through it."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from models.registry import ARCHITECTURES
from runtime.float16_run import FLOAT16_TOLERANCE, Float16Error, probe_signal, write_float16_run
from runtime.loading import load_run
from runtime.run_directory import FLOAT16_CHECK_KEY, RunDirectory
from tests.helpers import REPOSITORY, make_run_dir, tiny_waveunet

SHIPPED = REPOSITORY / "pretrained" / "waveunet-small-musdb"


def run_with_weights(path, run: dict, weights: list[np.ndarray]):
    """A run directory of ``run``'s model holding ``weights`` as its best checkpoint."""
    architecture = ARCHITECTURES[run["arch"]]
    model = architecture.build(architecture.config_from_dict(run["model"]))
    model.set_weights(weights)
    directory = RunDirectory(path)
    directory.write_config(run)
    directory.checkpoints.mkdir()
    model.save(directory.best_checkpoint)
    return path


def float32_weights_that_round_to(stored: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """float32 weights that float16 rounding would have turned into ``stored``: each moved
    a random part (up to 0.499) of the way to its float16 neighbour, as rounding errors are."""
    rng = np.random.default_rng(seed)
    weights = []
    for weight in stored:
        exact = weight.astype(np.float64)
        up = np.nextafter(weight, np.float16(np.inf)).astype(np.float64) - exact
        down = exact - np.nextafter(weight, np.float16(-np.inf)).astype(np.float64)
        share = rng.uniform(-0.499, 0.499, weight.shape)
        weights.append((exact + np.where(share > 0, share * up, share * down)).astype(np.float32))
    return weights


def test_the_shipped_weights_are_what_the_writer_writes_and_pass_its_check(tmp_path):
    """The shipped file was written before the check (its float32 weights are gone): any
    float32 weights it could have been rounded from, through the writer, give exactly the
    shipped weights, and separate within 1e-3 of them (measured: 1.5e-4 to 2.3e-4 over seeds 0-4)."""
    run = RunDirectory(SHIPPED).read_config().to_dict()
    with np.load(RunDirectory(SHIPPED).float16_checkpoint) as shipped_file:
        shipped = [shipped_file[name] for name in sorted(shipped_file.files)]
    source = run_with_weights(tmp_path / "float32", run, float32_weights_that_round_to(shipped))
    messages = []
    difference = write_float16_run(source, tmp_path / "float16", log=messages.append)
    assert 0 < difference <= FLOAT16_TOLERANCE
    assert f"max abs diff {difference:.2e}" in messages[0]
    with np.load(RunDirectory(tmp_path / "float16").float16_checkpoint) as written:
        assert float(written[FLOAT16_CHECK_KEY]) == difference
        names = sorted(name for name in written.files if name != FLOAT16_CHECK_KEY)
        assert len(names) == len(shipped)
        for name, weight in zip(names, shipped):
            np.testing.assert_array_equal(written[name], weight, err_msg=name)


def test_the_writer_refuses_and_writes_nothing_when_the_check_fails(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", tiny_waveunet())
    with pytest.raises(Float16Error, match=r"change the separation by \d\.\d\de-\d\d \(> 1e-09\)"):
        write_float16_run(run_dir, tmp_path / "strict", tolerance=1e-9, log=lambda message: None)
    assert not (tmp_path / "strict").exists()
    # A weight beyond float16's range (65504) becomes infinite there.
    weights = load_run(run_dir).model.get_weights()
    weights[0][0, 0, 0] = 1e5
    run = RunDirectory(run_dir).read_config().to_dict()
    overflowing = run_with_weights(tmp_path / "overflowing", run, weights)
    with pytest.raises(Float16Error, match=r"change the separation by (inf|nan) \(> 0.001\)"):
        write_float16_run(overflowing, tmp_path / "compact", log=lambda message: None)
    assert not (tmp_path / "compact").exists()
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(Float16Error, match="is not empty"):
        write_float16_run(run_dir, tmp_path / "occupied", log=lambda message: None)


JAX_CAMPAIGN_SAVE = """
import sys
sys.modules["tensorflow"] = None  # as on the GPU host: importing TensorFlow fails
import keras
from training.gpu_campaign import _save_float16
print(keras.backend.backend(), _save_float16(sys.argv[1], sys.argv[2]))
"""


def test_gpu_campaign_writes_through_the_checked_writer_under_jax_without_tensorflow(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", tiny_waveunet())
    checkpoints = RunDirectory(run_dir)
    checkpoints.last_checkpoint.rename(checkpoints.best_checkpoint)  # the campaign saves best checkpoints only
    result = subprocess.run([sys.executable, "-c", JAX_CAMPAIGN_SAVE, str(run_dir), str(tmp_path / "compact")],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.startswith("jax ") and "max abs diff" in result.stdout
    with np.load(RunDirectory(tmp_path / "compact").float16_checkpoint) as written:
        difference = float(written[FLOAT16_CHECK_KEY])
    assert 0 < difference <= FLOAT16_TOLERANCE and f"max abs diff {difference:.2e}" in result.stdout
    # What the writer measured under JAX, measured here under TensorFlow on the same signal.
    config = tiny_waveunet()
    plan = ARCHITECTURES["waveunet"].chunk_plan(config, 4 * config.sample_rate)
    window = probe_signal(config.sample_rate, config.channels, plan.input_length)[None]
    outputs = [ARCHITECTURES["waveunet"].run_windows(load_run(path).model, config, window)
               for path in (run_dir, tmp_path / "compact")]
    measured = max(float(np.max(np.abs(keras.ops.convert_to_numpy(outputs[1][s] - outputs[0][s]))))
                   for s in outputs[0])
    np.testing.assert_allclose(measured, difference, rtol=5e-3)  # measured: 5e-4 apart


def test_every_float16_checkpoint_goes_through_the_one_writer():
    sources = {}
    for folder, subfolders, files in os.walk(REPOSITORY):
        subfolders[:] = [name for name in subfolders if not name.startswith((".", "__")) and name != "tests"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                sources[os.path.relpath(path, REPOSITORY)] = open(path).read()
    assert sorted(path for path, text in sources.items() if "np.float16" in text or "savez" in text) == [
        "runtime/float16_run.py"]
    assert sorted(path for path, text in sources.items()
                  if "from runtime.float16_run import write_float16_run" in text) == [
        "export.py", "training/gpu_campaign.py"]
