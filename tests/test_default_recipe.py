"""The default recipe end to end (slow: ~7 minutes on 2 cores; run with -m slow):
python train.py --arch waveunet, then evaluate.py on the synthetic test split."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_training_beats_the_mixture_by_five_db(tmp_path):
    environment = {**os.environ, "WAVESEP_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run_dir = tmp_path / "run"
    for command in (["train.py", "--arch", "waveunet", "--run-dir", str(run_dir)],
                    ["evaluate.py", "--model", str(run_dir), "--json", str(tmp_path / "scores.json")]):
        subprocess.run([sys.executable, *command], cwd=REPOSITORY, env=environment, check=True, timeout=1800)
    median = json.loads((tmp_path / "scores.json").read_text())["median"]
    assert median["model"]["vocals"]["SDR"] - median["mixture"]["vocals"]["SDR"] >= 5.0
