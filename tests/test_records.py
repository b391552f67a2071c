"""bench/records.py: every measured table in the README and docs/ is what its record in
docs/results/ renders; a table edited by hand, or a record without its rendering, is caught;
evaluate.py --record writes the figures it printed with how they were measured."""
import json

import pytest

from bench import records

COLUMNS = [{"header": "model", "cell": "{label}"}, {"header": "vocals", "cell": "{vocals_sdr:.2f} dB"}]


def test_every_table_in_the_documents_is_its_record_rendered(capsys):
    assert records.main(["--check"]) == 0
    tables = int(capsys.readouterr().out.split()[0])
    assert tables >= 1
    marked = sum(bool(records.MARKER.match(line)) for path in records.documents()
                 for line in path.read_text().splitlines())
    assert tables == marked


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "quality.json").write_text(json.dumps({"columns": COLUMNS, "rows": [
        {"key": "ours", "label": "ours"},
        {"key": "peer", "label": "a peer", "source": "a paper", "cells": {"vocals": "≈6 dB"}}]}))
    return folder


def test_a_row_is_rendered_from_the_figures_its_command_recorded(results):
    how = records.measurement("evaluate.py", ["--model", "my run"])
    assert how["command"] == "python evaluate.py --model 'my run'" and how["cpu"] and how["commit"]
    records.record_row("quality", "ours", {"vocals_sdr": 4.216}, how, results)
    records.record_row("quality", "new", {"vocals_sdr": 1.0}, how, results)
    assert records.render_table("quality", results) == [
        "| model | vocals |", "| --- | --- |", "| ours | 4.22 dB |", "| a peer | ≈6 dB |", "| new | 1.00 dB |"]
    assert json.loads((results / "quality.json").read_text())["rows"][0]["measured"] == how


def test_a_table_that_differs_from_its_record_is_rendered_anew(results):
    records.record_row("quality", "ours", {"vocals_sdr": 4.2}, records.measurement("x.py", []), results)
    table = "\n".join(records.render_table("quality", results))
    document = f"Intro\n\n<!-- results: quality -->\n{table}\n\nAfter."
    assert records.render_document(document, results) == (document, ["quality"])
    edited = document.replace("4.20 dB", "4.50 dB")
    assert records.render_document(edited, results)[0] == document
    shortened = document.replace("| a peer | ≈6 dB |\n", "")
    assert records.render_document(shortened, results)[0] == document


def test_rows_without_a_measurement_or_naming_a_missing_row_are_refused(results):
    with pytest.raises(records.RecordError, match="neither measured nor"):
        records.render_table("quality", results)  # "ours" has no figures yet
    (results / "other.json").write_text(json.dumps({"columns": COLUMNS, "rows": [
        {"key": "copy", "label": "copy", "same_as": "quality/missing"}]}))
    with pytest.raises(records.RecordError, match="no row 'missing'"):
        records.render_table("other", results)
    with pytest.raises(records.RecordError, match="no record"):
        records.render_table("absent", results)


def test_same_as_shows_one_measurement_in_two_tables(results):
    records.record_row("quality", "ours", {"vocals_sdr": 3.0}, records.measurement("x.py", []), results)
    (results / "other.json").write_text(json.dumps({"columns": COLUMNS, "rows": [
        {"key": "copy", "label": "the same model", "same_as": "quality/ours"}]}))
    assert records.render_table("other", results)[2] == "| the same model | 3.00 dB |"
