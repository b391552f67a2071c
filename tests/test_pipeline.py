"""The tf.data pipeline: shapes, exact crop arithmetic, augmentation invariants, determinism."""
import numpy as np
import pytest

from data_pipeline.augment import AugmentOptions
from data_pipeline.pipeline import CropSpec, make_dataset, make_mixed_dataset
from tests.ramp_songs import (CROP, NO_AUGMENTATION, RATE, SONG_FRAMES, STEP, WINDOWS_PER_SONG, ramp_song, song_of,
                              write_ramp_tracks)


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    return write_ramp_tracks(tmp_path_factory.mktemp("ramps"))


def batches(tracks, count=4, **options):
    settings = dict(sample_rate=RATE, crop=CROP, batch_size=8, crops_per_track=2, seed=3)
    settings.update(options)
    return list(make_dataset(tracks, **settings).take(count).as_numpy_iterator())


def test_crop_spec_splits_context():
    assert (CROP.context_left, CROP.context_right) == (200, 201)
    with pytest.raises(ValueError):
        CropSpec(10, 20)


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_and_dtypes(tracks, channels):
    mix, targets = batches(tracks, count=1, channels=channels)[0]
    assert mix.shape == (8, 1001, channels) and mix.dtype == np.float32
    assert set(targets) == {"vocals", "accompaniment"}
    for target in targets.values():
        assert target.shape == (8, 600, channels) and target.dtype == np.float32


def test_mix_is_exactly_the_sum_of_the_labels_after_augmentation(tracks):
    for mix, targets in batches(tracks):
        centre = mix[:, CROP.context_left:CROP.context_left + CROP.output_length]
        np.testing.assert_array_equal(centre, targets["vocals"] + targets["accompaniment"])


def test_crops_are_contiguous_windows_aligned_with_the_input(tracks):
    for mix, targets in batches(tracks, augmentation=NO_AUGMENTATION):
        vocals = targets["vocals"][..., 0]
        # Two float32 roundings of values below 4 differ by at most 2.4e-7.
        np.testing.assert_allclose(np.diff(vocals, axis=1), STEP, atol=2.5e-7)
        accompaniment = targets["accompaniment"][..., 0]
        np.testing.assert_allclose(np.diff(accompaniment, axis=1), -STEP / 2, atol=2.5e-7)
        np.testing.assert_array_equal(mix[:, CROP.context_left:CROP.context_left + 600, 0], vocals + accompaniment)


def test_a_batch_draws_from_many_songs(tracks):
    distinct = [len(set(song_of(targets["vocals"][..., 0])))
                for _, targets in batches(tracks, count=6, crops_per_track=8, augmentation=NO_AUGMENTATION)]
    # A song can come round again only where one pass over the songs meets the next.
    assert min(distinct) >= 6 and np.mean(distinct) >= 7, distinct


# 64 examples: the binomial spread at p = 0.5 is 0.06; at p = 1 a song lends to itself
# only where one pass over the songs meets the next and the same song ends one and starts the other.
@pytest.mark.parametrize("probability, fewest, most", [(0.0, 0.0, 0.0), (0.5, 0.3, 0.7), (1.0, 0.9, 1.0)])
def test_cross_song_remix_takes_the_accompaniment_of_another_song(tracks, probability, fewest, most):
    options = AugmentOptions(gain_range=None, cross_song_probability=probability, swap_channels=False)
    vocals_songs, accompaniment_songs = [], []
    for mix, targets in batches(tracks, count=8, augmentation=options):
        vocals_songs.extend(song_of(targets["vocals"][..., 0]))
        accompaniment_songs.extend(song_of(targets["accompaniment"][..., 0]))
        centre = mix[:, CROP.context_left:CROP.context_left + CROP.output_length]
        np.testing.assert_array_equal(centre, targets["vocals"] + targets["accompaniment"])
    crossed = np.mean(np.array(vocals_songs) != np.array(accompaniment_songs))
    assert fewest <= crossed <= most


def test_remix_gains_lie_in_range_and_differ_between_sources(tracks):
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


def test_channel_swap_moves_every_signal_together(tracks):
    options = AugmentOptions(gain_range=None, swap_channels=True)
    swapped = []
    for mix, targets in batches(tracks, count=6, augmentation=options):
        # Every stored left channel is twice its right one.
        swapped_vocals, swapped_accompaniment = (targets[name][..., 1].sum(axis=1) > targets[name][..., 0].sum(axis=1)
                                                 for name in ("vocals", "accompaniment"))
        np.testing.assert_array_equal(swapped_vocals, swapped_accompaniment)
        swapped.extend(swapped_vocals)
        centre = mix[:, CROP.context_left:CROP.context_left + 600]
        np.testing.assert_array_equal(centre, targets["vocals"] + targets["accompaniment"])
    assert 0.2 < np.mean(swapped) < 0.8


def test_seeded_runs_repeat_and_seeds_differ(tracks):
    first, again, other = batches(tracks, seed=5), batches(tracks, seed=5), batches(tracks, seed=6)
    for (mix_a, _), (mix_b, _) in zip(first, again):
        np.testing.assert_array_equal(mix_a, mix_b)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_uncached_pipeline_gives_the_same_examples(tracks):
    cached, uncached = batches(tracks, count=2), batches(tracks, count=2, cache=False)
    for (mix_a, _), (mix_b, _) in zip(cached, uncached):
        np.testing.assert_array_equal(mix_a, mix_b)


def test_validation_windows_tile_every_song_exactly(tracks):
    examples = list(make_dataset(tracks, sample_rate=RATE, crop=CROP, batch_size=7, training=False,
                                 augmentation=NO_AUGMENTATION).as_numpy_iterator())
    vocals = np.concatenate([targets["vocals"] for _, targets in examples])
    assert len(vocals) == len(tracks) * WINDOWS_PER_SONG
    for index in range(len(tracks)):
        song = vocals[index * WINDOWS_PER_SONG:(index + 1) * WINDOWS_PER_SONG].reshape(-1, 2)
        np.testing.assert_array_equal(song[:SONG_FRAMES], ramp_song(index)[0] / 4)
        assert not song[SONG_FRAMES:].any()


def test_pitch_shift_changes_one_short_segment_of_the_input_only(tracks):
    crop = CropSpec(RATE, RATE // 2)
    options = AugmentOptions(gain_range=None, swap_channels=False, pitch_shift_semitones=0.5)
    mix, targets = batches(tracks, count=1, augmentation=options, crop=crop)[0]
    unshifted_mix, unshifted_targets = batches(
        tracks, count=1, augmentation=AugmentOptions(gain_range=None, swap_channels=False), crop=crop)[0]
    for name in targets:
        np.testing.assert_array_equal(targets[name], unshifted_targets[name])
    changed = np.abs(mix - unshifted_mix).max(axis=2) > 1e-4
    assert changed.any(axis=1).all()
    for row in changed:
        span = np.flatnonzero(row)
        assert span[-1] - span[0] + 1 <= 0.5 * RATE + 1


def test_shards_split_the_songs(tracks):
    shards = [make_dataset(tracks, sample_rate=RATE, crop=CROP, training=False, num_shards=5, shard_index=i,
                           augmentation=NO_AUGMENTATION) for i in (0, 4)]
    counts = [sum(len(mix) for mix, _ in shard.as_numpy_iterator()) for shard in shards]
    assert counts == [3 * WINDOWS_PER_SONG, 2 * WINDOWS_PER_SONG]


def example_songs(source: np.ndarray) -> np.ndarray:
    """The song of each example from a source's stored left channel, ignoring the zero padding at song edges."""
    return np.array([int(np.floor(4 * row[row != 0][0])) for row in source[..., 0]])


def test_mixed_datasets_follow_their_weights_and_remix_only_inside_a_group(tracks):
    groups = [tracks[:6], tracks[6:]]
    options = AugmentOptions(gain_range=None, cross_song_probability=1.0, swap_channels=False)
    dataset = make_mixed_dataset(groups, [4, 1], sample_rate=RATE, crop=CROP, batch_size=8, crops_per_track=2,
                                 seed=3, augmentation=options)
    vocals_songs, accompaniment_songs = [], []
    for mix, targets in dataset.take(40).as_numpy_iterator():
        centre = mix[:, CROP.context_left:CROP.context_left + CROP.output_length]
        np.testing.assert_array_equal(centre, targets["vocals"] + targets["accompaniment"])
        vocals_songs.extend(example_songs(targets["vocals"]))
        accompaniment_songs.extend(example_songs(targets["accompaniment"]))
    vocals_group, accompaniment_group = np.array(vocals_songs) >= 6, np.array(accompaniment_songs) >= 6
    assert 0.12 < vocals_group.mean() < 0.28  # weight 1/5 for the second group, 320 examples
    np.testing.assert_array_equal(vocals_group, accompaniment_group)  # a donor is always of the same group
    assert np.mean(np.array(vocals_songs) != np.array(accompaniment_songs)) > 0.9
    only_first = make_mixed_dataset(groups, [1, 0], sample_rate=RATE, crop=CROP, batch_size=8, seed=3)
    assert all((example_songs(targets["vocals"]) < 6).all() for _, targets in only_first.take(5).as_numpy_iterator())
    for weights in ([1], [1, -1], [0, 0]):
        with pytest.raises(ValueError):
            make_mixed_dataset(groups, weights, sample_rate=RATE, crop=CROP)
