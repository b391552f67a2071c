"""Train a separator: python train.py --arch waveunet [--config small] [--dataset synthetic] ...

A run directory (run_directory.py) holds everything about a run:
    config.json        the resolved configuration (the model can be rebuilt from it)
    checkpoints/       best.keras (lowest validation loss) and last.keras
    backup/            the training state, for --resume after a crash or kill
    logs/              TensorBoard: losses, learning rate, validation SDR, audio, spectrograms, graph;
                       metrics.csv: the same scalars on every backend

Any Keras 3 backend trains: TensorFlow (default) with the tf.data pipeline, or
e.g. KERAS_BACKEND=jax on a host without TensorFlow, with the numpy loader.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from data_pipeline.audio import AudioError  # noqa: E402
from data_pipeline.augment import AugmentOptions  # noqa: E402
from data_pipeline.crops import CropSpec  # noqa: E402
from data_pipeline.datasets import DATASETS, GENERATED_DATASETS, DatasetError, SyntheticOptions, find_problems, \
    get_tracks, load_track  # noqa: E402
from models.architecture import SOURCES  # noqa: E402
from models.registry import ARCHITECTURES, PRECISIONS, build_in_precision  # noqa: E402
from runtime.run_directory import RunDirectory  # noqa: E402
from training.callbacks import TorchScalarWriter, ValidationExamples  # noqa: E402
from training.checkpointing import ResumableBackup, StopAtStep, backup_progress, optimizer_step  # noqa: E402
from training.strategy import choose_strategy, cluster_role, describe, fix_keras_for_multi_worker, \
    strategy_scope  # noqa: E402

# The tf.data pipeline where TensorFlow runs the model; the numpy loader elsewhere.
USES_TF_DATA = keras.backend.backend() == "tensorflow"

# The base of every run's training settings: the architecture's preset for the named config
# (models.registry) replaces some of them, flags override both.
TRAINING_DEFAULTS = {"steps": 100_000, "batch_size": 16, "learning_rate": 1e-4, "validate_every": 500,
                     "patience": 20, "seed": 0, "crops_per_track": 8, "cache": True, "validation_excerpts": 8,
                     "precision": "float32", "learning_rate_decay": 1.0, "clip_norm": None,
                     "pitch_shift_semitones": 0.0, "ema_momentum": None}
TRAINING_FLAGS = ("steps", "batch_size", "learning_rate", "validate_every", "patience", "seed", "precision",
                  "pitch_shift_semitones", "ema_momentum")
DEFAULT_SYNTHETIC_SONGS = 90


def dataset_mix(text: str) -> str:
    """argparse type of --dataset: one dataset or several joined by +."""
    names = text.split("+")
    unknown = [name for name in names if name not in DATASETS]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: name each of {', '.join(DATASETS)} at most once, joined by +")
    return text


def mix_weights(text: str) -> list[float]:
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if min(weights) < 0 or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: weights must be non-negative with a positive sum")
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="model architecture (default: waveunet)")
    parser.add_argument("--config", help="named model configuration (Wave-U-Net: small, M1..M5, M5-HighSR; "
                                         "WaveNet and UMT: small, paper; default: small)")
    variants = sorted({variant for architecture in ARCHITECTURES.values() for variant in architecture.variants})
    parser.add_argument("--variant", choices=variants, help="UMT: a (Structure A: the decoder built like the "
                                                            "encoder, parallel; the default) or full (pooling, "
                                                            "domain confusion, autoregressive WaveNet decoder)")
    parser.add_argument("--dataset", type=dataset_mix, metavar="{" + ",".join(DATASETS) + "}[+...]",
                        help="training data; several joined by + are mixed into every batch, e.g. synthetic+musdb "
                             "(default: synthetic). synthetic and rendered are generated here: rendered "
                             "plays the accompaniment on sampled instruments (needs fluidsynth and "
                             "fluid-soundfont-gm)")
    parser.add_argument("--data-root", action="append", help="dataset folder, once for each dataset but the generated "
                                                             "ones (synthetic, rendered), in the order of --dataset")
    parser.add_argument("--mix-weights", type=mix_weights, help="with several datasets: the share of examples drawn "
                                                                "from each, e.g. 0.5,0.5 (default: equal)")
    parser.add_argument("--select-on", type=dataset_mix, metavar="NAME[+...]",
                        help="the datasets whose validation songs pick the best checkpoint, e.g. musdb; the "
                             "others train only and need no validation split (default: the real datasets, or "
                             "the generated one when there is no real one)")
    parser.add_argument("--run-dir", help="where config, checkpoints and logs go (default: runs/<arch>-<config>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last backup with the settings "
                                                            "in RUN_DIR/config.json; only --steps may change them")
    parser.add_argument("--init-from", metavar="RUN_DIR", help="start from the weights of another run's best "
                                                               "checkpoint (fine-tuning); its model config is used")
    parser.add_argument("--steps", type=int, help="total optimizer steps, exactly (small: 400)")
    parser.add_argument("--batch-size", type=int, help="examples per step (small: 8; M1..M5: 16)")
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate (small: 5e-4; M1..M5: 1e-4 as f90)")
    parser.add_argument("--validate-every", type=int, help="steps between validations, backups and checkpoints "
                                                           "(small: 200; M1..M5: 2000)")
    parser.add_argument("--patience", type=int, help="validations without improvement before stopping early "
                                                     "(default: 20)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS),
                        help="bfloat16: mixed precision (float32 weights, bfloat16 compute), for GPUs and "
                             "CPUs with AVX512-BF16/AMX (default: float32)")
    parser.add_argument("--pitch-shift", dest="pitch_shift_semitones", type=float, metavar="SEMITONES",
                        help="shift a random 0.25-0.5 s segment of both sources of each training example by up "
                             "to this many semitones (UMT: 0.5; others: 0, off)")
    parser.add_argument("--ema", dest="ema_momentum", type=float, metavar="MOMENTUM",
                        help="validate, pick and save an exponential moving average of the weights, updated "
                             "every step with this momentum (e.g. 0.999: an average over about 1000 steps); "
                             "training itself goes on from the raw weights (default: off)")
    parser.add_argument("--seed", type=int, help="seed of crops and augmentation (default: 0)")
    parser.add_argument("--synthetic-songs", type=int, help=f"training songs of 20 s of each generated dataset "
                                                            f"(synthetic, rendered; default: {DEFAULT_SYNTHETIC_SONGS})")
    parser.add_argument("--cache-dir", help="generated song cache (default: $WAVESEP_CACHE or ~/.cache/wavesep)")
    parser.add_argument("--no-cache", action="store_true", help="decode songs on every pass instead of keeping "
                                                               "them in memory (large datasets)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("steps", "batch_size", "validate_every", "synthetic_songs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.patience is not None and args.patience < 0:
        parser.error("--patience must not be negative")
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error("--learning-rate must be positive")
    if args.pitch_shift_semitones is not None and not 0 <= args.pitch_shift_semitones <= 12:
        parser.error("--pitch-shift must lie in [0, 12] semitones")
    if args.ema_momentum is not None and not 0 < args.ema_momentum < 1:
        parser.error("--ema must lie strictly between 0 and 1")
    return args


def _resume_conflicts(args, run: dict) -> list[str]:
    """Flags given with --resume that contradict the run's saved settings."""
    saved = {"arch": run["arch"], "config": run["config_name"], "dataset": run["data"]["dataset"],
             "data_root": [root for _, root in dataset_parts(run["data"]) if root is not None] or None,
             "mix_weights": run["data"].get("mix_weights"),
             "select_on": "+".join(run["data"]["select_on"]) if run["data"].get("select_on") else None,
             "cache_dir": run["data"]["cache_dir"],
             "synthetic_songs": run["data"]["synthetic_songs"]["train"], "init_from": run["training"].get("init_from"),
             **{key: run["training"].get(key) for key in TRAINING_FLAGS if key != "steps"}}
    conflicts = [f"--{key.replace('_', '-')} {getattr(args, key)} (the run has {value})"
                 for key, value in saved.items() if getattr(args, key) is not None and getattr(args, key) != value]
    if args.variant is not None:
        conflicts.append(f"--variant {args.variant} (the run's config is {run['config_name']})")
    if args.no_cache and run["training"]["cache"]:
        conflicts.append("--no-cache (the run caches songs)")
    if args.run_dir is not None and Path(args.run_dir).resolve() != Path(args.resume).resolve():
        conflicts.append(f"--run-dir {args.run_dir} (resuming writes to {args.resume})")
    return conflicts


def resolve_run(args) -> tuple[Path, dict]:
    """The run directory and its configuration: read back on --resume, else built from flags."""
    if args.resume:
        run_dir = Path(args.resume)
        try:
            run = RunDirectory(run_dir).read_config()
        except FileNotFoundError as error:
            sys.exit(f"error: {error}")
        conflicts = _resume_conflicts(args, run)
        if conflicts:
            sys.exit(f"error: --resume {run_dir} keeps the settings in its config.json; only --steps may change. "
                     f"Conflicting: {'; '.join(conflicts)}")
        if args.steps and args.steps != run["training"]["steps"]:  # how long it goes on: applied and recorded
            run["training"]["steps"] = args.steps
            RunDirectory(run_dir).write_config(run)
        return run_dir, run

    arch = args.arch or "waveunet"
    architecture = ARCHITECTURES[arch]
    if args.variant is not None and args.variant not in architecture.variants:
        sys.exit(f"error: --variant applies to {', '.join(n for n, a in ARCHITECTURES.items() if a.variants)}, "
                 f"not {arch}")
    config_name = architecture.config_name(args.config or architecture.default_config, args.variant)
    if args.init_from:
        try:
            source = RunDirectory(args.init_from).read_config()
        except FileNotFoundError as error:
            sys.exit(f"error: --init-from {error}")
        arch, config_name, model = source["arch"], source["config_name"], source["model"]
    elif config_name not in architecture.configs:
        sys.exit(f"error: unknown --config {config_name!r} for {arch}; choose one of "
                 f"{', '.join(architecture.configs)}")
    else:
        model = architecture.configs[config_name].to_dict()
    presets = ARCHITECTURES[arch].training_presets  # --init-from may have changed the architecture
    training = {**TRAINING_DEFAULTS, **presets.get(config_name, {}), "init_from": args.init_from}
    for key in TRAINING_FLAGS:
        if getattr(args, key) is not None:
            training[key] = getattr(args, key)
    training["cache"] = not args.no_cache
    run = {
        "arch": arch,
        "config_name": config_name,
        "model": model,
        "data": {"dataset": args.dataset or "synthetic", "data_root": args.data_root, "mix_weights": args.mix_weights,
                 "select_on": args.select_on.split("+") if args.select_on else None,
                 "cache_dir": args.cache_dir,
                 "synthetic_songs": {"train": args.synthetic_songs or DEFAULT_SYNTHETIC_SONGS, "valid": 10,
                                     "test": 10}},
        "training": training,
    }
    unknown = set(run["data"]["select_on"] or ()) - set(run["data"]["dataset"].split("+"))
    if unknown:
        sys.exit(f"error: --select-on {args.select_on}: {', '.join(sorted(unknown))} is not in --dataset "
                 f"{run['data']['dataset']}")
    run_dir = Path(args.run_dir or f"runs/{arch}-{config_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    RunDirectory(run_dir).write_config(run)
    return run_dir, run


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


def _split_tracks(run: dict, name: str, root, split: str, sample_rate: int):
    data = run["data"]
    synthetic = SyntheticOptions(songs=data["synthetic_songs"], duration=data.get("synthetic_duration", 20.0),
                                 cache_dir=data["cache_dir"])
    return get_tracks(name, split, data_root=root, sample_rate=sample_rate, synthetic=synthetic)


def training_groups(run: dict, sample_rate: int) -> list:
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


def validation_tracks(run: dict, sample_rate: int) -> list:
    """The validation songs that pick the best checkpoint (see ``selection_parts``);
    the other datasets' validation splits are never read."""
    return [track for name, root in selection_parts(run["data"])
            for track in _split_tracks(run, name, root, "valid", sample_rate)]


def check_data(run: dict, sample_rate: int) -> dict:
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


def build_datasets(run: dict, tracks: dict, model_config, crop: CropSpec, strategy, start_epoch: int):
    """The training stream and the validation pass, as the architecture's training model
    takes them (``Architecture.training_batch``)."""
    train, valid = _pipeline_datasets(run, tracks, model_config, crop, strategy, start_epoch)
    batch_function = ARCHITECTURES[run["arch"]].training_batch(model_config)
    if batch_function is None:
        return train, valid
    if not USES_TF_DATA:
        from data_pipeline.numpy_loader import MappedLoader

        return MappedLoader(train, batch_function), MappedLoader(valid, batch_function)
    return train.map(batch_function), valid.map(batch_function)


def _pipeline_datasets(run: dict, tracks: dict, model_config, crop: CropSpec, strategy, start_epoch: int):
    training = run["training"]
    role = cluster_role(strategy)
    common = dict(sample_rate=model_config.sample_rate, crop=crop, channels=model_config.channels,
                  batch_size=training["batch_size"], cache=training["cache"])
    augmentation = AugmentOptions(pitch_shift_semitones=training.get("pitch_shift_semitones", 0.0))
    training_common = dict(crops_per_track=training["crops_per_track"], augmentation=augmentation,
                           seed=run_seed(training["seed"], role.index, start_epoch),
                           num_shards=role.count, shard_index=role.index, **common)
    groups = tracks["train"]
    weights = run["data"].get("mix_weights") or [1.0] * len(groups)
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


def build_model(run: dict, strategy):
    architecture = ARCHITECTURES[run["arch"]]
    model_config = architecture.config_from_dict(run["model"])
    keras.utils.set_random_seed(run["training"]["seed"])  # the same initial weights for the same seed
    with strategy_scope(strategy):
        model = build_in_precision(architecture.build, model_config, run["training"].get("precision", "float32"))
        if run["training"].get("init_from"):
            print(f"Starting from {RunDirectory(run['training']['init_from']).load_weights(model)}")
        model.compile(optimizer=make_optimizer(run["training"]), loss=architecture.losses(model_config))
    return model, model_config


def make_optimizer(training: dict) -> keras.optimizers.Optimizer:
    """Adam; its learning rate multiplied by ``learning_rate_decay`` after every validation
    interval (UMT decays it per epoch), gradients clipped to norm ``clip_norm`` if given, and
    an exponential moving average of the weights kept with ``ema_momentum`` if given."""
    learning_rate = training["learning_rate"]
    decay = training.get("learning_rate_decay", 1.0)
    if decay != 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=training["validate_every"], decay_rate=decay, staircase=True)
    momentum = training.get("ema_momentum")
    return keras.optimizers.Adam(learning_rate, clipnorm=training.get("clip_norm"), use_ema=momentum is not None,
                                 ema_momentum=momentum or 0.99)


def make_callbacks(run_dir: Path, output_dir: Path, run: dict, excerpts, crop: CropSpec, sample_rate: int):
    """``output_dir`` is where this process writes: the run directory on the chief,
    a scratch folder on the other workers (they still restore from the run's backup)."""
    training = run["training"]
    outputs = RunDirectory(output_dir)
    outputs.checkpoints.mkdir(parents=True, exist_ok=True)
    architecture = ARCHITECTURES[run["arch"]]
    monitor = architecture.checkpoint_metric(architecture.config_from_dict(run["model"]))
    best = keras.callbacks.ModelCheckpoint(str(outputs.best_checkpoint), monitor=monitor, mode="min",
                                           save_best_only=True)
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=training["patience"])
    outputs.logs.mkdir(parents=True, exist_ok=True)
    if USES_TF_DATA:
        # Keras only records when the step is a multiple of update_freq, epoch summaries
        # included, so it must divide the validation interval.
        tensorboard = [keras.callbacks.TensorBoard(str(outputs.logs), write_graph=True,
                                                   update_freq=math.gcd(training["validate_every"], 50))]
    else:
        tensorboard = [TorchScalarWriter(outputs.logs)] if TorchScalarWriter.available() else []
    # With an EMA: swapped in for validation, and from each epoch's end (after the backup,
    # which keeps the raw weights to resume from) through the checkpoints that follow.
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if training.get("ema_momentum") else []
    return [
        ResumableBackup(outputs.backup, best, early_stopping, restore_dir=RunDirectory(run_dir).backup),
        *ema,
        *validation_examples(run, outputs.logs, excerpts, crop, sample_rate),
        *tensorboard,
        keras.callbacks.CSVLogger(str(outputs.logs / "metrics.csv"), append=True),
        best,
        keras.callbacks.ModelCheckpoint(str(outputs.last_checkpoint)),
        early_stopping,
        StopAtStep(training["steps"]),
    ]


def validation_examples(run: dict, log_dir: Path, excerpts, crop: CropSpec, sample_rate: int) -> list:
    """The ValidationExamples callback, separating as the architecture does; none for a
    model that separates by autoregressive generation (TensorFlow code) on another backend."""
    architecture = ARCHITECTURES[run["arch"]]
    config = architecture.config_from_dict(run["model"])
    if architecture.generator(config) is None:
        def separate(model, mix):
            return architecture.inference_head(model.predict(mix, batch_size=4, verbose=0))
    elif USES_TF_DATA:
        from runtime.separator import keras_separator

        separators = {}  # one per model (fit's model throughout): its graph is traced once

        def separate(model, mix):
            if model not in separators:
                separators[model] = keras_separator(model, run["arch"], config, source="validation")
            return separators[model].forward(mix)
    else:
        print(f"No validation SDR: {run['arch']} separates by generation, which runs on TensorFlow")
        return []
    return [ValidationExamples(log_dir, *excerpts, crop, sample_rate, separate)]


def decoding_errors() -> tuple:
    """What a file that fails to decode raises inside the input pipeline."""
    if not USES_TF_DATA:
        return AudioError, ValueError
    import tensorflow as tf

    return AudioError, tf.errors.InvalidArgumentError, tf.errors.UnknownError


def train(run_dir: Path, run: dict, strategy=None):
    strategy = strategy or choose_strategy()
    role = cluster_role(strategy)
    print(f"Training {run['arch']} ({run['config_name']}) on {describe(strategy)}")
    model, model_config = build_model(run, strategy)
    fix_keras_for_multi_worker(model, strategy)
    architecture = ARCHITECTURES[run["arch"]]
    crop = CropSpec(*architecture.input_length_for(model_config, model_config.num_frames))
    training = run["training"]
    progress = backup_progress(RunDirectory(run_dir).backup)
    if progress["step"] >= training["steps"]:
        print(f"{run_dir} has already trained {progress['step']} of {training['steps']} steps; "
              f"give --steps to train longer")
        return model, None
    tracks = check_data(run, model_config.sample_rate)
    train_data, valid_data = build_datasets(run, tracks, model_config, crop, strategy, progress["epoch"])
    excerpts = fixed_excerpts(tracks["valid"], crop, model_config.sample_rate, model_config.channels,
                              training["validation_excerpts"])
    print(f"{model.count_params():,} parameters; crops of {crop.input_length} samples in, "
          f"{crop.output_length} out at {model_config.sample_rate} Hz")
    output_dir = run_dir if role.is_chief else Path(tempfile.mkdtemp(prefix=f"worker{role.index}-"))
    if role.is_chief:
        print(f"Run directory: {run_dir}\nWatch it with: tensorboard --logdir {RunDirectory(run_dir).logs}")
    # Whole validation intervals up to the last one, which StopAtStep may cut short.
    epochs = progress["epoch"] + -(-(training["steps"] - progress["step"]) // training["validate_every"])
    # The validation set is finite on purpose (its length is not counted ahead: that
    # would take an extra pass), and the training stream never ends.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    try:
        history = model.fit(train_data, validation_data=valid_data, epochs=epochs,
                            steps_per_epoch=training["validate_every"], shuffle=False,
                            callbacks=make_callbacks(run_dir, output_dir, run, excerpts, crop,
                                                     model_config.sample_rate),
                            verbose=1 if sys.stdout.isatty() else 2)  # a progress bar on a terminal, lines in a log
    except decoding_errors():  # e.g. a file broken after the check
        problems = find_problems(all_tracks(tracks), decode=True)
        if not problems:  # not the data's fault
            raise
        raise DatasetError("decoding the training data failed:\n  " + "\n  ".join(problems)) from None
    print(f"Done after {optimizer_step(model)} steps; best model: {RunDirectory(output_dir).best_checkpoint}")
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
