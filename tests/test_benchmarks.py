"""The benchmarks stay runnable as the package changes under them: each one's ``--help`` runs (its
imports resolve), and they use only the package's public names (no ``_private`` imports or
attributes of ``pal_study``), so a refactor that breaks one fails here instead of unseen."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


# Every benchmark's ``--help`` as its own ``__main__`` in one fresh interpreter: what each imports
# resolves as it would alone (a fresh process, the benchmarks folder on sys.path as for
# ``python benchmarks/x.py``), and torch and the package are imported once, not once per script.
_HELP_ALL = """
import contextlib, io, json, runpy, sys, traceback
sys.path.insert(0, sys.argv[1])
out = {}
for path in sys.argv[2:]:
    sys.argv = [path, "--help"]
    buf, code = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = e.code
    except BaseException:
        code, buf = "raised", io.StringIO(traceback.format_exc())
    out[path] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def test_every_benchmark_answers_help():
    assert len(BENCHMARKS) >= 10, BENCHMARKS
    res = subprocess.run(
        [sys.executable, "-c", _HELP_ALL, str(ROOT / "benchmarks"), *map(str, BENCHMARKS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.splitlines()[-1])
    assert sorted(results) == sorted(map(str, BENCHMARKS))
    failed = [
        f"{Path(p).name}: exit {code}\n{text[-800:]}" for p, (code, text) in results.items() if code not in (0, None)
    ]
    assert not failed, "\n\n".join(failed)
    for path, (_, text) in results.items():
        assert "usage:" in text, Path(path).name


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
