"""Train a separator: python train.py --arch waveunet [--config small] [--dataset synthetic] ...

A run directory holds everything about a run:
    config.json        the resolved configuration (the model can be rebuilt from it)
    checkpoints/       best.keras (lowest validation loss) and last.keras
    backup/            Keras BackupAndRestore state, for --resume after a crash or kill
    logs/              TensorBoard: losses, learning rate, validation SDR, audio, spectrograms, graph
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data_pipeline.datasets import DATASETS, DatasetError, SyntheticOptions, get_tracks  # noqa: E402
from data_pipeline.pipeline import SOURCES, CropSpec, make_dataset  # noqa: E402
from inference import load_checkpoint_weights, read_run_config  # noqa: E402
from training.architectures import ARCHITECTURES  # noqa: E402
from training.callbacks import ValidationExamples  # noqa: E402
from training.strategy import choose_strategy, describe  # noqa: E402

# Training settings per named config; flags override them. "small" finishes in
# minutes on a 2-core CPU; the paper configs use f90's batch size and learning rate.
TRAINING_PRESETS = {
    "small": {"steps": 400, "batch_size": 8, "learning_rate": 5e-4, "validate_every": 200},
}
TRAINING_DEFAULTS = {"steps": 100_000, "batch_size": 16, "learning_rate": 1e-4, "validate_every": 500,
                     "patience": 20, "seed": 0, "crops_per_track": 8, "cache": True, "validation_excerpts": 8}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="waveunet", help="model architecture")
    parser.add_argument("--config", help="named model configuration (Wave-U-Net: small, M1..M5, M5-HighSR; "
                                         "default: small)")
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic", help="training data (default: synthetic)")
    parser.add_argument("--data-root", help="dataset folder (every dataset but synthetic)")
    parser.add_argument("--run-dir", help="where config, checkpoints and logs go (default: runs/<arch>-<config>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last backup; "
                                                            "settings come from RUN_DIR/config.json")
    parser.add_argument("--init-from", metavar="RUN_DIR", help="start from the weights of another run's best "
                                                               "checkpoint (fine-tuning); its model config is used")
    parser.add_argument("--steps", type=int, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate (f90: 1e-4)")
    parser.add_argument("--validate-every", type=int, help="steps between validations, backups and checkpoints")
    parser.add_argument("--patience", type=int, help="validations without improvement before stopping early")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--synthetic-songs", type=int, default=90, help="synthetic training songs of 20 s")
    parser.add_argument("--cache-dir", help="synthetic song cache (default: $WAVESEP_CACHE or ~/.cache/wavesep)")
    parser.add_argument("--no-cache", action="store_true", help="decode songs on every pass instead of keeping "
                                                               "them in memory (large datasets)")
    return parser.parse_args(argv)


def resolve_run(args) -> tuple[Path, dict]:
    """The run directory and its configuration: read back on --resume, else built from flags."""
    if args.resume:
        run_dir = Path(args.resume)
        try:
            run = read_run_config(run_dir)
        except FileNotFoundError as error:
            sys.exit(f"error: {error}")
        if args.steps:  # the one setting a resumed run may change: how long it goes on
            run["training"]["steps"] = args.steps
        return run_dir, run

    architecture = ARCHITECTURES[args.arch]
    config_name = args.config or architecture.default_config
    if args.init_from:
        try:
            source = read_run_config(args.init_from)
        except FileNotFoundError as error:
            sys.exit(f"error: --init-from {error}")
        arch, config_name, model = source["arch"], source["config_name"], source["model"]
    elif config_name not in architecture.configs:
        sys.exit(f"error: unknown --config {config_name!r} for {args.arch}; choose one of "
                 f"{', '.join(architecture.configs)}")
    else:
        arch, model = args.arch, architecture.configs[config_name].to_dict()
    training = {**TRAINING_DEFAULTS, **TRAINING_PRESETS.get(config_name, {}), "init_from": args.init_from}
    for key in ("steps", "batch_size", "learning_rate", "validate_every", "patience", "seed"):
        if getattr(args, key) is not None:
            training[key] = getattr(args, key)
    training["cache"] = not args.no_cache
    run = {
        "arch": arch,
        "config_name": config_name,
        "model": model,
        "data": {"dataset": args.dataset, "data_root": args.data_root, "cache_dir": args.cache_dir,
                 "synthetic_songs": {"train": args.synthetic_songs, "valid": 10, "test": 10}},
        "training": training,
    }
    run_dir = Path(args.run_dir or f"runs/{arch}-{config_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(run, indent=2))
    return run_dir, run


def load_tracks(run: dict, split: str, sample_rate: int):
    data = run["data"]
    synthetic = SyntheticOptions(songs=data["synthetic_songs"], duration=data.get("synthetic_duration", 20.0),
                                 cache_dir=data["cache_dir"])
    return get_tracks(data["dataset"], split, data_root=data["data_root"], sample_rate=sample_rate,
                      synthetic=synthetic)


def worker_shard(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(number of workers, this worker's index): each worker reads its own songs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1, 0
    return len(resolver.cluster_spec().as_dict().get("worker", [None])), resolver.task_id or 0


def fixed_excerpts(dataset: tf.data.Dataset, count: int):
    """``count`` validation windows spread evenly over the validation set."""
    windows = list(dataset.unbatch().as_numpy_iterator())
    chosen = [windows[i] for i in np.linspace(0, len(windows) - 1, min(count, len(windows))).astype(int)]
    mix = np.stack([mix for mix, _ in chosen])
    return mix, {source: np.stack([targets[source] for _, targets in chosen]) for source in SOURCES}


def build_datasets(run: dict, model_config, crop: CropSpec, strategy):
    training = run["training"]
    num_shards, shard_index = worker_shard(strategy)
    common = dict(sample_rate=model_config.sample_rate, crop=crop, channels=model_config.channels,
                  batch_size=training["batch_size"], seed=training["seed"], cache=training["cache"],
                  num_shards=num_shards, shard_index=shard_index)
    train = make_dataset(load_tracks(run, "train", model_config.sample_rate), training=True,
                         crops_per_track=training["crops_per_track"], **common)
    valid = make_dataset(load_tracks(run, "valid", model_config.sample_rate), training=False, **common)
    # Counted once so Keras knows where a validation pass ends.
    valid = valid.apply(tf.data.experimental.assert_cardinality(sum(1 for _ in valid)))
    if num_shards > 1:  # the songs are already split between workers
        policy = tf.data.experimental.AutoShardPolicy.OFF
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = policy
        train, valid = train.with_options(options), valid.with_options(options)
    return train, valid


def build_model(run: dict, strategy):
    architecture = ARCHITECTURES[run["arch"]]
    model_config = architecture.config_from_dict(run["model"])
    with strategy.scope():
        model = architecture.build(model_config)
        if run["training"].get("init_from"):
            print(f"Starting from {load_checkpoint_weights(model, run['training']['init_from'])}")
        model.compile(optimizer=keras.optimizers.Adam(run["training"]["learning_rate"]),
                      loss={source: "mse" for source in SOURCES})
    return model, model_config


def make_callbacks(run_dir: Path, run: dict, model, valid, crop: CropSpec, sample_rate: int):
    training = run["training"]
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    mix, targets = fixed_excerpts(valid, training["validation_excerpts"])
    return [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), delete_checkpoint=False),
        ValidationExamples(run_dir / "logs", mix, targets, crop, sample_rate),
        # Keras only records when the step is a multiple of update_freq, epoch summaries
        # included, so it must divide the validation interval.
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=True,
                                    update_freq=math.gcd(training["validate_every"], 50)),
        keras.callbacks.ModelCheckpoint(str(checkpoints / "best.keras"), monitor="val_loss", save_best_only=True),
        keras.callbacks.ModelCheckpoint(str(checkpoints / "last.keras")),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=training["patience"]),
    ]


def train(run_dir: Path, run: dict, strategy=None):
    strategy = strategy or choose_strategy()
    print(f"Training {run['arch']} ({run['config_name']}) on {describe(strategy)}")
    model, model_config = build_model(run, strategy)
    architecture = ARCHITECTURES[run["arch"]]
    crop = CropSpec(*architecture.input_length_for(model_config, model_config.num_frames))
    train_data, valid_data = build_datasets(run, model_config, crop, strategy)
    print(f"{model.count_params():,} parameters; crops of {crop.input_length} samples in, "
          f"{crop.output_length} out at {model_config.sample_rate} Hz")
    print(f"Run directory: {run_dir}\nWatch it with: tensorboard --logdir {run_dir / 'logs'}")
    training = run["training"]
    epochs = -(-training["steps"] // training["validate_every"])
    history = model.fit(train_data, validation_data=valid_data, epochs=epochs,
                        steps_per_epoch=training["validate_every"], shuffle=False,
                        callbacks=make_callbacks(run_dir, run, model, valid_data, crop, model_config.sample_rate),
                        verbose=1 if sys.stdout.isatty() else 2)  # a progress bar on a terminal, lines in a log
    print(f"Done after {int(model.optimizer.iterations.numpy())} steps; best model: {run_dir / 'checkpoints' / 'best.keras'}")
    return model, history


def main(argv=None):
    args = parse_args(argv)
    run_dir, run = resolve_run(args)
    try:
        train(run_dir, run)
    except DatasetError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
