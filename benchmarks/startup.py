"""(l) Start-up: the wall time of ``pal-study --help``, ``pal-study validate studies/quickstart.yaml``
and ``pal-study report quickstart --format md``, each a fresh process as a user runs it, median
(and min) of ``--repeats`` runs, the commands interleaved; with ``--before-commit`` the same
commands on that commit's tree (``git archive``), interleaved with this one's, and the report's
output of both compared byte for byte.

The report rows need a finished quickstart: its record (``--runs-dir``, holding ``quickstart/``)
and the tracking store it logged to (``--tracking-uri``, a local ``sqlite:///`` store). They run
in a scratch working directory holding ``runs/`` and ``mlruns/mlflow.db`` (links to those), the
layout ``pal-study run quickstart`` leaves by default, with ``$MLFLOW_TRACKING_URI`` unset.

    .venv/bin/pal-study run quickstart --runs-dir /tmp/su/runs --tracking-uri sqlite:////tmp/su/mlflow.db
    .venv/bin/python benchmarks/startup.py --before-commit 9aa4755 --runs-dir /tmp/su/runs \\
        --tracking-uri sqlite:////tmp/su/mlflow.db              # ~2 min
    .venv/bin/python benchmarks/startup.py --quick             # smoke: --help and validate, ~10 s
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _bench  # noqa: E402

# The console script's own code (``pal-study`` is ``main()`` of pal_study.cli); -c puts the
# working directory first on sys.path, PYTHONPATH then picks the tree measured.
ENTRY = "import sys; from pal_study.cli import main; sys.exit(main())"


def checkout(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (``git archive``: the repository is only read)."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def scratch_dir(root: Path, runs_dir: Path | None, uri: str | None) -> Path:
    """A working directory as ``pal-study run quickstart`` leaves one: runs/ and mlruns/mlflow.db."""
    cwd = root / "cwd"
    cwd.mkdir()
    if runs_dir is not None:
        (cwd / "runs").symlink_to(runs_dir.resolve())
    if uri is not None:
        (cwd / "mlruns").mkdir()
        (cwd / "mlruns" / "mlflow.db").symlink_to(Path(uri.removeprefix("sqlite:///")).resolve())
    return cwd


def run_once(tree: Path, args: list[str], cwd: Path) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env["PYTHONPATH"] = str(tree)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, res.returncode, res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="runs of each command per tree (median, min)")
    ap.add_argument("--before-commit", help="also measure this commit's tree, interleaved (e.g. 9aa4755)")
    ap.add_argument("--runs-dir", type=Path, help="holds quickstart/, a finished quickstart's record")
    ap.add_argument("--tracking-uri", help="the sqlite:/// store that quickstart logged to")
    ap.add_argument("--quick", action="store_true", help="smoke: 2 repeats, --help and validate only")
    a = ap.parse_args()
    repeats = 2 if a.quick else a.repeats
    if a.runs_dir is not None and not (a.runs_dir / "quickstart" / "summary.json").is_file():
        ap.error(f"--runs-dir: no finished quickstart in {a.runs_dir} (run it first: see this script's help)")
    if a.tracking_uri is not None and not a.tracking_uri.startswith("sqlite:///"):
        ap.error("--tracking-uri: a local sqlite:/// store")

    cases: dict[str, list[str]] = {
        "--help": ["--help"],
        "validate studies/quickstart.yaml": ["validate", str(ROOT / "studies" / "quickstart.yaml")],
    }
    if a.runs_dir is not None and not a.quick:
        cases["report quickstart --format md"] = ["report", "quickstart", "--format", "md"]
        if a.tracking_uri is not None:
            cases["report quickstart --format md --source mlflow"] = [*cases["report quickstart --format md"]]
            cases["report quickstart --format md --source mlflow"] += ["--source", "mlflow"]

    load_start = _bench.machine([])["loadavg_at_start"]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        trees = {"now": ROOT}
        if a.before_commit:
            (Path(tmp) / "before").mkdir()
            trees[a.before_commit] = checkout(a.before_commit, Path(tmp) / "before")
        cwd = scratch_dir(Path(tmp), a.runs_dir, a.tracking_uri)
        raw: dict[str, dict[str, list[float]]] = {c: {t: [] for t in trees} for c in cases}
        outputs: dict[str, dict[str, str]] = {c: {} for c in cases}
        for tree in trees.values():  # warm the file cache and the .pyc files of both trees
            for args in cases.values():
                run_once(tree, args, cwd)
        for r in range(repeats):
            for case, args in cases.items():
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for t_name in order:
                    wall, rc, stdout = run_once(trees[t_name], args, cwd)
                    if rc != 0:
                        raise SystemExit(f"{case} ({t_name}) exited {rc}")
                    raw[case][t_name].append(wall)
                    outputs[case][t_name] = stdout
    load_end = _bench.machine([])["loadavg_at_start"]

    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for case, by_tree in raw.items():
        summary[case] = {t: {"median_s": statistics.median(v), "min_s": min(v)} for t, v in by_tree.items()}
        same = len(set(outputs[case].values())) == 1 if case.startswith("report") else None
        summary[case]["same_output"] = same
        rows.append(
            [
                case,
                *(f"{summary[case][t]['median_s']:.2f} s (min {summary[case][t]['min_s']:.2f})" for t in by_tree),
                "-" if same is None else ("identical" if same else "DIFFERS"),
            ]
        )
    print(_bench.table(["command", *(f"{t} median" for t in trees), "md output"], rows))
    print(f"load average: {load_start} at the start, {load_end} at the end; {repeats} repeats")
    path = _bench.write_json(
        "startup",
        a.quick,
        {
            "command": " ".join(sys.argv),
            "machine": {**_bench.machine([]), "loadavg_at_start": load_start, "loadavg_at_end": load_end},
            "trees": {t: str(p) for t, p in trees.items()},
            "cases": {c: " ".join(args) for c, args in cases.items()},
            "repeats": repeats,
            "summary": summary,
            "raw_s": raw,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
