from __future__ import annotations

import os

# Tests share 2 cores: one intra-op thread per process keeps concurrent test workers from
# oversubscribing (a 3–36x slowdown measured on this kind of machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PAL_STUDY_CPUS", "1")

# Tests never write MLflow data into the working tree: one SQLite store per test process (one
# writer per file; xdist workers get their own), created once (its schema migration costs seconds).
# xdist workers inherit the controller's environment, so a store made by this file for another
# process (the controller) is replaced, not shared: two processes migrating one SQLite file race.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
if "MLFLOW_TRACKING_URI" not in os.environ or os.environ.get("PAL_TEST_MLFLOW_OWNER", _WORKER) != _WORKER:
    import tempfile

    _MLFLOW_DIR = tempfile.mkdtemp(prefix=f"pal-mlflow-{_WORKER}-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_MLFLOW_DIR}/mlflow.db"
    os.environ["PAL_TEST_MLFLOW_OWNER"] = _WORKER
