""".venv/bin/python benchmarks/kill_survival.py   (--quick: 6 kills, a smoke run)

Kill survival: SIGKILL a study's driver at many random instants; every rerun must resume.

    .venv/bin/python benchmarks/kill_survival.py                       # 30 kills, ~15 min on 2 cores
    .venv/bin/python benchmarks/kill_survival.py --quick               # 6 kills, ~2.5 min
    .venv/bin/python benchmarks/kill_survival.py --kills 50 --seed 7 --lo 1 --hi 40
    .venv/bin/python benchmarks/kill_survival.py --quick --lock-faults 3   # 3 kills inside the journal lock

A small digits study (2 methods x 2 noise rates, 5 trials per cell, 8 epochs, median pruner,
finals seeds [0, 1]) is written into a temporary directory and run once uninterrupted
(``--no-track``) for the reference table. Then ``python -m pal_study.cli run STUDY --runs-dir
runs<k> --tracking-uri sqlite:///.../mlruns<k>/mlflow.db`` (``--runs-dir`` relative, cwd = the
temporary directory, as users type it) is started in its own session, killed with SIGKILL
(whole process group, then whatever of its session is left) after a delay drawn uniformly from
[--lo, --hi] seconds (--hi by default 1.25 x the reference run's wall time: the whole life of a
run, start-up, tuning, finals, report), and started again, ``--kills`` times. A launch that ends
before its kill instant is recorded ("finished before the kill"); when the study is complete a
fresh study directory and a fresh MLflow store take over, so the remaining kills still hit a live
study.

Random instants fall inside Optuna's journal append (the only moment a kill leaves its lock
behind) only now and then (0 to 1 kill in 30 here); --lock-faults F makes F of the kills happen there,
through the driver-fault hook of the tests (PAL_STUDY_DRIVER_FAULT=journal_lock@N, N random).
Any launch that finds a journal lock at its start and then appends must say "removed a stale Optuna journal lock".

A HANG is a launch that makes no progress (no new finished trial in the journal, no exit) for
more than --hang-s seconds, or that prints Optuna's "taking longer than" lock warning: it is
recorded and the kill loop stops.

Afterwards every study directory is run to the end (no kill) and checked: exit 0, no lock
warning, its table (summary.json: label, counts, best_params, best_value, val_mean, test_mean)
equal to the reference, and in MLflow one FINISHED parent, one child per tuning trial and final
seed, no duplicate ``pal.run_key``, none RUNNING.

Every launch runs one copy of ``pal_study/`` (and ``search_spaces/``) taken at the start
(PYTHONPATH), so edits made to the tree meanwhile cannot mix versions; --no-snapshot runs the
tree as it is. The reference run must have no failed trial (else the code is broken: exit 1).

Each kill is classified by what the journal held right after it (only the driver appends to the
journal, so that is what it held at the kill): no journal yet / tuning trials finished < budget
/ finals not all finished / everything finished (report: MLflow, summary, Ray shutdown); and
separately by whether the killed driver had appended to the journal yet (still starting: imports,
Ray start-up, MLflow reconcile). Writes benchmarks/results/kill_survival.json (--quick:
kill_survival_quick.json; interrupted: kill_survival_interrupted[_quick].json) with every
launch's record, the machine and the exact command. Exit status 1 if any check failed, 130 on
Ctrl-C (every process group started is killed on the way out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _bench  # noqa: E402

NAME = "kills"
CELLS = 4
FINAL_SEEDS = [0, 1]
LOCK_WARNING = "taking longer than"
ORPHAN_S = 30.0  # after a group kill: how long the session's other processes get to die by themselves
STALE_REMOVED = "removed a stale Optuna journal lock"

# Sessions (= process groups: each launch is a session leader) still to be cleaned up.
LIVE: set[int] = set()


# -- the study ---------------------------------------------------------------------------------
def write_study(root: Path, trials: int, epochs: int, spaces: Path) -> Path:
    import yaml

    spec = {
        "name": NAME,
        "base": {"data": {"name": "digits"}, "optim": {"epochs": epochs}},
        "factors": {"method": ["ce", "ce+fnpal"], "data.noise.rate": [0.0, 0.4]},
        "search": [str(spaces / "pal_scale.yaml"), str(spaces / "weight_decay.yaml")],
        "budget": {
            "trials_per_cell": trials,
            "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 2},
            "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 2},
        },
        "finals": {"seeds": FINAL_SEEDS},
        "resources": {"cpu": 1},
    }
    path = root / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def journal_state(journal: Path) -> dict[str, Any]:
    """Finished / running trials the journal holds, tuning and finals apart (read only)."""
    state = {
        "exists": journal.exists(),
        "bytes": 0,
        "tuning_finished": 0,
        "finals_finished": 0,
        "running": 0,
        "failed": 0,
        "epochs_reported": 0,
        "finals_trials": 0,
    }
    if not state["exists"]:
        return state
    state["bytes"] = journal.stat().st_size
    if state["bytes"] == 0:
        return state
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    # Reading never writes (the backend creates the file only when it is missing, checked above);
    # a line the driver was writing when it died is skipped by Optuna's reader.
    storage = JournalStorage(JournalFileBackend(str(journal)))
    for st in storage.get_all_studies():
        trials = storage.get_all_trials(st._study_id, deepcopy=False)
        key = "finals_finished" if st.study_name.endswith("/finals") else "tuning_finished"
        state[key] += sum(t.state.is_finished() for t in trials)
        state["running"] += sum(t.state == TrialState.RUNNING for t in trials)
        state["failed"] += sum(t.state == TrialState.FAIL for t in trials)
        state["epochs_reported"] += sum(len(t.intermediate_values) for t in trials)
        if st.study_name.endswith("/finals"):
            state["finals_trials"] += len(trials)
    return state


def phase_of(state: dict[str, Any], budget: int, finals: int) -> str:
    if not state["exists"] or state["bytes"] == 0:
        return "start-up"
    if state["tuning_finished"] < budget:
        return "tuning"
    if state["finals_finished"] < finals:
        return "finals"
    return "report"


def table_of(summary: Path) -> list:
    cells = json.loads(summary.read_text())["cells"]
    return [[c["label"], c["counts"], c["best_params"], c["best_value"], c["val_mean"], c["test_mean"]] for c in cells]


# -- processes ---------------------------------------------------------------------------------
def session_procs(sid: int) -> list[tuple[int, int, str]]:
    """(pid, pgid, name) of the live (non-zombie) processes of session ``sid``: the launch and
    everything it started (Ray's workers put themselves in process groups of their own)."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,sid=,stat=,ppid=,comm=,args="], capture_output=True, text=True
    ).stdout
    procs = []
    for line in out.splitlines():
        parts = line.split(None, 6)
        if len(parts) == 7 and int(parts[2]) == sid and not parts[3].startswith("Z") and int(parts[0]) != os.getpid():
            procs.append((int(parts[0]), int(parts[1]), f"{parts[5]} (ppid {parts[4]}: {parts[6][:160]})"))
    return procs


def end_session(sid: int, timeout: float = 20.0, observe_s: float = 0.0) -> dict[str, Any]:
    """SIGKILL the process group ``sid``; watch for ``observe_s`` which processes of the session
    outlive it on their own; then SIGKILL each one left (by pid). Returns what outlived what."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGKILL)
    time.sleep(0.2)
    after_killpg = session_procs(sid)
    deadline = time.monotonic() + observe_s
    left = after_killpg
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = session_procs(sid)
    orphans = left if observe_s else []
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for pid, _, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        left = session_procs(sid)
    LIVE.discard(sid)
    return {
        "after_killpg": [f"{pid}:{name.split(' (')[0]}" for pid, pgid, name in after_killpg],
        "orphans": [f"{pid}:{name}" for pid, pgid, name in orphans],
        "never_died": [f"{pid}:{name}" for pid, pgid, name in left],
    }


def cleanup_all() -> None:
    for sid in list(LIVE):
        end_session(sid, timeout=10.0)


class Launch:
    """One ``pal-study run`` in its own session, watched until it exits, is killed, or hangs."""

    def __init__(self, cmd: list[str], cwd: Path, logs: Path, journal: Path, env: dict[str, str]):
        self.journal = journal
        self.stdout_path = logs.with_suffix(".out")
        self.stderr_path = logs.with_suffix(".err")
        self.at_launch = journal_state(journal)
        self.lock_at_launch = os.path.lexists(str(journal) + ".lock")
        self.t0 = time.monotonic()
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        LIVE.add(self.proc.pid)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def watch(self, kill_at: float | None, hang_s: float, hard_limit_s: float | None = None) -> dict[str, Any]:
        size0 = self.at_launch["bytes"] if self.at_launch["exists"] else -1
        seen_size = size0
        finished = self.at_launch["tuning_finished"] + self.at_launch["finals_finished"]
        last_progress = self.t0
        first_append = None
        first_work = None  # first new epoch reported or trial finished: the driver is training
        work0 = self.at_launch["epochs_reported"] + finished
        outcome = None
        err_pos = 0
        hang_reason = None
        while True:
            now = time.monotonic()
            rc = self.proc.poll()
            if rc is not None:
                outcome = "finished" if rc == 0 else "self_killed" if rc == -signal.SIGKILL else "exited_error"
                break
            if kill_at is not None and now - self.t0 >= kill_at:
                outcome = "killed"
                break
            # Progress: the journal (cheap size check first, parsed only when it grew).
            size = self.journal.stat().st_size if self.journal.exists() else -1
            if size != seen_size:
                seen_size = size
                if first_append is None and size > max(size0, 0):
                    first_append = now - self.t0
                try:
                    st = journal_state(self.journal)
                    n = st["tuning_finished"] + st["finals_finished"]
                    if n > finished:
                        finished, last_progress = n, now
                    if first_work is None and st["epochs_reported"] + n > work0:
                        first_work = now - self.t0
                except Exception:
                    seen_size = -2
            try:
                with self.stderr_path.open("rb") as f:
                    f.seek(max(0, err_pos - 64))
                    chunk = f.read()
                    err_pos = f.tell()
                if LOCK_WARNING.encode() in chunk:
                    hang_reason = f"Optuna's lock warning ({LOCK_WARNING!r}) on stderr"
            except OSError:
                pass
            if hang_reason is None and now - last_progress > hang_s:
                hang_reason = f"no new finished trial and no exit for {now - last_progress:.0f} s"
            if hang_reason is None and hard_limit_s is not None and now - self.t0 > hard_limit_s:
                hang_reason = f"still running after {hard_limit_s:.0f} s"
            if hang_reason is not None:
                outcome = "hang"
                break
            wait = 0.25 if kill_at is None else min(0.25, max(0.01, kill_at - (now - self.t0)))
            time.sleep(wait)
        elapsed = time.monotonic() - self.t0
        # What the journal holds right after the kill is what it held at the kill: only the
        # driver appends to it. After a kill, up to ORPHAN_S show which of the session's processes
        # (Ray's workers sit in process groups of their own) do not die by themselves.
        procs = end_session(self.proc.pid, observe_s=ORPHAN_S if outcome in ("killed", "hang", "self_killed") else 0.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        if outcome == "killed" and self.proc.returncode not in (-signal.SIGKILL, None):
            # It exited on its own between the last poll and the kill.
            outcome = "finished" if self.proc.returncode == 0 else "exited_error"
        at_end = journal_state(self.journal)
        # Unknown when it appended after the last poll: its start-up time cannot be read then.
        first_append_known = not (first_append is None and at_end["bytes"] > max(size0, 0))
        err = self.stderr()
        return {
            "outcome": outcome,
            "rc": self.proc.returncode,
            "elapsed_s": round(elapsed, 3),
            "kill_at_s": None if kill_at is None else round(kill_at, 3),
            "hang_reason": hang_reason,
            "journal_at_launch": self.at_launch,
            "journal_at_end": at_end,
            "first_append_s": None if first_append is None else round(first_append, 3),
            "first_work_s": None if first_work is None else round(first_work, 3),
            "worked": at_end["epochs_reported"] + at_end["tuning_finished"] + at_end["finals_finished"] > work0,
            "appended": at_end["bytes"] > max(size0, 0),
            "first_append_known": first_append_known,
            "lock_at_launch": self.lock_at_launch,
            "lock_left": os.path.lexists(str(self.journal) + ".lock"),
            "stale_lock_removed": STALE_REMOVED in err,
            "lock_warning": LOCK_WARNING in err,
            "leftover_processes": len(procs["after_killpg"]),
            "processes": procs,
            "stderr_tail": err[-1500:],
        }


# -- MLflow ------------------------------------------------------------------------------------
def check_mlflow(uri: str, expected_kids: int) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(NAME)
    if exp is None:
        return {"ok": False, "problems": [f"no experiment {NAME!r} in {uri}"]}
    all_runs = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        all_runs.extend(page)
        token = page.token
        if not token:
            break
    parents = [r for r in all_runs if r.data.tags.get("pal.stage") == "study"]
    parent_ids = {r.info.run_id for r in parents}
    # Trials and finals sit under their cell's run; cell runs under the study run.
    kids = [
        r for r in all_runs if r.data.tags.get("pal.study_run") in parent_ids and r.data.tags.get("stage") != "cell"
    ]
    cells = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") in parent_ids]
    keys = [r.data.tags.get("pal.run_key") for r in kids + cells]
    dup = sorted(k for k, n in Counter(keys).items() if n > 1 and k)
    statuses = Counter(r.info.status for r in all_runs)
    stages = Counter(r.data.tags.get("stage") for r in kids)
    problems = []
    if [r.info.status for r in parents] != ["FINISHED"]:
        problems.append(f"parents: {[r.info.status for r in parents]} (want one FINISHED)")
    if len(kids) != expected_kids:
        problems.append(f"{len(kids)} child runs (want {expected_kids})")
    if len(all_runs) != len(parents) + len(cells) + len(kids):
        problems.append(f"{len(all_runs) - len(parents) - len(cells) - len(kids)} runs outside the study's parent")
    if dup:
        problems.append(f"duplicate pal.run_key: {dup}")
    if None in keys:
        problems.append(f"{keys.count(None)} child runs without pal.run_key")
    bad = {s: n for s, n in statuses.items() if s not in ("FINISHED", "KILLED")}
    if bad:
        problems.append(f"statuses other than FINISHED/KILLED: {bad}")
    return {
        "ok": not problems,
        "problems": problems,
        "runs": len(all_runs),
        "parents": len(parents),
        "children": len(kids),
        "expected_children": expected_kids,
        "statuses": dict(statuses),
        "stages": {str(k): v for k, v in stages.items()},
        "duplicate_keys": dup,
    }


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kills", type=int, default=30, help="SIGKILLs to land (default 30)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 kills (unless --kills is given)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill instants (default 0)")
    ap.add_argument("--lo", type=float, default=1.0, help="shortest delay before a kill, s (default 1)")
    ap.add_argument(
        "--hi",
        type=float,
        default=None,
        help="longest delay before a kill, s (default: 1.25 x the reference run's wall time, so that "
        "kills land in start-up, tuning, finals and the report alike)",
    )
    ap.add_argument("--trials", type=int, default=5, help="tuning trials per cell (default 5)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs per trial (default 8)")
    ap.add_argument(
        "--hang-s",
        type=float,
        default=90.0,
        help="no new finished trial and no exit for this long = a hang (default 90)",
    )
    ap.add_argument(
        "--max-launches", type=int, default=None, help="give up after this many launches (default 3 x kills + 10)"
    )
    ap.add_argument(
        "--lock-faults",
        type=int,
        default=0,
        help="of the kills, this many by the driver itself inside Optuna's journal lock (the "
        "PAL_STUDY_DRIVER_FAULT=journal_lock@N hook, N uniform in 1..--fault-max; every "
        "kills/lock-faults-th launch): random instants land there only now and then (default 0)",
    )
    ap.add_argument("--fault-max", type=int, default=150, help="largest N of journal_lock@N (default 150)")
    ap.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run the working tree's pal_study as it is at each launch, not a copy taken at the start",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (kept anyway when a check fails)")
    args = ap.parse_args(argv)
    if args.quick and "--kills" not in (argv if argv is not None else sys.argv[1:]):
        args.kills = 6
    max_launches = args.max_launches or 3 * args.kills + 10
    command = " ".join(
        shlex.quote(a)
        for a in [".venv/bin/python", "benchmarks/kill_survival.py", *(argv if argv is not None else sys.argv[1:])]
    )

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)

    root = Path(tempfile.mkdtemp(prefix="kill-survival-"))
    logs = root / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PAL_STUDY_DRIVER_FAULT", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    spaces = ROOT / "search_spaces"
    code: dict[str, Any] = {
        "snapshot": args.snapshot,
        "git_head": _git("rev-parse", "HEAD"),
        "git_dirty": _git("status", "--short", "--untracked-files=no"),
    }
    if args.snapshot:
        # One version of the code for every launch, whatever is edited in the tree meanwhile:
        # PYTHONPATH puts the copy before the editable install (its finder comes after sys.path),
        # and Ray's workers inherit the driver's environment and sys.path.
        snap = root / "code"
        shutil.copytree(ROOT / "pal_study", snap / "pal_study", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(spaces, snap / "search_spaces")
        spaces = snap / "search_spaces"
        env["PYTHONPATH"] = os.pathsep.join([str(snap), *filter(None, [os.environ.get("PYTHONPATH")])])
        code["pal_study_sha256"] = _tree_hash(snap / "pal_study")
        code["imported_from"] = subprocess.run(
            [sys.executable, "-c", "import pal_study; print(pal_study.__file__)"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not code["imported_from"].startswith(str(snap)):
            print(f"the snapshot is not what runs: pal_study imports from {code['imported_from']}", file=sys.stderr)
            shutil.rmtree(root, ignore_errors=True)
            return 1
    study_path = write_study(root, args.trials, args.epochs, spaces)
    budget, n_finals = CELLS * args.trials, CELLS * len(FINAL_SEEDS)
    py = sys.executable
    rng = random.Random(args.seed)
    t_start = time.time()
    print(
        f"kill survival: {args.kills} kills at U[{args.lo:g}, {args.hi or 'auto'}] s (seed {args.seed}); "
        f"study {budget} tuning trials + {n_finals} finals, {args.epochs} epochs; work dir {root}",
        flush=True,
    )

    payload: dict[str, Any] = {
        "command": command,
        "machine": _bench.machine([1]),  # trials: resources.cpu 1 -> 1 torch thread
        "args": vars(args),
        "code": code,
        "study": yaml_text(study_path),
        "work_dir": str(root),
        "launches": [],
        "studies": [],
        "reference": None,
        "failures": [],
        "interrupted": False,
    }
    failures: list[str] = payload["failures"]
    launches: list[dict[str, Any]] = payload["launches"]
    studies: list[dict[str, Any]] = payload["studies"]
    rc = 0
    try:
        # 1. the reference: uninterrupted, untracked, its own runs dir
        t = time.monotonic()
        ref = Launch(
            [py, "-m", "pal_study.cli", "run", str(study_path), "--runs-dir", "straight", "--no-track"],
            root,
            logs / "reference",
            root / "straight" / NAME / "optuna.journal",
            env,
        )
        rec = ref.watch(None, args.hang_s, hard_limit_s=1800)
        payload["reference_run"] = {k: v for k, v in rec.items() if k != "journal_at_launch"}
        if rec["outcome"] != "finished":
            failures.append(f"reference run: {rec['outcome']} rc={rec['rc']} {rec['hang_reason'] or ''}")
            print(rec["stderr_tail"], file=sys.stderr)
            return 1
        if rec["journal_at_end"]["failed"]:
            failures.append(
                f"reference run: {rec['journal_at_end']['failed']} trials FAILED: the code under test "
                "is broken (or was mid-edit when copied); nothing to compare kills against"
            )
            print(rec["stderr_tail"], file=sys.stderr)
            return 1
        reference = table_of(root / "straight" / NAME / "summary.json")
        payload["reference"] = reference
        payload["reference_wall_s"] = round(time.monotonic() - t, 1)
        if args.hi is None:
            args.hi = round(1.25 * payload["reference_wall_s"], 1)
        payload["kill_window_s"] = [args.lo, args.hi]
        print(
            f"reference run: {payload['reference_wall_s']} s; kill instants U[{args.lo:g}, {args.hi:g}] s", flush=True
        )
        print(
            _bench.table(
                ["cell", "counts c/p/f", "best value", "val mean", "test mean"],
                [[r[0], f"{r[1]['completed']}/{r[1]['pruned']}/{r[1]['failed']}", r[3], r[4], r[5]] for r in reference],
            ),
            flush=True,
        )

        # 2. the kills
        def new_study() -> dict[str, Any]:
            k = len(studies)
            s = {
                "index": k,
                "runs_dir": f"runs{k}",
                "tracking_uri": f"sqlite:///{root}/mlruns{k}/mlflow.db",
                "completed_in_loop": False,
                "launches": 0,
                "kills": 0,
            }
            studies.append(s)
            return s

        study = new_study()
        kills = 0
        stop = False
        faults_fired = 0
        fault_rng = random.Random(args.seed + 1)  # apart from `rng`: the kill instants stay those of --seed
        fault_every = max(1, args.kills // max(1, args.lock_faults))
        while kills < args.kills and len(launches) < max_launches and not stop:
            journal = root / study["runs_dir"] / NAME / "optuna.journal"
            cmd = [
                py,
                "-m",
                "pal_study.cli",
                "run",
                str(study_path),
                "--runs-dir",
                study["runs_dir"],
                "--tracking-uri",
                study["tracking_uri"],
            ]
            delay = rng.uniform(args.lo, args.hi)
            n = len(launches)
            fault = None
            need = args.lock_faults - faults_fired
            if need > 0 and (n % fault_every == fault_every - 1 or args.kills - kills <= need):
                # No timer: the hook's N-th journal append is this launch's kill instant (a launch
                # that ends before its N-th append counts as finished before the kill).
                fault = f"journal_lock@{fault_rng.randint(1, args.fault_max)}"
                delay = None
            launch_env = env if fault is None else {**env, "PAL_STUDY_DRIVER_FAULT": fault}
            launch = Launch(cmd, root, logs / f"launch{n:03d}", journal, launch_env)
            rec = launch.watch(delay, args.hang_s)
            rec["fault"] = fault
            rec["fault_fired"] = False
            if rec["outcome"] == "self_killed" and fault is not None:
                # The hook SIGKILLed the driver inside Optuna's journal lock: a kill like the others
                # (the rest of its session was killed by end_session), at the one instant that
                # leaves the journal lock behind.
                rec["outcome"] = "killed"
                rec["fault_fired"] = True
                faults_fired += 1
            rec.update(
                launch=n,
                study=study["index"],
                rerun=rec["journal_at_launch"]["exists"],
                phase=phase_of(rec["journal_at_end"], budget, n_finals) if rec["outcome"] == "killed" else None,
                driver_starting=(rec["outcome"] == "killed" and not rec["appended"]),
                before_training=(rec["outcome"] == "killed" and not rec["worked"]),
            )
            launches.append(rec)
            study["launches"] += 1
            j = rec["journal_at_end"]
            where = (
                f"{j['tuning_finished']}/{budget} tuning, {j['finals_finished']}/{n_finals} finals, "
                f"{j['running']} running"
            )
            start = "-" if rec["first_append_s"] is None else f"{rec['first_append_s']:.1f}s"
            work = "-" if rec["first_work_s"] is None else f"{rec['first_work_s']:.1f}s"
            line = (
                f"[{n:3d}] study {study['index']} {'rerun' if rec['rerun'] else 'first'} "
                f"kill@{f'{delay:5.1f}s' if fault is None else fault} -> {rec['outcome']:<12} "
                f"after {rec['elapsed_s']:5.1f}s"
            )
            if rec["outcome"] == "killed":
                kills += 1
                study["kills"] += 1
                tag = (
                    " (no append yet)"
                    if rec["driver_starting"]
                    else " (no epoch yet)"
                    if rec["before_training"]
                    else ""
                )
                if rec["phase"] == "tuning" and j["finals_trials"]:
                    tag += " (finals started)"
                line += f"  #{kills:<3d} phase={rec['phase']:<8}{tag} [{where}]"
            else:
                line += f"  [{where}]"
            line += (
                f" first-append={start} first-epoch={work}"
                f"{' STALE-LOCK-REMOVED' if rec['stale_lock_removed'] else ''}"
                f"{' LOCK-LEFT' if rec['lock_left'] else ''}"
                + (f" outlived-killpg={rec['leftover_processes']}" if rec["leftover_processes"] else "")
                + (
                    f" alive-{ORPHAN_S:g}s-later={len(rec['processes']['orphans'])}"
                    if rec["processes"]["orphans"]
                    else ""
                )
            )
            print(line, flush=True)
            if rec["lock_warning"] and rec["outcome"] != "hang":
                rec["outcome"] = "hang"
                rec["hang_reason"] = f"Optuna's lock warning ({LOCK_WARNING!r}) on stderr"
            if rec["outcome"] == "hang":
                failures.append(f"launch {n} (study {study['index']}): HANG: {rec['hang_reason']}")
                print(f"HANG: {rec['hang_reason']}\n--- stderr tail ---\n{rec['stderr_tail']}", file=sys.stderr)
                stop = True
            elif rec["lock_at_launch"] and rec["appended"] and not rec["stale_lock_removed"]:
                failures.append(
                    f"launch {n} (study {study['index']}): a journal lock was left at its start and it "
                    f"appended to the journal without saying {STALE_REMOVED!r}"
                )
                print(f"--- stderr tail ---\n{rec['stderr_tail']}", file=sys.stderr)
                stop = True
            elif rec["outcome"] in ("exited_error", "self_killed"):
                failures.append(f"launch {n} (study {study['index']}): exited {rec['rc']} before its kill")
                print(f"--- stderr tail ---\n{rec['stderr_tail']}", file=sys.stderr)
                stop = True
            elif rec["journal_at_end"]["failed"]:
                failures.append(
                    f"launch {n} (study {study['index']}): {rec['journal_at_end']['failed']} trials "
                    "FAILED (the reference run had none)"
                )
                print(f"--- stderr tail ---\n{rec['stderr_tail']}", file=sys.stderr)
                stop = True
            elif rec["outcome"] == "finished":
                st = rec["journal_at_end"]
                if st["tuning_finished"] == budget and st["finals_finished"] == n_finals:
                    study["completed_in_loop"] = True
                    study = new_study()
                else:
                    failures.append(f"launch {n} (study {study['index']}): exit 0 with {where}")
                    stop = True
            time.sleep(0.5)
        payload["kills_landed"] = kills
        if kills < args.kills and not stop:
            failures.append(f"only {kills} of {args.kills} kills landed in {len(launches)} launches")

        # 3. every study to the end, then the checks
        if not stop:
            for s in studies:
                journal = root / s["runs_dir"] / NAME / "optuna.journal"
                cmd = [
                    py,
                    "-m",
                    "pal_study.cli",
                    "run",
                    str(study_path),
                    "--runs-dir",
                    s["runs_dir"],
                    "--tracking-uri",
                    s["tracking_uri"],
                ]
                t = time.monotonic()
                launch = Launch(cmd, root, logs / f"final{s['index']}", journal, env)
                rec = launch.watch(None, args.hang_s, hard_limit_s=1800)
                s["final_run"] = {k: v for k, v in rec.items() if k not in ("journal_at_launch",)}
                s["final_run"]["journal_at_launch"] = rec["journal_at_launch"]
                s["final_wall_s"] = round(time.monotonic() - t, 1)
                problems = []
                if rec["outcome"] != "finished":
                    problems.append(f"final run: {rec['outcome']} rc={rec['rc']} {rec['hang_reason'] or ''}".strip())
                if rec["lock_warning"]:
                    problems.append("final run printed Optuna's lock warning")
                if os.path.lexists(str(journal) + ".lock"):
                    problems.append("a journal lock is left after the final run")
                summary = root / s["runs_dir"] / NAME / "summary.json"
                s["table_equal"] = False
                if summary.exists() and rec["outcome"] == "finished":
                    got = table_of(summary)
                    s["table"] = got
                    s["table_equal"] = got == reference
                    if not s["table_equal"]:
                        s["table_diff"] = [
                            {"reference": a, "got": b} for a, b in zip(reference, got, strict=False) if a != b
                        ]
                        problems.append(f"table differs from the reference in {len(s['table_diff'])} cells")
                else:
                    problems.append("no summary.json")
                s["mlflow"] = check_mlflow(s["tracking_uri"], budget + n_finals)
                problems += [f"mlflow: {p}" for p in s["mlflow"]["problems"]]
                s["problems"] = problems
                s["ok"] = not problems
                for p in problems:
                    failures.append(f"study {s['index']}: {p}")
                if problems and rec["outcome"] != "finished":
                    print(f"--- study {s['index']} final run stderr tail ---\n{rec['stderr_tail']}", file=sys.stderr)
                print(
                    f"study {s['index']} ({s['runs_dir']}, {s['launches']} launches, {s['kills']} kills): "
                    f"final run {rec['outcome']} in {s['final_wall_s']} s, table "
                    f"{'= reference' if s['table_equal'] else 'DIFFERS'}, mlflow {s['mlflow'].get('children')} "
                    f"children {s['mlflow'].get('statuses')}{'' if s['ok'] else '  PROBLEMS: ' + '; '.join(problems)}",
                    flush=True,
                )
    except KeyboardInterrupt:
        payload["interrupted"] = True
        failures.append("interrupted (Ctrl-C / SIGTERM)")
        rc = 130
    finally:
        cleanup_all()
        payload["wall_s"] = round(time.time() - t_start, 1)
        payload["loadavg_at_end"] = _bench._loadavg()
        payload["summary"] = summarize(payload, args)
        report(payload)
        # An interrupted run never replaces a complete run's figures.
        path = _bench.write_json(
            "kill_survival_interrupted" if payload["interrupted"] else "kill_survival", args.quick, payload
        )
        print(f"\nwrote {path}")
        if failures or args.keep:
            print(f"work dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if rc:
        return rc
    return 1 if failures else 0


def yaml_text(path: Path) -> str:
    return path.read_text()


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip()


def _tree_hash(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def summarize(payload: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    launches = payload["launches"]
    killed = [r for r in launches if r["outcome"] == "killed"]
    reruns = [r for r in launches if r["rerun"]]
    starts = [r["first_append_s"] for r in reruns if r["first_append_s"] is not None]
    first_starts = [r["first_append_s"] for r in launches if not r["rerun"] and r["first_append_s"] is not None]
    works = [r["first_work_s"] for r in reruns if r["first_work_s"] is not None]
    studies = payload["studies"]
    return {
        "kills_attempted": args.kills,
        "kills_landed": len(killed),
        "kills_survived": sum(1 for r in killed if _survived(r, launches, studies)),
        "launches": len(launches),
        "finished_before_kill": sum(r["outcome"] == "finished" for r in launches),
        "hangs": sum(r["outcome"] == "hang" for r in launches)
        + sum(1 for s in studies if (s.get("final_run") or {}).get("outcome") == "hang"),
        "exited_error": sum(r["outcome"] in ("exited_error", "self_killed") for r in launches),
        "phase": dict(Counter(r["phase"] for r in killed)),
        "driver_starting_by_phase": dict(Counter(r["phase"] for r in killed if r["driver_starting"])),
        "before_training_by_phase": dict(Counter(r["phase"] for r in killed if r["before_training"])),
        "tuning_kills_with_finals_started": sum(
            r["phase"] == "tuning" and r["journal_at_end"].get("finals_trials", 0) > 0 for r in killed
        ),
        "lock_fault_kills": sum(bool(r.get("fault_fired")) for r in killed),
        "kills_leaving_journal_lock": sum(r["lock_left"] for r in killed),
        "reruns_removing_stale_lock": sum(r["stale_lock_removed"] for r in launches)
        + sum(bool((s.get("final_run") or {}).get("stale_lock_removed")) for s in studies),
        "lock_warnings": sum(r["lock_warning"] for r in launches)
        + sum(bool((s.get("final_run") or {}).get("lock_warning")) for s in studies),
        "rerun_startup_s": {
            "n": len(starts),
            "max": max(starts, default=None),
            "median": _bench.median(starts) if starts else None,
        },
        "first_launch_startup_s": {"n": len(first_starts), "max": max(first_starts, default=None)},
        "rerun_to_first_epoch_s": {
            "n": len(works),
            "max": max(works, default=None),
            "median": _bench.median(works) if works else None,
        },
        "leftover_processes_after_killpg": sum(r["leftover_processes"] for r in killed),
        "kills_with_orphans": sum(bool(r["processes"]["orphans"]) for r in killed),
        "orphan_names": dict(Counter(o.split(":", 1)[1].split()[0] for r in killed for o in r["processes"]["orphans"])),
        "trials_failed_in_loop": max((r["journal_at_end"]["failed"] for r in launches), default=0),
        "studies": len(studies),
        "studies_completed_in_loop": sum(s["completed_in_loop"] for s in studies),
        "tables_equal": [s.get("table_equal") for s in studies],
        "mlflow_ok": [(s.get("mlflow") or {}).get("ok") for s in studies],
        "failures": len(payload["failures"]),
    }


def _survived(kill: dict[str, Any], launches: list[dict[str, Any]], studies: list[dict[str, Any]]) -> bool:
    """A kill is survived when its study later ran to the end with every check passing."""
    s = studies[kill["study"]]
    return bool(s.get("ok"))


def report(payload: dict[str, Any]) -> None:
    s = payload["summary"]
    print("\n== kill survival ==")
    print(f"command: {payload['command']}")
    rows = [
        ["kills survived / landed / asked", f"{s['kills_survived']} / {s['kills_landed']} / {s['kills_attempted']}"],
        ["launches (finished before the kill)", f"{s['launches']} ({s['finished_before_kill']})"],
        ["hangs", s["hangs"]],
        ["unexpected exits", s["exited_error"]],
        ["kills by the journal-lock fault hook", s["lock_fault_kills"]],
        ["kills leaving the journal lock", s["kills_leaving_journal_lock"]],
        ["launches removing a stale journal lock", s["reruns_removing_stale_lock"]],
        ["Optuna lock warnings", s["lock_warnings"]],
        [
            "rerun start-up (to 1st journal append) max / median s",
            f"{_bench._fmt(s['rerun_startup_s']['max'])} / {_bench._fmt(s['rerun_startup_s']['median'])}"
            f" (n={s['rerun_startup_s']['n']})",
        ],
        [
            "rerun start-up to its first new epoch / finished trial, max / median s",
            f"{_bench._fmt(s['rerun_to_first_epoch_s']['max'])} / {_bench._fmt(s['rerun_to_first_epoch_s']['median'])}"
            f" (n={s['rerun_to_first_epoch_s']['n']})",
        ],
        ["first-launch start-up (to 1st journal append) max s", _bench._fmt(s["first_launch_startup_s"]["max"])],
        ["processes outliving killpg (0.2 s after; then killed by pid)", s["leftover_processes_after_killpg"]],
        [
            f"kills leaving processes alive {ORPHAN_S:g} s later (then killed by pid)",
            f"{s['kills_with_orphans']} {s['orphan_names'] or ''}",
        ],
        ["studies (completed during the kills)", f"{s['studies']} ({s['studies_completed_in_loop']})"],
        ["tables equal to the reference", s["tables_equal"]],
        ["MLflow checks", s["mlflow_ok"]],
        ["wall time", f"{payload['wall_s']:.0f} s"],
    ]
    print(_bench.table(["", "value"], rows))
    phases = ["start-up", "tuning", "finals", "report"]
    print()
    print(
        _bench.table(
            [
                "kill landed in (journal at the kill)",
                "kills",
                "driver had not appended yet",
                "driver had not trained yet",
            ],
            [
                [
                    p,
                    s["phase"].get(p, 0),
                    s["driver_starting_by_phase"].get(p, 0),
                    s["before_training_by_phase"].get(p, 0),
                ]
                for p in phases
            ],
        )
    )
    print(
        f"(tuning: {s['tuning_kills_with_finals_started']} of those kills came after some cell's finals had "
        "started; finals: every tuning trial finished, finals not; report: everything finished)"
    )
    if payload["failures"]:
        print("\nFAILURES:")
        for f in payload["failures"]:
            print(f"  - {f}")
    else:
        print("\nall checks passed")


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup_all()
