"""The tf.data input pipeline shared by every architecture.

    tracks -> decode (parallel, AUTOTUNE) -> [cache in memory] -> shuffle songs
           -> random crops of several songs in turn (accompaniment sometimes from another song)
           -> [several datasets: drawn by weight; accompaniment sometimes from another dataset]
           -> augment (remix gains, channel swap, optional pitch shift) -> batch -> prefetch

Each element is ``(mix [input_length, C], {"vocals": [output_length, C],
"accompaniment": [output_length, C]})``: the model sees ``input_length``
samples (output plus context) and is scored on the centred ``output_length``.
Tracks are zero-padded by the context on both sides, so every sample of a
song can be a target, as in f90's Wave-U-Net.
"""
from __future__ import annotations

import tensorflow as tf

from data_pipeline import augment
from data_pipeline.audio import DECODE_PYTHON, audio_info, decode_in_graph, in_graph_decoder, is_stem_file
from data_pipeline.crops import CropSpec, group_seed
from data_pipeline.datasets import Track
from models.architecture import SOURCES
from models.framing import ChunkPlan, frame_tf

AUTOTUNE = tf.data.AUTOTUNE


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


def _random_window(padded_signal, seed, crop: CropSpec):
    start = tf.random.stateless_uniform([], seed, 0, tf.shape(padded_signal)[0] - crop.input_length + 1, tf.int32)
    return start, padded_signal[start:start + crop.input_length]


def _song_crops(song, donor, song_number, seed: int, crops_per_track: int, crop: CropSpec,
                cross_song_probability: float, group: int = 0, spare: bool = False) -> tf.data.Dataset:
    """``crops_per_track`` input-length windows ``(vocals, accompaniment, augmentation seed, origin)``
    of one padded song; with ``spare``, each also carries a spare window of the song's own
    accompaniment and its origin, ``(group, track)``, for the cross-dataset remix.

    With probability ``cross_song_probability`` a window's accompaniment is a
    random window of ``donor``'s accompaniment instead, unless ``donor`` is the
    same track. ``origin`` is int64 ``[vocals group, vocals track, accompaniment
    group, accompaniment track]``, tracks numbered in their group."""
    track_index, vocals, accompaniment = song
    donor_index, _, donor_accompaniment = donor
    group = tf.constant(group, tf.int64)

    def window(crop_number):
        element_seed = tf.stack([tf.cast(seed, tf.int64), song_number * crops_per_track + crop_number])
        start_seed, donor_seed, cross_song_seed, augmentation_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, 4))
        start, vocals_window = _random_window(vocals, start_seed, crop)
        cross_song = tf.logical_and(tf.random.stateless_uniform([], cross_song_seed) < cross_song_probability,
                                    donor_index != track_index)
        accompaniment_window = tf.cond(cross_song,
                                       lambda: _random_window(donor_accompaniment, donor_seed, crop)[1],
                                       lambda: accompaniment[start:start + crop.input_length])
        origin = tf.stack([group, track_index, group, tf.where(cross_song, donor_index, track_index)])
        if not spare:
            return vocals_window, accompaniment_window, augmentation_seed, origin
        # Its own seed, folded from the element's, so that the other draws keep their values.
        spare_seed = tf.random.experimental.stateless_fold_in(element_seed, 4)
        spare_window = _random_window(accompaniment, spare_seed, crop)[1]
        return vocals_window, accompaniment_window, augmentation_seed, origin, spare_window, tf.stack([group,
                                                                                                       track_index])

    return tf.data.Dataset.range(crops_per_track).map(window)


def _cross_dataset_remix(examples: tf.data.Dataset, weights: list[float], probability: float,
                         window_length: int) -> tf.data.Dataset:
    """Crops of a mix of datasets (``_training_crops`` with spares, drawn in turn) with, for
    each one, probability ``probability`` that its accompaniment is replaced by the latest
    spare accompaniment window of another dataset (the dataset drawn by ``weights`` among
    those that have lent one yet). Each crop then leaves its own spare for the next ones.
    The draws come from the crop's augmentation seed, folded, so the stream is a function of
    the seed. Gives ``(vocals, accompaniment, augmentation seed, origin)``."""
    group_count = len(weights)
    weights = tf.constant(weights, tf.float32)
    groups = tf.range(group_count, dtype=tf.int64)
    # The latest spare window of each group, its origin, and whether the group has lent one yet.
    state = (tf.zeros([group_count, window_length, 2]),
             tf.zeros([group_count, 2], tf.int64), tf.zeros([group_count], tf.bool))

    def lend(state, crop_element):
        spares, spare_origins, lent = state
        vocals, accompaniment, seed, origin, spare, spare_origin = crop_element
        group = origin[0]
        remix_seed, choice_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(seed, 1), 2))
        donors = weights * tf.cast(tf.logical_and(lent, groups != group), tf.float32)
        total = tf.reduce_sum(donors)
        remixed = tf.logical_and(tf.random.stateless_uniform([], remix_seed) < probability, total > 0)
        # The first group whose cumulative weight passes a uniform draw over the total: one that lent.
        draw = tf.random.stateless_uniform([], choice_seed) * total
        chosen = tf.argmax(tf.cast(tf.cumsum(donors) > draw, tf.int32), output_type=tf.int64)
        accompaniment = tf.where(remixed, spares[chosen], accompaniment)
        origin = tf.where(remixed, tf.concat([origin[:2], spare_origins[chosen]], 0), origin)
        index = tf.reshape(group, [1, 1])
        state = (tf.tensor_scatter_nd_update(spares, index, spare[None]),
                 tf.tensor_scatter_nd_update(spare_origins, index, spare_origin[None]),
                 tf.tensor_scatter_nd_update(lent, index, [True]))
        return state, (vocals, accompaniment, seed, origin)

    return examples.scan(state, lend)


def _augmented_example(vocals, accompaniment, seed, crop: CropSpec, channels: int, sample_rate: int,
                       options: augment.AugmentOptions):
    gain_seed, swap_seed, pitch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
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
    if options is not None and options.pitch_shift_semitones > 0:
        # Both sources, the same segment by the same amount (their channels side by side): the
        # labels stay the sources of the mix.
        shifted = augment.pitch_shift_segment(tf.concat([vocals, accompaniment], axis=-1), pitch_seed, sample_rate,
                                              options.pitch_shift_semitones, options.pitch_shift_seconds)
        vocals, accompaniment = tf.split(shifted, 2, axis=-1)
    mix = vocals + accompaniment
    targets = {name: source[crop.context_left:crop.context_left + crop.output_length]
               for name, source in zip(SOURCES, (vocals, accompaniment))}
    mix = tf.ensure_shape(mix, [crop.input_length, channels])
    targets = {name: tf.ensure_shape(t, [crop.output_length, channels]) for name, t in targets.items()}
    return mix, targets


def _evaluation_windows(vocals, accompaniment, crop: CropSpec):
    """Consecutive windows whose outputs tile the whole song (the last one zero-padded),
    cut by runtime.chunking's tiler with a plan that keeps every output sample."""
    plan = ChunkPlan(input_length=crop.input_length, output_offset=crop.context_left,
                     output_length=crop.output_length, keep_from=0, stride=crop.output_length)
    return tf.data.Dataset.from_tensor_slices((frame_tf(vocals, plan), frame_tf(accompaniment, plan)))


def make_dataset(tracks: list[Track], *, sample_rate: int, crop: CropSpec, channels: int = 2,
                 batch_size: int = 16, training: bool = True, seed: int = 0, cache: bool = True,
                 crops_per_track: int = 8, augmentation: augment.AugmentOptions = augment.AugmentOptions(),
                 num_shards: int = 1, shard_index: int = 0, songs_in_flight: int = 16,
                 with_origin: bool = False) -> tf.data.Dataset:
    """Batches of ``(mix, {"vocals", "accompaniment"})`` for ``model.fit``.

    training=True: endless random crops, augmented, reproducible for a given
    ``seed``. Each pass over the songs takes them in a new random order.
    ``songs_in_flight`` songs (all of them, if fewer) are cropped at once,
    taking turns, so consecutive crops, and the examples of a batch, come from
    different songs; a song gives ``crops_per_track`` crops, then the next song
    takes its place (an uncached run decodes each song once per
    ``crops_per_track`` crops). Each song lends its accompaniment to the song
    after it for the cross-song remix (``augmentation.cross_song_probability``).
    Memory: ``songs_in_flight + 1`` decoded songs are held for cropping, beside
    tf.data's autotuned buffers (songs decoded ahead when uncached, a few
    batches of crops); with ``cache=True`` every song is in memory anyway.

    training=False: one pass of consecutive, unaugmented windows covering every
    song, for validation. ``num_shards``/``shard_index`` split the songs between
    the workers of a multi-worker run.

    ``with_origin`` (training only): each batch also holds each example's origin, as
    ``make_mixed_dataset`` gives it (group 0).
    """
    _check_options(channels, songs_in_flight, crops_per_track)
    tracks = _shard(tracks, num_shards, shard_index)
    if not training:
        songs = track_table(tracks, sample_rate).map(decoder(sample_rate), num_parallel_calls=AUTOTUNE)
        examples = (songs.cache() if cache else songs).flat_map(lambda v, a: _evaluation_windows(v, a, crop)).map(
            lambda v, a: _example(v, a, crop, channels, sample_rate), num_parallel_calls=AUTOTUNE)
        return examples.batch(batch_size).prefetch(AUTOTUNE)
    examples = _training_examples(tracks, sample_rate, crop, channels, seed, cache, crops_per_track, augmentation,
                                  songs_in_flight, with_origin)
    return examples.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def make_mixed_dataset(groups: list[list[Track]], weights: list[float], *, sample_rate: int, crop: CropSpec,
                       channels: int = 2, batch_size: int = 16, seed: int = 0, cache: bool = True,
                       crops_per_track: int = 8, augmentation: augment.AugmentOptions = augment.AugmentOptions(),
                       num_shards: int = 1, shard_index: int = 0, songs_in_flight: int = 16,
                       with_origin: bool = False) -> tf.data.Dataset:
    """Training batches mixing several datasets (e.g. synthetic and real songs): each
    example comes from group ``g`` with probability ``weights[g]`` (normalised).
    Each group is cropped and augmented as ``make_dataset`` does, with its own seed;
    the cross-song remix stays inside a group. The cross-dataset remix
    (``augmentation.cross_dataset_probability``) crosses groups: with that probability
    an example's accompaniment is a random window of a song of another group, drawn by
    the weights among the others (``_cross_dataset_remix``), before the gains, channel
    swap and pitch shift, so the mix is still the sum of its labels.

    ``with_origin``: each batch also holds ``origin``, int64 ``[batch, 4]``: the group
    and track (its index in that group's shard of tracks) of the vocals, then of the
    accompaniment, of each example (for checking; ``model.fit`` would read it as
    sample weights)."""
    _check_options(channels, songs_in_flight, crops_per_track)
    if len(groups) != len(weights) or not groups:
        raise ValueError(f"need one weight per dataset: {len(groups)} datasets, {len(weights)} weights")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, not {weights}")
    cross_dataset = augmentation.cross_dataset_probability > 0 and len(groups) > 1
    streams = [_training_crops(_shard(group, num_shards, shard_index), sample_rate, crop, group_seed(seed, index),
                               cache, crops_per_track, augmentation, songs_in_flight, group=index, spare=cross_dataset)
               for index, group in enumerate(groups)]
    total = float(sum(weights))
    weights = [w / total for w in weights]
    crops = tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=seed)
    if cross_dataset:
        crops = _cross_dataset_remix(crops, weights, augmentation.cross_dataset_probability, crop.input_length)
    examples = _augmented_examples(crops, crop, channels, sample_rate, augmentation, with_origin)
    return examples.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _check_options(channels: int, songs_in_flight: int, crops_per_track: int) -> None:
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    if songs_in_flight < 1 or crops_per_track < 1:
        raise ValueError(f"songs_in_flight and crops_per_track must be at least 1, not {songs_in_flight} "
                         f"and {crops_per_track}")


def _shard(tracks: list[Track], num_shards: int, shard_index: int) -> list[Track]:
    tracks = tracks[shard_index::num_shards]
    if not tracks:
        raise ValueError("no tracks to build a dataset from")
    return tracks


def _training_crops(tracks: list[Track], sample_rate: int, crop: CropSpec, seed: int, cache: bool,
                    crops_per_track: int, augmentation: augment.AugmentOptions, songs_in_flight: int,
                    group: int = 0, spare: bool = False) -> tf.data.Dataset:
    """The endless stream of unaugmented training crops of ``make_dataset``, unbatched:
    ``(vocals, accompaniment, augmentation seed, origin[, spare, spare origin])`` (``_song_crops``)."""
    table = track_table(tracks, sample_rate)
    decode = decoder(sample_rate)

    def decode_padded(track_index, files):
        vocals, accompaniment = decode(*files)
        return track_index, _pad_for_crops(vocals, crop), _pad_for_crops(accompaniment, crop)

    # The track index travels with the song so that a song never lends its accompaniment to itself.
    indexed_table = tf.data.Dataset.zip(tf.data.Dataset.range(len(tracks)), table)
    if cache:
        songs = indexed_table.map(decode_padded, num_parallel_calls=AUTOTUNE).cache().shuffle(
            len(tracks), seed=seed).repeat()
    else:  # shuffle paths, not decoded songs, so memory holds only the songs being cropped
        songs = indexed_table.shuffle(len(tracks), seed=seed).repeat().map(decode_padded, num_parallel_calls=AUTOTUNE)
    # Each song is paired with the song before it, its accompaniment donor; the first one only lends.
    no_song = (tf.constant(-1, tf.int64), tf.zeros([0, 2]), tf.zeros([0, 2]))
    songs_with_donors = songs.scan(no_song, lambda previous, song: (song, (song, previous))).skip(1)
    return tf.data.Dataset.zip(songs_with_donors, tf.data.Dataset.counter()).interleave(
        lambda song_and_donor, song_number: _song_crops(*song_and_donor, song_number, seed, crops_per_track, crop,
                                                        augmentation.cross_song_probability, group, spare),
        cycle_length=min(songs_in_flight, len(tracks)), block_length=1)


def _augmented_examples(crops: tf.data.Dataset, crop: CropSpec, channels: int, sample_rate: int,
                        augmentation: augment.AugmentOptions, with_origin: bool) -> tf.data.Dataset:
    """``(vocals, accompaniment, seed, origin)`` crops -> augmented ``(mix, targets[, origin])``
    examples; each a function of its crop and seed alone, so the order of mapping is free."""
    def augmented(vocals, accompaniment, element_seed, origin):
        example = _augmented_example(vocals, accompaniment, element_seed, crop, channels, sample_rate, augmentation)
        return (*example, origin) if with_origin else example

    return crops.map(augmented, num_parallel_calls=AUTOTUNE)


def _training_examples(tracks: list[Track], sample_rate: int, crop: CropSpec, channels: int, seed: int, cache: bool,
                       crops_per_track: int, augmentation: augment.AugmentOptions,
                       songs_in_flight: int, with_origin: bool = False) -> tf.data.Dataset:
    """The endless stream of augmented training examples of ``make_dataset``, unbatched."""
    crops = _training_crops(tracks, sample_rate, crop, seed, cache, crops_per_track, augmentation, songs_in_flight)
    return _augmented_examples(crops, crop, channels, sample_rate, augmentation, with_origin)
