"""evaluate.py: BSSEval v4 scores of the model, the best no-separation baseline and the
mixture on a tiny fake dataset, JSON output, skipped bad tracks, clear errors."""
import json

import numpy as np
import pytest
import soundfile as sf

import evaluate
from models.architecture import SOURCES
from runtime import scoring
from runtime.export import ONNX_FILE
from runtime.metrics import best_gain_estimates, least_squares_gain, signal_to_distortion
from tests.helpers import make_run_dir, tiny_waveunet

RATE = 8000


def write_song(folder, rng, seconds=2):
    """Vocals at half the accompaniment's amplitude, as independent noises."""
    folder.mkdir(parents=True)
    sf.write(folder / "vocals.wav", rng.normal(0, 0.05, (seconds * RATE, 2)), RATE)
    sf.write(folder / "accompaniment.wav", rng.normal(0, 0.1, (seconds * RATE, 2)), RATE)


def test_bss_scores_separate_a_perfect_estimate_from_the_mixture():
    rng = np.random.default_rng(0)
    references = {"vocals": rng.normal(0, 0.1, (3 * RATE, 2)), "accompaniment": rng.normal(0, 0.1, (3 * RATE, 2))}
    mixture = references["vocals"] + references["accompaniment"]
    perfect = scoring.bss_scores(references, references, RATE)
    baseline = scoring.bss_scores(references, {"vocals": mixture, "accompaniment": mixture}, RATE)
    assert perfect["vocals"]["SDR"] > 40 and perfect["accompaniment"]["SIR"] > 40
    assert abs(baseline["vocals"]["SDR"]) < 1.0  # equal-power independent sources: about 0 dB


def test_least_squares_gain_is_the_projection_onto_the_mixture():
    rng = np.random.default_rng(2)
    mixture = rng.normal(0, 0.1, (5000, 2))
    orthogonal = rng.normal(0, 0.1, (5000, 2))
    orthogonal -= np.sum(orthogonal * mixture) / np.sum(mixture ** 2) * mixture
    assert least_squares_gain(mixture, 0.3 * mixture + orthogonal) == pytest.approx(0.3, abs=1e-12)
    assert least_squares_gain(np.zeros((100, 2)), orthogonal[:100]) == 0.0


def test_best_gain_estimate_beats_every_other_scalar_multiple_of_the_mix():
    rng = np.random.default_rng(3)
    references = {"vocals": rng.normal(0, 0.03, (4000, 2)), "accompaniment": rng.normal(0, 0.1, (4000, 2))}
    mixture = references["vocals"] + references["accompaniment"]
    estimates, gains = best_gain_estimates(mixture, references)
    candidates = np.linspace(-0.5, 1.5, 2001)  # steps of 0.001
    for source, reference in references.items():
        np.testing.assert_array_equal(estimates[source], gains[source] * mixture)
        searched = [signal_to_distortion(reference, gain * mixture) for gain in candidates]
        assert abs(candidates[np.argmax(searched)] - gains[source]) <= 0.0005
        assert signal_to_distortion(reference, estimates[source]) >= max(searched)


def test_scaling_the_mixture_beats_the_plain_mixture_but_not_the_best_gain_baseline():
    # Independent sources, vocals power r = 1/4 of the accompaniment's: g mix as the vocals
    # has SDR 10 log10(r / ((1 - g)^2 r + g^2)): -6.02 dB at g = 1, 0.71 dB at g = 0.1, and
    # 0.97 dB at the least-squares gain g = r / (1 + r) = 0.2 (0.80 for the accompaniment).
    rng = np.random.default_rng(4)
    references = {"vocals": rng.normal(0, 0.05, (4 * RATE, 2)), "accompaniment": rng.normal(0, 0.1, (4 * RATE, 2))}
    mixture = references["vocals"] + references["accompaniment"]
    plain = scoring.bss_scores(references, {source: mixture for source in SOURCES}, RATE)
    trivial = scoring.bss_scores(references, {"vocals": 0.1 * mixture, "accompaniment": 0.9 * mixture}, RATE)
    best_gain, gains = best_gain_estimates(mixture, references)
    best = scoring.bss_scores(references, best_gain, RATE)
    assert gains["vocals"] == pytest.approx(0.2, abs=0.01)
    assert plain["vocals"]["SDR"] == pytest.approx(-6.02, abs=0.1)
    assert trivial["vocals"]["SDR"] == pytest.approx(0.71, abs=0.1)
    assert best["vocals"]["SDR"] == pytest.approx(0.97, abs=0.1)
    assert trivial["vocals"]["SDR"] > plain["vocals"]["SDR"] + 6
    for source in SOURCES:
        assert trivial[source]["SDR"] < best[source]["SDR"]


def test_evaluate_cli_writes_all_three_systems_and_the_gain(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name in ("one", "two"):
        write_song(tmp_path / "data" / "test" / name, rng)
    run_dir = make_run_dir(tmp_path / "run")
    output = tmp_path / "scores.json"
    assert evaluate.main(["--model", str(run_dir), "--dataset", "folder", "--data-root", str(tmp_path / "data"),
                          "--json", str(output)]) == 0
    scores = json.loads(output.read_text())
    assert sorted(scores["tracks"]) == ["one", "two"] and scores["skipped"] == []
    for source in SOURCES:
        for system in ("model", "best_gain_baseline", "mixture"):
            per_track = [scores["tracks"][t][system][source]["SDR"] for t in ("one", "two")]
            assert np.isclose(scores["median"][system][source]["SDR"], np.median(per_track))
        gains = []
        for track in scores["tracks"].values():
            gains.append(track["sdr_gain_over_best_gain_baseline"][source])
            assert gains[-1] == track["model"][source]["SDR"] - track["best_gain_baseline"][source]["SDR"]
        assert np.isclose(scores["median_sdr_gain_over_best_gain_baseline"][source], np.median(gains))
    for track in scores["tracks"].values():
        # Power ratio 1/4: least-squares gains 0.2 and 0.8, up to the noises' sampling.
        assert track["least_squares_gains"]["vocals"] == pytest.approx(0.2, abs=0.01)
        assert track["least_squares_gains"]["accompaniment"] == pytest.approx(0.8, abs=0.01)
        assert track["best_gain_baseline"]["vocals"]["SDR"] > track["mixture"]["vocals"]["SDR"] + 6
    out = capsys.readouterr().out
    assert "vocals: model median SDR" in out and "gain over best-gain baseline" in out
    assert "MEDIAN" in out


@pytest.mark.parametrize("corruption", ["random bytes", "truncated"])
def test_a_bad_track_is_reported_and_skipped(tmp_path, capsys, corruption):
    rng = np.random.default_rng(5)
    for name in ("good", "broken"):
        write_song(tmp_path / "data" / "test" / name, rng)
    broken = tmp_path / "data" / "test" / "broken" / "vocals.wav"
    if corruption == "random bytes":
        broken.write_bytes(rng.bytes(5000))
        reason = "not a readable audio file"
    else:
        broken.write_bytes(broken.read_bytes()[:-1000])
        reason = "truncated"
    output = tmp_path / "scores.json"
    code = evaluate.main(["--model", str(make_run_dir(tmp_path / "run")), "--dataset", "folder",
                          "--data-root", str(tmp_path / "data"), "--json", str(output)])
    assert code == 1
    assert f"track broken: {broken}: {reason}" in capsys.readouterr().err
    scores = json.loads(output.read_text())
    assert list(scores["tracks"]) == ["good"]
    assert [skip["track"] for skip in scores["skipped"]] == ["broken"] and reason in scores["skipped"][0]["reason"]
    assert "vocals" in scores["median"]["best_gain_baseline"]


def test_every_track_bad_is_an_error_that_still_lists_them(tmp_path, capsys):
    song = tmp_path / "data" / "test" / "broken"
    write_song(song, np.random.default_rng(6))
    (song / "accompaniment.wav").write_text("not audio")
    output = tmp_path / "scores.json"
    code = evaluate.main(["--model", str(make_run_dir(tmp_path / "run")), "--dataset", "folder",
                          "--data-root", str(tmp_path / "data"), "--json", str(output)])
    assert code == 2
    assert "none of the 1 tracks could be read" in capsys.readouterr().err
    scores = json.loads(output.read_text())
    assert scores["tracks"] == {} and [skip["track"] for skip in scores["skipped"]] == ["broken"]


def test_precision_and_chunk_seconds_reach_the_separator(tmp_path, monkeypatch):
    write_song(tmp_path / "data" / "test" / "one", np.random.default_rng(7), seconds=1)
    calls = {}
    real_load, real_separate = evaluate.load_separator, scoring.separate_song

    def load_separator(path, precision):
        calls["precision"] = precision
        return real_load(path, precision)

    def separate_song(*args, chunk_seconds, wiener=None):
        calls["chunk_seconds"] = chunk_seconds
        return real_separate(*args, chunk_seconds=chunk_seconds, wiener=wiener)

    monkeypatch.setattr(evaluate, "load_separator", load_separator)
    monkeypatch.setattr(scoring, "separate_song", separate_song)
    output = tmp_path / "scores.json"
    assert evaluate.main(["--model", str(make_run_dir(tmp_path / "run")), "--dataset", "folder",
                          "--data-root", str(tmp_path / "data"), "--json", str(output),
                          "--precision", "bfloat16", "--chunk-seconds", "0.25"]) == 0
    assert calls == {"precision": "bfloat16", "chunk_seconds": 0.25}
    assert json.loads(output.read_text())["precision"] == "bfloat16"


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "ten"])
def test_bad_chunk_seconds_is_rejected(seconds, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--model", "run", "--chunk-seconds", seconds])
    assert exit_info.value.code == 2
    assert "--chunk-seconds" in capsys.readouterr().err


def test_every_flag_has_help():
    parser_actions = evaluate.build_parser()._actions
    assert all(action.help for action in parser_actions)


def test_evaluate_cli_errors(tmp_path, capsys):
    assert evaluate.main(["--model", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    run_dir = make_run_dir(tmp_path / "run")
    assert evaluate.main(["--model", str(run_dir), "--dataset", "ccmixter"]) == 2
    assert "needs --data-root" in capsys.readouterr().err


@pytest.fixture(scope="module")
def config():
    """conftest.py's ``exported`` fixture, for one config: a tiny stereo model exported as version 1."""
    return tiny_waveunet(context=True, channels=2)


def files_of(folder):
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("model", ["version", "onnx"])
def test_an_exported_model_is_scored_into_the_current_folder_and_its_version_is_left_alone(
        exported, tmp_path, monkeypatch, capsys, model):
    _, version_dir = exported
    path = version_dir if model == "version" else version_dir / ONNX_FILE
    write_song(tmp_path / "data" / "test" / "one", np.random.default_rng(8), seconds=1)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = files_of(version_dir)
    assert evaluate.main(["--model", str(path), "--dataset", "folder", "--data-root", str(tmp_path / "data")]) == 0
    assert files_of(version_dir) == before
    # The fixture exports to <tmp>/tiny/1.
    name = {"version": "tiny-1", "onnx": "tiny-1-onnx"}[model]
    destination = work / f"evaluation-{name}-folder-test.json"
    assert sorted(work.iterdir()) == [destination]
    assert list(json.loads(destination.read_text())["tracks"]) == ["one"]
    assert f"Scores written to {destination}" in capsys.readouterr().out


def test_a_run_directory_is_still_scored_into_itself(tmp_path, monkeypatch):
    write_song(tmp_path / "data" / "test" / "one", np.random.default_rng(9), seconds=1)
    run_dir = make_run_dir(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert evaluate.main(["--model", str(run_dir), "--dataset", "folder", "--data-root", str(tmp_path / "data")]) == 0
    assert json.loads((run_dir / "evaluation-folder-test.json").read_text())["tracks"]
    assert not list(tmp_path.glob("evaluation-*.json"))


@pytest.mark.parametrize("path,name", [("export/x/1", "x-1"), ("export/x/1/model.onnx", "x-1-onnx"),
                                       ("export/x/1/model-int8.onnx", "x-1-model-int8")])
def test_exported_model_names(path, name):
    assert scoring.exported_model_name(path) == name


def test_a_json_destination_in_no_folder_is_refused_before_scoring(tmp_path, capsys):
    destination = tmp_path / "missing" / "scores.json"
    assert evaluate.main(["--model", str(tmp_path), "--json", str(destination)]) == 2
    assert f"cannot write the scores to {destination}" in capsys.readouterr().err


def results_with_one_row(tmp_path, monkeypatch, record: str, key: str):
    """A results folder in place of docs/results/ holding record ``record`` with one row ``key``."""
    from bench import records

    results = tmp_path / "results"
    results.mkdir()
    (results / f"{record}.json").write_text(json.dumps({"columns": [{"header": "row", "cell": "{label}"}],
                                                        "rows": [{"key": key, "label": key}]}))
    monkeypatch.setattr(records, "RESULTS", results)
    return results


def test_evaluate_records_the_medians_it_printed(tmp_path, monkeypatch):
    results = results_with_one_row(tmp_path, monkeypatch, "quality", "ours")
    rng = np.random.default_rng(1)
    for name in ("one", "two"):
        write_song(tmp_path / "data" / "test" / name, rng)
    argv = ["--model", str(make_run_dir(tmp_path / "run")), "--dataset", "folder", "--data-root",
            str(tmp_path / "data"), "--json", str(tmp_path / "scores.json"), "--record", "quality:ours"]
    assert evaluate.main(argv) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    row = json.loads((results / "quality.json").read_text())["rows"][0]
    assert row["figures"]["vocals_sdr"] == round(scores["median"]["model"]["vocals"]["SDR"], 2)
    assert row["figures"]["accompaniment_gain"] == round(
        scores["median_sdr_gain_over_best_gain_baseline"]["accompaniment"], 2)
    assert row["figures"]["tracks"] == 2 and row["measured"]["command"].startswith("python evaluate.py --model ")
    assert evaluate.main([*argv[:-1], "nosuchrecord:row"]) == 2


def test_wiener_scores_the_filtered_outputs(tmp_path):
    rng = np.random.default_rng(1)
    write_song(tmp_path / "data" / "test" / "one", rng)
    run_dir = make_run_dir(tmp_path / "run")
    common = ["--model", str(run_dir), "--dataset", "folder", "--data-root", str(tmp_path / "data")]
    assert evaluate.main([*common, "--json", str(tmp_path / "plain.json")]) == 0
    assert evaluate.main([*common, "--json", str(tmp_path / "wiener.json"), "--wiener", "1"]) == 0
    plain, wiener = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("plain", "wiener"))
    assert plain["post_filter"] is None and "1 EM iteration" in wiener["post_filter"]
    # The same separation, filtered: the model's scores change, the baselines do not.
    assert wiener["median"]["best_gain_baseline"] == plain["median"]["best_gain_baseline"]
    assert wiener["median"]["model"]["vocals"]["SDR"] != plain["median"]["model"]["vocals"]["SDR"]


def test_paired_with_counts_the_tracks_each_source_improves_and_records_them(tmp_path, monkeypatch, capsys):
    """Re-scored (the same deterministic model) against its own first scores moved per track
    by -1, +0.5 and -0.2 dB, the differences are exactly +1, -0.5 and +0.2 dB: better on 2
    of 3 tracks, median +0.2, mean +0.233."""
    results = results_with_one_row(tmp_path, monkeypatch, "levers", "x")
    rng = np.random.default_rng(2)
    names = ("one", "two", "three")
    for name in names:
        write_song(tmp_path / "data" / "test" / name, rng)
    run_dir = make_run_dir(tmp_path / "run")
    common = ["--model", str(run_dir), "--dataset", "folder", "--data-root", str(tmp_path / "data")]
    assert evaluate.main([*common, "--json", str(tmp_path / "first.json")]) == 0
    reference = json.loads((tmp_path / "first.json").read_text())
    shifts = dict(zip(names, (-1.0, 0.5, -0.2)))  # the reference's change; ours is its negation
    for name, shift in shifts.items():
        for source in SOURCES:
            reference["tracks"][name]["model"][source]["SDR"] += shift
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    capsys.readouterr()
    assert evaluate.main([*common, "--json", str(tmp_path / "second.json"), "--paired-with",
                          str(tmp_path / "reference.json"), "--record", "levers:x"]) == 0
    out = capsys.readouterr().out
    assert "vocals against" in out and "better on 2 of 3 tracks" in out
    paired = json.loads((tmp_path / "second.json").read_text())["paired"]
    for source in SOURCES:
        assert paired[source]["better"] == 2
        assert paired[source]["median_difference"] == pytest.approx(0.2, abs=1e-9)
        assert paired[source]["mean_difference"] == pytest.approx((1.0 - 0.5 + 0.2) / 3, abs=1e-9)
    figures = json.loads((results / "levers.json").read_text())["rows"][0]["figures"]
    assert figures["paired_tracks"] == 3 and figures["vocals_better"] == 2
    assert figures["accompaniment_paired_median"] == 0.2 and figures["vocals_paired_mean"] == 0.23


def test_paired_with_refuses_what_is_not_a_score_file_of_these_songs_before_scoring(tmp_path, capsys):
    rng = np.random.default_rng(3)
    write_song(tmp_path / "data" / "test" / "one", rng)
    common = ["--model", str(make_run_dir(tmp_path / "run")), "--dataset", "folder", "--data-root",
              str(tmp_path / "data"), "--json", str(tmp_path / "scores.json"), "--paired-with"]
    (tmp_path / "bad.json").write_text('{"tracks": {"one": {"model": {"vocals": "loud"}}}}')
    (tmp_path / "other.json").write_text(json.dumps(
        {"tracks": {"elsewhere": {"model": {source: {"SDR": 1.0} for source in SOURCES}}}}))
    for reference, message in [(tmp_path / "missing.json", "No such file"), (tmp_path / "bad.json", "not an evaluate.py"),
                               (tmp_path / "other.json", "scored none of these 1 tracks")]:
        assert evaluate.main([*common, str(reference)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "scores.json").exists()
