"""Writes any registered dataset's splits in the ``folder`` layout
(``<out>/<split>/<song>/vocals.<ext>`` and ``accompaniment.<ext>``) at one sample
rate, so it trains where its own decoder is missing (a MUSDB18 ``.stem.mp4``
needs ffmpeg) or must travel small (Ogg Vorbis is about a quarter of 16-bit FLAC):

    python -m data_pipeline.to_folder --dataset musdb --data-root path/to/musdb18 \\
        --out data/musdb-22k --rate 22050 --format ogg

The mixture is not written: the folder dataset sums the two sources.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from data_pipeline.audio import AudioError
from data_pipeline.datasets import DATASETS, SPLITS, DatasetError, get_tracks, load_track

# libsndfile's format, subtype and settings per extension; Vorbis "compression 0.3" is quality 0.7.
FORMATS = {
    "flac": dict(format="FLAC", subtype="PCM_16"),
    "wav": dict(format="WAV", subtype="PCM_16"),
    "ogg": dict(format="OGG", subtype="VORBIS", compression_level=0.3),
}


def write_folder_dataset(dataset: str, data_root, out, *, splits=("train", "valid"), sample_rate: int = 22050,
                         audio_format: str = "flac", progress: bool = True) -> int:
    """Writes ``splits`` of ``dataset`` under ``out``; returns the number of songs written."""
    out = Path(out)
    settings = FORMATS[audio_format]
    written = 0
    for split in splits:
        tracks = get_tracks(dataset, split, data_root=data_root, sample_rate=sample_rate)
        for track in tqdm(tracks, desc=f"{split} songs", unit="song", disable=not progress):
            audio = load_track(track, sample_rate, channels=2)
            folder = out / split / track.name
            folder.mkdir(parents=True, exist_ok=True)
            for source in ("vocals", "accompaniment"):
                # Integer and Vorbis formats hold [-1, 1]; a stem past full scale is clipped as a player would.
                sf.write(folder / f"{source}.{audio_format}", np.clip(audio[source], -1.0, 1.0), sample_rate,
                         **settings)
            written += 1
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-root", help="the dataset's root (not for generated datasets)")
    parser.add_argument("--out", required=True, help="folder to write (the folder dataset's --data-root)")
    parser.add_argument("--splits", nargs="+", default=["train", "valid"], choices=SPLITS)
    parser.add_argument("--rate", type=int, default=22050, help="sample rate to write (default: 22050)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="flac",
                        help="flac or wav (16-bit) or ogg (Vorbis, quality 0.7; smallest); default flac")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    try:
        songs = write_folder_dataset(args.dataset, args.data_root, args.out, splits=args.splits,
                                     sample_rate=args.rate, audio_format=args.format)
    except (DatasetError, AudioError) as error:  # a bad root, or a song that does not decode
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {songs} songs under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
