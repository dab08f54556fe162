"""Load: a study of 500 short trials on 2 CPU cores, MLflow tracking to SQLite.

    .venv/bin/python benchmarks/load.py            # ~3 min

Reports: the study's wall time and outcome counts (every trial finished, none failed, no
"database is locked"), the driver's peak memory (ru_maxrss of the process that ran the study, with
its imports) and its growth over the study, and how fast the MLflow UI answers for that
experiment afterwards: the runs page's HTML and the run search the page makes (100 runs, as
the UI asks), timed over 5 requests each against `mlflow server` on 127.0.0.1.
Writes benchmarks/results/load.json.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _bench  # noqa: E402

from pal_study.study.runner import TRIALS_PER_TUNER  # noqa: E402

OVERRIDES = [
    "base.optim.epochs=1",
    "budget.trials_per_cell=100",
    "factors.method=[ce, gce, sce, ce+pal, ce+fnpal]",
    "factors.data.noise.rate=[0.4]",
    "finals.seeds=[0]",
    "budget.pruner.name=none",
]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssTimeline(threading.Thread):
    """The driver's resident memory every second while the study runs: growth per trial, or a
    plateau, shows in its shape (the peak alone does not)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self._done.wait(1.0):
            self.samples.append((time.perf_counter() - t0, _current_rss_mb()))

    def stop(self) -> None:
        self._done.set()
        self.join()

    def at_fractions(self, fractions=(0.1, 0.25, 0.5, 0.75, 1.0)) -> dict[str, float]:
        if not self.samples:
            return {}
        end = self.samples[-1][0]
        return {f"{int(100 * f)}%": next(r for t, r in self.samples if t >= f * end - 1e-9) for f in fractions}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed_get(url: str, data: bytes | None = None) -> float:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return time.perf_counter() - t


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--trials-per-tuner",
        type=int,
        default=TRIALS_PER_TUNER,
        help="trials per Tuner (the runner's bound on what Tune keeps in memory)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load.json"))
    args = ap.parse_args()
    from rich.console import Console

    from pal_study.study import load_study
    from pal_study.study.runner import run_study

    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    study = load_study(ROOT / "studies/quickstart.yaml", OVERRIDES)
    rss_before = _rss_mb()
    timeline = RssTimeline()
    timeline.start()
    t0 = time.perf_counter()
    outcome = run_study(
        study,
        runs_dir=tmp / "runs",
        console=Console(stderr=True, quiet=True),
        tracking_uri=uri,
        trials_per_tuner=args.trials_per_tuner,
    )
    wall = time.perf_counter() - t0
    timeline.stop()
    rss_peak = _rss_mb()
    counts = {k: sum(c.counts[k] for c in outcome.cells) for k in ("completed", "pruned", "failed", "running")}
    finals = sum(len(c.finals) for c in outcome.cells)

    port = _port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                _timed_get(base + "/health")
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("mlflow server did not start") from None
                time.sleep(0.5)
        from mlflow import MlflowClient

        exp_id = MlflowClient(tracking_uri=uri).get_experiment_by_name(study.spec.name).experiment_id
        body = json.dumps(
            {"experiment_ids": [exp_id], "max_results": 100, "order_by": ["attributes.start_time DESC"]}
        ).encode()
        page = [_timed_get(f"{base}/#/experiments/{exp_id}/runs") for _ in range(5)]
        search = [_timed_get(f"{base}/ajax-api/2.0/mlflow/runs/search", body) for _ in range(5)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    n_runs = counts["completed"] + counts["pruned"] + counts["failed"] + finals
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": _bench.machine([1]),
        "overrides": OVERRIDES,
        "trials": study.tuning_trials,
        "trials_per_tuner": args.trials_per_tuner,
        "wall_s": wall,
        "counts": counts,
        "finals": finals,
        "mlflow_runs": n_runs,
        "driver_rss_mb": {"before_study": rss_before, "peak": rss_peak, "at_fraction_of_wall": timeline.at_fractions()},
        "driver_rss_timeline": timeline.samples,
        "timings": outcome.timings,
        "ui_page_s": page,
        "ui_runs_search_s": search,
    }
    print(f"{study.tuning_trials} tuning trials + {finals} finals in {wall:.0f} s on {outcome.slots} slots: {counts}")
    print(
        f"driver peak RSS {rss_peak:.0f} MB ({rss_before:.0f} MB before the study, after imports); "
        "RSS at fractions of the study's wall time: "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in timeline.at_fractions().items())
    )
    print(
        f"UI: runs page HTML median {1000 * _bench.median(page):.0f} ms (max {1000 * max(page):.0f}); "
        f"run search (100 of {n_runs} runs) median {1000 * _bench.median(search):.0f} ms (max {1000 * max(search):.0f})"
    )
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
