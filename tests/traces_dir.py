"""Where the shared real traces are, for the tests that replay them.

They live beside the checkout (``../shared/traces``, or $VYRECACHE_TRACES) and are never copied
into the project.  A test that needs them skips when they are absent, except under CI (the CI
environment variable set), where a missing trace directory is a broken setup and fails.
"""

import os
from pathlib import Path

import pytest

TRACES = Path(os.environ.get("VYRECACHE_TRACES",
                             Path(__file__).resolve().parents[1].parent / "shared" / "traces"))


def trace_path(name: str) -> Path:
    path = TRACES / name
    if not path.is_file():
        message = f"shared trace {path} is absent"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI is set. Fix: provide ../shared/traces or set "
                        f"VYRECACHE_TRACES.", pytrace=False)
        pytest.skip(message)
    return path


def require_module(name: str):
    """Import a test dependency: skip without it, fail under CI (the test extra has it)."""
    if os.environ.get("CI"):
        return __import__(name)
    return pytest.importorskip(name)
