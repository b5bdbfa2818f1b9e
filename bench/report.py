"""One writer for every result of ``bench/`` and ``experiments/``: JSON first, Markdown from it.

A result is ``results/NAME.json``: whatever the script measured, plus a ``report`` object
that says what ``results/NAME.md`` shows: a title and blocks of text, headings and tables
(columns and rows of cells). The Markdown is rendered from the JSON alone, by :func:`render`,
so every committed result can be re-rendered without the script (or the machine) that wrote
it, and nothing a table shows is missing from the JSON:

    PYTHONPATH=. python3 -m bench.report --render-all           # bench/ and experiments/ results
    PYTHONPATH=. python3 -m bench.report --check                # exit 1 if a .md is stale
    PYTHONPATH=. python3 -m bench.report experiments/results/recipe.json

A script builds its :class:`Report` from what it measured and calls :func:`write_results`.
Prose written after a run (what the numbers show) is the JSON's ``comment`` (the scripts'
``--comment``), rendered under the report's ``notes_heading``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where results live; --render-all renders every JSON with a report in these folders.
RESULT_FOLDERS = (REPO_ROOT / "bench" / "results", REPO_ROOT / "experiments" / "results")
REPORT = "report"  # the JSON key of the report
NOTES = "comment"  # the JSON key of the prose rendered under the notes heading


def cell(value: Any) -> str:
    """A table cell: floats with 3 decimals, None as "-", anything else as ``str``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class Report:
    """What a result's Markdown shows, as JSON-able blocks; :func:`render` turns it into text."""

    def __init__(self, title: str, *, notes_heading: str = "What the numbers show") -> None:
        self.title = title
        self.notes_heading = notes_heading
        self.blocks: list[dict[str, Any]] = []

    def text(self, *paragraphs: str) -> Report:
        """Paragraphs (Markdown as written: a list, a quote), one block each."""
        self.blocks += [{"text": p} for p in paragraphs]
        return self

    def heading(self, text: str, level: int = 2) -> Report:
        self.blocks.append({"heading": text, "level": level})
        return self

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Report:
        """A table; cells stay numbers where they are (rendered by :func:`cell`)."""
        rows = [list(row) for row in rows]
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"a row of {len(row)} cells in a table of columns {columns}")
        self.blocks.append({"columns": list(columns), "rows": rows})
        return self

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "notes_heading": self.notes_heading, "blocks": self.blocks}


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(result: Mapping[str, Any]) -> str:
    """The Markdown of a result (a JSON object with a ``report``)."""
    report = result[REPORT]
    parts = [f"# {report['title']}"]
    for block in report["blocks"]:
        if "heading" in block:
            parts.append(f"{'#' * block.get('level', 2)} {block['heading']}")
        elif "columns" in block:
            parts.append(render_table(block["columns"], block["rows"]))
        else:
            parts.append(block["text"])
    if notes := (result.get(NOTES) or "").strip():
        parts += [f"## {report.get('notes_heading') or 'Notes'}", notes]
    return "\n\n".join(parts) + "\n"


def dumps(payload: Any, *, indent: int = 2) -> str:
    """``json.dumps(payload, indent=indent)``, except that in the report every list of plain
    values (a table's columns, each of its rows) stays on one line."""

    def encode(value: Any, depth: int, compact: bool) -> str:
        pad, inner = " " * indent * depth, " " * indent * (depth + 1)
        if isinstance(value, dict) and value:
            items = [
                f"{inner}{json.dumps(str(k))}: {encode(v, depth + 1, compact or k == REPORT)}"
                for k, v in value.items()
            ]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, list | tuple) and value:
            if compact and not any(isinstance(v, dict | list | tuple) for v in value):
                return json.dumps(value)
            items = [f"{inner}{encode(v, depth + 1, compact)}" for v in value]
            return "[\n" + ",\n".join(items) + f"\n{pad}]"
        return json.dumps(value)

    return encode(payload, 0, False)


def write_json(path: Path, payload: Any, *, indent: int = 2) -> None:
    """``payload`` as JSON (:func:`dumps`) at ``path``, written whole, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes may share a folder
    tmp.write_text(dumps(payload, indent=indent) + "\n")
    tmp.replace(path)


def write_results(
    out: Path, name: str, data: Mapping[str, Any], report: Report, *, notes: str | None = None
) -> Path:
    """Write ``<out>/<name>.json`` (``data``, ``notes`` as its comment, the report) and render
    ``<out>/<name>.md`` from that JSON; returns the JSON's path."""
    result = {**data, REPORT: report.to_json()}
    if notes is not None:
        result[NOTES] = notes
    path = out / f"{name}.json"
    write_json(path, result)
    render_file(path)
    return path


def has_report(path: Path) -> bool:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and REPORT in result


def render_file(path: Path, *, check: bool = False) -> bool:
    """Render ``NAME.json``'s report to ``NAME.md``; with ``check``, only compare. True if the
    Markdown on disk was already what the JSON renders to."""
    text = render(json.loads(path.read_text()))
    markdown = path.with_suffix(".md")
    current = markdown.read_text() if markdown.is_file() else None
    if not check and current != text:
        markdown.write_text(text)
    return current == text


def result_files(folders: Iterable[Path] = RESULT_FOLDERS) -> list[Path]:
    """Every ``*.json`` with a report in ``folders``."""
    return [p for folder in folders for p in sorted(folder.glob("*.json")) if has_report(p)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="*", help="result JSON files to render")
    parser.add_argument(
        "--render-all", action="store_true", help="every result in bench/ and experiments/"
    )
    parser.add_argument(
        "--check", action="store_true", help="render nothing: exit 1 if a .md is not the JSON's"
    )
    args = parser.parse_args(argv)
    files = list(args.files)
    if args.render_all or not files:
        files += result_files()
    stale = [p for p in files if not render_file(p, check=args.check)]
    for path in stale:
        print(f"{'stale' if args.check else 'rendered'}: {path.with_suffix('.md')}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
