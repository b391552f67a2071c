"""Measured tables as data, so no figure in the README or docs/ can go stale unseen.

Each measured table is rendered from a record, ``docs/results/NAME.json``: its columns
(a header and a cell template each) and its rows, each row's figures with how they were
measured (the command line, the commit, the CPU, the date), written by the command that
measured them (``evaluate.py --record NAME:ROW``, ``bench/stream.py --record NAME``).
A row may instead name a ``source`` (a published figure, or one measured before records
existed, with its commit) or be ``same_as`` a row of another record (one measurement shown
in two tables); its ``cells`` may override a column's template. In a document, the line
``<!-- results: NAME -->`` stands right above the table rendered from it.

    python -m bench.records            # re-render every table from its record
    python -m bench.records --check    # exit 1 naming each table that differs from its record

tests/test_records.py runs the check, so a table edited by hand, or a record updated
without rendering, fails the suite.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from runtime.cpu import this_cpu

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "docs" / "results"
MARKER = re.compile(r"^<!-- results: ([a-z0-9-]+) -->$")
# A row's own fields; the rest of a cell template's names are its figures.
ROW_FIELDS = ("key", "figures", "measured", "source", "same_as", "cells")


class RecordError(ValueError):
    """A record that is missing, malformed, or names a row that does not exist."""


def documents(root: Path = REPOSITORY) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")),
            *sorted((root / "pretrained").glob("*/README.md"))]


def load_record(name: str, results: Path | None = None) -> dict:
    path = (results or RESULTS) / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"no record {path}") from None
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not JSON ({error})") from None
    if not isinstance(record.get("columns"), list) or not isinstance(record.get("rows"), list):
        raise RecordError(f"{path}: a record holds 'columns' and 'rows'")
    return record


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(text)
    os.replace(file.name, path)


def _commit() -> str:
    """HEAD's short hash, ``+changes`` when tracked files differ from it (what ran is then not HEAD)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def measurement(program: str, argv: list[str]) -> dict:
    """How a figure was measured: the command line as typed (``program``: what follows
    ``python``, e.g. ``evaluate.py`` or ``-m bench.separate``), the code, the machine, the day."""
    return {"command": " ".join(["python", program, shlex.join(argv)]).rstrip(), "commit": _commit(), "cpu": this_cpu().describe(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def record_row(name: str, key: str, figures: dict, how: dict, results: Path | None = None) -> Path:
    """Puts a row's figures and their measurement into record ``name`` (which must exist:
    its columns say how figures become cells), replacing the row of that key or adding it
    at the end (labelled by its key until a label is written into the record)."""
    record = load_record(name, results)
    row = next((row for row in record["rows"] if row.get("key") == key), None)
    if row is None:
        row = {"key": key, "label": key}
        record["rows"].append(row)
    for field in ("source", "same_as"):
        row.pop(field, None)
    row.update(figures=figures, measured=how)
    path = (results or RESULTS) / f"{name}.json"
    _write_atomically(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def _resolved(row: dict, results: Path | None, seen: tuple = ()) -> dict:
    """The row with the figures of the row it is ``same_as`` (``RECORD/KEY``), if any."""
    if "same_as" not in row:
        return row
    target = row["same_as"]
    if target in seen:
        raise RecordError(f"rows that are each other's 'same_as': {' -> '.join(seen + (target,))}")
    name, _, key = target.partition("/")
    other = next((r for r in load_record(name, results)["rows"] if r.get("key") == key), None)
    if other is None:
        raise RecordError(f"same_as {target}: record {name} has no row {key!r}")
    other = _resolved(other, results, seen + (target,))
    return {**row, "figures": other.get("figures", {}), "measured": other.get("measured")}


def render_table(name: str, results: Path | None = None) -> list[str]:
    """The Markdown lines of record ``name``'s table."""
    record = load_record(name, results)
    lines = ["| " + " | ".join(column["header"] for column in record["columns"]) + " |",
             "| " + " | ".join("---" for _ in record["columns"]) + " |"]
    for row in record["rows"]:
        row = _resolved(row, results)
        if "measured" not in row and "source" not in row:
            raise RecordError(f"record {name}, row {row.get('key')!r}: neither measured nor a named source")
        names = {**{k: v for k, v in row.items() if k not in ROW_FIELDS}, **row.get("figures", {})}
        cells = []
        for column in record["columns"]:
            # A row may show a cell otherwise; columns of the same header are told apart by a "key".
            column_key = column.get("key", column["header"])
            template = row.get("cells", {}).get(column_key, column["cell"])
            try:
                cells.append(template.format(**names))
            except (KeyError, ValueError) as error:
                raise RecordError(f"record {name}, row {row.get('key')!r}, column {column_key!r}: {error!r}") from None
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_document(text: str, results: Path | None = None) -> tuple[str, list[str]]:
    """The document with every marked table rendered from its record, and the names of those tables."""
    lines, out, names, index = text.split("\n"), [], [], 0
    while index < len(lines):
        out.append(lines[index])
        found = MARKER.match(lines[index])
        index += 1
        if found:
            names.append(found.group(1))
            out.extend(render_table(found.group(1), results))
            while index < len(lines) and lines[index].startswith("|"):  # the table as it stands
                index += 1
    return "\n".join(out), names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="change nothing: exit 1 naming each document whose tables differ from their records")
    args = parser.parse_args(argv)
    stale, tables = [], 0
    for path in documents():
        text = path.read_text()
        try:
            rendered, names = render_document(text)
        except RecordError as error:
            print(f"error: {path.relative_to(REPOSITORY)}: {error}", file=sys.stderr)
            return 1
        tables += len(names)
        if rendered != text:
            stale.append(f"{path.relative_to(REPOSITORY)} ({', '.join(names)})")
            if not args.check:
                _write_atomically(path, rendered)
    if args.check and stale:
        print("tables that differ from their records (run python -m bench.records):\n  " + "\n  ".join(stale),
              file=sys.stderr)
        return 1
    print(f"{tables} tables {'checked' if args.check else 'rendered'} from docs/results/"
          + (f"; re-rendered: {', '.join(stale)}" if stale and not args.check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
