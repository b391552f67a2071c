"""The tf.data input pipeline shared by every architecture.

    tracks -> decode (parallel, AUTOTUNE) -> [cache in memory] -> random crops
           -> augment (remix gains, channel swap, optional pitch shift) -> batch -> prefetch

Each element is ``(mix [input_length, C], {"vocals": [output_length, C],
"accompaniment": [output_length, C]})``: the model sees ``input_length``
samples (output plus context) and is scored on the centred ``output_length``.
Tracks are zero-padded by the context on both sides, so every sample of a
song can be a target, as in f90's Wave-U-Net.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from data_pipeline import augment
from data_pipeline.audio import DECODE_PYTHON, audio_info, decode_in_graph, in_graph_decoder, is_stem_file
from data_pipeline.datasets import Track

AUTOTUNE = tf.data.AUTOTUNE
SOURCES = ("vocals", "accompaniment")


@dataclass(frozen=True)
class CropSpec:
    """Model geometry: samples in, samples out; the difference is context, split
    evenly (the extra sample, if odd, goes to the right)."""

    input_length: int
    output_length: int

    def __post_init__(self):
        if not 0 < self.output_length <= self.input_length:
            raise ValueError(f"need 0 < output_length <= input_length, got {self}")

    @property
    def context_left(self) -> int:
        return (self.input_length - self.output_length) // 2

    @property
    def context_right(self) -> int:
        return self.input_length - self.output_length - self.context_left


def _file_table(tracks: list[Track], source: str, sample_rate: int):
    """Ragged (paths, streams, decoders) of one source across all tracks."""
    paths, streams, decoders = [], [], []
    for track in tracks:
        files = getattr(track, source)
        paths.append([f.path for f in files])
        streams.append([-1 if f.stream is None else f.stream for f in files])
        decoders.append([DECODE_PYTHON if is_stem_file(f.path) else in_graph_decoder(audio_info(f.path), sample_rate)
                         for f in files])
    return tf.ragged.constant(paths), tf.ragged.constant(streams, tf.int64), tf.ragged.constant(decoders, tf.int32)


def _decode_source(paths, streams, decoders, sample_rate):
    """Sum of a source's files, cut to the shortest (decoders may differ by a few samples)."""
    total = decode_in_graph(paths[0], streams[0], decoders[0], sample_rate)
    for i in tf.range(1, tf.size(paths)):
        tf.autograph.experimental.set_loop_options(shape_invariants=[(total, tf.TensorShape([None, 2]))])
        part = decode_in_graph(paths[i], streams[i], decoders[i], sample_rate)
        length = tf.minimum(tf.shape(total)[0], tf.shape(part)[0])
        total = total[:length] + part[:length]
    return total


def track_table(tracks: list[Track], sample_rate: int) -> tf.data.Dataset:
    """One element per track: where its sources' files are and how to decode each."""
    return tf.data.Dataset.from_tensor_slices(tuple(_file_table(tracks, source, sample_rate) for source in SOURCES))


def decoder(sample_rate: int):
    """Map function: a track_table element -> ``(vocals, accompaniment)``, float32 ``[time, 2]``."""
    def decode(vocals_files, accompaniment_files):
        vocals = _decode_source(*vocals_files, sample_rate)
        accompaniment = _decode_source(*accompaniment_files, sample_rate)
        length = tf.minimum(tf.shape(vocals)[0], tf.shape(accompaniment)[0])
        return vocals[:length], accompaniment[:length]

    return decode


def _pad_for_crops(signal, crop: CropSpec):
    """Zero context on both sides, plus enough on the right for a song shorter than one output."""
    shortfall = tf.maximum(0, crop.output_length - tf.shape(signal)[0])
    return tf.pad(signal, [[crop.context_left, crop.context_right + shortfall], [0, 0]])


def _training_example(vocals, accompaniment, seed, crop: CropSpec, channels: int, sample_rate: int,
                      options: augment.AugmentOptions):
    crop_seed, gain_seed, swap_seed, pitch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    vocals, accompaniment = _pad_for_crops(vocals, crop), _pad_for_crops(accompaniment, crop)
    start = tf.random.stateless_uniform([], crop_seed, 0, tf.shape(vocals)[0] - crop.input_length + 1, tf.int32)
    vocals = vocals[start:start + crop.input_length]
    accompaniment = accompaniment[start:start + crop.input_length]
    if options.gain_range is not None:
        vocals, accompaniment = augment.remix(vocals, accompaniment, gain_seed, options.gain_range)
    if options.swap_channels and channels == 2:
        vocals, accompaniment = augment.swap_channels(swap_seed, vocals, accompaniment)
    return _example(vocals, accompaniment, crop, channels, sample_rate, options, pitch_seed)


def _example(vocals, accompaniment, crop: CropSpec, channels: int, sample_rate: int,
             options: augment.AugmentOptions | None = None, pitch_seed=None):
    """Input-length windows of both sources -> (mix, centred targets)."""
    if channels == 1:
        vocals = tf.reduce_mean(vocals, axis=-1, keepdims=True)
        accompaniment = tf.reduce_mean(accompaniment, axis=-1, keepdims=True)
    mix = vocals + accompaniment
    if options is not None and options.pitch_shift_semitones > 0:
        # As in UMT: only the input is distorted; the targets stay clean.
        mix = augment.pitch_shift_segment(mix, pitch_seed, sample_rate, options.pitch_shift_semitones,
                                          options.pitch_shift_seconds)
    targets = {name: source[crop.context_left:crop.context_left + crop.output_length]
               for name, source in zip(SOURCES, (vocals, accompaniment))}
    mix = tf.ensure_shape(mix, [crop.input_length, channels])
    targets = {name: tf.ensure_shape(t, [crop.output_length, channels]) for name, t in targets.items()}
    return mix, targets


def _evaluation_windows(vocals, accompaniment, crop: CropSpec):
    """Consecutive windows whose outputs tile the whole song (the last one zero-padded)."""
    length = tf.shape(vocals)[0]
    count = (length + crop.output_length - 1) // crop.output_length
    padded_length = count * crop.output_length + crop.input_length - crop.output_length
    starts = tf.range(count) * crop.output_length

    def windows(signal):
        signal = _pad_for_crops(signal, crop)
        signal = tf.pad(signal, [[0, padded_length - tf.shape(signal)[0]], [0, 0]])
        return tf.gather(signal, starts[:, None] + tf.range(crop.input_length)[None, :])

    return tf.data.Dataset.from_tensor_slices((windows(vocals), windows(accompaniment)))


def make_dataset(tracks: list[Track], *, sample_rate: int, crop: CropSpec, channels: int = 2,
                 batch_size: int = 16, training: bool = True, seed: int = 0, cache: bool = True,
                 crops_per_track: int = 8, augmentation: augment.AugmentOptions = augment.AugmentOptions(),
                 num_shards: int = 1, shard_index: int = 0) -> tf.data.Dataset:
    """Batches of ``(mix, {"vocals", "accompaniment"})`` for ``model.fit``.

    training=True: endless random crops, ``crops_per_track`` from each decoded
    song before moving on (so an uncached run decodes each song once per
    ``crops_per_track`` crops), augmented, reproducible for a given ``seed``.
    training=False: one pass of consecutive, unaugmented windows covering every
    song, for validation. ``num_shards``/``shard_index`` split the songs between
    the workers of a multi-worker run.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    tracks = tracks[shard_index::num_shards]
    if not tracks:
        raise ValueError("no tracks to build a dataset from")
    table = track_table(tracks, sample_rate)
    decode = decoder(sample_rate)
    if not training:
        songs = table.map(decode, num_parallel_calls=AUTOTUNE)
        examples = (songs.cache() if cache else songs).flat_map(lambda v, a: _evaluation_windows(v, a, crop)).map(
            lambda v, a: _example(v, a, crop, channels, sample_rate), num_parallel_calls=AUTOTUNE)
        return examples.batch(batch_size).prefetch(AUTOTUNE)

    if cache:
        songs = table.map(decode, num_parallel_calls=AUTOTUNE).cache().repeat().shuffle(len(tracks), seed=seed)
    else:  # shuffle paths, not decoded songs, so memory holds only the songs being cropped
        songs = table.repeat().shuffle(len(tracks), seed=seed).map(decode, num_parallel_calls=AUTOTUNE)
    repeated = songs.flat_map(lambda v, a: tf.data.Dataset.from_tensors((v, a)).repeat(crops_per_track))
    seeds = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))
    examples = tf.data.Dataset.zip(repeated, seeds).map(
        lambda songs_pair, element_seed: _training_example(*songs_pair, element_seed, crop, channels, sample_rate,
                                                           augmentation),
        num_parallel_calls=AUTOTUNE)
    return examples.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)

