"""The input pipeline in numpy, for hosts without TensorFlow (``KERAS_BACKEND=jax``):
``keras.utils.PyDataset``s that ``model.fit`` takes on any backend.

``TrainingLoader`` gives what ``pipeline.make_dataset(training=True)`` gives:
batches of ``(mix [B, input_length, C], {"vocals": [B, output_length, C],
"accompaniment": [B, output_length, C]})``, float32, random crops of songs
zero-padded by the context, songs taken in a new random order each pass,
``songs_in_flight`` of them cropped in turn, ``crops_per_track`` crops each, and
the augmentations of ``AugmentOptions`` (cross-song remix, per-source gains,
stereo swap, pitch shift). ``ValidationLoader`` gives what
``make_dataset(training=False)`` gives: consecutive unaugmented windows whose
outputs tile every song. ``MixedTrainingLoader`` gives what
``make_mixed_dataset`` gives: each example from one of several groups of songs,
drawn by weight, each group a ``TrainingLoader`` stream of its own, and the
cross-dataset remix (an accompaniment from a song of another group). Same
parameters and invariants as tf.data, not the same random numbers. Each
example's origin (group and track of its vocals and of its accompaniment) can
be read back with ``batch_with_origin``.

Every example is a pure function of the seed and its place in the endless
stream of examples, so a batch depends only on (seed, epoch, batch index): the
same whatever the number of workers, whether threads or processes, or the order
in which they build batches.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from data_pipeline.augment import AugmentOptions, shift_segment_numpy
from data_pipeline.crops import CropSpec
from data_pipeline.datasets import Track, load_track
from models.architecture import SOURCES

# First entropy word after the seed: keeps the song-order, crop, group-choice, group-seed and cross-dataset
# random streams apart.
_SONG_ORDER, _CROP, _GROUP_CHOICE, _GROUP_SEED, _CROSS_DATASET = 0, 1, 2, 3, 4
# Group choices drawn per generator: enough that a batch rarely spans two, few enough to draw per batch.
_CHOICE_BLOCK = 4096


def _decode(track: Track, sample_rate: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    # Without its mixture file, a track reads as tf.data reads it: vocals and accompaniment only.
    audio = load_track(dataclasses.replace(track, mixture=()), sample_rate, channels)
    return audio["vocals"], audio["accompaniment"]


def _in_threads(function, items) -> list:
    # Decoding spends its time in libsndfile, soxr and ffmpeg, which release the GIL.
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))


class _Songs:
    """Decoded ``(vocals, accompaniment)`` of each track, float32 ``[time, channels]``:
    all decoded up front and kept (``cache=True``), or decoded when asked for,
    keeping the ``keep`` most recently used ones. Safe to use from several threads."""

    def __init__(self, tracks: list[Track], sample_rate: int, channels: int, cache: bool, keep: int):
        self._tracks, self._sample_rate, self._channels, self._keep = tracks, sample_rate, channels, keep
        # Decoded in the constructor, so that forked worker processes share the songs.
        self._all = _in_threads(self._decode, range(len(tracks))) if cache else None
        self._recent: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return _decode(self._tracks[index], self._sample_rate, self._channels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._all is not None:
            return self._all[index]
        with self._lock:
            if index in self._recent:
                self._recent.move_to_end(index)
                return self._recent[index]
        song = self._decode(index)  # outside the lock, so that threads decode in parallel
        with self._lock:
            self._recent[index] = song
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
        return song

    def lengths(self) -> list[int]:
        """Each song's length; uncached, this decodes every song once."""
        if self._all is not None:
            return [len(vocals) for vocals, _ in self._all]
        return _in_threads(lambda index: len(self._decode(index)[0]), range(len(self._tracks)))


def _window(song: np.ndarray, start: int, crop: CropSpec) -> np.ndarray:
    """``padded[start:start + input_length]``, ``padded`` being the song with
    ``context_left`` zeros before it and as many zeros after it as the window needs."""
    window = np.zeros((crop.input_length, song.shape[1]), np.float32)
    first = start - crop.context_left  # in song samples
    begin, end = max(first, 0), min(first + crop.input_length, len(song))
    if end > begin:
        window[begin - first:end - first] = song[begin:end]
    return window


def _start_count(song_length: int, crop: CropSpec) -> int:
    """Window starts in a song padded as make_dataset pads it (context on both sides,
    and zeros up to one output for a song shorter than that)."""
    return max(song_length, crop.output_length) - crop.output_length + 1


def _centre(window: np.ndarray, crop: CropSpec) -> np.ndarray:
    return window[crop.context_left:crop.context_left + crop.output_length]


def _batch(examples) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``[(mix, vocals, accompaniment[, origin]), ...]`` -> ``(mixes, {source: targets})``."""
    mixes, *targets = (np.stack(column) for column in list(zip(*examples))[:3])
    return mixes, dict(zip(SOURCES, targets))


def _origins(examples) -> np.ndarray:
    """int64 ``[batch, 4]``: the origin of each ``(mix, vocals, accompaniment, origin)``."""
    return np.array([example[3] for example in examples], np.int64).reshape(-1, 4)


def _tracks_of_shard(tracks: list[Track], channels: int, num_shards: int, shard_index: int,
                     name: str = "a dataset") -> list[Track]:
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    tracks = tracks[shard_index::num_shards]
    if not tracks:
        raise ValueError(f"no tracks to build {name} from")
    return tracks


class _ExampleStream:
    """The endless stream of training examples of one set of songs, each one built
    on its own from its number (see ``TrainingLoader``)."""

    def __init__(self, tracks: list[Track], *, sample_rate: int, crop: CropSpec, channels: int, seed: int,
                 cache: bool, crops_per_track: int, augmentation: AugmentOptions, songs_in_flight: int,
                 group: int = 0):
        self.tracks, self.sample_rate, self.crop, self.channels = tracks, sample_rate, crop, channels
        self.group = group
        self.seed, self.crops_per_track, self.augmentation = seed, crops_per_track, augmentation
        self.songs_in_flight = min(songs_in_flight, len(tracks))
        self.examples_per_pass = len(tracks) * crops_per_track
        self._songs = _Songs(tracks, sample_rate, channels, cache, keep=2 * self.songs_in_flight)

    def _track_at(self, position: int) -> int:
        """The track at ``position`` of the endless sequence of songs, pass after pass."""
        pass_number, place = divmod(position, len(self.tracks))
        order = np.random.default_rng([self.seed, _SONG_ORDER, pass_number]).permutation(len(self.tracks))
        return int(order[place])

    def example(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example ``number`` of the stream: ``(mix, vocals target, accompaniment target)``."""
        return self.example_with_origin(number)[:3]

    def accompaniment_window(self, track: int, generator: np.random.Generator) -> np.ndarray:
        """A random input-length window of ``track``'s accompaniment (a cross-dataset donor)."""
        accompaniment = self._songs[track][1]
        return _window(accompaniment, generator.integers(_start_count(len(accompaniment), self.crop)), self.crop)

    def example_with_origin(self, number: int, donor: tuple[np.ndarray, tuple[int, int]] | None = None):
        """Example ``number`` of the stream and its origin: ``(mix, vocals target, accompaniment
        target, (vocals group, vocals track, accompaniment group, accompaniment track))``. ``donor``,
        ``(accompaniment window, (group, track))``, replaces the accompaniment (and the cross-song
        remix) before the augmentations: the cross-dataset remix."""
        turn, place = divmod(number, self.songs_in_flight * self.crops_per_track)
        crop_number, slot = divmod(place, self.songs_in_flight)
        song_number = turn * self.songs_in_flight + slot
        # The song at position 0 only lends its accompaniment, as in make_dataset.
        track, donor_track = self._track_at(song_number + 1), self._track_at(song_number)
        # Uniform draws first, in a fixed order, so that each draw keeps its value whatever the options.
        generator = np.random.default_rng([self.seed, _CROP, song_number, crop_number])
        cross_song_draw, vocals_gain, accompaniment_gain, swap_draw, segment_draw, semitones_draw = generator.random(6)
        options, crop = self.augmentation, self.crop
        vocals, accompaniment = self._songs[track]
        start = generator.integers(_start_count(len(vocals), crop))
        vocals = _window(vocals, start, crop)
        origin = (self.group, track, self.group, track)
        if donor is not None:
            accompaniment, origin = donor[0].copy(), (self.group, track, *donor[1])
        elif cross_song_draw < options.cross_song_probability and donor_track != track:
            donor_accompaniment = self._songs[donor_track][1]
            donor_start = generator.integers(_start_count(len(donor_accompaniment), crop))
            accompaniment = _window(donor_accompaniment, donor_start, crop)
            origin = (self.group, track, self.group, donor_track)
        else:
            accompaniment = _window(accompaniment, start, crop)
        if options.gain_range is not None:
            low, high = options.gain_range
            vocals *= np.float32(low + (high - low) * vocals_gain)
            accompaniment *= np.float32(low + (high - low) * accompaniment_gain)
        if options.swap_channels and self.channels == 2 and swap_draw < 0.5:
            vocals, accompaniment = vocals[:, ::-1], accompaniment[:, ::-1]
        if options.pitch_shift_semitones > 0:
            # Both sources, the same segment by the same amount: the labels stay the sources of the mix.
            shortest, longest = options.pitch_shift_seconds
            length = min(crop.input_length, int((shortest + (longest - shortest) * segment_draw) * self.sample_rate))
            shifted = shift_segment_numpy(np.concatenate([vocals, accompaniment], axis=1), self.sample_rate,
                                          generator.integers(crop.input_length - length + 1), length,
                                          options.pitch_shift_semitones * (2 * semitones_draw - 1))
            vocals, accompaniment = np.split(shifted, 2, axis=1)
        return vocals + accompaniment, _centre(vocals, crop), _centre(accompaniment, crop), origin


def _check_counts(songs_in_flight: int, crops_per_track: int, batch_size: int, steps_per_epoch: int | None):
    # Before any song is decoded.
    if min(songs_in_flight, crops_per_track, batch_size, 1 if steps_per_epoch is None else steps_per_epoch) < 1:
        raise ValueError(f"songs_in_flight, crops_per_track, batch_size and steps_per_epoch must be at least 1, "
                         f"not {songs_in_flight}, {crops_per_track}, {batch_size} and {steps_per_epoch}")


class _EndlessLoader(keras.utils.PyDataset):
    """Epochs of ``steps_per_epoch`` batches (by default one pass's worth, at least
    one) cut from an endless stream of examples that ``_examples`` builds by number;
    ``on_epoch_end`` moves on to the next epoch."""

    def __init__(self, *, batch_size: int, steps_per_epoch: int | None, examples_per_pass: int, workers: int,
                 use_multiprocessing: bool, max_queue_size: int):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.batch_size, self.epoch = batch_size, 0
        self.steps_per_epoch = steps_per_epoch or max(1, examples_per_pass // batch_size)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index: int):
        return _batch(self._epoch_examples(index))

    def batch_with_origin(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Batch ``index`` of the current epoch, ``(mixes, targets)``, and each example's origin,
        int64 ``[batch, 4]``: group and track (its index in that group's ``tracks``) of the vocals,
        then of the accompaniment (for checking)."""
        examples = self._epoch_examples(index)
        return (*_batch(examples), _origins(examples))

    def _epoch_examples(self, index: int) -> list:
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} of an epoch of {self.steps_per_epoch}")
        first = (self.epoch * self.steps_per_epoch + index) * self.batch_size
        return self._examples(range(first, first + self.batch_size))

    def _examples(self, numbers: range) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple]]:
        """``(mix, vocals, accompaniment, origin)`` of each example of ``numbers``."""
        raise NotImplementedError


class TrainingLoader(_EndlessLoader):
    """Endless random crops, augmented, in epochs of ``steps_per_epoch`` batches.

    Parameters as in ``make_dataset``: songs are decoded at ``sample_rate`` with
    ``channels`` channels (a mono model gets the downmix), all of them in the
    constructor with ``cache=True``; ``cache=False`` decodes them when cropped and
    keeps the ``2 * songs_in_flight`` most recently cropped in memory (a song gives
    its crops over about ``songs_in_flight * crops_per_track`` consecutive examples).
    ``num_shards``/``shard_index`` take every ``num_shards``-th song, for one worker
    of a multi-worker run. ``seed`` is a non-negative int.

    The examples form one endless stream: each pass over the songs takes them in a
    new random order; ``songs_in_flight`` consecutive songs give one crop each in
    turn, ``crops_per_track`` times, then the next ones take their turn, so a batch
    holds crops of many songs. Each song lends its accompaniment to the song after
    it for the cross-song remix. Epoch ``e`` is batches ``e * steps_per_epoch`` to
    ``(e + 1) * steps_per_epoch - 1`` of that stream; ``epoch`` starts at 0 and
    ``on_epoch_end`` (which ``model.fit`` calls, also once before its first epoch)
    moves on to the next one. ``steps_per_epoch`` defaults to one pass's worth,
    ``len(tracks) * crops_per_track // batch_size`` (at least 1); give ``model.fit``
    the same ``steps_per_epoch``, or none.

    ``workers``, ``use_multiprocessing``, ``max_queue_size``: how ``model.fit``
    builds batches ahead (``keras.utils.PyDataset``); the batches are the same
    for any of them. Threads share the decoded songs; forked processes share
    the cached songs until they write to them, which they do not.
    """

    def __init__(self, tracks: list[Track], *, sample_rate: int, crop: CropSpec, channels: int = 2,
                 batch_size: int = 16, seed: int = 0, cache: bool = True, crops_per_track: int = 8,
                 augmentation: AugmentOptions = AugmentOptions(), num_shards: int = 1, shard_index: int = 0,
                 songs_in_flight: int = 16, steps_per_epoch: int | None = None, workers: int = 1,
                 use_multiprocessing: bool = False, max_queue_size: int = 10):
        _check_counts(songs_in_flight, crops_per_track, batch_size, steps_per_epoch)
        self._stream = _ExampleStream(
            _tracks_of_shard(tracks, channels, num_shards, shard_index), sample_rate=sample_rate, crop=crop,
            channels=channels, seed=seed, cache=cache, crops_per_track=crops_per_track, augmentation=augmentation,
            songs_in_flight=songs_in_flight)
        self.tracks = self._stream.tracks
        super().__init__(batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                         examples_per_pass=self._stream.examples_per_pass, workers=workers,
                         use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)

    def _examples(self, numbers: range) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple]]:
        return [self._stream.example_with_origin(number) for number in numbers]


class _GroupChoices:
    """Which group each example of a mixed stream comes from, and its number in that
    group's stream: the group of example ``n`` is drawn by the weights from draw
    ``n % _CHOICE_BLOCK`` of block ``n // _CHOICE_BLOCK``'s generator, a function of
    (seed, n) only; its number there counts the earlier examples from that group."""

    def __init__(self, weights: np.ndarray, seed: int):
        self._group_count, self._seed = len(weights), seed
        self._bounds = np.cumsum(weights) / weights.sum()
        self._bounds[-1] = 1.0  # so that rounding never puts a draw past the last group
        # _taken_before[b][g]: examples of blocks 0 to b - 1 from group g; grows as later blocks are asked for.
        self._taken_before = [np.zeros(self._group_count, np.int64)]
        self._lock = threading.Lock()

    def _block(self, block: int) -> np.ndarray:
        draws = np.random.default_rng([self._seed, _GROUP_CHOICE, block]).random(_CHOICE_BLOCK)
        # side="right": a draw on a bound goes past groups of zero weight.
        return np.searchsorted(self._bounds, draws, side="right")

    def _taken_before_block(self, block: int) -> np.ndarray:
        with self._lock:
            while len(self._taken_before) <= block:
                done = len(self._taken_before) - 1
                self._taken_before.append(
                    self._taken_before[-1] + np.bincount(self._block(done), minlength=self._group_count))
            return self._taken_before[block]

    def __call__(self, numbers: range) -> list[tuple[int, int]]:
        """``(group, number in that group's stream)`` of each example in ``numbers``."""
        choices = []
        for block in range(numbers.start // _CHOICE_BLOCK, (numbers.stop - 1) // _CHOICE_BLOCK + 1):
            groups = self._block(block)
            taken_so_far = np.cumsum(groups[:, None] == np.arange(self._group_count), axis=0)
            taken_before = self._taken_before_block(block)[groups]
            numbers_in_group = taken_before + taken_so_far[np.arange(_CHOICE_BLOCK), groups] - 1
            offset = block * _CHOICE_BLOCK
            wanted = slice(max(numbers.start - offset, 0), min(numbers.stop - offset, _CHOICE_BLOCK))
            choices.extend(zip(groups[wanted].tolist(), numbers_in_group[wanted].tolist()))
        return choices


class MixedTrainingLoader(_EndlessLoader):
    """``TrainingLoader``'s batches drawn from several groups of songs (datasets):
    each example comes from group ``g`` with probability ``weights[g] / sum(weights)``.

    Each group is its own stream of examples, as ``TrainingLoader`` builds one from
    that group's songs, with a seed derived from (``seed``, ``g``): song order,
    interleaving and the cross-song remix stay inside the group. With
    ``augmentation.cross_dataset_probability`` > 0 and several groups, example ``n``
    takes, with that probability, a random window of a random song of another group
    as its accompaniment (the group drawn by the weights among the others; drawn by
    a generator of (``seed``, ``n``) alone), before its gains, swap and pitch shift: the
    cross-dataset remix (uncached, each such donor decodes its song). Example ``n`` of
    the mixed stream draws its group with a generator that depends on (``seed``,
    ``n``) only, and takes that group's next example, so batches depend only on
    (seed, epoch, batch index), as ``TrainingLoader``'s do. Every group is sharded
    by ``num_shards``/``shard_index``; ``songs_in_flight`` and the cache apply to each
    group. ``steps_per_epoch`` defaults to one pass over every group's songs,
    ``sum(len(group)) * crops_per_track // batch_size`` (at least 1). The other
    parameters are ``TrainingLoader``'s.
    """

    def __init__(self, groups: list[list[Track]], weights: list[float], *, sample_rate: int, crop: CropSpec,
                 channels: int = 2, batch_size: int = 16, seed: int = 0, cache: bool = True,
                 crops_per_track: int = 8, augmentation: AugmentOptions = AugmentOptions(), num_shards: int = 1,
                 shard_index: int = 0, songs_in_flight: int = 16, steps_per_epoch: int | None = None,
                 workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10):
        _check_counts(songs_in_flight, crops_per_track, batch_size, steps_per_epoch)
        weights = np.asarray(weights, np.float64)
        if not groups:
            raise ValueError("no groups of tracks to mix")
        if weights.shape != (len(groups),):
            raise ValueError(f"give one weight per group: {len(groups)} groups and weights {weights.tolist()}")
        if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ValueError(f"weights must be finite and non-negative with a positive sum, not {weights.tolist()}")
        group_seeds = np.random.SeedSequence([seed, _GROUP_SEED]).generate_state(len(groups), np.uint64)
        self._streams = [
            _ExampleStream(_tracks_of_shard(tracks, channels, num_shards, shard_index,
                                            name=f"group {index} (shard {shard_index} of {num_shards})"),
                           sample_rate=sample_rate, crop=crop, channels=channels, seed=int(group_seed), cache=cache,
                           crops_per_track=crops_per_track, augmentation=augmentation, songs_in_flight=songs_in_flight,
                           group=index)
            for index, (tracks, group_seed) in enumerate(zip(groups, group_seeds))]
        self.groups = [stream.tracks for stream in self._streams]
        self.weights = weights / weights.sum()
        self._choices = _GroupChoices(self.weights, seed)
        self._seed, self._cross_dataset_probability = seed, augmentation.cross_dataset_probability
        super().__init__(batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                         examples_per_pass=sum(stream.examples_per_pass for stream in self._streams), workers=workers,
                         use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)

    def _examples(self, numbers: range) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple]]:
        return [self._streams[group].example_with_origin(number, self._donor(mixed_number, group))
                for mixed_number, (group, number) in zip(numbers, self._choices(numbers))]

    def _donor(self, number: int, group: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The cross-dataset donor of mixed example ``number`` (from ``group``), or None."""
        others = self.weights * (np.arange(len(self.weights)) != group)
        if self._cross_dataset_probability == 0 or others.sum() == 0:
            return None
        generator = np.random.default_rng([self._seed, _CROSS_DATASET, number])
        remix_draw, group_draw = generator.random(2)
        if remix_draw >= self._cross_dataset_probability:
            return None
        # The first group whose cumulative weight passes the draw: never this one, nor one of weight 0.
        donor_group = int(np.argmax(np.cumsum(others) > group_draw * others.sum()))
        stream = self._streams[donor_group]
        track = int(generator.integers(len(stream.tracks)))
        return stream.accompaniment_window(track, generator), (donor_group, track)


class ValidationLoader(keras.utils.PyDataset):
    """One pass of consecutive, unaugmented windows whose outputs tile every song
    (the last one zero-padded), song after song in track order, in batches of
    ``batch_size`` (the last one may be smaller): ``make_dataset(training=False)``.

    With ``cache=True`` the songs are decoded in the constructor and kept;
    uncached, the constructor decodes each song once to count its windows and
    batches decode the songs they need, keeping the last two. The other
    parameters are ``TrainingLoader``'s.
    """

    def __init__(self, tracks: list[Track], *, sample_rate: int, crop: CropSpec, channels: int = 2,
                 batch_size: int = 16, cache: bool = True, num_shards: int = 1, shard_index: int = 0,
                 workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.tracks = _tracks_of_shard(tracks, channels, num_shards, shard_index)
        self.crop, self.batch_size = crop, batch_size
        self._songs = _Songs(self.tracks, sample_rate, channels, cache, keep=2)
        # first_window[i]: the number of song i's first window; the last entry counts them all.
        self._first_window = np.cumsum([0] + [crop.windows_to_cover(length) for length in self._songs.lengths()])

    def __len__(self) -> int:
        return -(-int(self._first_window[-1]) // self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        first = index * self.batch_size
        numbers = range(first, min(first + self.batch_size, int(self._first_window[-1])))
        return _batch([self._example(number) for number in numbers])

    def _example(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        song = int(np.searchsorted(self._first_window, number, side="right")) - 1
        start = (number - int(self._first_window[song])) * self.crop.output_length
        vocals, accompaniment = (_window(source, start, self.crop) for source in self._songs[song])
        return vocals + accompaniment, _centre(vocals, self.crop), _centre(accompaniment, self.crop)


class MappedLoader(keras.utils.PyDataset):
    """Another loader's batches through ``function(mix, targets) -> (inputs, targets)``
    (an architecture's ``training_batch``, written in ``keras.ops``), as numpy arrays:
    what ``Dataset.map`` does for the tf.data pipeline."""

    def __init__(self, loader: keras.utils.PyDataset, function):
        super().__init__(workers=loader.workers, use_multiprocessing=loader.use_multiprocessing,
                         max_queue_size=loader.max_queue_size)
        self.loader, self.function = loader, function

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int):
        return keras.tree.map_structure(keras.ops.convert_to_numpy, self.function(*self.loader[index]))

    def on_epoch_end(self):
        self.loader.on_epoch_end()
