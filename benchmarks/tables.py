"""BENCHMARKS.md's generated tables: rendered from the JSON a benchmark writes (``--json PATH``).

A benchmark that reports a table puts it in its results as ``{"tables": {ID: {"columns": [...],
"rows": [[...], ...]}}}``, every cell already formatted.  In BENCHMARKS.md the table stands
between two markers, and only there::

    <!-- table: ID -->
    | ... the rendered table ... |
    <!-- end table -->

``python benchmarks/tables.py BENCHMARKS.md RESULTS.json [...]`` replaces each marked table whose
ID a results file holds and leaves everything else as it is; ``--check`` changes nothing and
fails when a marked table differs from its results (tests/test_benchmark_tables.py runs it on
the results kept in benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["render_table", "tables_of", "update", "main"]

_MARKED = re.compile(r"(<!-- table: (?P<id>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def render_table(table: Mapping[str, Any]) -> str:
    """A Markdown table of `table`'s columns and rows (cells as given); a column of numbers aligns
    right (blank cells, as in a summary row, do not count against it)."""
    columns = [str(column) for column in table["columns"]]
    rows = [[str(cell) for cell in row] for row in table["rows"]]
    for index, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"row {index} of a table has {len(row)} cells for {len(columns)} "
                             f"columns. Fix: give every row one cell per column.")
    numeric = []
    for k in range(len(columns)):
        filled = [row[k] for row in rows if not _is_blank(row[k])]
        numeric.append(filled != [] and all(_is_number(cell) for cell in filled))
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _is_blank(cell: str) -> bool:
    return cell.strip() in ("", "-")


def _is_number(cell: str) -> bool:
    text = cell.strip().removeprefix("**").removesuffix("**")
    text = text.rstrip("x%").replace(",", "").removesuffix(" ms").removesuffix(" ns")
    try:
        float(text)
    except ValueError:
        return False
    return True


def tables_of(documents: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Every table of the results documents, rendered, by ID (a later document wins)."""
    rendered: dict[str, str] = {}
    for document in documents:
        for table_id, table in document.get("results", {}).get("tables", {}).items():
            rendered[table_id] = render_table(table)
    return rendered


def update(markdown: str, tables: Mapping[str, str]) -> tuple[str, list[str]]:
    """`markdown` with each marked table whose ID `tables` holds replaced; also the IDs replaced."""
    replaced: list[str] = []

    def replace(match: re.Match[str]) -> str:
        table_id = match.group("id")
        if table_id not in tables:
            return match.group(0)
        replaced.append(table_id)
        return match.group(1) + tables[table_id] + match.group(4)
    return _MARKED.sub(replace, markdown), replaced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markdown", type=Path, help="the file with marked tables (BENCHMARKS.md)")
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written with --json")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a marked table differs from its results")
    args = parser.parse_args(argv)
    documents = [json.loads(path.read_text()) for path in args.results]
    tables = tables_of(documents)
    text = args.markdown.read_text()
    updated, replaced = update(text, tables)
    missing = sorted(set(tables) - set(replaced))
    if missing:
        print(f"{args.markdown} has no marked table for {', '.join(missing)}. Fix: put "
              f"'<!-- table: ID -->' and '<!-- end table -->' around where each belongs.",
              file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(f"{args.markdown}'s tables differ from {', '.join(map(str, args.results))}. "
                  f"Fix: run python benchmarks/tables.py {args.markdown} RESULTS... to regenerate them.",
                  file=sys.stderr)
            return 1
        return 0
    args.markdown.write_text(updated)
    print(f"{args.markdown}: {len(replaced)} table(s) from the results: {', '.join(replaced)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
