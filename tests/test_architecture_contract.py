"""The contract every registered architecture keeps (``models.registry.ARCHITECTURES``),
run on a tiny config of each of its variants, as keras-hub runs one backbone harness
over each model: its config round-trips; it builds and survives a .keras round trip;
its length arithmetic and chunk plans match what it computes; a song separated in
chunks equals one pass (an architecture that separates by generation: the same song
gives the same samples); its export matches the Keras model (``runtime.export`` checks
parity itself) and separate.py runs on it; its ONNX export matches too, or is refused
for a model that separates by generation; a few training steps lower its loss; and it
trains under JAX without TensorFlow.

A new architecture is a model file plus its registration: its cases appear here by
themselves, on its registered default config, until ``TINY`` names a smaller one.
Checks that hold for one architecture only stay in its own test file."""
import json

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import separate
from models.architecture import SOURCES
from models.registry import ARCHITECTURES
from runtime import export
from runtime.chunking import separate_song
from runtime.loading import load_separator
from tests.helpers import (TINY_UMT_A, TINY_UMT_FULL, TINY_WAVENET, TINY_WAVEUNET, centre, make_run_dir,
                           run_without_tensorflow)

# (architecture, variant) -> a config small enough for these checks to take seconds.
TINY = {
    ("waveunet", None): TINY_WAVEUNET,
    ("wavenet", None): TINY_WAVENET,
    ("umt", "a"): TINY_UMT_A,
    ("umt", "full"): TINY_UMT_FULL,
}


def contract_cases():
    for name, architecture in ARCHITECTURES.items():
        for variant in architecture.variants or (None,):
            config = TINY.get((name, variant))
            if config is None:  # not listed yet: the registered default config of the variant
                config = architecture.configs[architecture.config_name(architecture.default_config, variant)]
            yield pytest.param(name, config, id=name if variant is None else f"{name}-{variant}")


CASES = list(contract_cases())
contract = pytest.mark.parametrize("arch, config", CASES)


def random_mix(config, length, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (batch, length, config.channels)).astype(np.float32)


def training_example(arch, config, output_length=200, batch=2, seed=0):
    """``(model inputs, model targets)`` of a learnable split as the training model takes them:
    vocals 0.3 times the mix aligned with the output, the accompaniment the rest."""
    architecture = ARCHITECTURES[arch]
    input_length, output_length = architecture.input_length_for(config, output_length)
    mix = random_mix(config, input_length, batch, seed)
    aligned = centre(mix, output_length)
    targets = {"vocals": 0.3 * aligned, "accompaniment": 0.7 * aligned}
    batch_function = architecture.training_batch(config)
    if batch_function is None:
        return mix, targets
    return keras.tree.map_structure(np.asarray, batch_function(mix, targets))


def test_every_registered_architecture_and_variant_has_a_case():
    registered = {(name, variant) for name, architecture in ARCHITECTURES.items()
                  for variant in architecture.variants or (None,)}
    assert len(CASES) == len(registered) and set(TINY) <= registered


@contract
def test_config_round_trips_through_json(arch, config):
    architecture = ARCHITECTURES[arch]
    assert architecture.config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for name in architecture.configs:
        named = architecture.configs[name]
        assert architecture.config_from_dict(json.loads(json.dumps(named.to_dict()))) == named, name


@contract
def test_builds_and_survives_a_keras_file_round_trip(arch, config, tmp_path):
    architecture = ARCHITECTURES[arch]
    model = architecture.build(config)
    assert isinstance(model, keras.Model) and model.count_params() > 0
    model.compile(optimizer="adam", loss=architecture.losses(config))
    inputs, _ = training_example(arch, config)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    before, after = model(inputs), restored(inputs)
    assert set(before) == set(after)
    for name in before:
        np.testing.assert_array_equal(after[name].numpy(), before[name].numpy())


@contract
def test_output_lengths_and_chunk_plans_match_what_the_model_computes(arch, config):
    architecture = ARCHITECTURES[arch]
    model = architecture.build(config)  # one set of weights for every length
    # In a graph, as separation runs it (an eager generator takes minutes); traced once per window length.
    run_windows = tf.function(lambda windows: architecture.run_windows(model, config, windows))
    for desired in (1, 100, 333):
        input_length, output_length = architecture.input_length_for(config, desired)
        assert output_length >= desired and input_length >= output_length
        assert architecture.input_length_for(config, output_length) == (input_length, output_length)
        sources = run_windows(random_mix(config, input_length, batch=2))
        for source in SOURCES:
            assert tuple(sources[source].shape) == (2, output_length, config.channels), (source, desired)
        plan = architecture.chunk_plan(config, desired)
        assert plan.input_length >= plan.output_offset + plan.output_length  # the kept outputs see their inputs
        assert run_windows(random_mix(config, plan.input_length))["vocals"].shape[1] == plan.output_length


@contract
def test_chunked_separation_equals_one_pass(arch, config, tmp_path):
    """A song cut into chunks of 700 samples separates as in one pass. An architecture
    that separates by generation generates each chunk on its own (from silence), so
    for it the contract is reproducibility: the same song gives the same samples."""
    architecture = ARCHITECTURES[arch]
    separator = load_separator(make_run_dir(tmp_path / "run", config, arch=arch))
    rate, length = config.sample_rate, 2000
    mix = np.random.default_rng(0).uniform(-0.5, 0.5, (length, config.channels)).astype(np.float32)
    one_pass = separate_song(separator, mix, rate, chunk_seconds=length / rate)
    chunks = []
    chunked = separate_song(separator, mix, rate, chunk_seconds=700 / rate, progress=chunks.append)
    assert sum(chunks) == length and len(chunks) >= 3
    for source in SOURCES:
        assert chunked[source].shape == one_pass[source].shape == mix.shape
    if architecture.generator(config) is None:
        for source in SOURCES:
            np.testing.assert_allclose(chunked[source], one_pass[source], atol=1e-5)
    else:
        again = separate_song(separator, mix, rate, chunk_seconds=700 / rate)
        for source in SOURCES:
            np.testing.assert_array_equal(again[source], chunked[source])


def sources_add_up(arch, config) -> bool:
    """Whether the model's vocals and accompaniment add up to the mix (a difference output)."""
    architecture = ARCHITECTURES[arch]
    input_length, output_length = architecture.input_length_for(config, 200)
    mix = random_mix(config, input_length)
    model = architecture.build(config)
    sources = tf.function(lambda windows: architecture.run_windows(model, config, windows))(mix)
    total = np.asarray(sources["vocals"]) + np.asarray(sources["accompaniment"])
    return bool(np.allclose(total, centre(mix, output_length), atol=1e-5))


@contract
def test_export_matches_the_keras_model_and_separate_py_runs_on_it(arch, config, tmp_path):
    run_dir = make_run_dir(tmp_path / "run", config, arch=arch)
    # export_run fails if the SavedModel and the Keras chunked path differ by more than 1e-4.
    version_dir = export.export_run(run_dir, tmp_path / "export", chunk_seconds=0.1, log=lambda message: None)
    assert (version_dir / "saved_model.pb").is_file()
    # At another rate and channel count than the model's.
    sf.write(tmp_path / "song.wav", np.random.default_rng(3).uniform(-0.4, 0.4, (3000, 2)), 16000)
    song, _ = sf.read(tmp_path / "song.wav", always_2d=True, dtype="float32")  # as 16-bit samples
    assert separate.main([str(tmp_path / "song.wav"), "--model", str(version_dir), "--out", str(tmp_path / "out"),
                          "--precision", "float32"]) == 0
    outputs = {source: sf.read(tmp_path / "out" / "song" / f"{source}.wav", always_2d=True, dtype="float32")
               for source in SOURCES}
    assert all(rate == 16000 and audio.shape == song.shape for audio, rate in outputs.values())
    if sources_add_up(arch, config):
        # What resampling to the model's rate and back loses goes to the accompaniment, so the
        # sum is the input, except where a source went past full scale and the WAV clipped it.
        vocals, accompaniment = outputs["vocals"][0], outputs["accompaniment"][0]
        unclipped = (np.abs(vocals) < 0.999) & (np.abs(accompaniment) < 0.999)
        assert unclipped.mean() > 0.9
        np.testing.assert_allclose((vocals + accompaniment)[unclipped], song[unclipped], atol=2.05 / 2**15 + 1e-5)


@contract
def test_onnx_export_matches_the_saved_model_or_is_refused_for_a_generator(arch, config, tmp_path):
    """A model that separates in one call per window gets a model.onnx; one that separates
    by generation (which only the SavedModel holds) is refused, saying why."""
    run_dir = make_run_dir(tmp_path / "run", config, arch=arch)
    if ARCHITECTURES[arch].generator(config) is not None:
        with pytest.raises(export.ExportError, match="autoregressive"):
            export.export_run(run_dir, tmp_path / "export", onnx=True, log=lambda message: None)
        return
    # export_run fails if ONNX Runtime and TensorFlow differ by more than 1e-4 on test windows.
    version_dir = export.export_run(run_dir, tmp_path / "export", onnx=True, chunk_seconds=0.1,
                                    log=lambda message: None)
    assert (version_dir / export.ONNX_FILE).is_file()


@contract
def test_a_few_training_steps_lower_the_loss(arch, config):
    architecture = ARCHITECTURES[arch]
    keras.utils.set_random_seed(0)
    model = architecture.build(config)
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=1.0), loss=architecture.losses(config))
    inputs, targets = training_example(arch, config)
    before = model.evaluate(inputs, targets, verbose=0, return_dict=True)["loss"]
    model.fit(inputs, targets, epochs=15, batch_size=2, verbose=0)
    after = model.evaluate(inputs, targets, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(after) and after < before, (before, after)


JAX_SCRIPT = """
import json
import sys
import keras
import numpy as np
from data_pipeline.numpy_loader import MappedLoader
from models.registry import ARCHITECTURES

assert keras.backend.backend() == "jax"
architecture = ARCHITECTURES[sys.argv[1]]
config = architecture.config_from_dict(json.loads(sys.argv[2]))
keras.utils.set_random_seed(0)
model = architecture.build(config)
model.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=1.0), loss=architecture.losses(config))
input_length, output_length = architecture.input_length_for(config, 200)
mix = np.random.default_rng(0).uniform(-0.5, 0.5, (2, input_length, config.channels)).astype("float32")
start = (input_length - output_length) // 2
centre = mix[:, start:start + output_length]
targets = {"vocals": 0.3 * centre, "accompaniment": 0.7 * centre}


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        return mix, targets


# As train.py feeds a model on a backend without tf.data: the numpy loader, mapped to the training model's batches.
batches = Batches()
if architecture.training_batch(config) is not None:
    batches = MappedLoader(batches, architecture.training_batch(config))
history = model.fit(batches, epochs=15, verbose=0).history
shape = "generated"
if architecture.generator(config) is None:
    shape = tuple(architecture.run_windows(model, config, mix)["vocals"].shape)
print(history["loss"][0] > history["loss"][-1], shape)
"""


@contract
def test_trains_under_jax_without_tensorflow(arch, config):
    architecture = ARCHITECTURES[arch]
    output_length = architecture.input_length_for(config, 200)[1]
    expected = "generated" if architecture.generator(config) else str((2, output_length, config.channels))
    output = run_without_tensorflow(JAX_SCRIPT, arch, json.dumps(config.to_dict()))
    assert output.split("\n")[0] == f"True {expected}"
