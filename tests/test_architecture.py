"""docs/architecture.md matches the tree: every package and module it names exists, and
every package under src/enserve is described."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "enserve"
DOC = ROOT / "docs" / "architecture.md"


def _first_cells() -> list[str]:
    """The first cell of every table row (the package or module column)."""
    cells = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells.append(line.split("|")[1])
    return cells


def test_every_named_package_and_module_exists() -> None:
    named = [n for cell in _first_cells() for n in re.findall(r"`([\w/.]+)`", cell)]
    assert named, "no table rows found"
    for name in named:
        path = PACKAGE / name
        assert path.is_dir() if name.endswith("/") else path.is_file(), f"{name} is not in src/enserve"


def test_every_package_is_described() -> None:
    named = {n for cell in _first_cells() for n in re.findall(r"`(\w+)/`", cell)}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages - named == set(), "packages missing from docs/architecture.md"


def test_the_diagram_names_real_packages() -> None:
    text = DOC.read_text(encoding="utf-8")
    diagram = text[text.index("```") + 3:text.index("```", text.index("```") + 3)]
    for name in re.findall(r"(?<![\w/])([a-z_]+)/(?!\w)", diagram):
        assert (PACKAGE / name / "__init__.py").is_file(), f"diagram names {name}/"
