"""A run's data: its datasets and their roots, the training songs of each and the
validation songs that pick the best checkpoint, every file checked before the first step,
the validation excerpts, and the training stream and validation pass (the tf.data
pipeline where TensorFlow runs the model, the numpy loader elsewhere).

``run`` is a ``runtime.run_directory.RunConfig``, or config.json's layout as a dict."""
from __future__ import annotations

import os

import keras
import numpy as np

from data_pipeline.audio import AudioError
from data_pipeline.augment import AugmentOptions
from data_pipeline.crops import CropSpec
from data_pipeline.datasets import GENERATED_DATASETS, DatasetError, SyntheticOptions, find_problems, get_tracks, \
    load_track
from models.architecture import SOURCES
from models.registry import ARCHITECTURES
from runtime.run_directory import RunConfig
from training.strategy import cluster_role

# The tf.data pipeline where TensorFlow runs the model; the numpy loader elsewhere.
USES_TF_DATA = keras.backend.backend() == "tensorflow"


def dataset_parts(data: dict) -> list[tuple[str, str | None]]:
    """``(dataset, data root)`` for each dataset of a run; generated ones need no root."""
    names = data["dataset"].split("+")
    roots = data["data_root"] if isinstance(data["data_root"], list) else [data["data_root"]]
    roots = [root for root in roots if root is not None]
    real = [name for name in names if name not in GENERATED_DATASETS]
    if len(roots) > len(real) or (roots and len(roots) < len(real)):
        raise DatasetError(f"{len(real)} dataset(s) need a --data-root ({', '.join(real) or 'none'}), "
                           f"{len(roots)} given")
    roots_by_name = dict(zip(real, roots))
    return [(name, roots_by_name.get(name)) for name in names]


def _split_tracks(run: RunConfig | dict, name: str, root, split: str, sample_rate: int):
    data = run["data"]
    synthetic = SyntheticOptions(songs=data["synthetic_songs"], duration=data.get("synthetic_duration", 20.0),
                                 cache_dir=data["cache_dir"])
    return get_tracks(name, split, data_root=root, sample_rate=sample_rate, synthetic=synthetic)


def training_groups(run: RunConfig | dict, sample_rate: int) -> list:
    """The training tracks of each dataset of the run, in order."""
    return [_split_tracks(run, name, root, "train", sample_rate) for name, root in dataset_parts(run["data"])]


def selection_parts(data: dict) -> list[tuple[str, str | None]]:
    """``(dataset, data root)`` of the datasets whose validation songs pick the best
    checkpoint: those named by --select-on, else the real datasets when the run mixes
    real and generated songs, else all of them."""
    parts = dataset_parts(data)
    if data.get("select_on"):
        return [(name, root) for name, root in parts if name in data["select_on"]]
    real = [(name, root) for name, root in parts if name not in GENERATED_DATASETS]
    return real or parts


def validation_tracks(run: RunConfig | dict, sample_rate: int) -> list:
    """The validation songs that pick the best checkpoint (see ``selection_parts``);
    the other datasets' validation splits are never read."""
    return [track for name, root in selection_parts(run["data"])
            for track in _split_tracks(run, name, root, "valid", sample_rate)]


def check_data(run: RunConfig | dict, sample_rate: int) -> dict:
    """The training groups and validation tracks, every file checked (header,
    length, channels) before the first step; all problems are reported together."""
    tracks = {"train": training_groups(run, sample_rate), "valid": validation_tracks(run, sample_rate)}
    problems = find_problems(all_tracks(tracks))
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in the training data:\n  " + "\n  ".join(problems))
    return tracks


def all_tracks(tracks: dict) -> list:
    return [track for group in tracks["train"] for track in group] + tracks["valid"]


def run_seed(seed: int, worker: int, start_epoch: int) -> int:
    """The data stream's seed: its own for each worker, and a new one after each
    resume, so a resumed run does not replay the crops it has already seen."""
    return int(np.random.SeedSequence([seed, worker, start_epoch]).generate_state(1)[0])


def fixed_excerpts(tracks, crop: CropSpec, sample_rate: int, channels: int, count: int):
    """``count`` validation windows spread over the songs and over each song; only
    one song is in memory at a time."""
    per_track = np.array_split(np.arange(count), min(count, len(tracks)))
    chosen_tracks = np.linspace(0, len(tracks) - 1, len(per_track)).round().astype(int)
    mixes, targets = [], {source: [] for source in SOURCES}
    for track_index, excerpts in zip(chosen_tracks, per_track):
        audio = load_track(tracks[track_index], sample_rate, channels)
        padded = {source: np.pad(audio[source], [(crop.context_left, crop.context_right), (0, 0)])
                  for source in SOURCES}
        song_length = len(audio["vocals"])
        for position in (np.arange(len(excerpts)) + 1) / (len(excerpts) + 1):
            start = int(np.clip(position * song_length - crop.output_length // 2, 0,
                                max(0, song_length - crop.output_length)))
            window = {source: padded[source][start:start + crop.input_length] for source in SOURCES}
            window = {source: np.pad(w, [(0, crop.input_length - len(w)), (0, 0)]) for source, w in window.items()}
            mixes.append(window["vocals"] + window["accompaniment"])
            for source in SOURCES:
                targets[source].append(window[source][crop.context_left:crop.context_left + crop.output_length])
    return np.stack(mixes), {source: np.stack(windows) for source, windows in targets.items()}


def describe_validation(run: RunConfig | dict, tracks: list, excerpts: int, excerpt_seconds: float) -> str:
    """What the run's validation measures (``excerpts`` windows of ``excerpt_seconds`` by
    ``fixed_excerpts``), for its log and TensorBoard."""
    run = RunConfig.of(run)
    names = [name for name, _ in selection_parts(run.data)]
    generated = all(name in GENERATED_DATASETS for name in names)
    text = (f"Validation: {len(tracks)} {'+'.join(names)} valid songs"
            f"{' (the same generator as the test split, other seeds)' if generated else ''}. val_loss over all "
            f"of them picks the best checkpoint; val_sdr_<source> and val_sdr_gain_<source> (SDR over the best "
            f"no-separation baseline) are measured on {excerpts} excerpts of {excerpt_seconds:.1f} s from "
            f"{min(excerpts, len(tracks))} of them, pooled (loud passages weigh more than in evaluate.py's "
            f"median over songs of 1 s windows, which reads lower).")
    if generated:
        text += (" Generated songs are a sanity check (a model that learns gains here); real quality is "
                 "measured on real songs, e.g. MUSDB18's 14 validation songs (--dataset musdb).")
    return text


def build_datasets(run: RunConfig | dict, tracks: dict, model_config, crop: CropSpec, strategy, start_epoch: int):
    """The training stream and the validation pass, as the architecture's training model
    takes them (``Architecture.training_batch``)."""
    run = RunConfig.of(run)
    train, valid = _pipeline_datasets(run, tracks, model_config, crop, strategy, start_epoch)
    batch_function = ARCHITECTURES[run.arch].training_batch(model_config)
    if batch_function is None:
        return train, valid
    if not USES_TF_DATA:
        from data_pipeline.numpy_loader import MappedLoader

        return MappedLoader(train, batch_function), MappedLoader(valid, batch_function)
    return train.map(batch_function), valid.map(batch_function)


def _pipeline_datasets(run: RunConfig, tracks: dict, model_config, crop: CropSpec, strategy, start_epoch: int):
    training = run.training
    role = cluster_role(strategy)
    common = dict(sample_rate=model_config.sample_rate, crop=crop, channels=model_config.channels,
                  batch_size=training["batch_size"], cache=training["cache"])
    augmentation = AugmentOptions(pitch_shift_semitones=training.get("pitch_shift_semitones", 0.0),
                                  cross_dataset_probability=training.get("cross_dataset_probability", 0.0))
    training_common = dict(crops_per_track=training["crops_per_track"], augmentation=augmentation,
                           seed=run_seed(training["seed"], role.index, start_epoch),
                           num_shards=role.count, shard_index=role.index, **common)
    groups = tracks["train"]
    weights = run.data.get("mix_weights") or [1.0] * len(groups)
    if len(weights) != len(groups):
        raise DatasetError(f"--mix-weights gives {len(weights)} weights for {len(groups)} datasets")
    if not USES_TF_DATA:
        from data_pipeline.numpy_loader import MixedTrainingLoader, TrainingLoader, ValidationLoader

        threads = dict(workers=min(4, os.cpu_count() or 1), use_multiprocessing=False,
                       steps_per_epoch=training["validate_every"])
        train = (TrainingLoader(groups[0], **training_common, **threads) if len(groups) == 1 else
                 MixedTrainingLoader(groups, weights, **training_common, **threads))
        return train, ValidationLoader(tracks["valid"], **common, workers=threads["workers"])
    import tensorflow as tf

    from data_pipeline.pipeline import make_dataset, make_mixed_dataset

    # Each worker crops its own share of the songs; every worker validates on all of
    # them, so all run the same number of validation steps (no collective waits).
    train = (make_dataset(groups[0], training=True, **training_common) if len(groups) == 1 else
             make_mixed_dataset(groups, weights, **training_common))
    valid = make_dataset(tracks["valid"], training=False, **common)
    if role.count > 1:  # the songs are already split between workers
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        train, valid = train.with_options(options), valid.with_options(options)
    return train, valid


def decoding_errors() -> tuple:
    """What a file that fails to decode raises inside the input pipeline."""
    if not USES_TF_DATA:
        return AudioError, ValueError
    import tensorflow as tf

    return AudioError, tf.errors.InvalidArgumentError, tf.errors.UnknownError
