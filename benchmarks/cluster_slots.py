"""Two-node Ray cluster vs one node: slot efficiency of the same study on the same 2 cores.

    sudo .venv/bin/python benchmarks/cluster_slots.py        # needs root (ip netns), ~4 min

The cluster is the test suite's (tests/study/test_cluster.py): the head (1 CPU) on the host side of a
veth pair, a worker node (1 CPU) in a network namespace, token auth; the study runs through
``pal-study run --address``. The single-node run is a local Ray with 2 CPUs. Both: quickstart
with 4 trials per cell, MLflow tracking to a temp SQLite file. Slot efficiency = Σ epoch time
(Optuna user attr ``train_time_s`` of every tuning trial and final seed) / (wall × 2 slots).
Writes benchmarks/results/cluster_slots.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _bench  # noqa: E402

# The two-node cluster the tests build (network namespace + veth): one implementation for both.
from tests.study.test_cluster import can_make_namespaces, cluster  # noqa: E402

OVERRIDES = ["budget.trials_per_cell=4"]


def run(extra: list[str], env: dict[str, str]) -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cmd = [
        sys.executable,
        "-m",
        "pal_study.cli",
        "run",
        str(ROOT / "studies/quickstart.yaml"),
        "--runs-dir",
        str(tmp / "runs"),
        "--tracking-uri",
        f"sqlite:///{tmp}/mlflow.db",
        *extra,
    ]
    for o in OVERRIDES:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    storage = JournalStorage(JournalFileBackend(str(tmp / "runs" / "quickstart" / "optuna.journal")))
    spent, nodes = 0.0, set()
    for s in optuna.get_all_study_summaries(storage):
        for t in optuna.load_study(study_name=s.study_name, storage=storage).trials:
            spent += float(t.user_attrs.get("train_time_s") or 0.0)
            nodes.add(t.user_attrs.get("node"))
    return {
        "wall_s": wall,
        "epoch_time_s": spent,
        "efficiency": spent / (2 * wall),
        "nodes": sorted(n for n in nodes if n),
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    why = can_make_namespaces()
    if why:
        raise SystemExit(f"cannot build the two-node cluster: {why}")
    base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    single = run([], {**base_env, "RAY_USAGE_STATS_ENABLED": "0"})
    with cluster() as c:
        two = run(["--address", c["address"]], c["env"])
    for label, r in (("one node (local Ray, 2 CPUs)", single), ("two nodes (1 CPU each, veth)", two)):
        print(
            f"{label:<32} wall {r['wall_s']:6.1f} s  Σ epochs {r['epoch_time_s']:6.1f} s  "
            f"efficiency {100 * r['efficiency']:5.1f} %  nodes {r['nodes']}"
        )
    out = ROOT / "benchmarks" / "results" / "cluster_slots.json"
    out.write_text(
        json.dumps(
            {
                "command": " ".join([sys.executable, *sys.argv]),
                "machine": _bench.machine([1]),
                "overrides": OVERRIDES,
                "one_node": single,
                "two_nodes": two,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
