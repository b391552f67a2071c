"""The numpy loader beside the tf.data pipeline: the same batches' shapes, crop
arithmetic and augmentation invariants on both paths; the numpy loader's own
determinism; mixing groups of songs by weight; training on it under TensorFlow
and, without TensorFlow, under JAX."""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from keras.src.trainers.epoch_iterator import EpochIterator  # what model.fit iterates a PyDataset with

from data_pipeline.augment import AugmentOptions
from data_pipeline.numpy_loader import (_CHOICE_BLOCK, MixedTrainingLoader, TrainingLoader, ValidationLoader,
                                        _GroupChoices)
from data_pipeline.pipeline import CropSpec, make_dataset
from models.waveunet import build_waveunet, input_length_for
from tests.helpers import TINY_WAVEUNET as TINY, run_without_tensorflow
from tests.ramp_songs import (CROP, NO_AUGMENTATION, RATE, SONG_FRAMES, STEP, WINDOWS_PER_SONG, ramp_song, song_of,
                              write_ramp_tracks)

SETTINGS = dict(sample_rate=RATE, crop=CROP, batch_size=8, crops_per_track=2, seed=3)


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    return write_ramp_tracks(tmp_path_factory.mktemp("ramps"))


def tf_batches(tracks, count=4, **options):
    return list(make_dataset(tracks, **{**SETTINGS, **options}).take(count).as_numpy_iterator())


def numpy_batches(tracks, count=4, **options):
    loader = TrainingLoader(tracks, **{**SETTINGS, **options}, steps_per_epoch=count)
    return [loader[index] for index in range(count)]


def tf_validation(tracks, **options):
    return list(make_dataset(tracks, sample_rate=RATE, crop=CROP, training=False, **options).as_numpy_iterator())


def numpy_validation(tracks, **options):
    return list(ValidationLoader(tracks, sample_rate=RATE, crop=CROP, **options))


@pytest.fixture(params=[tf_batches, numpy_batches], ids=["tf.data", "numpy"])
def batches(request):
    return request.param


@pytest.fixture(params=[tf_validation, numpy_validation], ids=["tf.data", "numpy"])
def validation(request):
    return request.param


def centre(mix):
    return mix[:, CROP.context_left:CROP.context_left + CROP.output_length]


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_and_dtypes(tracks, batches, channels):
    for mix, targets in batches(tracks, count=2, channels=channels):
        assert mix.shape == (8, 1001, channels) and mix.dtype == np.float32
        assert set(targets) == {"vocals", "accompaniment"}
        for target in targets.values():
            assert target.shape == (8, 600, channels) and target.dtype == np.float32


def test_mono_models_get_the_downmix(tracks, batches):
    stereo, mono = (batches(tracks, count=2, channels=channels, augmentation=NO_AUGMENTATION) for channels in (2, 1))
    for (_, stereo_targets), (mono_mix, mono_targets) in zip(stereo, mono):
        for name in mono_targets:
            np.testing.assert_array_equal(mono_targets[name], stereo_targets[name].mean(axis=-1, keepdims=True))
        np.testing.assert_array_equal(centre(mono_mix), mono_targets["vocals"] + mono_targets["accompaniment"])


def test_mix_is_exactly_the_sum_of_the_labels_after_augmentation(tracks, batches):
    for mix, targets in batches(tracks):
        np.testing.assert_array_equal(centre(mix), targets["vocals"] + targets["accompaniment"])


def test_crops_are_contiguous_windows_aligned_with_the_input(tracks, batches):
    for mix, targets in batches(tracks, augmentation=NO_AUGMENTATION):
        vocals = targets["vocals"][..., 0]
        # Two float32 roundings of values below 4 differ by at most 2.4e-7.
        np.testing.assert_allclose(np.diff(vocals, axis=1), STEP, atol=2.5e-7)
        accompaniment = targets["accompaniment"][..., 0]
        np.testing.assert_allclose(np.diff(accompaniment, axis=1), -STEP / 2, atol=2.5e-7)
        np.testing.assert_array_equal(centre(mix)[..., 0], vocals + accompaniment)


def test_a_batch_draws_from_many_songs(tracks, batches):
    distinct = [len(set(song_of(targets["vocals"][..., 0])))
                for _, targets in batches(tracks, count=6, crops_per_track=8, augmentation=NO_AUGMENTATION)]
    # A song can come round again only where one pass over the songs meets the next.
    assert min(distinct) >= 6 and np.mean(distinct) >= 7, distinct


# 64 examples: the binomial spread at p = 0.5 is 0.06; at p = 1 a song lends to itself
# only where one pass over the songs meets the next and the same song ends one and starts the other.
@pytest.mark.parametrize("probability, fewest, most", [(0.0, 0.0, 0.0), (0.5, 0.3, 0.7), (1.0, 0.9, 1.0)])
def test_cross_song_remix_takes_the_accompaniment_of_another_song(tracks, batches, probability, fewest, most):
    options = AugmentOptions(gain_range=None, cross_song_probability=probability, swap_channels=False)
    vocals_songs, accompaniment_songs = [], []
    for mix, targets in batches(tracks, count=8, augmentation=options):
        vocals_songs.extend(song_of(targets["vocals"][..., 0]))
        accompaniment_songs.extend(song_of(targets["accompaniment"][..., 0]))
        np.testing.assert_array_equal(centre(mix), targets["vocals"] + targets["accompaniment"])
    crossed = np.mean(np.array(vocals_songs) != np.array(accompaniment_songs))
    assert fewest <= crossed <= most


def test_remix_gains_lie_in_range_and_differ_between_sources(tracks, batches):
    options = AugmentOptions(gain_range=(0.7, 1.0), swap_channels=False)
    vocals_gains, accompaniment_gains = [], []
    for _, targets in batches(tracks, count=8, augmentation=options):
        # The ramps' slopes are known, so each window's end-to-end rise gives its gain.
        rise = (CROP.output_length - 1) * STEP
        vocals_gains.extend((targets["vocals"][:, -1, 0] - targets["vocals"][:, 0, 0]) / rise)
        accompaniment = targets["accompaniment"][..., 0]
        accompaniment_gains.extend((accompaniment[:, 0] - accompaniment[:, -1]) / (rise / 2))
    gains = np.array([vocals_gains, accompaniment_gains])
    # float32 rounding of values below 4 over a rise of 0.0016 (accompaniment): at most 3e-4 of the gain.
    assert gains.min() >= 0.7 - 3e-4 and gains.max() <= 1.0 + 3e-4
    assert gains.std(axis=1).min() > 0.05  # U[0.7, 1] has a spread of 0.087
    assert abs(np.corrcoef(gains)[0, 1]) < 0.5  # independent: 64 pairs give |r| ~ 0.13


def test_channel_swap_moves_every_signal_together(tracks, batches):
    options = AugmentOptions(gain_range=None, swap_channels=True)
    swapped = []
    for mix, targets in batches(tracks, count=6, augmentation=options):
        # Every stored left channel is twice its right one.
        swapped_vocals, swapped_accompaniment = (targets[name][..., 1].sum(axis=1) > targets[name][..., 0].sum(axis=1)
                                                 for name in ("vocals", "accompaniment"))
        np.testing.assert_array_equal(swapped_vocals, swapped_accompaniment)
        swapped.extend(swapped_vocals)
        np.testing.assert_array_equal(centre(mix), targets["vocals"] + targets["accompaniment"])
    assert 0.2 < np.mean(swapped) < 0.8


def test_seeded_runs_repeat_and_seeds_differ(tracks, batches):
    first, again, other = batches(tracks, seed=5), batches(tracks, seed=5), batches(tracks, seed=6)
    for (mix_a, _), (mix_b, _) in zip(first, again):
        np.testing.assert_array_equal(mix_a, mix_b)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_uncached_songs_give_the_same_examples(tracks, batches):
    cached, uncached = batches(tracks, count=2), batches(tracks, count=2, cache=False)
    for (mix_a, _), (mix_b, _) in zip(cached, uncached):
        np.testing.assert_array_equal(mix_a, mix_b)


def test_pitch_shift_changes_one_short_segment_of_both_sources_and_the_mix_stays_their_sum(tracks, batches):
    crop = CropSpec(RATE, RATE // 2)
    options = AugmentOptions(gain_range=None, swap_channels=False, pitch_shift_semitones=0.5)
    mix, targets = batches(tracks, count=1, augmentation=options, crop=crop)[0]
    unshifted_mix, unshifted_targets = batches(
        tracks, count=1, augmentation=AugmentOptions(gain_range=None, swap_channels=False), crop=crop)[0]
    centre = mix[:, crop.context_left:crop.context_left + crop.output_length]
    np.testing.assert_allclose(centre, targets["vocals"] + targets["accompaniment"], atol=1e-6)
    assert not all(np.array_equal(targets[name], unshifted_targets[name]) for name in targets)
    changed = np.abs(mix - unshifted_mix).max(axis=2) > 1e-4
    assert changed.any(axis=1).all()
    for row in changed:
        span = np.flatnonzero(row)
        assert span[-1] - span[0] + 1 <= 0.5 * RATE + 1


def test_validation_windows_tile_every_song_exactly(tracks, validation):
    examples = validation(tracks, batch_size=7)
    assert [len(mix) for mix, _ in examples[:-1]] == [7] * (len(examples) - 1)
    vocals = np.concatenate([targets["vocals"] for _, targets in examples])
    assert len(vocals) == len(tracks) * WINDOWS_PER_SONG
    for index in range(len(tracks)):
        song = vocals[index * WINDOWS_PER_SONG:(index + 1) * WINDOWS_PER_SONG].reshape(-1, 2)
        np.testing.assert_array_equal(song[:SONG_FRAMES], ramp_song(index)[0] / 4)
        assert not song[SONG_FRAMES:].any()
    for mix, targets in examples:
        np.testing.assert_array_equal(centre(mix), targets["vocals"] + targets["accompaniment"])


def test_validation_shards_split_the_songs(tracks, validation):
    counts = [sum(len(mix) for mix, _ in validation(tracks, num_shards=5, shard_index=index)) for index in (0, 4)]
    assert counts == [3 * WINDOWS_PER_SONG, 2 * WINDOWS_PER_SONG]


# --- the numpy loader alone -----------------------------------------------------------


def test_uncached_validation_gives_the_same_windows(tracks):
    cached, uncached = (numpy_validation(tracks[:3], batch_size=16, cache=cache) for cache in (True, False))
    assert len(cached) == len(uncached)
    for (mix_a, _), (mix_b, _) in zip(cached, uncached):
        np.testing.assert_array_equal(mix_a, mix_b)


def mixed_loader(tracks, weights=(1, 1), **options):
    """Songs 0 to 5 and songs 6 to 11 as two groups."""
    return MixedTrainingLoader([tracks[:6], tracks[6:]], list(weights), **{**SETTINGS, **options})


@pytest.fixture(params=[TrainingLoader, mixed_loader], ids=["single", "mixed"])
def loader_type(request):
    return request.param


def test_batches_depend_on_seed_epoch_and_index_only(tracks, loader_type):
    loader = loader_type(tracks, **SETTINGS, steps_per_epoch=4)
    in_order = [loader[index] for index in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # built at once, in any order
        backwards = list(pool.map(loader.__getitem__, reversed(range(4))))[::-1]
    for (mix_a, _), (mix_b, _) in zip(in_order, backwards):
        np.testing.assert_array_equal(mix_a, mix_b)
    loader.on_epoch_end()
    next_epoch = [loader[index][0] for index in range(4)]
    assert not any(np.array_equal(mix, earlier) for mix in next_epoch for earlier, _ in in_order)


def fit_batches(loader, epochs):
    """The batches ``model.fit(loader, epochs=epochs)`` trains on, in order."""
    iterator = EpochIterator(x=loader, shuffle=False)
    iterator.reset()  # as fit does before its first epoch
    seen = []
    for _ in range(epochs):
        with iterator.catch_stop_iteration():
            for _, _, batch_list in iterator:
                seen.extend(mix for mix, _ in batch_list)
    return seen


def test_fit_sees_the_same_batches_whatever_the_workers(tracks, loader_type):
    one, three = (fit_batches(loader_type(tracks, **SETTINGS, steps_per_epoch=3, workers=workers), epochs=2)
                  for workers in (1, 3))
    assert len(one) == len(three) == 6
    for mix_a, mix_b in zip(one, three):
        np.testing.assert_array_equal(mix_a, mix_b)
    assert not any(np.array_equal(one[index], one[index + 3]) for index in range(3))  # epochs do not repeat


# --- mixing groups of songs -----------------------------------------------------------

# No gains or channel swap, so that the targets tell their songs; every accompaniment from another song.
ALWAYS_REMIXED = AugmentOptions(gain_range=None, cross_song_probability=1.0, swap_channels=False)


def all_examples(loader):
    """Mixes, vocals and accompaniment of every example of an epoch, in order."""
    batches = list(loader)
    return tuple(np.concatenate(column) for column in
                 zip(*((mix, targets["vocals"], targets["accompaniment"]) for mix, targets in batches)))


def groups_of(source):
    return song_of(source[..., 0]) // 6


def test_groups_are_drawn_by_their_normalised_weights(tracks):
    _, vocals, _ = all_examples(mixed_loader(tracks, weights=(4, 1), augmentation=ALWAYS_REMIXED, steps_per_epoch=40))
    # 320 examples: the binomial spread of the fraction at p = 0.2 is 0.022.
    assert len(vocals) == 320 and 0.13 <= np.mean(groups_of(vocals) == 1) <= 0.27


def test_a_group_of_zero_weight_gives_nothing(tracks):
    only_first, only_second = (
        all_examples(mixed_loader(tracks, weights=weights, augmentation=ALWAYS_REMIXED, steps_per_epoch=20))[1]
        for weights in ((1, 0), (0, 1)))
    assert (groups_of(only_first) == 0).all() and (groups_of(only_second) == 1).all()
    # Groups of the same size draw their own song orders: each has its own seed.
    assert not np.array_equal(song_of(only_second[..., 0]) - 6, song_of(only_first[..., 0]))


def test_the_cross_song_remix_stays_inside_each_group(tracks):
    _, vocals, accompaniment = all_examples(mixed_loader(tracks, augmentation=ALWAYS_REMIXED, steps_per_epoch=16))
    np.testing.assert_array_equal(groups_of(vocals), groups_of(accompaniment))
    assert set(groups_of(vocals)) == {0, 1}
    # As for one group, a song lends to itself only where one pass meets the next.
    assert np.mean(song_of(vocals[..., 0]) != song_of(accompaniment[..., 0])) >= 0.9


def test_each_group_takes_the_next_example_of_its_own_stream(tracks):
    # A group's stream does not depend on the weights: group 0's examples of an even mix,
    # in order, are the first examples of group 0 alone.
    alone = all_examples(mixed_loader(tracks, weights=(1, 0), augmentation=ALWAYS_REMIXED, steps_per_epoch=8))
    even = all_examples(mixed_loader(tracks, weights=(1, 1), augmentation=ALWAYS_REMIXED, steps_per_epoch=8))
    from_group_0 = groups_of(even[1]) == 0
    assert 16 <= from_group_0.sum() < len(from_group_0)
    for mixed, only in zip(even, alone):
        np.testing.assert_array_equal(mixed[from_group_0], only[:from_group_0.sum()])


def test_mixed_examples_are_exactly_the_sum_of_their_sources(tracks):
    options = AugmentOptions(cross_song_probability=1.0)  # and the default gains and channel swap
    for mix, targets in mixed_loader(tracks, augmentation=options, steps_per_epoch=8):
        np.testing.assert_array_equal(centre(mix), targets["vocals"] + targets["accompaniment"])


def test_seeded_mixes_repeat_and_seeds_differ(tracks):
    first, again, other = (all_examples(mixed_loader(tracks, seed=seed, steps_per_epoch=4))[0] for seed in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def cross_dataset_origins(tracks, probability, steps=12, seed=3):
    """Origins, vocals songs and accompaniment songs (read from the samples) of an epoch of
    ``steps`` batches of 8, songs 0-5 and 6-11 mixed evenly with the cross-dataset remix at
    ``probability``; each mix checked to be the sum of its labels."""
    options = AugmentOptions(gain_range=None, cross_song_probability=1.0, swap_channels=False,
                             cross_dataset_probability=probability)
    loader = mixed_loader(tracks, augmentation=options, steps_per_epoch=steps, seed=seed)
    origins, vocals_songs, accompaniment_songs = [], [], []
    for index in range(len(loader)):
        mix, targets, origin = loader.batch_with_origin(index)
        np.testing.assert_array_equal(centre(mix), targets["vocals"] + targets["accompaniment"])
        np.testing.assert_array_equal(mix, loader[index][0])  # the batch model.fit gets
        origins.append(origin)
        vocals_songs.extend(song_of(targets["vocals"][..., 0]))
        accompaniment_songs.extend(song_of(targets["accompaniment"][..., 0]))
    return np.concatenate(origins), np.array(vocals_songs), np.array(accompaniment_songs), loader


def test_cross_dataset_batches_hold_vocals_and_accompaniment_of_different_songs_and_datasets(tracks):
    origins, vocals_songs, accompaniment_songs, loader = cross_dataset_origins(tracks, probability=1.0)
    # Each example's origin (dataset, song in it) names the songs its samples come from.
    np.testing.assert_array_equal(origins[:, 0] * 6 + origins[:, 1], vocals_songs)
    np.testing.assert_array_equal(origins[:, 2] * 6 + origins[:, 3], accompaniment_songs)
    names = [(loader.groups[v][s].name, loader.groups[a][t].name) for v, s, a, t in origins]
    assert all(vocals_name != accompaniment_name for vocals_name, accompaniment_name in names)
    # Every accompaniment from the other dataset, both ways, in every batch.
    assert (origins[:, 0] != origins[:, 2]).all()
    assert set(origins[:, 0]) == set(origins[:, 2]) == {0, 1}
    for batch in origins.reshape(-1, 8, 4):
        assert set(batch[:, 0]) == {0, 1}
    # The donors are spread over the other dataset's songs.
    assert len(set(map(tuple, origins[:, 2:]))) == 12
    np.testing.assert_array_equal(origins, cross_dataset_origins(tracks, probability=1.0)[0])  # seeded


def test_the_cross_dataset_remix_takes_its_share_and_leaves_the_rest_to_the_cross_song_remix(tracks):
    origins, vocals_songs, accompaniment_songs, _ = cross_dataset_origins(tracks, probability=0.5, steps=40)
    crossed = origins[:, 0] != origins[:, 2]
    assert 0.4 < crossed.mean() < 0.6  # 320 examples, p = 0.5: spread 0.028
    assert np.mean(vocals_songs[~crossed] != accompaniment_songs[~crossed]) > 0.9
    off = cross_dataset_origins(tracks, probability=0.0, steps=6)[0]
    np.testing.assert_array_equal(off[:, 0], off[:, 2])
    # A single dataset reports its examples' origins too: group 0, another song with the cross-song remix.
    single = TrainingLoader(tracks[:6], **{**SETTINGS, "augmentation": ALWAYS_REMIXED}, steps_per_epoch=2)
    _, targets, origin = single.batch_with_origin(0)
    np.testing.assert_array_equal(origin[:, 1], song_of(targets["vocals"][..., 0]))
    np.testing.assert_array_equal(origin[:, 3], song_of(targets["accompaniment"][..., 0]))
    assert (origin[:, [0, 2]] == 0).all()


def test_group_choices_number_each_groups_examples_in_turn_across_blocks():
    count = 2 * _CHOICE_BLOCK + 50
    in_one_go = _GroupChoices(np.array([0.5, 0.3, 0.2]), seed=1)(range(count))
    groups, numbers = np.array(in_one_go).T
    for group in range(3):
        np.testing.assert_array_equal(numbers[groups == group], np.arange(np.sum(groups == group)))
    # Batches of 12 straddle the block bounds; a fresh instance is asked for the last batch first.
    pieces = [range(start, min(start + 12, count)) for start in range(0, count, 12)]
    choices = _GroupChoices(np.array([0.5, 0.3, 0.2]), seed=1)
    in_pieces = {piece.start: choices(piece) for piece in reversed(pieces)}
    assert [choice for piece in pieces for choice in in_pieces[piece.start]] == in_one_go


def test_a_mixed_epoch_is_one_pass_over_every_group(tracks):
    loader = MixedTrainingLoader([tracks[:3], tracks[3:]], [1, 1], **SETTINGS)
    assert len(loader) == len(tracks) * SETTINGS["crops_per_track"] // SETTINGS["batch_size"]


@pytest.mark.parametrize("group_sizes, weights, message", [
    ([6, 6], [1], "one weight per group"),
    ([6, 6], [1, -0.5], "non-negative"),
    ([6, 6], [0, 0], "positive sum"),
    ([6, 6], [np.nan, 1], "finite"),
    ([6, 0], [1, 1], "group 1"),
    ([], [], "no groups"),
])
def test_bad_groups_or_weights_are_refused(tracks, group_sizes, weights, message):
    groups = [tracks[:size] for size in group_sizes]
    with pytest.raises(ValueError, match=message):
        MixedTrainingLoader(groups, weights, **SETTINGS)


# --- training on it -------------------------------------------------------------------

def test_a_model_trains_on_the_numpy_loader(tracks):
    crop = CropSpec(*input_length_for(TINY, TINY.num_frames))
    keras.utils.set_random_seed(0)
    model = build_waveunet(TINY, crop.input_length)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={"vocals": "mse", "accompaniment": "mse"})
    before = [weight.copy() for weight in model.get_weights()]
    loader = TrainingLoader(tracks, sample_rate=RATE, crop=crop, batch_size=4, steps_per_epoch=2)
    history = model.fit(loader, validation_data=ValidationLoader(tracks[:1], sample_rate=RATE, crop=crop),
                        epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4
    assert np.isfinite(history.history["loss"]).all() and np.isfinite(history.history["val_loss"]).all()
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def ramp_root(tracks) -> str:
    return str(Path(tracks[0].vocals[0].path).parents[2])


def test_the_loaders_need_no_tensorflow(tracks):
    output = run_without_tensorflow("""
import sys
from data_pipeline.augment import AugmentOptions
from data_pipeline.crops import CropSpec
from data_pipeline.datasets import get_tracks
from data_pipeline.numpy_loader import TrainingLoader, ValidationLoader
from models.architecture import SOURCES

tracks = get_tracks("folder", "train", data_root=sys.argv[1])
mix, targets = TrainingLoader(tracks, sample_rate=8000, crop=CropSpec(1001, 600), batch_size=4,
                              augmentation=AugmentOptions(pitch_shift_semitones=0.5))[0]
valid_mix, _ = ValidationLoader(tracks, sample_rate=8000, crop=CropSpec(1001, 600))[0]
print(mix.shape, *(targets[name].shape for name in SOURCES), valid_mix.shape)
""", ramp_root(tracks))
    assert output.split("\n")[0] == "(4, 1001, 2) (4, 600, 2) (4, 600, 2) (16, 1001, 2)"


def test_a_model_trains_under_jax_without_tensorflow(tracks):
    output = run_without_tensorflow(f"""
import sys
import keras
import numpy as np
from data_pipeline.crops import CropSpec
from data_pipeline.datasets import get_tracks
from data_pipeline.numpy_loader import TrainingLoader, ValidationLoader
from models.waveunet import WaveUNetConfig, build_waveunet, input_length_for

assert keras.backend.backend() == "jax"
config = WaveUNetConfig(**{TINY.to_dict()!r})
crop = CropSpec(*input_length_for(config, config.num_frames))
tracks = get_tracks("folder", "train", data_root=sys.argv[1])
keras.utils.set_random_seed(0)
model = build_waveunet(config, crop.input_length)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={{"vocals": "mse", "accompaniment": "mse"}})
loader = TrainingLoader(tracks, sample_rate=config.sample_rate, crop=crop, batch_size=4, steps_per_epoch=2, workers=2)
history = model.fit(loader, validation_data=ValidationLoader(tracks[:1], sample_rate=config.sample_rate, crop=crop),
                    epochs=2, verbose=0)
print(int(model.optimizer.iterations), np.isfinite(history.history["loss"] + history.history["val_loss"]).all())
""", ramp_root(tracks))
    assert output.split("\n")[0] == "4 True"
