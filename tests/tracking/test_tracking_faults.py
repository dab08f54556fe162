"""The MLflow server stopped mid-study and started again: trials go on, the queued logs are
delivered when it is back, nothing is dropped or duplicated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 30


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(tmp: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp}/server.db",
            "--artifacts-destination",
            str(tmp / "artifacts"),
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
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            time.sleep(0.5)
    _stop(proc)
    pytest.fail("mlflow server did not come up")


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _finished(journal: Path) -> int:
    if not journal.exists():
        return 0
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return sum(
        t.state.is_finished()
        for s in optuna.get_all_study_summaries(storage)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
    )


@pytest.mark.slow
def test_tracking_server_down_mid_study_loses_nothing(tmp_path):
    port = _port()
    server = _server(tmp_path, port)
    spec = {
        "name": "outage",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": EPOCHS}},
        "factors": {"method": ["ce", "ce+fnpal"]},
        "search": [str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {"trials_per_cell": 10, "pruner": {"name": "none"}},
        "finals": {"seeds": [0, 1]},
    }
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    uri = f"http://127.0.0.1:{port}"
    driver = subprocess.Popen(
        [sys.executable, "-m", "pal_study.cli", "run", str(path), "--runs-dir", str(runs), "--tracking-uri", uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        journal = runs / "outage" / "optuna.journal"
        deadline = time.time() + 180
        while _finished(journal) < 3:
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.time() < deadline, "the study did not get going"
            time.sleep(0.3)
        _stop(server)
        down_at = _finished(journal)
        time.sleep(6)  # trials go on while the store is down
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        assert _finished(journal) > down_at, "trials stalled while the tracking server was down"
        server = _server(tmp_path, port)
        _out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    try:
        assert driver.returncode == 0, err[-3000:]
        assert "queuing logs" in err and "delivered" in err
        assert not (runs / "outage" / "tracking_incomplete.json").exists()
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("outage")
        runs_all = client.search_runs([exp.experiment_id], max_results=1000)
        parent = [r for r in runs_all if r.data.tags.get("pal.stage") == "study"]
        kids = [r for r in runs_all if r.data.tags.get("stage") in ("tune", "final")]
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
        assert len(kids) == 2 * 10 + 2 * 2
        keys = [r.data.tags["pal.run_key"] for r in kids]
        assert len(set(keys)) == len(keys)
        # One cell run per cell (created while the store was up or from the queue, never twice),
        # finished, the parent of its cell's runs.
        cells = [r for r in runs_all if r.data.tags.get("stage") == "cell"]
        assert sorted(r.data.tags["pal.run_key"] for r in cells) == ["cell000", "cell001"]
        assert all(r.info.status == "FINISHED" and r.data.metrics["n_finals"] == 2 for r in cells)
        cell_id = {r.data.tags["cell"]: r.info.run_id for r in cells}
        assert all(r.data.tags["mlflow.parentRunId"] == cell_id[r.data.tags["cell"]] for r in kids)
        assert len(runs_all) == 1 + len(cells) + len(kids)
        for r in kids:
            assert r.info.status == "FINISHED", r.data.tags["pal.run_key"]
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
            assert steps == list(range(1, EPOCHS + 1)), (r.data.tags["pal.run_key"], steps)
            diagram = "reliability.png" if r.data.tags["stage"] == "final" else "reliability.json"
            assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"config.yaml", diagram}
    finally:
        _stop(server)
