"""BENCHMARKS.md's generated tables: the renderer, the marked-block update, and the kept results.

The last test is the one that keeps BENCHMARKS.md honest: every marked table must be exactly
the rendering of the results JSON kept in benchmarks/results/ (the run it was generated from).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402

DOCUMENT = {"benchmark": "bench_x", "results": {"tables": {"speed": {
    "columns": ["policy", "ns", "ratio"], "rows": [["lru", "20.5", "1.00x"], ["fifo", "23.8", "1.16x"]]}}}}


def test_a_table_renders_with_numbers_aligned_right():
    text = tables.render_table(DOCUMENT["results"]["tables"]["speed"])
    assert text == ("| policy | ns | ratio |\n|---|---:|---:|\n"
                    "| lru | 20.5 | 1.00x |\n| fifo | 23.8 | 1.16x |\n")


def test_blank_cells_and_bold_numbers_keep_a_column_aligned_right():
    text = tables.render_table({"columns": ["round", "slowdown", "note"],
                                "rows": [["1", "1.30x", "-"], ["median", "**1.33x**", "quiet"], ["2", "", ""]]})
    assert text.splitlines()[1] == "|---|---:|---|"


def test_a_row_of_the_wrong_width_is_refused_by_its_index():
    with pytest.raises(ValueError, match="row 1 of a table has 1 cells for 2 columns"):
        tables.render_table({"columns": ["a", "b"], "rows": [["1", "2"], ["3"]]})


def test_only_marked_tables_with_results_change_and_the_update_is_idempotent():
    markdown = ("text\n<!-- table: speed -->\n| old |\n<!-- end table -->\nmore\n"
                "<!-- table: other -->\n| kept |\n<!-- end table -->\n")
    rendered = tables.tables_of([DOCUMENT])
    updated, replaced = tables.update(markdown, rendered)
    assert replaced == ["speed"]
    assert "| old |" not in updated and "| kept |" in updated and updated.startswith("text\n")
    assert tables.update(updated, rendered) == (updated, ["speed"])


def test_the_command_checks_fixes_and_refuses_tables_without_a_place(tmp_path, capsys):
    markdown = tmp_path / "B.md"
    results = tmp_path / "r.json"
    markdown.write_text("<!-- table: speed -->\n| old |\n<!-- end table -->\n")
    results.write_text(json.dumps(DOCUMENT))
    assert tables.main([str(markdown), str(results), "--check"]) == 1
    assert tables.main([str(markdown), str(results)]) == 0
    assert tables.main([str(markdown), str(results), "--check"]) == 0
    markdown.write_text("no markers\n")
    assert tables.main([str(markdown), str(results)]) == 2
    assert "no marked table for speed" in capsys.readouterr().err


def test_benchmarks_md_holds_exactly_the_kept_results():
    kept = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert kept, "benchmarks/results/ holds the runs BENCHMARKS.md's tables come from"
    assert tables.main([str(ROOT / "BENCHMARKS.md"), *map(str, kept), "--check"]) == 0
