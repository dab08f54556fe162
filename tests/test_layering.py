"""The package's layers, from every module's imports as written (ast: module-level, function-level
and type-checking imports alike; a module imported by name at run time, as ``data/sets`` does
with its data sets, is not seen):

- no import cycles among pal_study's modules;
- the analysis never imports the study engine (``pal_study.study``), which may import the analysis;
- nothing but ``pal_study.cli`` imports the study engine from outside it, and nothing imports the CLI;
- tracking (a module or a package) is imported by the engine and the analysis, never the reverse;
- the core (config, training, models, losses, heads, prototypes, metrics, data, ...) imports none
  of the analysis, the engine, tracking or the CLI;
- ``pal_study.layout`` (the names in a study's record, used by engine and analysis) imports
  nothing of the project;
- Optuna's journal is opened by the driver's store and the read-only reader only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pal_study"

CORE = (
    "pal_study.config",
    "pal_study.train",
    "pal_study.classifier",
    "pal_study.fusion",
    "pal_study.fused_train",
    "pal_study.checkpoint",
    "pal_study.losses",
    "pal_study.heads",
    "pal_study.prototypes",
    "pal_study.models",
    "pal_study.metrics",
    "pal_study.data",
    "pal_study.device",
    "pal_study.registry",
    "pal_study.errors",
    "pal_study.specs",
    "pal_study.plain_metrics",
)
ANALYSIS, STUDY, TRACKING, CLI, LAYOUT = (
    "pal_study.analysis",
    "pal_study.study",
    "pal_study.tracking",
    "pal_study.cli",
    "pal_study.layout",
)


def under(module: str, *packages: str) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one (a module and a package alike)."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def discover(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The project's modules ``module`` imports -> the line of the first such import. ``from X
    import a`` imports X (its namespace is read, its ``__init__`` run) and, where ``a`` is a
    submodule, X.a; ``import X.Y`` imports X.Y."""
    package = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [source, *(f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules)]
        for target in targets:
            if target.split(".")[0] == "pal_study" and target != module:
                found.setdefault(target, node.lineno)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    modules = discover()
    g = {m: imports_of(m, p, modules) for m, p in modules.items()}
    unknown = {f"{m} -> {t}" for m, ts in g.items() for t in ts if t not in modules}
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    return g


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def violations(g: dict[str, dict[str, int]], allowed) -> list[str]:
    return [
        f"{m}:{line} imports {t}"
        for m, targets in sorted(g.items())
        for t, line in sorted(targets.items())
        if not allowed(m, t)
    ]


def test_the_module_graph_is_found(graph):
    # The checks below only mean something if the walk sees the package and its imports.
    assert {"pal_study.cli", "pal_study.layout", "pal_study.study.store", "pal_study.analysis.journal"} <= set(graph)
    assert "pal_study.study.store" in graph["pal_study.study.status"]
    assert "pal_study.layout" in graph["pal_study.analysis.record"]


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} -> {t}" for m in c for t in graph[m] if t in c) for c in found
    )


def test_the_analysis_never_imports_the_study_engine_or_the_cli(graph):
    bad = violations(graph, lambda m, t: not under(m, ANALYSIS) or not under(t, STUDY, CLI))
    assert not bad, bad


def test_only_the_cli_imports_the_study_engine_from_outside_it(graph):
    bad = violations(graph, lambda m, t: not under(t, STUDY) or under(m, STUDY, CLI))
    assert not bad, bad


def test_nothing_imports_the_cli(graph):
    assert not violations(graph, lambda m, t: not under(t, CLI))


def test_tracking_imports_neither_the_engine_nor_the_analysis(graph):
    bad = violations(graph, lambda m, t: not under(m, TRACKING) or not under(t, STUDY, ANALYSIS, CLI))
    assert not bad, bad


def test_the_core_imports_no_analysis_engine_tracking_or_cli(graph):
    bad = violations(graph, lambda m, t: not under(m, *CORE) or not under(t, ANALYSIS, STUDY, TRACKING, CLI))
    assert not bad, bad


def test_the_layout_imports_nothing_of_the_project(graph):
    assert graph[LAYOUT] == {}


def test_the_journal_is_opened_by_the_driver_and_the_reader_only():
    # The driver's writable storage and the read-only reader's: every other module reads a
    # study's record through the reader, so none can write or lock the journal by mistake.
    opened = sorted(
        module
        for module, path in discover().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "JournalStorage"
    )
    assert opened == ["pal_study.analysis.journal", "pal_study.study.store"]


# -- the checker itself ----------------------------------------------------------------------------
def test_the_checker_sees_function_level_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "pal_study"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pal_study.sub.a import x\n")
    (pkg / "sub" / "a.py").write_text("from pal_study.sub import b\nx = 1\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n"
        "def f():\n    import pal_study.other\n"
    )
    (pkg / "sub" / "c.py").write_text("from .. import other\n")
    (pkg / "other.py").write_text("from pal_study import __version__\n")
    modules = discover(pkg)
    g = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert set(g["pal_study.sub.a"]) == {"pal_study.sub", "pal_study.sub.b"}
    assert set(g["pal_study.sub.b"]) == {"pal_study.sub", "pal_study.sub.c", "pal_study.other"}
    assert set(g["pal_study.sub.c"]) == {"pal_study", "pal_study.other"}
    assert g["pal_study.other"] == {"pal_study": 1}
    # the package's __init__ imports a and a reads the package's namespace (so does b): a cycle
    assert cycles(g) == [["pal_study.sub", "pal_study.sub.a", "pal_study.sub.b"]]
    assert under("pal_study.tracking", TRACKING) and under("pal_study.tracking.mlflow", TRACKING)
    assert not under("pal_study.tracking_extra", TRACKING)
