"""Export a trained model for TensorFlow Serving (and ONNX Runtime, and TF-TRT on GPUs).

    python export.py --model runs/my-run --out export/wavesep [--version N] [--onnx] [--trt fp16]

writes ``export/wavesep/<version>/`` in TF Serving's layout (``saved_model.pb``,
``variables/``, ``assets/model.json``); the version is the next integer unless
``--version`` says. The folder is written under a temporary name and renamed into
place, so a server watching ``export/wavesep`` never sees half a version.

Signatures:
  serving_default  waveform float32 [batch, time, channels] at the model's sample rate,
                   any time -> vocals, accompaniment (same shape); framing inside the graph
  separate_audio   audio_bytes: WAV files (16-bit PCM, any rate, mono or stereo)
                   -> vocals_bytes, accompaniment_bytes (WAV at the input's rate)
With --wiener VARIANT (mask, emN, mask+emN; runtime/wiener.py), both run the Wiener
post-filter on the model's outputs at its rate, in TensorFlow ops, and the facts record it
(post_filter): separate.py, evaluate.py and the server's page then run it in their numpy
path too (--wiener off turns it off there).
The model's facts (architecture, config, sample rate, channels, training data,
project version, post-filter) are in assets/model.json and printed by
``saved_model_cli show --all --dir export/wavesep/<version>``.

    python export.py --model runs/my-run --float16-run pretrained/my-model

writes a run directory whose weights are stored in float16 (half the size; loaded
as float32 by every tool) through runtime.float16_run, which writes it only if the
model separates a fixed 4 s test signal with them within 1e-3 (max abs difference)
of its float32 weights, and keeps that figure in the file.

Before the version is renamed into place, the SavedModel is reloaded and checked
against the Keras model on a test signal (and the ONNX file against TensorFlow):
the export fails if they differ by more than 1e-4.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from runtime.chunking import positive_seconds  # noqa: E402
from runtime.export import ONNX_FILE, ExportError, export_run  # noqa: E402
from runtime.float16_run import write_float16_run  # noqa: E402
from runtime.loading import PRETRAINED_MODEL  # noqa: E402
from runtime.wiener import add_wiener_arguments, settings_from_args  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(PRETRAINED_MODEL),
                        help=f"run directory of a trained model (default: the shipped {PRETRAINED_MODEL.name})")
    parser.add_argument("--out", help="model base folder, e.g. export/wavesep; versions go inside")
    parser.add_argument("--float16-run", metavar="DIR",
                        help="instead: write a run directory with float16 weights (e.g. a model to ship)")
    parser.add_argument("--version", type=int, help="version number (default: one more than the highest there)")
    parser.add_argument("--onnx", action="store_true",
                        help=f"also write {ONNX_FILE} (one model call on chunk windows) for ONNX Runtime")
    parser.add_argument("--trt", choices=["fp32", "fp16"],
                        help="convert with TF-TRT for NVIDIA GPUs (needs TensorFlow built with TensorRT)")
    parser.add_argument("--chunk-seconds", type=positive_seconds, default=5.0,
                        help="audio per model window inside the graph (default: 5)")
    add_wiener_arguments(parser, "In serving_default and separate_audio, in TensorFlow ops, and recorded in the "
                                 "facts (assets/model.json post_filter), which separate.py, evaluate.py and the "
                                 "server's page follow with such an export (default: the run's own, config.json's post_filter: "
                                 "mask for the shipped model; off for a run without one).")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.float16_run is None):
        parser.error("give --out (a SavedModel export) or --float16-run (a compact run directory)")
    if args.version is not None and args.version < 1:
        parser.error("--version must be a positive integer")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.float16_run:
            write_float16_run(args.model, args.float16_run)
            return 0
        version_dir = export_run(args.model, args.out, args.version, onnx=args.onnx, trt=args.trt,
                                 chunk_seconds=args.chunk_seconds,
                                 wiener=settings_from_args(args.wiener, args.wiener_fft))
    except (ExportError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Exported {args.model} to {version_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
