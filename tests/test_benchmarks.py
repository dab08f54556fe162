"""The benchmarks stay runnable as the package changes under them: each one's ``--help`` runs (its
imports resolve), and they use only the package's public names (no ``_private`` imports or
attributes of ``pal_study``), so a refactor that breaks one fails here instead of unseen."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_every_benchmark_answers_help():
    assert len(BENCHMARKS) >= 10, BENCHMARKS

    def run(path: Path) -> tuple[Path, subprocess.CompletedProcess]:
        return path, subprocess.run(
            [sys.executable, str(path), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )

    # Two at a time: each one imports torch (seconds), and the suite runs on two cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, BENCHMARKS))
    failed = [f"{p.name}: rc {r.returncode}\n{r.stderr[-800:]}" for p, r in results if r.returncode != 0]
    assert not failed, "\n\n".join(failed)
    for path, r in results:
        assert "usage:" in r.stdout, path.name


def _private_uses(path: Path) -> list[str]:
    """``from pal_study... import _x``, and ``module._x`` on a module imported from pal_study."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pal_study"):
            for a in node.names:
                if a.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {a.name}")
                aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("pal_study"):
                    aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmarks_use_only_public_names(path):
    assert _private_uses(path) == []
