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
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data_pipeline.datasets import DATASETS, DatasetError  # noqa: E402
from models.registry import ARCHITECTURES, PRECISIONS  # noqa: E402
from runtime.run_directory import RunConfig  # noqa: E402
from training import run_config  # noqa: E402
from training.losses import LOSSES  # noqa: E402
from training.run_config import DEFAULT_SYNTHETIC_SONGS, RunConfigError  # noqa: E402
from training.session import LEARNING_RATE_SCHEDULES, train  # noqa: E402


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


def model_setting(text: str) -> tuple[str, str]:
    """argparse type of --model-set: FIELD=VALUE (the value is parsed against the field's type later)."""
    field, equals, value = text.partition("=")
    if not equals or not field.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE")
    return field.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="model architecture (default: waveunet)")
    parser.add_argument("--config", help="named model configuration (Wave-U-Net: small, lowlatency, M1..M5, M5-HighSR; "
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
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate (small: 1e-3; M1..M5: 1e-4 as f90)")
    parser.add_argument("--lr-schedule", dest="learning_rate_schedule", choices=LEARNING_RATE_SCHEDULES,
                        help="constant: the learning rate throughout; cosine: from the learning rate down to "
                             "zero along a half cosine over the run's --steps (small: cosine; others: constant)")
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
    parser.add_argument("--keep-checkpoints", type=int, metavar="K",
                        help="also keep the weights of the last K validations as checkpoints/step-N.weights.h5 "
                             "(the raw weights, also with --ema), for averaging them with python -m "
                             "training.average RUN --last K --out RUN_AVG (default: 0, none)")
    parser.add_argument("--loss", choices=LOSSES, help="Wave-U-Net's loss per source: mse (mean squared error, "
                                                       "as f90) or l1 (mean absolute error) (default: mse)")
    parser.add_argument("--band-limit", dest="band_limit_hz", type=float, metavar="HZ",
                        help="score a training example whose target is empty above HZ only below HZ, so songs "
                             "recorded at a lower rate (MIR-1K: 16 kHz, use 8000) do not teach that nothing up "
                             "there is voice (Wave-U-Net; default: off)")
    parser.add_argument("--cross-dataset-probability", type=float, metavar="P",
                        help="with several datasets: the chance that a training example's accompaniment is a "
                             "random crop of a song of another dataset of the mix (drawn by --mix-weights "
                             "among the others), e.g. MIR-1K vocals over a MUSDB18 accompaniment; otherwise "
                             "the cross-song remix inside its own dataset applies as usual (default: 0, off)")
    parser.add_argument("--model-set", dest="model_settings", action="append", type=model_setting,
                        metavar="FIELD=VALUE", help="change one field of the named --config before training, "
                        "e.g. --model-set num_initial_filters=24 --model-set sample_rate=16000 (fields: "
                        "config.json's \"model\"); not with --init-from or --resume")
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
    if args.keep_checkpoints is not None and args.keep_checkpoints < 0:
        parser.error("--keep-checkpoints must not be negative")
    if args.patience is not None and args.patience < 0:
        parser.error("--patience must not be negative")
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error("--learning-rate must be positive")
    if args.pitch_shift_semitones is not None and not 0 <= args.pitch_shift_semitones <= 12:
        parser.error("--pitch-shift must lie in [0, 12] semitones")
    if args.cross_dataset_probability is not None and not 0 <= args.cross_dataset_probability <= 1:
        parser.error("--cross-dataset-probability must lie in [0, 1]")
    if args.ema_momentum is not None and not 0 < args.ema_momentum < 1:
        parser.error("--ema must lie strictly between 0 and 1")
    return args


def resolve_run(args) -> tuple[Path, RunConfig]:
    """The run directory and its configuration (training.run_config): read back on --resume,
    else built from flags; flags that give no run exit with the reason."""
    try:
        return run_config.resolve_run(args)
    except RunConfigError as error:
        sys.exit(f"error: {error}")


def main(argv=None):
    args = parse_args(argv)
    run_dir, run = resolve_run(args)
    try:
        train(run_dir, run)
    except DatasetError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
