"""A training session: the model and optimizer built inside the run's distribution
strategy (from another run's weights with --init-from), the callbacks (resumable
backups, best and last checkpoints, early stopping, validation SDR, TensorBoard or CSV),
and the fit loop over the run's data (training.data) up to exactly its steps."""
from __future__ import annotations

import math
import sys
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np

from data_pipeline.crops import CropSpec
from data_pipeline.datasets import DatasetError, find_problems
from models.registry import ARCHITECTURES, build_in_precision
from runtime.run_directory import RunConfig, RunDirectory
from training.callbacks import TorchScalarWriter, ValidationExamples
from training.checkpointing import KeepSnapshots, ResumableBackup, StopAtStep, backup_progress, optimizer_step
from training.data import USES_TF_DATA, all_tracks, build_datasets, check_data, decoding_errors, describe_validation, \
    fixed_excerpts
from training.losses import compile_losses
from training.strategy import choose_strategy, cluster_role, describe, fix_keras_for_multi_worker, strategy_scope


def build_model(run: RunConfig | dict, strategy):
    """The run's model, compiled with its optimizer and losses inside ``strategy``'s scope,
    and the architecture's config; ``run`` may be config.json's layout as a dict."""
    run = RunConfig.of(run)
    architecture = ARCHITECTURES[run.arch]
    model_config = architecture.config_from_dict(run.model)
    training = run.training
    keras.utils.set_random_seed(training["seed"])  # the same initial weights for the same seed
    with strategy_scope(strategy):
        model = build_in_precision(architecture.build, model_config, training.get("precision", "float32"))
        if training.get("init_from"):
            print(f"Starting from {RunDirectory(training['init_from']).load_weights(model)}")
        losses = compile_losses(architecture.losses(model_config), training.get("loss", "mse"),
                                training.get("band_limit_hz"), run.model["sample_rate"])
        model.compile(optimizer=make_optimizer(training), loss=losses)
    return model, model_config


LEARNING_RATE_SCHEDULES = ("constant", "cosine")


def make_optimizer(training: dict) -> keras.optimizers.Optimizer:
    """Adam; its learning rate constant, or along a half cosine from ``learning_rate`` to zero
    over the run's ``steps`` (``learning_rate_schedule``), and multiplied by
    ``learning_rate_decay`` after every validation interval (UMT decays it per epoch);
    gradients clipped to norm ``clip_norm`` if given, and an exponential moving average of
    the weights kept with ``ema_momentum`` if given."""
    learning_rate = training["learning_rate"]
    decay = training.get("learning_rate_decay", 1.0)
    schedule = training.get("learning_rate_schedule", "constant")
    if schedule not in LEARNING_RATE_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; known: {LEARNING_RATE_SCHEDULES}")
    if schedule == "cosine" and decay != 1.0:
        raise ValueError("a cosine schedule and learning_rate_decay do not combine; choose one")
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=training["steps"])
    elif decay != 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=training["validate_every"], decay_rate=decay, staircase=True)
    momentum = training.get("ema_momentum")
    return keras.optimizers.Adam(learning_rate, clipnorm=training.get("clip_norm"), use_ema=momentum is not None,
                                 ema_momentum=momentum or 0.99)


def make_callbacks(run_dir: Path, output_dir: Path, run: RunConfig, excerpts, crop: CropSpec, sample_rate: int):
    """``output_dir`` is where this process writes: the run directory on the chief,
    a scratch folder on the other workers (they still restore from the run's backup).
    ``excerpts``: the validation excerpts (``fixed_excerpts``) and what they measure
    (``describe_validation``): ``(mixes, targets, description)``."""
    training = run.training
    outputs = RunDirectory(output_dir)
    outputs.checkpoints.mkdir(parents=True, exist_ok=True)
    architecture = ARCHITECTURES[run.arch]
    monitor = architecture.checkpoint_metric(architecture.config_from_dict(run.model))
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
    # --keep-checkpoints: the raw weights at each validation, saved before the EMA swap.
    snapshots = [KeepSnapshots(outputs, training["keep_checkpoints"])] if training.get("keep_checkpoints") else []
    return [
        ResumableBackup(outputs.backup, best, early_stopping, restore_dir=RunDirectory(run_dir).backup),
        *snapshots,
        *ema,
        *validation_examples(run, outputs.logs, excerpts, crop, sample_rate),
        *tensorboard,
        keras.callbacks.CSVLogger(str(outputs.logs / "metrics.csv"), append=True),
        best,
        keras.callbacks.ModelCheckpoint(str(outputs.last_checkpoint)),
        early_stopping,
        StopAtStep(training["steps"]),
    ]


def validation_examples(run: RunConfig, log_dir: Path, excerpts, crop: CropSpec, sample_rate: int) -> list:
    """The ValidationExamples callback, separating as the architecture does; none for a
    model that separates by autoregressive generation (TensorFlow code) on another backend."""
    architecture = ARCHITECTURES[run.arch]
    config = architecture.config_from_dict(run.model)
    if architecture.generator(config) is None:
        def separate(model, mix):
            # Under a distribution strategy every replica takes a share of each batch: an
            # empty share fails (1 excerpt on 2 workers), so the excerpts are padded to a
            # multiple of the replicas with silence, whose outputs are dropped.
            strategy = getattr(model, "distribute_strategy", None)
            replicas = strategy.num_replicas_in_sync if strategy is not None else 1
            padded = np.pad(mix, [(0, -len(mix) % replicas), (0, 0), (0, 0)])
            outputs = model.predict(padded, batch_size=4 * replicas, verbose=0)
            return architecture.inference_head(keras.tree.map_structure(lambda output: output[:len(mix)], outputs))
    elif USES_TF_DATA:
        from runtime.separator import keras_separator

        separators = {}  # one per model (fit's model throughout): its graph is traced once

        def separate(model, mix):
            if model not in separators:
                separators[model] = keras_separator(model, run.arch, config, source="validation")
            return separators[model].forward(mix)
    else:
        print(f"No validation SDR: {run.arch} separates by generation, which runs on TensorFlow")
        return []
    mix, targets, description = excerpts
    return [ValidationExamples(log_dir, mix, targets, crop, sample_rate, separate, description=description)]


def train(run_dir: Path, run: RunConfig, strategy=None):
    """Trains the run in ``run_dir`` (resumed from its backup, if any) up to its steps under
    ``strategy`` (default: ``choose_strategy()``); returns the model and the fit history
    (None when the run had already trained all its steps). A data problem is a DatasetError."""
    run = RunConfig.of(run)
    strategy = strategy or choose_strategy()
    role = cluster_role(strategy)
    print(f"Training {run.arch} ({run.config_name}) on {describe(strategy)}")
    model, model_config = build_model(run, strategy)
    fix_keras_for_multi_worker(model, strategy)
    architecture = ARCHITECTURES[run.arch]
    crop = CropSpec(*architecture.input_length_for(model_config, model_config.num_frames),
                    shift=architecture.output_shift(model_config))
    training = run.training
    progress = backup_progress(RunDirectory(run_dir).backup)
    if progress["step"] >= training["steps"]:
        print(f"{run_dir} has already trained {progress['step']} of {training['steps']} steps; "
              f"give --steps to train longer")
        return model, None
    tracks = check_data(run, model_config.sample_rate)
    train_data, valid_data = build_datasets(run, tracks, model_config, crop, strategy, progress["epoch"])
    excerpts = fixed_excerpts(tracks["valid"], crop, model_config.sample_rate, model_config.channels,
                              training["validation_excerpts"])
    excerpts = (*excerpts, describe_validation(run, tracks["valid"], training["validation_excerpts"],
                                               crop.output_length / model_config.sample_rate))
    print(f"{model.count_params():,} parameters; crops of {crop.input_length} samples in, "
          f"{crop.output_length} out at {model_config.sample_rate} Hz")
    output_dir = run_dir if role.is_chief else Path(tempfile.mkdtemp(prefix=f"worker{role.index}-"))
    if role.is_chief:
        print(f"Run directory: {run_dir}\nWatch it with: tensorboard --logdir {RunDirectory(run_dir).logs}")
        print(excerpts[-1])
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
