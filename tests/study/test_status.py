"""``pal-study status`` / ``study_status``: a study's state from its run directory alone, never
written to and never locked; read against Optuna's own record of the same journal.

One real study (local Ray, digits) runs once per module as a subprocess driver; it is paused
(SIGSTOP) once some trials have finished so the "while running" checks see a fixed state."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from pal_study.cli import main
from pal_study.config import ConfigError
from pal_study.study import load_study
from pal_study.study import status as status_module
from pal_study.study.events import EpochReported, FinalEnded, TrialEnded
from pal_study.study.status import StatusWriter
from pal_study.study.store import StudyLockedError, StudyStore

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"study", "dir", "running", "driver", "elapsed_s", "eta_s", "updated_at", "done", "totals", "cells", "failures"}
CELL_KEYS = {
    "index",
    "label",
    "method",
    "completed",
    "pruned",
    "failed",
    "running",
    "remaining",
    "budget",
    "best_value",
    "best_params",
    "best_trial",
    "finals_done",
    "finals_failed",
    "finals_planned",
    "phase",
    "failures",
}


def study_status(study_dir: Path, **kwargs) -> dict:
    """The status as its JSON object (what status.json and ``pal-study status --json`` hold)."""
    return status_module.study_status(study_dir, **kwargs).to_dict()


def write_study(tmp_path: Path, name: str, **overrides) -> Path:
    spec = {
        "name": name,
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 2}},
        "factors": {"method": ["ce", "ce+fnpal"]},
        "search": [str(ROOT / "search_spaces/pal_scale.yaml"), str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {
            "trials_per_cell": 3,
            "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
            "pruner": {"name": "percentile", "percentile": 90, "n_startup_trials": 1, "n_warmup_steps": 1},
        },
        "finals": {"seeds": [0]},
        "resources": {"cpu": 1},
        **overrides,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def snapshot(d: Path, recursive: bool = True) -> dict[str, tuple[int, int]]:
    """Every file (or every top-level file) under d: (mtime ns, size)."""
    paths = d.rglob("*") if recursive else d.iterdir()
    return {
        str(p.relative_to(d)): (p.lstat().st_mtime_ns, p.lstat().st_size)
        for p in paths
        if p.is_file() or p.is_symlink()
    }


# -- one real study, observed while its driver runs and after ----------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    path = write_study(tmp, "live")
    runs = tmp / "runs"
    sdir = runs / "live"
    log = tmp / "driver.log"
    cmd = [sys.executable, "-m", "pal_study.cli", "run", str(path), "--runs-dir", str(runs), "--no-track"]
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    obs = SimpleNamespace(path=path, runs=runs, dir=sdir, pid=proc.pid, log=log)
    try:
        deadline = time.time() + 150
        while True:
            assert proc.poll() is None, f"the driver ended early:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"no trial finished in time:\n{log.read_text()[-3000:]}"
            if (sdir / "optuna.journal").exists():
                st = study_status(sdir)
                t = st["totals"]
                if t["completed"] + t["pruned"] + t["failed"] >= 1 and t["remaining"] > 0:
                    break
            time.sleep(0.05)
        # Freeze the driver (it alone writes the study's top-level files) while status runs.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            before = snapshot(sdir, recursive=False)
            obs.mid_rc, obs.mid_json, obs.mid_err = cli("status", "live", "--json", "--runs-dir", str(runs))
            obs.mid_table = cli("status", str(path), "--runs-dir", str(runs))
            obs.mid_files_same = snapshot(sdir, recursive=False) == before
            with pytest.raises(StudyLockedError):  # still the driver's: status neither took nor freed it
                StudyStore(load_study(path), runs).acquire()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=180)
        obs.rc = proc.returncode
        yield obs
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_status_while_the_driver_runs_says_running_with_its_pid(live):
    assert live.mid_rc == 0, live.mid_err
    st = json.loads(live.mid_json)  # exactly one JSON object on stdout
    assert st["running"] is True and st["driver"]["pid"] == live.pid
    assert st["driver"]["host"] == socket.gethostname() and st["driver"]["slots"] >= 1
    assert not st["done"] and st["eta_s"] is not None and st["eta_s"] > 0
    assert any(c["remaining"] > 0 for c in st["cells"])
    assert st["totals"]["completed"] + st["totals"]["pruned"] + st["totals"]["failed"] >= 1
    assert live.mid_files_same, "status changed files in the study directory"
    rc, out, err = live.mid_table
    assert rc == 0, err
    assert f"running: pid {live.pid}@{socket.gethostname()}" in out


def test_status_of_the_finished_study_matches_optuna(live):
    assert live.rc == 0, live.log.read_text()[-3000:]
    files = snapshot(live.dir)
    rc, out, err = cli("status", "live", "--json", "--runs-dir", str(live.runs))
    assert rc == 0, err
    st = json.loads(out)
    assert set(st) >= KEYS and all(set(c) >= CELL_KEYS for c in st["cells"])
    rc, table, err = cli("status", "live", "--runs-dir", str(live.runs))
    assert rc == 0, err
    assert snapshot(live.dir) == files, "status wrote into the study directory"
    store = StudyStore(load_study(live.path), live.runs)
    store.acquire()  # nobody holds the lock
    store.release()

    assert st["running"] is False and st["driver"] is None and st["done"] is True and st["eta_s"] == 0
    assert st["elapsed_s"] > 0 and st["study"] == "live"
    storage = JournalStorage(JournalFileBackend(str(live.dir / "optuna.journal")))
    for c in st["cells"]:
        trials = optuna.load_study(study_name=f"live/cell{c['index']:03d}", storage=storage).trials
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        assert (c["completed"], c["pruned"], c["failed"], c["running"]) == (
            n[TrialState.COMPLETE],
            n[TrialState.PRUNED],
            n[TrialState.FAIL],
            n[TrialState.RUNNING],
        )
        assert c["completed"] + c["pruned"] + c["failed"] == c["budget"] == 3 and c["remaining"] == 0
        best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
        assert (c["best_value"], c["best_params"], c["best_trial"]) == (best.value, best.params, best.number)
        finals = optuna.load_study(study_name=f"live/cell{c['index']:03d}/finals", storage=storage).trials
        assert c["finals_done"] == c["finals_planned"] == len(finals) == 1 and c["phase"] == "done"
        assert c["title"] in table and c["title"] != c["label"]  # the short name, stored in study.json
    assert "done" in table and "Traceback" not in table


# -- synthetic journals (no Ray): exact counts, ETA, lock detection ----------------------
def _at(base: datetime, s: float) -> datetime:
    return base + timedelta(seconds=s)


def synthetic(tmp_path: Path) -> tuple[StudyStore, Path]:
    """Cell 0: 3 completed (10 s each) and 1 pruned (4 s) of 5, one final seed (30 s) of 2.
    Cell 1: 1 completed (10 s), 1 failed (6 s, "boom"), 1 left RUNNING, of 5."""
    path = write_study(tmp_path, "syn", budget={"trials_per_cell": 5}, finals={"seeds": [0, 1]})
    study = load_study(path)
    store = StudyStore(study, tmp_path / "runs")
    _ = store.storage  # creates the directory and journal
    store.write_fingerprint()
    dist = {"optim.weight_decay": FloatDistribution(1e-5, 1e-2, log=True)}
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    c0, c1 = study.cells
    for i, (state, value, dur) in enumerate(
        [
            (TrialState.COMPLETE, 0.8, 10),
            (TrialState.COMPLETE, 0.9, 10),
            (TrialState.PRUNED, None, 4),
            (TrialState.COMPLETE, 0.85, 10),
        ]
    ):
        _add_timed(store, c0, state, value, dur, _at(t0, 20 * i), dist, reason="pruned" if value is None else None)
    _add_timed(store, c1, TrialState.COMPLETE, 0.7, 10, _at(t0, 5), dist)
    _add_timed(store, c1, TrialState.FAIL, None, 6, _at(t0, 25), dist, reason="boom")
    store.open_tuning(c1).ask()
    final = create_trial(state=TrialState.COMPLETE, value=0.91, user_attrs={"seed": 0, "wall_time_s": 30.0})
    final.datetime_start, final.datetime_complete = _at(t0, 80), _at(t0, 110)
    store.open_finals(c0).add_trial(final)
    return store, path


def _add_timed(store, cell, state, value, dur, start, dist, reason=None):
    attrs = {"reason": reason} if reason else {}
    trial = create_trial(
        state=state, value=value, params={"optim.weight_decay": 1e-3}, distributions=dist, user_attrs=attrs
    )
    trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=dur)
    store.open_tuning(cell).add_trial(trial)


def test_counts_best_failures_and_eta_of_a_stopped_study(tmp_path):
    store, _ = synthetic(tmp_path)
    files = snapshot(store.dir)
    st = study_status(store.dir)
    assert snapshot(store.dir) == files
    assert json.loads(json.dumps(st)) == st  # JSON-able as is
    c0, c1 = st["cells"]
    assert (c0["completed"], c0["pruned"], c0["failed"], c0["running"], c0["remaining"]) == (3, 1, 0, 0, 1)
    assert (c0["best_value"], c0["best_trial"], c0["best_params"]) == (0.9, 1, {"optim.weight_decay": 1e-3})
    assert (c0["finals_done"], c0["finals_planned"], c0["phase"]) == (1, 2, "tuning")
    # No driver: the trial left RUNNING is interrupted (it runs again on resume) and still to do.
    assert (c1["completed"], c1["failed"], c1["running"], c1["interrupted"], c1["remaining"]) == (1, 1, 0, 1, 3)
    assert c1["failures"] == [{"reason": "boom", "count": 1}] and st["failures"] == c1["failures"]
    assert st["running"] is False and st["driver"] is None and not st["done"]
    # 4 tuning trials x mean 50/6 s + 3 final seeds x 30 s, one slot.
    assert st["eta_s"] == pytest.approx(4 * 50 / 6 + 3 * 30)
    assert st["elapsed_s"] == pytest.approx(110)  # first start to the last completion (the final seed)
    assert st["totals"]["finals_done"] == 1 and st["totals"]["finals_planned"] == 4


def test_an_older_study_json_without_per_cell_budgets(tmp_path):
    store, _ = synthetic(tmp_path)
    copy = json.loads((store.dir / "study.json").read_text())
    titles = [c["title"] for c in copy["cells"]]
    for c in copy["cells"]:
        for key in ("budget", "epochs", "finals_planned", "title"):
            del c[key]
    (store.dir / "study.json").write_text(json.dumps(copy))
    c0, c1 = study_status(store.dir)["cells"]
    # Titles (stored since cells had them) come from the stored factors, the same as stored ones.
    assert [c0["title"], c1["title"]] == titles and len(set(titles)) == 2
    # Budget from spec.budget.trials_per_cell, finals from spec.finals.seeds; a cell with finals
    # recorded had ended its tuning.
    assert (c1["budget"], c1["remaining"], c1["finals_planned"]) == (5, 3, 2)
    assert (c0["budget"], c0["remaining"], c0["phase"]) == (4, 0, "finals")


def test_running_comes_from_the_flock_and_a_killed_driver_is_not_running(tmp_path):
    store, _ = synthetic(tmp_path)
    lock = store.dir / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, json, os, socket, sys, time\n"
                f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started_at': time.time(),"
                " 'slots': 2}).encode())\n"
                "print('locked', flush=True)\n"
                "time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        files = snapshot(store.dir)
        st = study_status(store.dir)
        assert st["running"] is True and st["driver"]["pid"] == holder.pid and st["driver"]["slots"] == 2
        c1 = st["cells"][1]
        assert (c1["running"], c1["interrupted"], c1["remaining"]) == (1, 0, 2)
        assert st["eta_s"] == pytest.approx((3 * 50 / 6 + 3 * 30) / 2)
        rc, out, err = cli("status", "syn", "--runs-dir", str(store.dir.parent))
        assert rc == 0 and f"running: pid {holder.pid}" in out, err
        assert snapshot(store.dir) == files
    finally:
        holder.kill()
        holder.wait()
    # SIGKILLed: its lock file stays, its flock is gone.
    assert json.loads(lock.read_text())["pid"] == holder.pid
    st = study_status(store.dir)
    assert st["running"] is False and st["driver"] is None and st["last_driver"]["pid"] == holder.pid
    assert st["cells"][1]["interrupted"] == 1


def test_a_driver_on_another_host_counts_as_running_while_status_json_is_fresh(tmp_path):
    store, _ = synthetic(tmp_path)
    (store.dir / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere.invalid", "started_at": 1.0}))
    assert study_status(store.dir)["running"] is False  # no status.json
    status = store.dir / "status.json"
    status.write_text("{}")
    now = time.time()
    assert study_status(store.dir, now=now)["driver"]["pid"] == 4242
    os.utime(status, (now - 200, now - 200))
    assert study_status(store.dir, now=now)["running"] is False
    status.write_text(json.dumps({"ended": True}))  # the driver's last word
    assert study_status(store.dir)["running"] is False


def test_unknown_study_exits_2_naming_the_runs_directory(tmp_path):
    synthetic(tmp_path)
    runs = tmp_path / "runs"
    (runs / "not-a-study").mkdir()
    rc, out, err = cli("status", "nope", "--runs-dir", str(runs))
    assert rc == 2 and out == ""
    assert f"no study 'nope' in runs directory {runs}" in err and "(it holds: syn)" in err
    with pytest.raises(ConfigError, match="does not exist"):
        study_status(tmp_path / "elsewhere" / "x")


def test_a_study_json_without_journal_is_read_without_creating_one(tmp_path):
    path = write_study(tmp_path, "fresh")
    store = StudyStore(load_study(path), tmp_path / "runs")
    store.dir.mkdir(parents=True)
    store.write_fingerprint()
    st = study_status(store.dir)
    assert not (store.dir / "optuna.journal").exists()
    assert [c["remaining"] for c in st["cells"]] == [3, 3] and st["eta_s"] is None and not st["done"]


def test_status_writer_throttles_and_writes_at_cell_ends(tmp_path, monkeypatch):
    store, _ = synthetic(tmp_path)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    w = StatusWriter(store, heartbeat_s=None)
    w.flush()
    path = store.dir / "status.json"
    assert json.loads(path.read_text())["study"] == "syn" and w.writes == 1
    c0, c1 = store.study.cells
    job = SimpleNamespace(stage="tune", cell=c1)
    for _ in range(50):  # epochs inside 10 s: no write
        clock[0] += 0.1
        w(EpochReported(job, 1, 0.5, {}))
    assert w.writes == 1
    clock[0] += 10
    w(EpochReported(job, 1, 0.5, {}))
    assert w.writes == 2
    w(TrialEnded(SimpleNamespace(stage="tune", cell=c0), "completed", 0.9))  # cell 0: 4 + 1 = its budget of 5
    assert w.writes == 3
    w(FinalEnded(SimpleNamespace(stage="final", cell=c0), 1, True, 0.9, None, {}, {}, None))  # its second and last seed
    assert w.writes == 4
    w(FinalEnded(SimpleNamespace(stage="final", cell=c1), 0, True, 0.9, None, {}, {}, None))  # one of two: ordinary
    assert w.writes == 4
    w.close()
    assert w.writes == 5 and not list(store.dir.glob("*.tmp"))


def test_status_writer_heartbeat_while_the_driver_holds_the_study(tmp_path):
    store, _ = synthetic(tmp_path)
    store.acquire()
    w = StatusWriter(store, heartbeat_s=0.05)
    try:
        w.flush()
        st = json.loads((store.dir / "status.json").read_text())
        assert st["running"] is True and st["driver"]["pid"] == os.getpid()
        deadline = time.time() + 10
        while w.writes < 3 and time.time() < deadline:
            time.sleep(0.02)
        assert w.writes >= 3
    finally:
        store.release()
    w._thread.join(timeout=5)  # a released study stops the heartbeat by itself
    assert not w._thread.is_alive()
    w.close()
    st = json.loads((store.dir / "status.json").read_text())
    assert st["running"] is False and st["ended"] is True and st["last_driver"]["pid"] == os.getpid()


def test_study_status_is_cheap_on_a_few_hundred_trials(tmp_path):
    path = write_study(
        tmp_path,
        "big",
        factors={"method": ["ce", "ce+fnpal"], "data.noise.rate": [0.0, 0.2]},
        budget={"trials_per_cell": 75},
    )
    study = load_study(path)
    store = StudyStore(study, tmp_path / "runs")
    _ = store.storage  # creates the directory and journal
    store.write_fingerprint()
    dist = {"optim.weight_decay": FloatDistribution(1e-5, 1e-2, log=True)}
    for cell in study.cells:
        st = store.open_tuning(cell)
        for i in range(75):
            st.add_trial(
                create_trial(
                    value=i / 100,
                    params={"optim.weight_decay": 1e-3},
                    distributions=dist,
                    intermediate_values={e: i / 100 for e in range(1, 11)},
                    user_attrs={"epochs_run": 10, "wall_time_s": 3.0},
                )
            )
    t = time.perf_counter()
    cold = study_status(store.dir)
    cold_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(10):
        study_status(store.dir, storage=store.storage)
    warm_s = (time.perf_counter() - t) / 10
    assert cold["totals"]["completed"] == 300 and cold["done"] is False
    print(
        f"study_status on 300 one-line trials: {cold_s * 1000:.0f} ms cold (journal replay), "
        f"{warm_s * 1000:.1f} ms with the driver's storage"
    )
    assert warm_s < 0.5
