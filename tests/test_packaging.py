"""The sdist: what it contains, and that pip installs it into a fresh virtual environment.

The source tree is copied first (tracked and new files, as git sees them), so
building never writes generated C into the working tree.  The install is a real
one: pip builds the extensions in its own isolated build environment, fetching
the build requirements, as a user's ``pip install vyrecache-*.tar.gz`` would.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: A guard against a build gone pathological (a lost parallel compile, a runaway template), not a
#: speed goal: an install on 2 cores takes 2-4 minutes, longer while other builds share them.
INSTALL_SECONDS_LIMIT = 480


def source_files():
    """The files a clean checkout of the working tree would have (tracked plus new, not ignored)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot tell sources from build outputs")
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    return [name for name in listing.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """Build the sdist from a copy of the source tree; return (path, member names without the top dir)."""
    work = tmp_path_factory.mktemp("sdist")
    source = work / "src"
    for name in source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                             "--outdir", str(work / "dist"), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = (work / "dist").glob("vyrecache-*.tar.gz")
    with tarfile.open(path) as archive:
        names = {member.split("/", 1)[1] for member in archive.getnames() if "/" in member}
    return path, names


@pytest.fixture(scope="module")
def installed(sdist, tmp_path_factory):
    """pip install the sdist into a fresh venv; return (python of the venv, seconds the install took)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    started = time.perf_counter()
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", str(sdist[0])],
                            capture_output=True, text=True, timeout=900, env=env, cwd=venv)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"\npip install of the sdist into a fresh venv: {seconds:.0f} s")
    return python, seconds


def run_installed(python, code):
    """Run *code* with the installed package, from a directory where the source tree is not importable."""
    return subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=python.parents[2])


def test_sdist_ships_sources_shaders_stubs_and_docs(sdist):
    _, names = sdist
    expected = {"README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in", "vyrecache/py.typed"}
    tree = source_files()
    for name in tree:
        if name.startswith("vyrecache/_core/") and name.endswith((".pyx", ".pxd", ".pxi", ".pyi")):
            expected.add(name)
        if name.startswith("shaders/") and name.endswith(".comp"):
            expected.add(name)
            expected.add("vyrecache/shaders/" + Path(name).stem + ".spv")
        if name.startswith("vyrecache/") and name.endswith((".py", ".pyi")):
            expected.add(name)
    assert any(name.endswith(".pyx") for name in expected)
    assert any(name.endswith(".comp") for name in expected)
    assert sorted(expected - names) == []


def test_sdist_has_no_build_outputs(sdist):
    _, names = sdist
    outputs = sorted(name for name in names
                     if name.endswith((".so", ".c", ".o", ".html", ".pyc")) or name.startswith(("build/", "dist/")))
    assert outputs == []


def test_sdist_installs_quickly_into_a_fresh_venv(installed):
    _, seconds = installed
    assert seconds < INSTALL_SECONDS_LIMIT, f"pip install of the sdist took {seconds:.0f} s"


def test_installed_package_imports_with_its_version_and_command(installed):
    python, _ = installed
    result = run_installed(python, """
        import vyrecache as vc
        print(vc.__version__, vc.__file__)
    """)
    assert result.returncode == 0, result.stderr
    version, location = result.stdout.split()
    assert "site-packages" in location
    sys.path.insert(0, str(ROOT))
    from vyrecache import __version__
    assert version == __version__
    script = python.parent / "vyrecache"
    command = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert command.returncode == 0 and command.stdout.strip() == f"vyrecache {version}"
    from_module = subprocess.run([str(python), "-m", "vyrecache", "info"], capture_output=True, text=True,
                                 timeout=120, cwd=python.parents[2])
    assert from_module.returncode == 0, from_module.stderr


def test_installed_package_round_trips_bytes_on_the_default_device(installed):
    python, _ = installed
    result = run_installed(python, """
        import numpy as np
        import vyrecache as vc

        data = np.arange(1 << 16, dtype=np.uint32).view(np.uint8)
        tiers = [vc.CacheTier("host", 8 << 20, memory="host"), vc.CacheTier("vram", 1 << 20, memory="device")]
        with vc.BufferCache(tiers, backend="auto") as cache:
            cache.put(7, data)
            for _ in range(4):
                cache.access(7)
            assert np.array_equal(cache.read(7), data)
            assert cache.get(7).tier == 1
            print(cache.device)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
