#!/usr/bin/env bash
# The GPU campaign in one call of a lent GPU host (Python 3.12 with JAX, no TensorFlow, no
# ffmpeg, nothing to download), from the repository root, carrying the wheels and the pack:
#
#   python -m training.gpu_pack --out gpu-pack --musdb-root ... --mir1k-root ...   # here, once
#   (the wheels: docs/training.md, "A GPU for a few minutes")
#   device run: command "bash training/gpu_campaign_run.sh", carry [".whl", "gpu-pack"], timeout_s 600
#
# It installs the carried wheels, checks that soundfile decodes the pack's Vorbis and Opus,
# trains the chosen recipe at two widths and two seeds side by side for MINUTES (default 8:
# the call's 10-minute limit less the install and the packing), and leaves under $OUT one tar
# per run (the best weights and the average of the last AVERAGE validations, float16 run
# directories: tar -xf NAME.tar -C runs/gpu) and the log. AVERAGE=0 trains without kept
# checkpoints. Rehearsed here on the CPU (docs/training.md) with a small copy of the pack:
#   OUT=/tmp/out PACK=mini-pack MINUTES=10 WHEELS=none PYTHON=.venv/bin/python \
#       CAMPAIGN_FLAGS="--steps 4 --widths 8,12 --seeds 0,1 -- --batch-size 2" bash training/gpu_campaign_run.sh
set -uo pipefail
OUT=${OUT:?set OUT to the folder that comes back}
MINUTES=${MINUTES:-8}
AVERAGE=${AVERAGE:-4}
PACK=${PACK:-gpu-pack}
PYTHON=${PYTHON:-python3}
RESULTS=$(mktemp -d)
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
if [ "${WHEELS:-.whl}" != none ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${WHEELS:-.whl}"/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" - "$PACK" <<'EOF' 2>&1 | tee "$OUT/campaign.log" || exit 1
import sys, glob
import soundfile, keras
for pattern in ("musdb-22k/valid/*/vocals.ogg", "mir-1k/train/*/vocals.ogg"):
    path = sorted(glob.glob(f"{sys.argv[1]}/{pattern}"))[0]
    audio, rate = soundfile.read(path)
    print(f"{soundfile.info(path).subtype} decodes: {path} {audio.shape} at {rate} Hz")
print(f"libsndfile {soundfile.__libsndfile_version__}, keras {keras.__version__} on {keras.backend.backend()}")
EOF
# shellcheck disable=SC2086  # CAMPAIGN_FLAGS is split on purpose
"$PYTHON" -m training.gpu_campaign --pack "$PACK" --recipe --average "$AVERAGE" --out "$RESULTS" \
    --minutes "$MINUTES" ${CAMPAIGN_FLAGS:---widths 24,16 --seeds 0,1} 2>&1 | tee -a "$OUT/campaign.log"
status=${PIPESTATUS[0]}
shopt -s nullglob
for run in "$RESULTS"/*; do
    name=$(basename "$run")
    case $name in *-avg) continue ;; esac
    members=("$name")
    [ -d "$RESULTS/$name-avg" ] && members+=("$name-avg")
    tar -cf "$OUT/$name.tar" -C "$RESULTS" "${members[@]}"
done
ls -l "$OUT" | tee -a "$OUT/campaign.log"
exit "$status"
