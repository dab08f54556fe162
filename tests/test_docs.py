"""The README's package layout and docs/architecture.md name every module the package has, so a
module added, moved or removed without its line in the layout fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> set[str]:
    out = set()
    for p in (ROOT / "pal_study").rglob("*.py"):
        if p.name == "__init__.py" or "sets" in p.parts:  # data sets: "one module per data set"
            continue
        out.add(p.stem)
    return out


def _layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("- Package layout")
    end = readme.index("\n- ", start + 1)
    return readme[start:end]


def test_the_readme_layout_names_every_module():
    named = set(re.findall(r"`([a-z_0-9]+)`", _layout_section()))
    missing = sorted(_modules() - named)
    assert not missing, f"README's package layout does not mention: {missing}"


def test_the_readme_layout_names_no_module_that_is_gone():
    named = set(re.findall(r"`([a-z_0-9]+)`", _layout_section()))
    known = _modules() | {"pal_study", "sets", "tests", "benchmarks", "docs", "studies", "search_spaces", "docker"}
    known |= {p.name for p in (ROOT / "pal_study").iterdir() if p.is_dir()}
    gone = sorted(n for n in named - known if not n.startswith("test"))
    assert not gone, f"README's package layout names modules that do not exist: {gone}"


def test_the_architecture_page_places_every_part():
    page = (ROOT / "docs" / "architecture.md").read_text()
    for part in ("core", "layout", "tracking/", "analysis/", "study/", "cli.py"):
        assert part in page, part
    for module in ("analysis/journal.py", "tracking/base.py", "study.trial.TrialJob", "study.trial.TrialReport"):
        stem = module.replace("/", ".").removesuffix(".py")
        assert module in page or stem in page, module
