"""A run's configuration (``runtime.run_directory.RunConfig``) from train.py's flags: read
back from its run directory on --resume (only --steps may change), else built from the
architecture's named config and training preset (or another run's model, --init-from)
and the flags, and written to the run directory."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from data_pipeline.datasets import SYNTHETIC_SPLIT_SONGS
from models.registry import ARCHITECTURES
from runtime.run_directory import RunConfig, RunDirectory
from training.data import dataset_parts
from training.losses import compile_losses

# The base of every run's training settings: the architecture's preset for the named config
# (models.registry) replaces some of them, flags override both. validation_excerpts: windows
# of the model's output length spread over the validation songs for val_sdr_*, 2 for each of
# the 40 synthetic ones (the same weights read -0.08 dB on 8 windows of 8 songs, +1.27 on these).
TRAINING_DEFAULTS = {"steps": 100_000, "batch_size": 16, "learning_rate": 1e-4, "validate_every": 500,
                     "patience": 20, "seed": 0, "crops_per_track": 8, "cache": True, "validation_excerpts": 80,
                     "precision": "float32", "learning_rate_decay": 1.0, "clip_norm": None,
                     "pitch_shift_semitones": 0.0, "ema_momentum": None, "loss": "mse", "band_limit_hz": None,
                     "learning_rate_schedule": "constant", "cross_dataset_probability": 0.0,
                     "keep_checkpoints": 0}
TRAINING_FLAGS = ("steps", "batch_size", "learning_rate", "validate_every", "patience", "seed", "precision",
                  "pitch_shift_semitones", "ema_momentum", "loss", "band_limit_hz", "learning_rate_schedule",
                  "cross_dataset_probability", "keep_checkpoints")
DEFAULT_SYNTHETIC_SONGS = SYNTHETIC_SPLIT_SONGS["train"]
# train.py's flags whose name is not their setting's (the rest: --setting-name).
FLAG_NAMES = {"pitch_shift_semitones": "--pitch-shift", "ema_momentum": "--ema", "band_limit_hz": "--band-limit",
              "learning_rate_schedule": "--lr-schedule"}


class RunConfigError(Exception):
    """Flags that give no run to train: unknown, contradictory, or against the resumed run's
    settings. Nothing has been written."""


def _resume_conflicts(flags, run: RunConfig) -> list[str]:
    """Flags given with --resume that contradict the run's saved settings."""
    data, training = run.data, run.training
    saved = {"arch": run.arch, "config": run.config_name, "dataset": data["dataset"],
             "data_root": [root for _, root in dataset_parts(data) if root is not None] or None,
             "mix_weights": data.get("mix_weights"),
             "select_on": "+".join(data["select_on"]) if data.get("select_on") else None,
             "cache_dir": data["cache_dir"],
             "synthetic_songs": data["synthetic_songs"]["train"], "init_from": training.get("init_from"),
             **{key: training.get(key, TRAINING_DEFAULTS[key]) for key in TRAINING_FLAGS if key != "steps"}}
    conflicts = [f"{FLAG_NAMES.get(key, '--' + key.replace('_', '-'))} {getattr(flags, key)} (the run has {value})"
                 for key, value in saved.items() if getattr(flags, key) is not None and getattr(flags, key) != value]
    if flags.variant is not None:
        conflicts.append(f"--variant {flags.variant} (the run's config is {run.config_name})")
    if getattr(flags, "model_settings", None):
        conflicts.append("--model-set (the run's model is in its config.json)")
    if flags.no_cache and training["cache"]:
        conflicts.append("--no-cache (the run caches songs)")
    if flags.run_dir is not None and Path(flags.run_dir).resolve() != Path(flags.resume).resolve():
        conflicts.append(f"--run-dir {flags.run_dir} (resuming writes to {flags.resume})")
    return conflicts


def _parse_setting(text: str, current):
    """``text`` read as the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    if isinstance(current, (int, float)):
        return type(current)(text)  # int("1.5") fails: an int field takes whole numbers only
    if isinstance(current, str):
        return text
    return json.loads(text)  # None or a list: a JSON value


def apply_model_settings(architecture, model: dict, settings) -> dict:
    """``model`` (a config's dict) with each (field, text) of ``settings`` applied, checked
    by building the architecture's config from it. Raises ``RunConfigError``."""
    model = dict(model)
    for field, text in settings:
        if field not in model:
            raise RunConfigError(f"--model-set {field}: no such field; the config has {', '.join(model)}")
        try:
            model[field] = _parse_setting(text, model[field])
        except ValueError as error:
            raise RunConfigError(f"--model-set {field}={text}: {error} (now {model[field]!r})") from None
    try:
        architecture.config_from_dict(model)
    except (ValueError, TypeError) as error:
        raise RunConfigError(f"--model-set: {error}") from None
    return model


def resolve_run(flags) -> tuple[Path, RunConfig]:
    """The run directory and its configuration: read back on --resume (a new --steps is
    applied and recorded), else built from the flags and written to the run directory.

    ``flags``: train.py's parsed command line (an ``argparse.Namespace``: every flag's
    ``dest`` as an attribute, None where not given). Raises ``RunConfigError``."""
    if flags.resume:
        run_dir = Path(flags.resume)
        try:
            run = RunDirectory(run_dir).read_config()
        except FileNotFoundError as error:
            raise RunConfigError(str(error)) from None
        conflicts = _resume_conflicts(flags, run)
        if conflicts:
            raise RunConfigError(f"--resume {run_dir} keeps the settings in its config.json; only --steps may "
                                 f"change. Conflicting: {'; '.join(conflicts)}")
        if flags.steps and flags.steps != run.training["steps"]:  # how long it goes on: applied and recorded
            run = dataclasses.replace(run, training={**run.training, "steps": flags.steps})
            RunDirectory(run_dir).write_config(run)
        return run_dir, run

    arch = flags.arch or "waveunet"
    architecture = ARCHITECTURES[arch]
    if flags.variant is not None and flags.variant not in architecture.variants:
        raise RunConfigError(f"--variant applies to {', '.join(n for n, a in ARCHITECTURES.items() if a.variants)}, "
                             f"not {arch}")
    config_name = architecture.config_name(flags.config or architecture.default_config, flags.variant)
    if flags.init_from:
        try:
            source = RunDirectory(flags.init_from).read_config()
        except FileNotFoundError as error:
            raise RunConfigError(f"--init-from {error}") from None
        arch, config_name, model = source.arch, source.config_name, source.model
        if getattr(flags, "model_settings", None):
            raise RunConfigError("--model-set changes the model's shape, which --init-from takes from "
                                 f"{flags.init_from}; leave one out")
    elif config_name not in architecture.configs:
        raise RunConfigError(f"unknown --config {config_name!r} for {arch}; choose one of "
                             f"{', '.join(architecture.configs)}")
    else:
        model = apply_model_settings(architecture, architecture.configs[config_name].to_dict(),
                                     getattr(flags, "model_settings", None) or ())
    presets = ARCHITECTURES[arch].training_presets  # --init-from may have changed the architecture
    training = {**TRAINING_DEFAULTS, **presets.get(config_name, {}), "init_from": flags.init_from}
    for key in TRAINING_FLAGS:
        if getattr(flags, key) is not None:
            training[key] = getattr(flags, key)
    training["cache"] = not flags.no_cache
    data = {"dataset": flags.dataset or "synthetic", "data_root": flags.data_root, "mix_weights": flags.mix_weights,
            "select_on": flags.select_on.split("+") if flags.select_on else None,
            "cache_dir": flags.cache_dir,
            "synthetic_songs": {**SYNTHETIC_SPLIT_SONGS, "train": flags.synthetic_songs or DEFAULT_SYNTHETIC_SONGS}}
    unknown = set(data["select_on"] or ()) - set(data["dataset"].split("+"))
    if unknown:
        raise RunConfigError(f"--select-on {flags.select_on}: {', '.join(sorted(unknown))} is not in --dataset "
                             f"{data['dataset']}")
    try:  # the losses' own checks, before a run directory is written
        architecture = ARCHITECTURES[arch]
        compile_losses(architecture.losses(architecture.config_from_dict(model)), training["loss"],
                       training["band_limit_hz"], model["sample_rate"])
    except ValueError as error:
        raise RunConfigError(str(error)) from None
    if training["cross_dataset_probability"] > 0 and len(data["dataset"].split("+")) < 2:
        raise RunConfigError(f"--cross-dataset-probability {training['cross_dataset_probability']} remixes across "
                             f"datasets: name several with --dataset (e.g. musdb+folder), not {data['dataset']}")
    if training["learning_rate_schedule"] == "cosine" and training["learning_rate_decay"] != 1.0:
        raise RunConfigError(f"--lr-schedule cosine replaces {config_name}'s learning-rate decay "
                             f"({training['learning_rate_decay']} per validation), which does not combine with it")
    run = RunConfig(arch=arch, config_name=config_name, model=model, data=data, training=training)
    run_dir = Path(flags.run_dir or f"runs/{arch}-{config_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    RunDirectory(run_dir).write_config(run)
    return run_dir, run
