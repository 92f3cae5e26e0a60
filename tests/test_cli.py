"""The command line (`python -m vyrecache`), its workload and the per-tier report table."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import vyrecache as vc
from vyrecache.cli import main, parse_size
from vyrecache.cli.workload import DECODE_KEY_BASE, KvWorkload
from vyrecache.report import COUNTERS, format_bytes, format_report, hit_ratios

def run_cli(*args, cwd=None, env=None):
    """Run `python -m vyrecache ARGS` in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "vyrecache", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


# --- arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["info"], ["demo"], ["bench"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: vyrecache" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "info" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["demo", "--entries", "0"],
    ["demo", "--entries", "many"],
    ["demo", "--duration", "-1"],
    ["demo", "--duration", "nan"],
    ["demo", "--host-size", "12 parsecs"],
    ["demo", "--backend", "metal"],
    ["demo", "--block-size", "8"],
    ["demo", "--block-size", "1MiB", "--host-size", "64KiB", "--device-size", "64KiB"],
    ["info", "--verbose"],
    ["bench", "everything"],
    ["bench", "--timeout", "0"],
    ["bench", "--no-scripts"],
])
def test_bad_arguments_fail_with_one_line(args, capsys):
    try:
        status = main(args)
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "error:" in lines[0] and "Fix:" in lines[0]


def test_module_entry_point_runs_as_a_program():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"vyrecache {vc.__version__}"
    bad = run_cli("demo", "--seed", "x")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text,size", [
    ("0", 0), ("4096", 4096), ("64KiB", 64 << 10), ("64k", 64 << 10), ("16MiB", 16 << 20),
    ("16 MB", 16 << 20), ("1.5GiB", 3 << 29), ("2g", 2 << 30),
])
def test_sizes_take_binary_units(text, size):
    assert parse_size(text) == size


# --- info ------------------------------------------------------------------------------------

def test_info_always_succeeds_and_says_which_backend_auto_uses(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"vyrecache {vc.__version__}")
    assert 'backend="auto"' in out


def test_info_compaction_times_every_mode_and_names_autos_pick(capsys):
    assert main(["info", "--compaction", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    if os.environ.get("VYRECACHE_REQUIRE_VULKAN") != "1" and not info["devices"]:
        pytest.skip("no Vulkan device")
    from vyrecache.compaction import measured_modes
    from vyrecache.vulkan.backend import COMPACTION_MODES
    from vyrecache.vulkan.device import Device
    for device in info["devices"]:
        compaction = device["compaction"]
        assert set(compaction["seconds"]) == set(COMPACTION_MODES) - {"auto"}
        assert all(seconds > 0 for seconds in compaction["seconds"].values())
        opened = Device(device["index"], validation=False)
        try:
            timings = measured_modes(opened)
            assert compaction["auto"] == min(timings, key=timings.__getitem__)
        finally:
            opened.close()
    assert main(["info", "--compaction"]) == 0
    assert "compaction='auto' picks" in capsys.readouterr().out


def test_info_json_lists_the_devices_vc_devices_reports(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {"version", "devices", "error", "default_backend"}
    if not hasattr(vc, "devices"):
        assert info["devices"] == [] and info["default_backend"] == "host"
        return
    try:
        expected = [device.name for device in vc.devices()]
    except vc.VulkanUnavailableError:
        expected = []
    if os.environ.get("VYRECACHE_REQUIRE_VULKAN") == "1":
        assert expected, "VYRECACHE_REQUIRE_VULKAN=1 but no Vulkan device was found"
    assert [device["name"] for device in info["devices"]] == expected
    for device in info["devices"]:
        assert device["memory_heaps"] and device["memory_types"]
        assert set(device["tier_memory_types"]) == {"device", "host"}


# --- demo ------------------------------------------------------------------------------------

def test_demo_prints_the_per_tier_report_and_verifies_bytes():
    result = run_cli("demo", "--backend", "host", "--entries", "200", "--duration", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("host", "device", "hits", "evictions", "promotions", "throughput", "requests/s"):
        assert expected in out
    assert "sampled entries read back, all bytes match" in out


def test_demo_json_is_machine_readable_and_reproducible(capsys):
    args = ["demo", "--backend", "host", "--entries", "300", "--requests", "400", "--duration", "30",
            "--host-size", "2MiB", "--device-size", "512KiB", "--block-size", "4KiB", "--json", "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["requests"] == 400
    assert first["verified"]["checked"] > 0 and first["verified"]["mismatched"] == 0
    assert [tier["name"] for tier in first["tiers"]] == ["host", "device"]
    assert set(first["counters"]) == {"host", "device"}
    # Same seed, same stream, same cache: the same result, counter for counter.
    assert first["counters"] == second["counters"]
    assert first["tiers"] == second["tiers"]


def test_demo_on_the_default_device_runs():
    result = run_cli("demo", "--entries", "200", "--duration", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "all bytes match" in result.stdout


# --- bench -----------------------------------------------------------------------------------

def write_script(directory, name, body):
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(textwrap.dedent(body))


def test_bench_runs_the_scripts_that_exist_and_skips_the_others(tmp_path, capfd):
    write_script(tmp_path / "benchmarks", "bench_core.py", """
        print("peer        ns/op  ratio")
        print("vyrecache      50   1.00")
    """)
    assert main(["bench", "--dir", str(tmp_path / "benchmarks")]) == 0
    out = capfd.readouterr().out
    assert "vyrecache      50   1.00" in out
    assert "bench_buffer.py not found, skipped" in out
    assert "bench_compaction.py not found, skipped" in out


def test_bench_json_reports_each_script(tmp_path, capsys):
    write_script(tmp_path / "benchmarks", "bench_core.py", "print('table')\n")
    write_script(tmp_path / "benchmarks", "bench_buffer.py", "import sys; print('broken'); sys.exit(3)\n")
    assert main(["bench", "--dir", str(tmp_path / "benchmarks"), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)["benchmarks"]
    assert result["core"]["status"] == "ok" and result["core"]["output"].strip() == "table"
    assert result["buffer"]["status"] == "failed" and result["buffer"]["returncode"] == 3
    assert result["compaction"]["status"] == "missing"


def test_bench_runs_only_the_named_scripts(tmp_path, capsys):
    write_script(tmp_path / "benchmarks", "bench_core.py", "print('core ran')\n")
    write_script(tmp_path / "benchmarks", "bench_compaction.py", "print('compaction ran')\n")
    assert main(["bench", "compaction", "--dir", str(tmp_path / "benchmarks"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["benchmarks"]
    assert list(result) == ["compaction"]


def test_bench_without_any_script_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    assert main(["bench", "--dir", str(tmp_path / "benchmarks")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Fix:" in err[0]


def test_bench_plot_without_matplotlib_says_how_to_install_it(tmp_path):
    # A package that fails to import stands in for a missing matplotlib, installed or not.
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(shadow.parent),
                                                                   os.environ.get("PYTHONPATH")])))
    result = run_cli("bench", "--plot", str(tmp_path / "out.png"), "--no-scripts", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vyrecache bench: error: --plot needs matplotlib, which is not installed. "
        "Fix: pip install vyrecache[plot]"]
    assert not (tmp_path / "out.png").exists()


def test_bench_plot_draws_hit_ratio_against_device_tier_size(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.png"
    assert main(["bench", "--no-scripts", "--plot", str(out), "--trace-requests", "500", "--json"]) == 0
    sweep = json.loads(capsys.readouterr().out)["sweep"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep[0]["device_size"] == 0 and sweep[0]["hit_ratio"]["device"] == 0.0


def test_hit_ratio_sweep_gives_the_device_tier_more_hits_as_it_grows():
    from vyrecache.cli.bench import hit_ratio_sweep

    workload = KvWorkload(2048, 4096, seed=3)
    working_set = workload.working_set_bytes()
    points = hit_ratio_sweep(workload, 2000, working_set, [0, working_set // 8, working_set])
    device = [point["hit_ratio"]["device"] for point in points]
    assert device[0] == 0.0 and device[0] < device[1] <= device[2]
    for point in points:
        ratios = point["hit_ratio"]
        assert ratios["total"] == pytest.approx(ratios["host"] + ratios["device"])


# --- workload --------------------------------------------------------------------------------

def test_workload_is_reproducible_from_its_seed():
    first, second = KvWorkload(1000, 4096, seed=7), KvWorkload(1000, 4096, seed=7)
    for _ in range(3):
        keys_a, sizes_a = first.batch(50)
        keys_b, sizes_b = second.batch(50)
        assert np.array_equal(keys_a, keys_b) and np.array_equal(sizes_a, sizes_b)


def test_workload_touches_prefix_chains_in_order_and_writes_fresh_decode_blocks():
    workload = KvWorkload(800, 4096, prefix_blocks=8, decode_blocks=1, seed=1)
    keys, sizes = workload.batch(200)
    prefix = keys[keys < DECODE_KEY_BASE]
    decode = keys[keys >= DECODE_KEY_BASE]
    assert len(decode) == 200 and len(set(decode.tolist())) == 200
    assert prefix.max() < workload.entries
    # Every chain starts at block 0 of its prefix.
    starts = np.flatnonzero(keys >= DECODE_KEY_BASE)[:-1] + 1
    assert np.all(keys[np.r_[0, starts]] % 8 == 0)
    assert set(sizes.tolist()) <= {1024, 2048, 3072, 4096}


def test_workload_prefers_popular_prefixes():
    workload = KvWorkload(8000, 4096, prefix_blocks=8, zipf=1.0, seed=2)
    keys, _ = workload.batch(5000)
    first_blocks = keys[(keys < DECODE_KEY_BASE) & (keys % 8 == 0)] // 8
    counts = np.bincount(first_blocks.astype(np.int64), minlength=workload.prefixes)
    top = np.sort(counts)[::-1]
    assert top[:10].sum() > 0.25 * counts.sum()


def test_payload_is_a_function_of_the_key_alone():
    workload = KvWorkload(100, 4096)
    assert np.array_equal(workload.payload(5), KvWorkload(100, 4096, seed=9).payload(5))
    assert not np.array_equal(workload.payload(5), workload.payload(13))
    assert len(workload.payload(7)) == workload.size_of(7)


@pytest.mark.parametrize("kwargs", [{"entries": 0}, {"block_size": 8}, {"prefix_blocks": 0},
                                    {"zipf": -1.0}, {"decode_blocks": -1}])
def test_workload_rejects_bad_parameters(kwargs):
    arguments = {"entries": 100, "block_size": 4096, **kwargs}
    with pytest.raises(ValueError, match="Fix:"):
        KvWorkload(arguments.pop("entries"), arguments.pop("block_size"), **arguments)


# --- report ----------------------------------------------------------------------------------

def tier(name, capacity, used, count):
    return SimpleNamespace(name=name, capacity=capacity, used=used, count=count)


def test_report_shows_known_counters_in_documented_order_then_unknown_ones():
    counters = {"host": {"zeta": 1, "evictions": 2, "hits": 3, "misses": 1},
                "vram": {"zeta": 0, "evictions": 0, "hits": 4, "misses": 0}}
    text = format_report(counters, ["host", "vram"])
    labels = [line.split()[0] for line in text.splitlines()[2:]]
    assert labels == ["hit", "hits", "misses", "evictions", "zeta"]
    assert text.splitlines()[0].split() == ["counter", "host", "vram", "total"]
    assert "hits           3      4      7" in text
    # 3 + 4 hits out of 8 accesses
    assert "hit ratio  37.5%  50.0%  87.5%" in text


def test_report_formats_bytes_and_fragmentation_and_tier_usage():
    counters = {"host": {"bytes_in": 3 << 20, "fragmentation": 0.25},
                "vram": {"bytes_in": 512, "fragmentation": 0.0}}
    text = format_report(counters, ["host", "vram"], tiers=[tier("host", 1 << 30, 5 << 20, 10),
                                                            tier("vram", 1 << 28, 1 << 20, 3)],
                         title="my cache", footer={"throughput": "9 ops/s"})
    lines = text.splitlines()
    assert lines[0] == "my cache" and lines[-1] == "throughput: 9 ops/s"
    row = {line.split()[0]: line.split()[1:] for line in lines[3:-1]}
    assert row["entries"] == ["10", "3", "13"]
    assert row["capacity"] == ["1.0", "GiB", "256.0", "MiB", "1.2", "GiB"]
    assert row["bytes_in"] == ["3.0", "MiB", "512", "B", "3.0", "MiB"]
    assert row["fragmentation"] == ["25.0%", "0.0%", "-"]


def test_report_takes_counters_as_a_list_in_tier_order_too():
    rows = [{"hits": 1, "misses": 1}, {"hits": 2, "misses": 0}]
    as_dict = {"host": rows[0], "vram": rows[1]}
    assert format_report(rows, ["host", "vram"]) == format_report(as_dict, ["host", "vram"])
    assert hit_ratios(rows, ["host", "vram"]) == hit_ratios(as_dict)
    with pytest.raises(ValueError, match="Fix:"):
        format_report(rows, ["host"])


def test_report_names_a_tier_without_counters():
    with pytest.raises(KeyError, match="Fix:"):
        format_report({"host": {}}, ["host", "vram"])


def test_counter_names_are_documented_and_stable():
    assert list(COUNTERS)[:9] == ["hits", "misses", "inserts", "evictions", "promotions", "demotions",
                                  "spills", "bytes_in", "bytes_out"]
    assert {"compactions", "compaction_bytes", "fragmentation", "fragmentation_evictions",
            "cleanings", "cleaning_bytes", "memory"} <= set(COUNTERS)
    assert all(description for description in COUNTERS.values())


def test_the_readme_documents_every_counter_in_report_order():
    """The README's counter table names the counters of vyrecache.counters, in the same order."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("| `hits` |"):]
    table = table[:table.index("\n\n")]
    documented = [name for row in table.splitlines() for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert documented == list(COUNTERS)


def test_hit_ratios_without_accesses_are_zero():
    assert hit_ratios({"host": {"hits": 0, "misses": 0}}) == {"host": 0.0, "total": 0.0}


@pytest.mark.parametrize("size,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (3 << 29, "1.5 GiB")])
def test_format_bytes(size, text):
    assert format_bytes(size) == text


def test_format_bytes_rejects_negative_sizes():
    with pytest.raises(ValueError, match="Fix:"):
        format_bytes(-1)
