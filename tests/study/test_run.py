"""Studies end to end: a real local Ray (loopback), Optuna journal storage, real digits training.

Read back through Optuna's own API (``optuna.load_study``), not the runner's summaries.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from pal_study.cli import main
from pal_study.study import load_study
from pal_study.study.store import StudyStore
from pal_study.study.trial import TrialReport
from tests.support import ensure_local_ray, journal, studies_by_name, write_study

# Studies run on one local Ray per test process (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("local_ray")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory):
    """The small study several tests here read: 4 cells x 5 trials, an aggressive pruner, 2 seeds,
    in packs (``budget.pack.size`` auto), tracked in a store of its own."""
    tmp = tmp_path_factory.mktemp("ci")
    path = write_study(tmp)
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    printed = io.StringIO()
    ensure_local_ray()  # module fixtures run before function ones (the local_ray mark)
    with redirect_stdout(printed):
        assert main(["run", str(path), "--runs-dir", str(tmp / "runs"), "--tracking-uri", uri]) == 0
    return SimpleNamespace(path=path, runs=tmp / "runs", out=printed.getvalue(), uri=uri)


def test_small_study_prunes_keeps_equal_budgets_and_runs_finals(ci_study, capsys):
    path, runs, out = ci_study.path, ci_study.runs, ci_study.out
    assert "study ci" in out and "finals over seeds [0, 1]" in out

    studies = studies_by_name(journal(runs, "ci"))
    tuning = {n: s for n, s in studies.items() if not n.endswith("/finals")}
    finals = {n: s for n, s in studies.items() if n.endswith("/finals")}
    assert sorted(tuning) == [f"ci/cell00{i}" for i in range(4)]
    pruned_total = 0
    for name, st in tuning.items():
        states = [t.state for t in st.trials]
        # Equal budget per cell, every trial finished (none left RUNNING).
        assert len(states) == 5, name
        assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, (name, states)
        pruned = [t for t in st.trials if t.state == TrialState.PRUNED]
        pruned_total += len(pruned)
        for t in pruned:
            # Pruned at a reported epoch, by the study's pruner, with its last value below the
            # completed trials' at that step.
            step = max(t.intermediate_values)
            assert t.user_attrs["reason"] == f"pruned by percentile at epoch {step}"
            others = [
                c.intermediate_values[step]
                for c in st.trials
                if c.state == TrialState.COMPLETE
                and step in c.intermediate_values
                and c.datetime_complete < t.datetime_complete
            ]
            assert others and t.intermediate_values[step] < max(others)
        for t in st.trials:
            if t.state == TrialState.COMPLETE:
                # The local Ray advertises loopback only (the network rule), never the outward address.
                assert t.user_attrs["node"] == "127.0.0.1"
                assert sorted(t.intermediate_values) == [1, 2, 3, 4]
                assert t.value == pytest.approx(t.intermediate_values[4])
        # Scale is searched only where the head is normalised.
        fnpal = "ce+fnpal" in st.user_attrs["method"]
        assert all(("head.scale" in t.params) == fnpal for t in st.trials)
        fin = finals[name + "/finals"]
        assert sorted(t.user_attrs["seed"] for t in fin.trials) == [0, 1]
        best = max((t for t in st.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        for t in fin.trials:
            assert t.state == TrialState.COMPLETE
            assert t.user_attrs["best_trial"] == best.number
            cfg = json.loads(t.user_attrs["config"])
            assert cfg["seed"] == t.user_attrs["seed"]
            for key, value in best.params.items():
                section, leaf = key.split(".")
                assert cfg[section][leaf] == pytest.approx(value)
            assert 0.0 <= t.user_attrs["test_acc"] <= 1.0
    assert pruned_total >= 1
    summary = json.loads((runs / "ci" / "summary.json").read_text())
    assert [c["counts"]["completed"] + c["counts"]["pruned"] for c in summary["cells"]] == [5, 5, 5, 5]

    # Running the finished study again trains nothing and prints the same table.
    capsys.readouterr()
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 0
    again = studies_by_name(journal(runs, "ci"))
    assert sum(len(s.trials) for s in again.values()) == sum(len(s.trials) for s in studies.values())
    # ... and the same answer: untracked, it is read from the study's own record (Optuna journal)
    # where the first run read the tracking store back; the numbers agree to the last digit.
    rerun = capsys.readouterr().out
    assert _answer_lines(rerun) == _answer_lines(out)


def _answer_lines(out: str) -> list[str]:
    """The comparison block a run ends with, less its last line (the command differs by source)."""
    block = out[out.index("X+head vs X") :].splitlines()
    end = next(i for i, line in enumerate(block) if line.startswith("the rest"))
    return block[:end]


def test_the_run_ends_with_the_answer_the_report_gives(ci_study, capsys):
    """Below its table, ``run`` prints each X+head vs X with Δ, its interval, q (the report's
    numbers, from the same rows) and the command that prints the rest; cells go by short titles."""
    study = load_study(ci_study.path)
    title = {c.label: c.title for c in study.cells}
    assert set(title.values()) == {"ce · noise 0", "ce · noise 0.4", "ce+fnpal · noise 0", "ce+fnpal · noise 0.4"}
    lines = _answer_lines(ci_study.out)
    assert lines[0].startswith("X+head vs X: test accuracy, Δ in points paired by seed")
    assert f"pal-study report ci --runs-dir {ci_study.runs} --tracking-uri {ci_study.uri}" in ci_study.out
    assert main(["report", "ci", "--runs-dir", str(ci_study.runs), "--tracking-uri", ci_study.uri, "-f", "json"]) == 0
    comps = json.loads(capsys.readouterr().out)["comparisons"]
    assert len(comps) == 2 and len(lines) >= 3
    for comp in comps:
        row = next(line for line in lines if line.strip().startswith(title[comp["cell"]] + " "))
        assert f"vs {title[comp['baseline']]} " in row
        delta = f"Δ {100 * comp['delta']:+.2f}"
        ci = (
            f" [{100 * comp['ci_low']:+.2f}, {100 * comp['ci_high']:+.2f}]"
            if comp["ci_low"] is not None
            else f" (unbounded at n={comp['n_pairs']})"
        )
        assert delta + ci in row, (row, comp)
        assert f"q {comp['q']:.3g} " in row and f"n={comp['n_pairs']}" in row
    # two seeds cannot reach α: the block says so rather than letting the numbers look certain
    assert any("with 2 seeds no difference can reach α=0.05" in line for line in lines)


@pytest.mark.parametrize("pruner, expected", [("median", TrialState.PRUNED), ("none", TrialState.COMPLETE)])
def test_the_optuna_pruner_decides(tmp_path, pruner, expected):
    """Two completed trials stored with intermediate values no model can reach (1.01 at every
    epoch); the one new trial is below their median from epoch 1: median prunes it, none not."""
    path = write_study(
        tmp_path,
        name=f"p-{pruner}",
        factors={"method": ["ce"]},
        search=[str(ROOT / "search_spaces/weight_decay.yaml")],
        budget={
            "trials_per_cell": 3,
            "pruner": {"name": pruner, "n_startup_trials": 2, "n_warmup_steps": 1}
            if pruner == "median"
            else {"name": pruner},
        },
        finals={"seeds": [0]},
    )
    runs = tmp_path / "runs"
    study = load_study(path)
    store = StudyStore(study, runs)
    st = store.open_tuning(study.cells[0])
    for _ in range(2):
        st.add_trial(
            optuna.trial.create_trial(
                value=1.01,
                intermediate_values={e: 1.01 for e in range(1, 5)},
                params={"optim.weight_decay": 5e-4},
                distributions={"optim.weight_decay": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)},
            )
        )
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 0
    trials = optuna.load_study(study_name=f"p-{pruner}/cell000", storage=journal(runs, f"p-{pruner}")).trials
    assert len(trials) == 3
    new = trials[2]
    assert new.state == expected
    if expected == TrialState.PRUNED:
        assert sorted(new.intermediate_values) == [1]
    else:
        assert sorted(new.intermediate_values) == [1, 2, 3, 4]


def _finished(runs: Path, name: str) -> dict[tuple[str, int], tuple]:
    out = {}
    for sname, st in studies_by_name(journal(runs, name)).items():
        for t in st.trials:
            if t.state.is_finished():
                out[(sname, t.number)] = (t.state, t.value, t.datetime_complete, t.user_attrs.get("tune_trial_id"))
    return out


def _listeners_of_session(sid: int) -> list[tuple[str, str]]:
    """(address, process) of every listening TCP socket owned by a process of session ``sid``."""
    import re

    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    pids = {int(p) for p, s in (line.split() for line in ps if line.strip()) if int(s) == sid}
    out = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
        owners = re.findall(r'"([^"]+)",pid=(\d+)', line)
        if any(int(pid) in pids for _, pid in owners):
            out.append((line.split()[3].rsplit(":", 1)[0], owners[0][0]))
    return out


@pytest.mark.slow
def test_changed_study_under_same_name_exits_2_until_restart(tmp_path, capsys):
    runs = tmp_path / "runs"
    path = write_study(
        tmp_path,
        name="change",
        factors={"method": ["ce"]},
        search=[str(ROOT / "search_spaces/weight_decay.yaml")],
        budget={"trials_per_cell": 1},
        finals={"seeds": [0]},
        base={"data": {"name": "digits"}, "optim": {"epochs": 1}},
    )
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--runs-dir", str(runs), "--set", "base.optim.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "name" in err and "--restart" in err
    assert main(["run", str(path), "--runs-dir", str(runs), "--set", "base.optim.epochs=2", "--restart"]) == 0
    err = capsys.readouterr().err
    assert "discarding" in err and "1 finished tuning trials and 1 final runs" in err
    st = optuna.load_study(study_name="change/cell000", storage=journal(runs, "change"))
    assert sorted(st.trials[0].intermediate_values) == [1, 2]


def test_a_second_driver_on_the_same_study_exits_2(tmp_path, capsys):
    path = write_study(tmp_path, name="locked")
    runs = tmp_path / "runs"
    holder = StudyStore(load_study(path), runs)
    holder.acquire()
    try:
        assert main(["run", str(path), "--runs-dir", str(runs)]) == 2
        assert "another pal-study process is running this study" in capsys.readouterr().err
    finally:
        holder.release()


@pytest.mark.parametrize(
    "patch, fragment",
    [
        ({"factors": {"data.noise.rte": [0.1]}}, "factors.data.noise.rte"),
        ({"factors": {"method": []}}, "method: empty grid"),
        ({"budget": {"pruner": {"name": "asha"}}}, "budget.pruner.name"),
        ({"search": [{"params": {"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}]}, "low"),
        ({"resources": {"cpu": 64}}, "resources"),
    ],
)
def test_bad_studies_exit_2_naming_the_key(tmp_path, capsys, patch, fragment):
    path = write_study(tmp_path, name="bad", **patch)
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "cells ×" in capsys.readouterr().out


def test_missing_data_files_exit_2_before_any_trial(tmp_path, capsys):
    runs = tmp_path / "runs"
    rc = main(
        [
            "run",
            str(ROOT / "studies/noisy_labels.yaml"),
            "--runs-dir",
            str(runs),
            "--set",
            f"base.data.root={tmp_path / 'nothing'}",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "factors.data.name" in err and "mnist files are not under data.root" in err
    assert not (runs / "noisy_labels").exists()


@pytest.mark.parametrize(
    "cpu, gpu, resources, cap, expected",
    [
        (1, 0, {"CPU": 2}, None, 2),
        (2, 0.25, {"CPU": 16, "GPU": 1}, None, 4),  # four trials share one GPU
        (2, 0.25, {"CPU": 64, "GPU": 8}, None, 32),  # eight GPUs
        (2, 0.25, {"CPU": 64, "GPU": 8}, 10, 10),  # --max-concurrent caps it
        (4, 1, {"CPU": 16, "GPU": 2}, None, 2),
    ],
)
def test_trial_slots_follow_cpu_and_fractional_gpu(tmp_path, cpu, gpu, resources, cap, expected):
    from pal_study.study.runner import slots_for

    study = load_study(write_study(tmp_path, name="slots", resources={"cpu": cpu, "gpu": gpu}))
    assert slots_for(resources, study, cap) == expected


def test_not_enough_resources_for_one_trial_is_bad_input(tmp_path):
    from pal_study.config import ConfigError
    from pal_study.study.runner import slots_for

    study = load_study(write_study(tmp_path, name="slots", resources={"cpu": 1, "gpu": 0.5}))
    with pytest.raises(ConfigError, match="resources"):
        slots_for({"CPU": 8}, study)


@pytest.mark.parametrize("gpu, device", [(0, "cpu"), (0.25, "cuda")])
def test_trials_use_the_gpu_ray_gives_them_and_no_gpu_otherwise(tmp_path, gpu, device):
    """With a GPU share the trial config says ``auto``: select_device then takes the first GPU in
    the CUDA_VISIBLE_DEVICES Ray set for the trial; without one it is pinned to the CPU."""
    from pal_study.study.engine import StudySearcher

    study = load_study(write_study(tmp_path, name="dev", resources={"cpu": 2, "gpu": gpu}))
    searcher = StudySearcher(study, StudyStore(study, tmp_path / "runs"), slots=1)
    cfg = searcher.trial_config(study.cells[0], {})
    assert cfg["device"] == device and cfg["threads"] == 2


def _table(runs: Path, name: str) -> list:
    cells = json.loads((runs / name / "summary.json").read_text())["cells"]
    keys = ("label", "counts", "best_params", "best_value", "val_mean", "test_mean", "test_std")
    return [tuple(c[k] for k in keys) for c in cells]


@pytest.mark.slow
def test_a_driver_killed_at_any_moment_resumes_to_the_uninterrupted_table(ci_study, tmp_path):
    """The ci study, tracked, with its driver SIGKILLed inside Optuna's journal lock (a fault hook
    makes that instant certain), then at three points from early tuning to the finals, restarted
    each time from a relative --runs-dir, as users type it: no rerun waits on the dead driver's
    journal lock; nothing the study started listens beyond loopback; what had finished before a
    kill is never run again or changed; interrupted trials resume under their own Optuna trial
    numbers (every cell's budget once); the final table equals the uninterrupted run's; MLflow
    holds one run per trial, cell and study, none duplicated, none left RUNNING."""
    path = write_study(tmp_path)  # the ci study again, in this test's directory
    runs = tmp_path / "runs"
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd = [sys.executable, "-m", "pal_study.cli", "run", str(path), "--runs-dir", "runs", "--tracking-uri", uri]
    env = {**os.environ, "PAL_STUDY_DRIVER_FAULT": "journal_lock@60"}
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert os.path.islink(runs / "ci" / "optuna.journal.lock"), "the kill should leave the journal lock"

    kills, before, running, listeners = 1, {}, 0, None
    for threshold in (2, 12, 22):  # of 4 x 5 tuning trials + 4 x 2 final seeds: early, mid-tuning, finals
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            deadline = time.time() + 240
            while proc.poll() is None and time.time() < deadline:
                if len(_finished(runs, "ci")) >= threshold:
                    if listeners is None:
                        listeners = _listeners_of_session(proc.pid)
                    os.killpg(proc.pid, signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.1)
            _, stderr = proc.communicate(timeout=60)
        finally:
            # The driver's Ray processes die with it; make sure, so nothing leaks into later tests.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if threshold == 2:
            assert "removed a stale Optuna journal lock" in stderr, stderr[-2000:]
            assert "taking longer than" not in stderr
        time.sleep(0.5)
        finished = _finished(runs, "ci")
        assert all(finished[key] == record for key, record in before.items())
        before = finished
        running += sum(
            t.state == TrialState.RUNNING for s in studies_by_name(journal(runs, "ci")).values() for t in s.trials
        )
    assert kills >= 4  # the lock and three thresholds, "the study finished before the kills could land"
    assert running >= 1, "the kills should catch trials mid-run"
    assert listeners and all(addr in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]") for addr, _ in listeners), listeners

    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "taking longer than" not in done.stderr and "interrupted trials to run again" in done.stderr
    after = _finished(runs, "ci")
    assert all(after[key] == record for key, record in before.items())
    assert _table(runs, "ci") == _table(ci_study.runs, "ci")
    for name, st in studies_by_name(journal(runs, "ci")).items():
        if name.endswith("/finals"):
            assert sorted(t.user_attrs["seed"] for t in st.trials) == [0, 1], name
        else:
            assert [t.number for t in st.trials] == list(range(5)), name
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in st.trials), name

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ci")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in all_runs), [r.info.status for r in all_runs]
    [parent] = [r for r in all_runs if r.data.tags.get("pal.stage") == "study"]
    assert parent.info.status == "FINISHED"
    cells = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(cells) == 4 and {r.data.tags["stage"] for r in cells} == {"cell"}
    kids = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") in {r.info.run_id for r in cells}]
    assert len(kids) == len(all_runs) - 1 - 4 == 4 * 5 + 4 * 2
    assert {r.data.tags["stage"] for r in kids} == {"tune", "final"}
    keys = [r.data.tags["pal.run_key"] for r in kids + cells]
    assert len(set(keys)) == len(keys)
    for r in kids:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)) and steps, (r.data.tags["pal.run_key"], steps)


# What differs between two runs of the same trials whatever the packing: timings, where and in
# which Ray Tune trial they ran, Tune's own bookkeeping, the run directory's paths.
_VOLATILE = {
    "node",
    "wall_time_s",
    "train_time_s",
    "tune_trial_id",
    "tune_logs",
    "checkpoint_path",
    "timestamp",
    "time_total_s",
    "time_this_iter_s",
    "time_since_restore",
    "iterations_since_restore",
    "training_iteration",
    "trial_id",
    "pid",
    "hostname",
    "node_ip",
    "date",
    "checkpoint_dir_name",
    "done",
}


def _records(runs: Path, name: str) -> dict[str, list[tuple]]:
    return {
        sname: [
            (
                t.number,
                t.state,
                t.params,
                t.value,
                t.intermediate_values,
                {k: v for k, v in t.user_attrs.items() if k not in _VOLATILE},
            )
            for t in st.trials
        ]
        for sname, st in studies_by_name(journal(runs, name)).items()
    }


def _mlflow_records(uri: str, name: str) -> dict[str, tuple]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    out = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        key = r.data.tags.get("pal.run_key") or r.data.tags.get("pal.stage")
        curve = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_acc")]
        artifacts = sorted(a.path for a in client.list_artifacts(r.info.run_id))
        tags = {k for k in r.data.tags if not k.startswith("mlflow.")}
        out[key] = (r.info.status, sorted(r.data.metrics), sorted(r.data.params), sorted(tags), artifacts, curve)
    return out


@pytest.mark.slow
def test_a_packed_study_records_what_an_unpacked_one_records(ci_study, tmp_path):
    """The ci study with one Ray Tune trial per trial (``budget.pack.size: 1``) against the shared
    packed run: the same Optuna trials (states, params, values, every epoch, pruning decisions,
    user attributes but timings and placement), the same table, and in MLflow the same runs
    with the same tags, params, metrics, artifacts and val_acc curves (bit-identical: a member
    trains exactly as a trial alone)."""
    path = write_study(tmp_path, pack_size=1)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    printed = io.StringIO()
    with redirect_stderr(printed), redirect_stdout(io.StringIO()):
        assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--tracking-uri", uri]) == 0
    assert "packs: off, one Ray Tune trial per trial" in printed.getvalue()
    unpacked, packed = _records(tmp_path / "runs", "ci"), _records(ci_study.runs, "ci")
    assert sorted(unpacked) == sorted(packed)
    for name in unpacked:
        assert unpacked[name] == packed[name], name
    states = [t[1] for name, trials in packed.items() for t in trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    assert _table(tmp_path / "runs", "ci") == _table(ci_study.runs, "ci")
    tracked_unpacked, tracked_packed = _mlflow_records(uri, "ci"), _mlflow_records(ci_study.uri, "ci")
    assert sorted(tracked_unpacked) == sorted(tracked_packed) and len(tracked_packed) == 1 + 4 + 4 * 5 + 4 * 2
    for key in tracked_unpacked:
        assert tracked_unpacked[key] == tracked_packed[key], key


def test_a_stale_journal_lock_is_removed_by_the_driver_that_holds_the_study(tmp_path, monkeypatch):
    """A dangling relative symlink, as a driver killed mid-append leaves it, is cleared at once by
    the next driver (which holds the study's own lock), and the journal path is absolute."""
    monkeypatch.chdir(tmp_path)
    study = load_study(write_study(tmp_path, name="stale", factors={"method": ["ce+fnpal"]}))
    store = StudyStore(study, "runs")
    assert store.dir.is_absolute()
    store.dir.mkdir(parents=True)
    os.symlink("runs/stale/optuna.journal", store.dir / "optuna.journal.lock")
    with pytest.raises(AssertionError):
        store.clear_stale_journal_lock()  # only under the study's own lock
    store.acquire()
    try:
        assert store.clear_stale_journal_lock() is True
        assert not os.path.lexists(store.dir / "optuna.journal.lock")
        t0 = time.monotonic()
        store.open_tuning(study.cells[0]).ask()  # appends to the journal: takes the lock
        assert time.monotonic() - t0 < 5
        assert store.clear_stale_journal_lock() is False
    finally:
        store.release()
    owner = json.loads((store.dir / ".lock").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] and owner["started_at"] > 0


def test_a_trial_asked_but_not_sampled_before_a_kill_draws_the_params_it_would_have(tmp_path):
    """The driver killed between Optuna's ask() and the first suggest(): on resume the trial draws
    its params from the sampler seeded for its own number, as in an uninterrupted run."""
    from pal_study.study.engine import StudySearcher

    study = load_study(write_study(tmp_path, name="asked", factors={"method": ["ce+fnpal"]}))
    configs = []
    for run, killed in (("straight", False), ("killed", True)):
        store = StudyStore(study, tmp_path / run)
        searcher = StudySearcher(study, store, slots=1)
        for n, value in enumerate([0.5, 0.7, 0.6]):
            searcher.suggest(f"t{n}")
            searcher.jobs[f"t{n}"].closing = TrialReport(closing=True, status="completed", metrics={"val_acc": value})
            searcher.on_trial_complete(f"t{n}")
        if killed:
            searcher._tuning[0].ask()  # then the driver dies: no params stored
            searcher = StudySearcher(study, StudyStore(study, tmp_path / run), slots=1)
        configs.append(searcher.suggest("t3")["pal"])
    assert configs[0]["optuna_trial"] == configs[1]["optuna_trial"] == 3
    assert configs[0]["config"] == configs[1]["config"]


def test_an_epoch_that_lands_after_the_prune_is_not_recorded(tmp_path):
    """Tune stops a trial asynchronously, so a pruned trial often reports one more epoch. The
    Optuna record must end where the pruner stopped it: TPE ranks pruned trials by their last
    step, and a record that depends on timing would make reruns and resumes sample other configs."""
    from pal_study.study.engine import StudySearcher

    study = load_study(write_study(tmp_path, name="late", factors={"method": ["ce+fnpal"]}, pack_size=1))
    searcher = StudySearcher(study, StudyStore(study, tmp_path / "runs"), slots=1)
    searcher.suggest("t0")
    for epoch, value in enumerate([0.5, 0.6, 0.7, 0.8], start=1):
        assert searcher.report("t0", {"epoch": epoch, "val_acc": value}) is False
    searcher.jobs["t0"].closing = TrialReport(closing=True, status="completed", metrics={"val_acc": 0.8})
    searcher.on_trial_complete("t0")
    searcher.suggest("t1")
    assert searcher.report("t1", {"epoch": 1, "val_acc": 0.1}) is True  # below the 90th percentile
    assert searcher.report("t1", {"epoch": 2, "val_acc": 0.9}) is True  # the late epoch: still stopped
    searcher.on_trial_complete("t1")
    pruned = searcher._tuning[0].get_trials(deepcopy=False)[1]
    assert pruned.state == TrialState.PRUNED
    assert pruned.intermediate_values == {1: 0.1}
    assert pruned.user_attrs["epochs_run"] == 1 and "at epoch 1" in pruned.user_attrs["reason"]


def test_the_same_study_again_as_successive_tuners_gives_the_same_table(ci_study, tmp_path):
    """Reproducibility on CPU, and driver memory kept bounded by running a long study as several
    Tuners (each keeps its trials until it returns) without changing its results: the study run
    again in a fresh directory, 12 trials per Tuner, gives the same table to the last digit. With at
    least as many cells as slots each cell runs one trial at a time, so sampling and pruning see the
    same history in every run."""
    from rich.console import Console

    from pal_study.study.runner import run_study

    again = run_study(
        load_study(ci_study.path),
        runs_dir=tmp_path / "again",
        console=Console(quiet=True),
        track=False,
        trials_per_tuner=12,
    )
    assert again.timings["tuners"] == 2  # 4 x 5 tuning trials + 4 final trials (both seeds in each)
    assert len(list((tmp_path / "again" / "ci" / "tune").glob("session-*"))) == 2
    assert _table(tmp_path / "again", "ci") == _table(ci_study.runs, "ci")
