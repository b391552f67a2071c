"""Speed of UMT's autoregressive decoder generators (``models.generation``), measured side
by side in one run.

    python -m bench.generation          # about 2 minutes on 2 CPU cores (see below)
    python -m bench.generation --jit    # also each incremental rate under XLA

Random weights (speed does not depend on them), random pooled latent frames
(``tf.random.normal``), seed 0, sampling at temperature 1 as separation does. Every
generator is wrapped in ``tf.function`` and called once before it is timed, so tracing
and compilation are excluded; a rate is the best of --repeats timed calls.

1. Decoder depth. For the paper-full widths (residual 128, skip 128, latent 64, causal
   kernel 2) at --depths decoder_blocks x decoder_layers (default 1x10, 2x10, 4x10),
   batch 1, samples/s of:
     - incremental: ``generate_incremental`` (per-layer cached queues), --steps steps;
     - naive from silence: ``generate_naive`` (the Keras decoder over its field at every
       step) for its first --naive-steps steps. Its window starts at one sample and
       grows by one per step up to the decoder's field (1025, 2048 and 4094 samples
       at 1, 2 and 4 blocks of 10), so these first steps are its cheapest;
     - naive full field: ``generate_naive`` entered once its window is the whole field
       (``first_step=field - 1``), over silent history: what every
       naive step costs after the first ``field`` samples, i.e. for almost all of a 1 s
       segment (16000 samples) and in the limit of long generations.
   Then incremental / naive as ratios (the full-field one is the steady state; it
   grows with depth, since the naive step costs ~ field x layers and the incremental
   one ~ layers), and whether the incremental generator's first --naive-steps samples
   are the naive generator's (same frames, same seed: they must be).
2. x realtime at 16 kHz of the incremental generator for the paper-full (4x10) and
   small-full (1x10) configs, generating a --clip-seconds mono clip as segments of
   --segment-seconds generated side by side (one batch: 30 x 1 s by default, as
   separation cuts chunk windows, see ``generation.separate_windows``), and batch 1
   (one long sequence). The incremental generator's cost per step does not depend on
   the step, so a row times at most --segment-steps steps (batch 1: --steps) and
   extrapolates to the whole clip; it says so (--segment-steps 0 times whole segments:
   on the paper-full 30 x 1 s batch that measured 2731 samples/s where 2000 timed
   steps gave 2470, so the extrapolation errs, if anything, slow). x realtime = audio
   seconds per wall second = samples/s / 16000. The encoder is not included.
3. --jit: each incremental rate also under ``tf.function(jit_compile=True)`` (XLA,
   compiled for the timed length during the warm-up call), beside the plain graph.
   It first prints whether ``stateless_uniform`` (the Gumbel noise) draws the same
   numbers under XLA: on TF 2.16's CPU build it does not (the algorithm is picked per
   device), so XLA samples other classes from the same logits (at temperature 0 they
   agree); if it does, any row whose XLA samples differ is noted. If XLA fails on this
   build, it says why and goes on.

Run time, on this project's 2-core machine shared with a low-priority training run:
about 2 minutes by default, about 4 with --jit, about 4.5 with --segment-steps 0. Exits 1
only if the two generators' samples differ (a correctness failure, not a time).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import generation  # noqa: E402
from models.umt import CONFIGS, UMTConfig, build_umt, decoder_field, pool_length  # noqa: E402

DEPTH_CONFIG = "paper-full"  # its widths, at each --depths
REALTIME_CONFIGS = ("paper-full", "small-full")
SEED = 0
TEMPERATURE = 1.0
XLA_DRAWS_LIKE_GRAPH = True  # set by main under --jit


def parse_depths(text: str) -> list[tuple[int, int]]:
    """"1x10,2x10" -> [(1, 10), (2, 10)] (decoder_blocks, decoder_layers)."""
    depths = []
    for item in text.split(","):
        blocks, _, layers = item.strip().lower().partition("x")
        if not blocks.isdigit() or not layers.isdigit() or int(blocks) < 1 or int(layers) < 1:
            raise argparse.ArgumentTypeError(f"depth {item!r} is not BLOCKSxLAYERS, e.g. 4x10")
        depths.append((int(blocks), int(layers)))
    return depths


def random_model(config: UMTConfig) -> keras.Model:
    keras.utils.set_random_seed(SEED)
    return build_umt(config)


def random_frames(config: UMTConfig, batch: int, samples: int):
    """Pooled latent frames ``[batch, frames, latent]`` covering ``samples`` samples."""
    keras.utils.set_random_seed(SEED)
    return tf.random.normal([batch, -(-samples // pool_length(config)), config.latent_channels])


def timed(function, frames, length: int, repeats: int, warmup_length: int) -> tuple[float, np.ndarray]:
    """(best seconds of ``repeats`` calls for ``length`` samples, the classes), after a warm-up call."""
    function(frames, tf.constant(warmup_length))
    best, classes = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        classes = function(frames, tf.constant(length)).numpy()
        best = min(best, time.perf_counter() - start)
    return best, classes


def incremental_rate(weights, config: UMTConfig, frames, length: int, repeats: int, jit: bool):
    """(samples/s, classes) of ``generate_incremental`` over ``frames``' batch for ``length`` steps.
    XLA compiles for the length it is given (it sizes the loop's buffers), so its warm-up uses it."""
    function = tf.function(lambda f, n: generation.generate_incremental(
        weights, f, pool_length(config), n, SEED, TEMPERATURE), jit_compile=jit)
    seconds, classes = timed(function, frames, length, repeats, warmup_length=length if jit else 2)
    return int(frames.shape[0]) * length / seconds, classes


def xla_rate(weights, config: UMTConfig, frames, length: int, repeats: int, graph_classes: np.ndarray):
    """(XLA samples/s or None, a note for after the table or None)."""
    try:
        rate, classes = incremental_rate(weights, config, frames, length, repeats, jit=True)
    except Exception as error:  # an XLA build or kernel gap: report and go on
        lines = str(error).strip().splitlines()
        return None, f"XLA failed: {type(error).__name__}: {lines[0][:160] if lines else ''}"
    if np.array_equal(classes, graph_classes) or not XLA_DRAWS_LIKE_GRAPH:  # other noise: other samples, expected
        return rate, None
    return rate, f"XLA's samples differ from the graph's in {np.mean(classes != graph_classes):.0%} of steps"


def xla_draws_like_graph() -> bool:
    """Whether ``tf.random.stateless_uniform`` (the generators' Gumbel noise) draws the same
    numbers under XLA as in a plain graph: it picks its algorithm per device."""
    def draw():
        return tf.random.stateless_uniform([8], tf.constant([SEED, 1], tf.int64))

    return np.array_equal(tf.function(draw)().numpy(), tf.function(draw, jit_compile=True)().numpy())


def depth_rows(args) -> bool:
    """Part 1; True if the generators' samples agree at every depth."""
    base = CONFIGS[DEPTH_CONFIG]
    print(f"1. Decoder depth: {DEPTH_CONFIG} widths (residual {base.decoder_channels}, skip {base.skip_channels}, "
          f"latent {base.latent_channels}, causal kernel {base.causal_kernel_size}), random weights, batch 1, "
          f"seed {SEED}; incremental over {args.steps} steps, naive over {args.naive_steps} (best of {args.repeats})")
    jit_header = f" {'XLA':>9s} {'XLA/graph':>9s}" if args.jit else ""
    print(f"{'depth':6s} {'field':>6s} {'incremental':>11s}{jit_header} {'naive from':>10s} {'naive full':>10s} "
          f"{'incr/naive':>10s} {'incr/naive':>11s}  {'same samples':>12s}")
    print(f"{'':6s} {'':>6s} {'samples/s':>11s}{' ' * len(jit_header)} {'silence':>10s} {'field':>10s} "
          f"{'full field':>10s} {'from silence':>11s}  {'on naive steps':>12s}")
    agree, ratios, notes = True, [], []
    for blocks, layers in args.depths:
        config = dataclasses.replace(base, decoder_blocks=blocks, decoder_layers=layers)
        field = decoder_field(config)
        model = random_model(config)
        frames = random_frames(config, 1, max(args.steps, args.naive_steps))
        weights = generation.DecoderWeights(model, config)
        incremental, classes = incremental_rate(weights, config, frames, args.steps, args.repeats, jit=False)
        jit_cells = ""
        if args.jit:
            rate, note = xla_rate(weights, config, frames, args.steps, args.repeats, classes)
            jit_cells = f" {rate:9.0f} {rate / incremental:8.2f}x" if rate else f" {'-':>9s} {'-':>9s}"
            notes += [f"  {blocks}x{layers}: {note}"] if note else []
        decoder = generation.decoder_model(model)
        naive = tf.function(lambda f, n: generation.generate_naive(decoder, config, f, n, SEED, TEMPERATURE))
        seconds, naive_classes = timed(naive, frames, args.naive_steps, args.repeats, warmup_length=2)
        from_silence = args.naive_steps / seconds
        full = tf.function(lambda f, n: generation.generate_naive(decoder, config, f, n, SEED, TEMPERATURE,
                                                                  first_step=field - 1))
        full_frames = random_frames(config, 1, field - 1 + args.naive_steps)
        seconds, _ = timed(full, full_frames, args.naive_steps, args.repeats, warmup_length=1)
        full_field = args.naive_steps / seconds
        same = np.array_equal(classes[:, :args.naive_steps], naive_classes)
        agree &= same
        ratios.append(incremental / full_field)
        print(f"{blocks}x{layers:<4d} {field:6d} {incremental:11.0f}{jit_cells} {from_silence:10.1f} "
              f"{full_field:10.1f} {incremental / full_field:9.1f}x {incremental / from_silence:10.1f}x  "
              f"{'yes' if same else 'NO':>12s}")
    grows = all(later > earlier for earlier, later in zip(ratios, ratios[1:]))
    print(f"incremental / naive (full field) grows with depth: {'yes' if grows else 'NO'} "
          f"({', '.join(f'{ratio:.1f}x' for ratio in ratios)}); issue target at 4x10: >= 100x")
    for note in notes:
        print(note)
    return agree


def realtime_rows(args) -> None:
    """Part 2: x realtime of the incremental generator, batched over segments and at batch 1."""
    print(f"2. Incremental generator, x realtime: a {args.clip_seconds:g} s mono clip as segments of "
          f"{args.segment_seconds:g} s generated side by side (one batch), and batch 1 (one long sequence); "
          f"random weights and frames, best of {args.repeats}")
    jit_header = f" {'XLA x rt':>9s} {'XLA/graph':>9s}" if args.jit else ""
    print(f"{'config':11s} {'decoder':7s} {'batch':>5s} {'steps':>6s} {'samples/s':>10s} {'x realtime':>10s}"
          f"{jit_header}  timed")
    notes = []
    for name in args.realtime_configs:
        config = CONFIGS[name]
        pool = pool_length(config)
        segment_frames = max(1, round(args.segment_seconds * config.sample_rate / pool))
        segment = segment_frames * pool
        clip = round(args.clip_seconds * config.sample_rate)
        segments = -(-clip // segment)
        model = random_model(config)
        weights = generation.DecoderWeights(model, config)
        for batch, steps, measured in ((segments, segment, min(segment, args.segment_steps or segment)),
                                       (1, clip, min(clip, args.steps))):
            frames = random_frames(config, batch, measured)
            rate, classes = incremental_rate(weights, config, frames, measured, args.repeats, jit=False)
            realtime = rate / config.sample_rate
            jit_cells = ""
            if args.jit:
                xla, note = xla_rate(weights, config, frames, measured, args.repeats, classes)
                jit_cells = (f" {xla / config.sample_rate:8.3f}x {xla / rate:8.2f}x" if xla
                             else f" {'-':>9s} {'-':>9s}")
                notes += [f"  {name} batch {batch}: {note}"] if note else []
            if measured == steps:
                how = f"all {steps} steps ({batch * steps / rate:.1f} s)"
            else:
                how = f"{measured} of {steps} steps, rate extrapolated ({batch * steps / rate:.0f} s for the clip)"
            print(f"{name:11s} {config.decoder_blocks}x{config.decoder_layers:<5d} {batch:5d} {steps:6d} {rate:10.0f} "
                  f"{realtime:9.3f}x{jit_cells}  {how}")
    for note in notes:
        print(note)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=parse_depths, default=parse_depths("1x10,2x10,4x10"),
                        help="decoder BLOCKSxLAYERS for part 1, comma-separated (default: 1x10,2x10,4x10)")
    parser.add_argument("--steps", type=int, default=2000,
                        help="incremental steps timed at batch 1 (part 1 and part 2's batch-1 rows; default: 2000)")
    parser.add_argument("--naive-steps", type=int, default=32,
                        help="naive steps timed, from silence and at full field (default: 32)")
    parser.add_argument("--realtime-configs", nargs="+", choices=sorted(CONFIGS), default=list(REALTIME_CONFIGS),
                        metavar="CONFIG", help="full-variant configs for part 2 (default: paper-full small-full)")
    parser.add_argument("--clip-seconds", type=float, default=30.0, help="clip of part 2 (default: 30)")
    parser.add_argument("--segment-seconds", type=float, default=1.0,
                        help="segments generated side by side in part 2 (default: 1.0, separation's)")
    parser.add_argument("--segment-steps", type=int, default=4000,
                        help="steps of each segment timed in part 2, the rest extrapolated; 0: all (default: 4000)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per rate; the best counts (default: 1)")
    parser.add_argument("--jit", action="store_true", help="also time the incremental generator under XLA")
    parser.add_argument("--skip-realtime", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    if min(args.steps, args.naive_steps, args.repeats) < 1 or args.segment_steps < 0:
        parser.error("--steps, --naive-steps and --repeats must be positive, --segment-steps not negative")
    if args.naive_steps > args.steps:
        parser.error("--naive-steps must not exceed --steps (the incremental samples they are compared with)")
    if any(CONFIGS[name].variant != "full" for name in args.realtime_configs):
        parser.error("--realtime-configs must be full-variant configs")
    tf.get_logger().setLevel("ERROR")  # each tf.function here traces once; TF counts them as "retracing"

    start = time.perf_counter()
    print(f"Machine: {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    if args.jit:
        global XLA_DRAWS_LIKE_GRAPH
        same = XLA_DRAWS_LIKE_GRAPH = xla_draws_like_graph()
        print("XLA: stateless_uniform (the generators' Gumbel noise) draws as in the plain graph: "
              + ("yes" if same else "no (its algorithm is picked per device), so XLA samples other classes; "
                                    "at temperature 0 they agree"))
    agree = depth_rows(args)
    if not args.skip_realtime:
        realtime_rows(args)
    print(f"Total wall time: {time.perf_counter() - start:.0f} s")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
