"""Augmentation options for both input pipelines, and the augmentations applied
inside tf.data, each driven by a stateless seed so a seeded run repeats exactly,
whatever the parallelism. The numpy loader (``numpy_loader.py``) applies the same
options with numpy; ``shift_segment_numpy`` serves both.

Sources follow the seed facts: A = mix, B = vocals, C = accompaniment, and the
remix draws newA = B*f0 + C*f1 with f0, f1 ~ U[0.7, 1.0] and scales the labels
the same way, so mix = vocals + accompaniment still holds exactly. The
cross-song remix (drawing C from another song, done while cropping, in
``pipeline.make_dataset`` and ``numpy_loader.TrainingLoader``) makes mixes no
recording holds, multiplying the mixes a small dataset offers. With several
datasets mixed into the batches (``pipeline.make_mixed_dataset``,
``numpy_loader.MixedTrainingLoader``) the cross-dataset remix goes further: an
example's accompaniment may be a crop of a song of *another* dataset (e.g.
MIR-1K vocals over a MUSDB18 accompaniment), so vocals and accompaniment come
from different songs and datasets; each example's origin (dataset and song of
each source) can be read back for checking (``with_origin``).

TensorFlow is imported inside the tf.data functions only, so that hosts without
it (``KERAS_BACKEND=jax``) can import the options and the numpy function.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentOptions:
    gain_range: tuple[float, float] | None = (0.7, 1.0)  # None disables the remix
    # Chance that an example's accompaniment is a random crop of another song; 0 disables.
    cross_song_probability: float = 0.5
    # With several datasets: chance that an example's accompaniment is a random crop of a song of
    # another dataset (the dataset drawn by the mix weights among the others), decided before and
    # instead of the cross-song remix; 0 disables (the default).
    cross_dataset_probability: float = 0.0
    swap_channels: bool = True
    # UMT's augmentation: shift a random segment in pitch (of both sources together, so the mix
    # stays their sum; UMT, an autoencoder, shifts its input only).
    pitch_shift_semitones: float = 0.0  # 0 disables; UMT uses 0.5
    pitch_shift_seconds: tuple[float, float] = (0.25, 0.5)

    def __post_init__(self):
        if not 0 <= self.cross_song_probability <= 1:
            raise ValueError(f"cross_song_probability must lie in [0, 1], not {self.cross_song_probability}")
        if not 0 <= self.cross_dataset_probability <= 1:
            raise ValueError(f"cross_dataset_probability must lie in [0, 1], not {self.cross_dataset_probability}")


def remix(vocals, accompaniment, seed, gain_range=(0.7, 1.0)):
    """Scales each source by its own random gain (the labels are these scaled sources)."""
    import tensorflow as tf

    gains = tf.random.stateless_uniform([2], seed, minval=gain_range[0], maxval=gain_range[1])
    return vocals * gains[0], accompaniment * gains[1]


def swap_channels(seed, *stereo_signals):
    """Swaps left and right of every signal together, with probability 1/2."""
    import tensorflow as tf

    swap = tf.random.stateless_uniform([], seed) < 0.5
    return tuple(tf.cond(swap, lambda s=s: tf.reverse(s, axis=[-1]), lambda s=s: s) for s in stereo_signals)


def shift_segment_numpy(audio, sample_rate, start, length, semitones):
    """``audio`` (float32 ``[time, channels]``) with ``length`` samples from ``start``
    shifted by ``semitones`` (librosa)."""
    import librosa  # only the pitch-shift augmentation needs it

    shifted = audio.copy()
    segment = audio[start:start + length].T
    window = min(2048, 2 ** int(np.log2(length)))  # short segments at low rates need a shorter STFT
    shifted[start:start + length] = librosa.effects.pitch_shift(
        segment, sr=int(sample_rate), n_steps=float(semitones), res_type="soxr_hq", n_fft=window).T
    return shifted


def pitch_shift_segment(audio, seed, sample_rate: int, max_semitones: float, seconds=(0.25, 0.5)):
    """Pitch-shifts one random segment (``seconds`` long, clipped to the audio)
    by a random amount in [-max_semitones, max_semitones] (librosa, in Python)."""
    import tensorflow as tf

    length_seed, start_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    total = tf.shape(audio)[0]
    length = tf.minimum(total, tf.cast(
        tf.random.stateless_uniform([], length_seed, seconds[0], seconds[1]) * sample_rate, tf.int32))
    start = tf.random.stateless_uniform([], start_seed, 0, total - length + 1, dtype=tf.int32)
    semitones = tf.random.stateless_uniform([], shift_seed, -max_semitones, max_semitones)
    shifted = tf.numpy_function(shift_segment_numpy, [audio, sample_rate, start, length, semitones],
                                tf.float32, stateful=False)
    return tf.ensure_shape(shifted, audio.shape)

