#!/usr/bin/env bash
# One-step set-up on Debian/Ubuntu with Python 3.11: system codecs, then a virtual
# environment in .venv with every pinned dependency.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v ffmpeg >/dev/null || ! command -v chromedriver >/dev/null \
        || ! command -v fluidsynth >/dev/null || [ ! -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then
    # ffmpeg decodes MUSDB18 .stem.mp4; libsndfile (in the soundfile wheel) does WAV/FLAC/MP3/OGG.
    # chromium + chromium-driver run the browser test of the server's web page.
    # fluidsynth + fluid-soundfont-gm play the sampled instruments of the 'rendered' dataset.
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q ffmpeg chromium chromium-driver fluidsynth fluid-soundfont-gm
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt
echo "Set-up done: activate with 'source .venv/bin/activate'"
