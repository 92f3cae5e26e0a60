"""BENCHMARKS.md's generated tables: the renderer, the marked-block update, and the kept results.

The tests of the kept results keep BENCHMARKS.md honest: every table of a results JSON kept in
benchmarks/results/ (the run it was generated from) has its marked place, and every marked table
is exactly its rendering.  Every benchmark script writes such JSON (``--json PATH``) and has its
run kept.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402

KEPT = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))
MARKERS = set(re.findall(r"<!-- table: ([\w.-]+) -->\n", (ROOT / "BENCHMARKS.md").read_text()))

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


@pytest.mark.parametrize("path", KEPT, ids=[path.name for path in KEPT])
def test_every_table_of_a_kept_run_has_its_marked_place(path):
    document = json.loads(path.read_text())
    assert document["benchmark"] == path.stem, f"{path.name} holds a run of {document['benchmark']}"
    ids = set(document["results"].get("tables", {}))
    assert ids, f"{path.name} has no tables"
    assert sorted(ids - MARKERS) == [], f"BENCHMARKS.md has no '<!-- table: ID -->' for these tables of {path.name}"
    assert tables.main([str(ROOT / "BENCHMARKS.md"), str(path), "--check"]) == 0


def test_no_two_kept_runs_hold_a_table_of_the_same_id():
    owners: dict[str, str] = {}
    for path in KEPT:
        for table_id in json.loads(path.read_text())["results"].get("tables", {}):
            assert table_id not in owners, f"{table_id} is in {owners.get(table_id)} and {path.name}"
            owners[table_id] = path.name


def test_benchmarks_md_holds_exactly_the_kept_results():
    assert KEPT, "benchmarks/results/ holds the runs BENCHMARKS.md's tables come from"
    assert tables.main([str(ROOT / "BENCHMARKS.md"), *map(str, KEPT), "--check"]) == 0


def test_every_marked_table_comes_from_a_kept_run():
    kept_ids = set(tables.tables_of(json.loads(path.read_text()) for path in KEPT))
    assert sorted(MARKERS - kept_ids) == []


def test_every_benchmark_script_has_its_run_kept():
    assert sorted(path.stem for path in SCRIPTS) == sorted(path.stem for path in KEPT)


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_every_benchmark_script_takes_json_path(script):
    # --help only: argparse exits before any benchmark runs.
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT,
                            env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--json PATH" in result.stdout
