"""Songs whose samples tell where they come from, for the input pipeline tests
(tf.data in test_pipeline.py, both loaders in test_numpy_loader.py)."""
import numpy as np
import soundfile as sf

from data_pipeline.augment import AugmentOptions
from data_pipeline.crops import CropSpec
from data_pipeline.datasets import get_tracks

RATE = 8000
SONG_FRAMES = 3 * RATE
SONGS = 12  # more than a batch, so a batch can hold every example from a different song
NO_AUGMENTATION = AugmentOptions(gain_range=None, cross_song_probability=0.0, swap_channels=False)
STEP = 1 / (2 * SONG_FRAMES) / 4  # the stored vocals' rise per sample
CROP = CropSpec(input_length=1001, output_length=600)
WINDOWS_PER_SONG = -(-SONG_FRAMES // CROP.output_length)


def ramp_song(index):
    """Both sources tell their song and position: vocals rise from index to index + 0.5,
    the accompaniment falls from index + 1 to index + 0.75 at half that slope; each
    right channel is half its left one, so a channel swap shows."""
    position = (np.arange(SONG_FRAMES) + 1) / (2 * SONG_FRAMES)
    vocals, accompaniment = index + position, index + 1 - position / 2
    return tuple(np.stack([left, 0.5 * left], axis=1).astype(np.float32) for left in (vocals, accompaniment))


def song_of(left_channel):
    """The song index each example's (stored, unscaled) left channel comes from."""
    indices = np.floor(4 * left_channel).astype(int)
    assert (indices == indices[:, :1]).all()
    return indices[:, 0]


def write_ramp_tracks(root):
    """``SONGS`` ramp songs under ``root/train``, as the folder dataset's tracks."""
    for index in range(SONGS):
        vocals, accompaniment = ramp_song(index)
        song = root / "train" / f"song{index:02d}"
        song.mkdir(parents=True)
        # FLOAT WAV keeps the ramp exact (decoded through the Python path).
        sf.write(song / "vocals.wav", vocals / 4, RATE, subtype="FLOAT")
        sf.write(song / "accompaniment.wav", accompaniment / 4, RATE, subtype="FLOAT")
    return get_tracks("folder", "train", data_root=root)
