"""The documents a newcomer reads first keep up with the code."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_design_names_every_module_of_the_package():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    package = ROOT / "vyrecache"
    missing = []
    for path in sorted(package.rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pxd", ".pxi", ".h") or path.name == "__init__.py":
            continue
        if f"`{path.name}`" not in design and f"{path.parent.name}/{path.name}" not in design:
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_contributing_names_the_commands_of_the_makefile_it_cites():
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("build", "test", "test-debug", "lint", "annotate"):
        assert f"make {target}" in contributing
        assert f"\n{target}:" in makefile
