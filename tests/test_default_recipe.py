"""The default recipe end to end (slow: ~10 minutes on 2 cores; run with -m slow):
python train.py --arch waveunet, then evaluate.py on the synthetic test split and on
the real MUSDB18 sample songs. The margins are over the best no-separation baseline
(the mixture times its per-track least-squares gain), set a little under what the
recipe measured (see docs/benchmarks.md), so they fail if it stops separating."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
MUSDB_SAMPLE = REPOSITORY.parent / "shared" / "fixtures" / "musdb18-sample"
# Median per-track SDR gain over the best-gain baseline, in dB. Measured for the
# recipe (400 steps): synthetic test split +0.63 vocals / +0.87 accompaniment;
# Falcon 69 +1.09 / +1.22; 80s Rock +0.92 / +1.00.
SYNTHETIC_MARGIN = {"vocals": 0.3, "accompaniment": 0.5}
MUSDB_SAMPLE_MARGIN = {"vocals": 0.5, "accompaniment": 0.5}


def evaluate(run_dir: Path, scores: Path, environment: dict, *dataset: str) -> dict:
    subprocess.run([sys.executable, "evaluate.py", "--model", str(run_dir), "--json", str(scores), *dataset],
                   cwd=REPOSITORY, env=environment, check=True, timeout=1800)
    return json.loads(scores.read_text())["median_sdr_gain_over_best_gain_baseline"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, dict]:
    """``python train.py --arch waveunet``, once for the module: its run directory and environment."""
    folder = tmp_path_factory.mktemp("default-recipe")
    environment = {**os.environ, "WAVESEP_CACHE": str(folder / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run_dir = folder / "run"
    subprocess.run([sys.executable, "train.py", "--arch", "waveunet", "--run-dir", str(run_dir)], cwd=REPOSITORY,
                   env=environment, check=True, timeout=1800)
    return run_dir, environment


@pytest.mark.slow
def test_default_training_separates_the_synthetic_test_split_beyond_the_best_gain_baseline(default_run, tmp_path):
    run_dir, environment = default_run
    gains = evaluate(run_dir, tmp_path / "synthetic.json", environment)
    for source, margin in SYNTHETIC_MARGIN.items():
        assert gains[source] >= margin, gains


@pytest.mark.slow
@pytest.mark.skipif(not MUSDB_SAMPLE.is_dir(), reason="needs ../shared/fixtures/musdb18-sample")
@pytest.mark.parametrize("split", ["test", "train"])  # Falcon 69 and 80s Rock, each scored on its own
def test_default_training_separates_the_musdb_sample_songs_beyond_the_best_gain_baseline(default_run, tmp_path,
                                                                                          split):
    run_dir, environment = default_run
    gains = evaluate(run_dir, tmp_path / f"musdb-{split}.json", environment, "--dataset", "musdb", "--data-root",
                     str(MUSDB_SAMPLE), "--split", split)
    for source, margin in MUSDB_SAMPLE_MARGIN.items():
        assert gains[source] >= margin, gains
