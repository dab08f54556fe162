"""``pal-study slurm`` on a real SLURM: munged, slurmctld and slurmd started by the test (Debian's
slurm-wlm and munge; .ci/run installs them), jobs submitted with sbatch, a small digits study run
by the job's driver on the job's own Ray.

- One node, on loopback: a job runs the study to the end; ``pal-study status`` and ``report``
  read the run directory from this process (the login node) while and after it runs; nothing the
  job starts listens beyond loopback.
- The same study stopped by SLURM's time-limit warning (the signal ``--signal`` asks for, sent as
  slurmctld sends it), requeued by the job itself, cancelled outright after it resumed, and
  resubmitted: it ends with the uninterrupted run's table, each trial run once.
- Two nodes: a second slurmd in a network namespace (as tests/study/test_cluster.py builds its
  second Ray node); the job starts Ray's head on the first node and a worker on the second with
  srun, and trials run on both.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pal_study.study.status import study_status
from tests.study.test_cluster import _free_port, can_make_namespaces, namespace_pair
from tests.support import journal, studies_by_name, write_study

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo", "ss")
STUDY = "slurmci"
TRIALS, FINALS = 4, [0]


def _why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the test's slurmd runs the jobs as root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"needs SLURM and munge (apt-get install slurm-wlm munge): {', '.join(missing)} not found"
    return None


@dataclass(frozen=True)
class Node:
    name: str
    addr: str
    cpus: int
    netns: str | None = None  # the network namespace its slurmd runs in (None: this one)


@dataclass
class Slurm:
    """A running SLURM: clients get ``env`` (SLURM_CONF); job ids start at ``first_job``."""

    root: Path
    cluster: str
    env: dict[str, str]
    first_job: int
    loopback: bool = False  # its daemons bind loopback only
    daemons: list[int] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        """scontrol's record of a job (JobState, Restarts, ...); {} once it is gone."""
        res = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", res.stdout)) if res.returncode == 0 else {}

    def wait(self, job_id: str, states: set[str], timeout: float, log: Path | None = None) -> dict[str, str]:
        deadline = time.time() + timeout
        while True:
            rec = self.job(job_id)
            if rec.get("JobState") in states:
                return rec
            if time.time() > deadline:
                text = log.read_text()[-4000:] if log and log.exists() else "(no log)"
                pytest.fail(f"job {job_id} is {rec.get('JobState')}, not {states}, after {timeout:.0f} s:\n{text}")
            time.sleep(0.3)


def _conf(root: Path, cluster: str, ctl: str, nodes: list[Node], first_job: int, loopback: bool) -> str:
    lines = [
        f"ClusterName={cluster}",
        f"SlurmctldHost=localhost({ctl})",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire: how long slurmd keeps a job's revoked credential, and so how long SLURM holds
        # a requeued job back before it may start again (default 120 s; an earlier start is killed:
        # "Job credential revoked").
        f"AuthInfo=socket={root}/munge.socket,cred_expire=10",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "KillWait=2",  # a cancelled job's processes get SIGKILL 2 s after SIGTERM (default 30 s)
        f"FirstJobId={first_job}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd-%n.log",
    ]
    if loopback:
        # Daemons and srun bind the address this host's name resolves to (loopback here), not all.
        lines.append("CommunicationParameters=NoInAddrAny,NoCtldInAddrAny")
    lines += [f"NodeName={n.name} NodeAddr={n.addr} CPUs={n.cpus} State=UNKNOWN" for n in nodes]
    lines.append("PartitionName=pal Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _hostname_is_loopback() -> bool:
    try:
        return socket.gethostbyname(socket.gethostname()).startswith("127.")
    except OSError:
        return False


def _pid(path: Path, timeout: float = 15) -> int:
    deadline = time.time() + timeout
    while not path.exists() or not path.read_text().strip():
        if time.time() > deadline:
            pytest.fail(f"no pid file {path}")
        time.sleep(0.1)
    return int(path.read_text())


@contextlib.contextmanager
def slurm_cluster(root: Path, nodes: list[Node], ctl: str, loopback: bool = False) -> Iterator[Slurm]:
    """munged, slurmctld and a slurmd per node, all stopped on exit with every process of their
    jobs (by pid: a job's processes carry the cluster's name in their environment)."""
    cluster = f"pal{secrets.token_hex(3)}"
    # Job ids of their own: the job's Ray temp dirs (/tmp/pal-ray-<job>-<n>) differ from any other's.
    first_job = random.randrange(1_000_000, 60_000_000)
    for sub in ("state", *(f"spool/{n.name}" for n in nodes)):
        (root / sub).mkdir(parents=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, cluster, ctl, nodes, first_job, loopback))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["SLURM_CONF"] = str(conf)
    slurm = Slurm(root, cluster, env, first_job, loopback)
    try:
        subprocess.run(
            [
                "munged",
                "--force",
                f"--socket={root}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={root}/munged.pid",
                f"--log-file={root}/munged.log",
                f"--seed-file={root}/munged.seed",
            ],
            check=True,
            capture_output=True,
        )
        slurm.daemons.append(_pid(root / "munged.pid"))
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, capture_output=True)
        slurm.daemons.append(_pid(root / "slurmctld.pid"))
        for n in nodes:
            # nsenter, not `ip netns exec`: that mounts a new /sys, and slurmd needs /sys/fs/cgroup
            enter = ["nsenter", f"--net=/var/run/netns/{n.netns}"] if n.netns else []
            subprocess.run([*enter, "slurmd", "-N", n.name, "-f", str(conf)], env=env, check=True, capture_output=True)
            slurm.daemons.append(_pid(root / f"slurmd-{n.name}.pid"))
        deadline = time.time() + 60
        while True:
            states = slurm.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
            if states[1::2] == ["idle"] * len(nodes):
                break
            if time.time() > deadline:
                logs = "\n".join(p.read_text()[-1500:] for p in root.glob("*.log"))
                pytest.fail(f"SLURM's nodes did not come up: {states}\n{logs}")
            time.sleep(0.5)
        yield slurm
    finally:
        _stop(slurm)


def _stop(slurm: Slurm) -> None:
    if slurm.daemons[1:]:  # slurmctld runs: cancel what is left, then shut the daemons down
        slurm.run("scancel", "--user=root", check=False)
        deadline = time.time() + 20
        while slurm.run("squeue", "-h", check=False).stdout.strip() and time.time() < deadline:
            time.sleep(0.5)
        slurm.run("scontrol", "shutdown", check=False)
    leftovers = [*slurm.daemons[1:], *_children(slurm.daemons[1:]), *_job_processes(slurm.cluster)]
    for pid in [*leftovers, *slurm.daemons[:1]]:  # munged last: the others talk to it
        _end(pid)
    for path in Path("/tmp").glob("pal-ray-*"):
        m = re.fullmatch(r"pal-ray-(\d+)-\d+", path.name)
        if m and slurm.first_job <= int(m[1]) < slurm.first_job + 1000:
            shutil.rmtree(path, ignore_errors=True)


def _end(pid: int, wait: float = 10) -> None:
    for sig, grace in ((signal.SIGTERM, wait), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + grace
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return  # exited; its parent reaps it
            time.sleep(0.1)


def _children(pids: list[int]) -> list[int]:
    """Direct children of these processes (slurmctld's slurmscriptd)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in pids:
                found.append(int(proc.name))
    return found


def _job_processes(cluster: str) -> list[int]:
    """The processes of this cluster's jobs, by their environment (SLURM_CLUSTER_NAME)."""
    mark = f"SLURM_CLUSTER_NAME={cluster}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of the TCP sockets these processes listen on (ss -tlnp)."""
    out = subprocess.run(["ss", "-H", "-tlnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        local = line.split()[3]
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in pids:
                found.append((local, name))
    return found


def _loopback(local: str) -> bool:
    host = local.rsplit(":", 1)[0].strip("[]")
    return host.startswith(("127.", "::ffff:127.")) or host == "::1"


def _study(tmp_path: Path) -> Path:
    """Two digits cells, 4 tuning trials each (no pruning), one final seed: about 15 s of trials."""
    return write_study(
        tmp_path,
        STUDY,
        base={"data": {"name": "digits"}, "optim": {"epochs": 3}},
        factors={"method": ["ce", "ce+fnpal"]},
        search=[str(ROOT / "search_spaces/weight_decay.yaml")],
        budget={"trials_per_cell": TRIALS, "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2}},
        finals={"seeds": FINALS},
    )


def _free_ports(n: int = 200) -> int:
    """A base port with ``n`` free ports above it (the job's Ray ports; --ray-port), below the
    kernel's ephemeral range: a test on the other worker binding port 0 (an MLflow server's
    port, seen in CI) must not be handed one of them while the job runs."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        base = random.randrange(10000, min(low, 32768) - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("", port))
        except OSError:
            continue
        return base
    pytest.fail("no 200 free ports in a row")


def _submit(slurm: Slurm, cwd: Path, study: Path, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "pal_study.cli", "slurm", str(study), "--runs-dir", "shared/runs", "--no-track", *args],
        cwd=cwd,
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _cli(slurm: Slurm, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pal_study.cli", *args], cwd=cwd, env=slurm.env, capture_output=True, text=True
    )


def _table(runs: Path) -> list:
    cells = json.loads((runs / STUDY / "summary.json").read_text())["cells"]
    keys = ("label", "counts", "best_params", "best_value", "val_mean", "test_mean", "test_std")
    return [tuple(c[k] for k in keys) for c in cells]


def _each_trial_once(runs: Path) -> None:
    studies = studies_by_name(journal(runs, STUDY))
    for name, st in studies.items():
        states = [t.state.name for t in st.trials]
        want = len(FINALS) if name.endswith("/finals") else TRIALS
        assert states == ["COMPLETE"] * want, (name, states)


def _until(what: str, predicate, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"{what} did not happen in {timeout:.0f} s:\n{log.read_text()[-4000:] if log.exists() else ''}")
        time.sleep(0.2)


def _completed(run_dir: Path) -> int:
    if not (run_dir / "optuna.journal").exists():
        return 0
    return study_status(run_dir).totals.completed


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    why = _why_no_slurm()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm1")
    loopback = _hostname_is_loopback()
    with slurm_cluster(root, [Node("pal1", "127.0.0.1", 2)], "127.0.0.1", loopback=loopback) as slurm:
        yield slurm


@pytest.fixture(scope="module")
def uninterrupted(one_node, tmp_path_factory):
    """The study run to its end by a one-node job: (directory, runs dir, job id, what listened)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    study = _study(tmp)
    t0 = time.time()
    job = _submit(one_node, tmp, study, "--cpus-per-node", "2", "--time", "10", "--ray-port", str(_free_ports()))
    runs = tmp / "shared" / "runs"
    log = runs / STUDY / f"slurm-{job}.out"
    # While it runs: what the job's processes listen on, and the status from the "login node".
    _until("a finished trial", lambda: _completed(runs / STUDY) >= 1, 120, log)
    job_pids = set(_job_processes(one_node.cluster))
    daemons = set(one_node.daemons) if one_node.loopback else set()
    listening = _listening(job_pids | daemons)
    if not one_node.loopback:  # SLURM's own srun binds all addresses then, as the daemons do
        listening = [(local, name) for local, name in listening if name not in ("srun", "slurmstepd")]
    live = _cli(one_node, tmp, "status", STUDY, "--runs-dir", str(runs), "--json")
    rec = one_node.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 180, log)
    assert rec["JobState"] == "COMPLETED", log.read_text()[-4000:]
    print(f"one-node job: {time.time() - t0:.1f} s from sbatch to COMPLETED")
    return tmp, runs, job, listening, live


def test_a_one_node_job_runs_the_study_to_the_end(one_node, uninterrupted):
    tmp, runs, job, listening, live = uninterrupted
    text = (runs / STUDY / f"slurm-{job}.out").read_text()
    assert "pal-study slurm: Ray head on pal1 (127.0.0.1:" in text and "0 worker node(s)" in text
    assert f"state and summary in {runs / STUDY}/" in text
    _each_trial_once(runs)
    for st in studies_by_name(journal(runs, STUDY)).values():
        assert {t.user_attrs["node"] for t in st.trials} == {"127.0.0.1"}
    assert (runs / STUDY / "slurm.sbatch").is_file()
    assert not list(Path("/tmp").glob(f"pal-ray-{job}-*"))  # the job removed Ray's temp dir

    # The login node's view while the job ran, and after it.
    assert live.returncode == 0, live.stderr
    during = json.loads(live.stdout)
    assert during["running"] is True and during["totals"]["completed"] >= 1
    after = _cli(one_node, tmp, "status", STUDY, "--runs-dir", str(runs), "--json")
    done = json.loads(after.stdout)
    assert done["running"] is False and done["done"] is True
    assert done["totals"]["completed"] == 2 * TRIALS and done["totals"]["finals_done"] == 2 * len(FINALS)
    report = _cli(one_node, tmp, "report", STUDY, "--runs-dir", str(runs), "--source", "runs", "--format", "csv")
    assert report.returncode == 0, report.stderr
    assert "ce+fnpal" in report.stdout

    # Ray, the driver and srun (and the daemons, when this host's name is loopback) on loopback only.
    names = {name for _, name in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    assert all(_loopback(local) for local, _ in listening), listening


def test_a_stopped_cancelled_and_resubmitted_job_ends_with_the_uninterrupted_table(one_node, uninterrupted, tmp_path):
    study = _study(tmp_path)
    port = _free_ports()
    args = ("--cpus-per-node", "2", "--time", "10", "--ray-port", str(port))
    t0 = time.time()
    job = _submit(one_node, tmp_path, study, *args)
    runs = tmp_path / "shared" / "runs"
    log = runs / STUDY / f"slurm-{job}.out"

    # 1. The time-limit warning, sent as slurmctld sends --signal=B:USR1@S: to the batch shell.
    _until("a finished trial", lambda: _completed(runs / STUDY) >= 1, 120, log)
    one_node.run("scancel", "--batch", "--signal=USR1", job)
    rec = one_node.wait(job, {"PENDING", "COMPLETED", "FAILED", "CANCELLED"}, 90, log)
    text = log.read_text()
    assert rec["JobState"] == "PENDING" and rec["Restarts"] == "1", text[-4000:]
    assert "SIGUSR1" in text and f"requeueing job {job} (it resumes)" in text
    assert "interrupted: run the same command again to resume" in text  # the driver stopped as on Ctrl-C
    stopped_at = study_status(runs / STUDY)
    assert not stopped_at.running and not stopped_at.done
    # SLURM starts the requeued job by itself once its old credential expires (cred_expire, above).

    # 2. The requeued job resumes; cancelled outright (SIGTERM to all, SIGKILL 2 s later) as it does.
    _until("the resumed run", lambda: "resuming " in log.read_text(), 120, log)
    one_node.run("scancel", job)
    rec = one_node.wait(job, {"CANCELLED", "COMPLETED", "FAILED"}, 60, log)
    assert rec["JobState"] == "CANCELLED", log.read_text()[-4000:]
    assert "(restart 1)" in log.read_text()

    # 3. Resubmitted with the same command: it resumes and ends.
    again = _submit(one_node, tmp_path, study, *args)
    log2 = runs / STUDY / f"slurm-{again}.out"
    rec = one_node.wait(again, {"COMPLETED", "FAILED", "CANCELLED"}, 180, log2)
    assert rec["JobState"] == "COMPLETED", log2.read_text()[-4000:]
    assert "resuming " in log2.read_text()
    print(f"stopped, requeued, cancelled and resubmitted: {time.time() - t0:.1f} s in all")

    _each_trial_once(runs)
    assert _table(runs) == _table(uninterrupted[1])
    assert not list(Path("/tmp").glob(f"pal-ray-{again}-*"))


@pytest.fixture
def two_nodes(tmp_path_factory):
    why = _why_no_slurm() or can_make_namespaces() or (shutil.which("nsenter") is None and "needs nsenter")
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm2")
    with namespace_pair() as (ns, host_ip, ns_ip):
        nodes = [Node("node1", host_ip, 1), Node("node2", ns_ip, 1, netns=ns)]
        with slurm_cluster(root, nodes, host_ip) as slurm:
            yield slurm, host_ip, ns_ip


def test_a_two_node_job_runs_trials_on_both_nodes(two_nodes, uninterrupted, tmp_path):
    slurm, host_ip, ns_ip = two_nodes
    study = _study(tmp_path)
    t0 = time.time()
    job = _submit(slurm, tmp_path, study, "--nodes", "2", "--time", "10", "--ray-port", str(_free_ports()))
    runs = tmp_path / "shared" / "runs"
    log = runs / STUDY / f"slurm-{job}.out"
    rec = slurm.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 240, log)
    text = log.read_text()
    assert rec["JobState"] == "COMPLETED", text[-4000:]
    print(f"two-node job: {time.time() - t0:.1f} s from sbatch to COMPLETED")
    assert f"Ray head on node1 ({host_ip}:" in text and "1 worker node(s)" in text
    assert re.search(rf"Ray at {re.escape(host_ip)}:\d+: 2 node\(s\) up", text)
    nodes = {t.user_attrs["node"] for st in studies_by_name(journal(runs, STUDY)).values() for t in st.trials}
    assert nodes == {host_ip, ns_ip}, nodes
    _each_trial_once(runs)
    assert _table(runs) == _table(uninterrupted[1])
    assert not list(Path("/tmp").glob(f"pal-ray-{job}-*"))
