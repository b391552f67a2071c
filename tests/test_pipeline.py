"""The tf.data pipeline: shapes, exact crop arithmetic, augmentation invariants, determinism."""
import numpy as np
import pytest
import soundfile as sf

from data_pipeline.augment import AugmentOptions
from data_pipeline.datasets import get_tracks
from data_pipeline.pipeline import CropSpec, make_dataset

RATE = 8000
SONG_FRAMES = 3 * RATE
NO_AUGMENTATION = AugmentOptions(gain_range=None, swap_channels=False)


def ramp_song(index):
    """Vocals: left channel a ramp (so a value tells its position), right half of it;
    accompaniment: a constant."""
    ramp = (np.arange(SONG_FRAMES) + 1) / (2 * SONG_FRAMES) + index
    vocals = np.stack([ramp, 0.5 * ramp], axis=1)
    accompaniment = np.full((SONG_FRAMES, 2), 0.25)
    return vocals.astype(np.float32), accompaniment.astype(np.float32)


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramps")
    for index in range(3):
        vocals, accompaniment = ramp_song(index)
        song = root / "train" / f"song{index}"
        song.mkdir(parents=True)
        # FLOAT WAV keeps the ramp exact (decoded through the Python path).
        sf.write(song / "vocals.wav", vocals / 4, RATE, subtype="FLOAT")
        sf.write(song / "accompaniment.wav", accompaniment / 4, RATE, subtype="FLOAT")
    return get_tracks("folder", "train", data_root=root)


CROP = CropSpec(input_length=1001, output_length=600)


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
    step = 1 / (2 * SONG_FRAMES) / 4
    for mix, targets in batches(tracks, augmentation=NO_AUGMENTATION):
        vocals = targets["vocals"][..., 0]
        inside = vocals != 0  # away from the zero padding at the song edges
        np.testing.assert_allclose(np.diff(vocals, axis=1)[inside[:, :-1] & inside[:, 1:]], step, atol=2.5e-7)  # float32 rounding
        accompaniment = targets["accompaniment"][..., 0]
        np.testing.assert_allclose(mix[:, CROP.context_left:CROP.context_left + 600, 0], vocals + accompaniment)


def test_remix_gains_lie_in_range_and_scale_labels(tracks):
    options = AugmentOptions(gain_range=(0.7, 1.0), swap_channels=False)
    gains = []
    for _, targets in batches(tracks, count=8, augmentation=options):
        accompaniment = targets["accompaniment"][..., 0]
        for row in accompaniment:
            values = row[row != 0]
            if len(values):
                gains.append(values[0] / 0.0625)  # the stored accompaniment is 0.25 / 4
                np.testing.assert_allclose(values, values[0], rtol=1e-6)  # one gain per example
    gains = np.array(gains)
    assert gains.min() >= 0.7 - 1e-6 and gains.max() <= 1.0 + 1e-6 and gains.std() > 0.03


def test_channel_swap_moves_every_signal_together(tracks):
    options = AugmentOptions(gain_range=None, swap_channels=True)
    swapped = []
    for mix, targets in batches(tracks, count=6, augmentation=options):
        vocals = targets["vocals"]
        louder_left = np.abs(vocals[..., 0]).sum(axis=1) > np.abs(vocals[..., 1]).sum(axis=1)
        swapped.extend(~louder_left)
        centre = mix[:, CROP.context_left:CROP.context_left + 600]
        np.testing.assert_array_equal(centre, vocals + targets["accompaniment"])
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
    windows_per_song = -(-SONG_FRAMES // CROP.output_length)
    assert len(vocals) == len(tracks) * windows_per_song
    for index in range(len(tracks)):
        song = vocals[index * windows_per_song:(index + 1) * windows_per_song].reshape(-1, 2)
        np.testing.assert_allclose(song[:SONG_FRAMES], ramp_song(index)[0] / 4, atol=1e-7)
        assert not song[SONG_FRAMES:].any()


def test_pitch_shift_changes_one_short_segment_of_the_input_only(tracks):
    options = AugmentOptions(gain_range=None, swap_channels=False, pitch_shift_semitones=0.5)
    mix, targets = batches(tracks, count=1, augmentation=options, crop=CropSpec(RATE, RATE // 2))[0]
    clean = CropSpec(RATE, RATE // 2)
    unshifted = batches(tracks, count=1, augmentation=NO_AUGMENTATION, crop=clean)[0]
    np.testing.assert_array_equal(targets["vocals"], unshifted[1]["vocals"])
    changed = np.abs(mix - unshifted[0]).max(axis=2) > 1e-4
    for row in changed:
        if row.any():
            span = np.flatnonzero(row)
            assert span[-1] - span[0] + 1 <= 0.5 * RATE + 1


def test_shards_split_the_songs(tracks):
    shards = [make_dataset(tracks, sample_rate=RATE, crop=CROP, training=False, num_shards=2, shard_index=i,
                           augmentation=NO_AUGMENTATION) for i in range(2)]
    counts = [sum(len(mix) for mix, _ in shard.as_numpy_iterator()) for shard in shards]
    windows_per_song = -(-SONG_FRAMES // CROP.output_length)
    assert counts == [2 * windows_per_song, 1 * windows_per_song]
