"""What only the tf.data pipeline has to show: crop geometry and mixing datasets
(the invariants both loaders share are tested on each in test_numpy_loader.py)."""
import numpy as np
import pytest

from data_pipeline.augment import AugmentOptions
from data_pipeline.pipeline import CropSpec, make_mixed_dataset
from tests.ramp_songs import CROP, RATE, write_ramp_tracks


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    return write_ramp_tracks(tmp_path_factory.mktemp("ramps"))


def test_crop_spec_splits_context():
    assert (CROP.context_left, CROP.context_right) == (200, 201)
    with pytest.raises(ValueError):
        CropSpec(10, 20)


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


def cross_dataset_examples(groups, probability, seed=3, batches=12):
    """Origins, vocals songs and accompaniment songs (read from the samples) of ``batches`` batches of
    8 mixing ``groups`` evenly, with the cross-dataset remix at ``probability``; each mix checked to be
    the sum of its labels."""
    options = AugmentOptions(gain_range=None, cross_song_probability=1.0, swap_channels=False,
                             cross_dataset_probability=probability)
    dataset = make_mixed_dataset(groups, [1, 1], sample_rate=RATE, crop=CROP, batch_size=8, crops_per_track=2,
                                 seed=seed, augmentation=options, with_origin=True)
    origins, vocals_songs, accompaniment_songs = [], [], []
    for mix, targets, origin in dataset.take(batches).as_numpy_iterator():
        centre = mix[:, CROP.context_left:CROP.context_left + CROP.output_length]
        np.testing.assert_array_equal(centre, targets["vocals"] + targets["accompaniment"])
        origins.append(origin)
        vocals_songs.extend(example_songs(targets["vocals"]))
        accompaniment_songs.extend(example_songs(targets["accompaniment"]))
    return np.concatenate(origins), np.array(vocals_songs), np.array(accompaniment_songs)


def test_cross_dataset_batches_hold_vocals_and_accompaniment_of_different_songs_and_datasets(tracks):
    groups = [tracks[:6], tracks[6:]]
    origins, vocals_songs, accompaniment_songs = cross_dataset_examples(groups, probability=1.0)
    # Each example's origin (dataset, song in it) names the songs its samples come from.
    np.testing.assert_array_equal(origins[:, 0] * 6 + origins[:, 1], vocals_songs)
    np.testing.assert_array_equal(origins[:, 2] * 6 + origins[:, 3], accompaniment_songs)
    names = [(groups[v][s].name, groups[a][t].name) for v, s, a, t in origins]
    assert all(vocals_name != accompaniment_name for vocals_name, accompaniment_name in names)
    # Every accompaniment from the other dataset, once the other dataset has lent one (its first examples).
    crossed = origins[:, 0] != origins[:, 2]
    assert crossed[8:].all() and crossed.mean() > 0.95
    assert set(origins[:, 0]) == set(origins[:, 2]) == {0, 1}  # both ways: each dataset's vocals over the other's
    for batch in origins.reshape(-1, 8, 4)[1:]:  # and inside each batch
        assert set(batch[:, 0]) == {0, 1} and (batch[:, 0] != batch[:, 2]).all()
    again = cross_dataset_examples(groups, probability=1.0)[0]
    np.testing.assert_array_equal(origins, again)  # seeded: the same plan again


def test_the_cross_dataset_remix_takes_its_share_and_leaves_the_rest_to_the_cross_song_remix(tracks):
    origins, vocals_songs, accompaniment_songs = cross_dataset_examples([tracks[:6], tracks[6:]], probability=0.5,
                                                                        batches=40)
    crossed = origins[:, 0] != origins[:, 2]
    assert 0.4 < crossed.mean() < 0.6  # 320 examples, p = 0.5: spread 0.028
    # The others take another song of their own dataset, as without the option.
    assert np.mean(vocals_songs[~crossed] != accompaniment_songs[~crossed]) > 0.9
    off = cross_dataset_examples([tracks[:6], tracks[6:]], probability=0.0, batches=6)[0]
    np.testing.assert_array_equal(off[:, 0], off[:, 2])
