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
