"""evaluate.py: BSSEval v4 scores on a tiny fake dataset, JSON output, clear errors."""
import json

import numpy as np
import soundfile as sf

import evaluate
from tests.test_separate import make_run_dir

RATE = 8000


def test_bss_scores_separate_a_perfect_estimate_from_the_mixture():
    rng = np.random.default_rng(0)
    references = {"vocals": rng.normal(0, 0.1, (3 * RATE, 2)), "accompaniment": rng.normal(0, 0.1, (3 * RATE, 2))}
    mixture = references["vocals"] + references["accompaniment"]
    perfect = evaluate.bss_scores(references, references, RATE)
    baseline = evaluate.bss_scores(references, {"vocals": mixture, "accompaniment": mixture}, RATE)
    assert perfect["vocals"]["SDR"] > 40 and perfect["accompaniment"]["SIR"] > 40
    assert abs(baseline["vocals"]["SDR"]) < 1.0  # equal-power independent sources: about 0 dB


def test_evaluate_cli_writes_per_track_and_median_scores(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name in ("one", "two"):
        song = tmp_path / "data" / "test" / name
        song.mkdir(parents=True)
        sf.write(song / "vocals.wav", rng.normal(0, 0.05, (2 * RATE, 2)), RATE)
        sf.write(song / "accompaniment.wav", rng.normal(0, 0.1, (2 * RATE, 2)), RATE)
    run_dir = make_run_dir(tmp_path / "run")
    output = tmp_path / "scores.json"
    assert evaluate.main(["--model", str(run_dir), "--dataset", "folder", "--data-root", str(tmp_path / "data"),
                          "--json", str(output)]) == 0
    scores = json.loads(output.read_text())
    assert sorted(scores["tracks"]) == ["one", "two"]
    for system in ("model", "mixture"):
        for source in ("vocals", "accompaniment"):
            per_track = [scores["tracks"][t][system][source]["SDR"] for t in ("one", "two")]
            assert np.isclose(scores["median"][system][source]["SDR"], np.median(per_track))
    # The mixture holds the accompaniment at twice the vocals' amplitude.
    assert scores["median"]["mixture"]["accompaniment"]["SDR"] > scores["median"]["mixture"]["vocals"]["SDR"] + 6
    assert "vocals: median SDR" in capsys.readouterr().out


def test_evaluate_cli_errors(tmp_path, capsys):
    assert evaluate.main(["--model", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    run_dir = make_run_dir(tmp_path / "run")
    assert evaluate.main(["--model", str(run_dir), "--dataset", "ccmixter"]) == 2
    assert "needs --data-root" in capsys.readouterr().err
