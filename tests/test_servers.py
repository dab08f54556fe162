"""``pal-study ui`` and ``pal-study dashboard`` as users run them (real subprocesses on 127.0.0.1):
they come up, serve, and on SIGTERM or SIGINT to the CLI alone stop with every process they
started and free their port; the dashboard serves a study's Optuna journal read-only and live."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "pal_study.cli"]


# -- helpers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, grandchildren, ...), by /proc ppid chains."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parent[int(entry)] = st[1]
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now (SO_REUSEADDR, as servers bind:
    connections in TIME_WAIT do not count, a listening socket does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port``, from /proc/net/tcp and tcp6."""
    addrs = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            hexaddr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                if width == 8:
                    addrs.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(hexaddr)[::-1]))
                else:
                    words = b"".join(bytes.fromhex(hexaddr[i : i + 8])[::-1] for i in range(0, 32, 8))
                    addrs.add(socket.inet_ntop(socket.AF_INET6, words))
    return addrs


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200, (url, r.status)
        return r.read()


def wait_http(proc: subprocess.Popen, url: str, timeout: float, log: Path) -> float:
    t0 = time.monotonic()
    while True:
        try:
            get(url, timeout=2)
            return time.monotonic() - t0
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"exited with {proc.returncode} before {url} answered:\n{log.read_text()[-3000:]}")
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"{url} did not answer within {timeout:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)


class Server:
    """The CLI as a subprocess in a session of its own (so a stray group signal from the test
    cannot reach it), output to a log file."""

    def __init__(self, args: list[str], log: Path, **kwargs):
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115  (open for the server's lifetime; closed in stop)
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        self.tree: set[int] = set()

    def descendants(self) -> set[int]:
        """The CLI's processes now (remembered for the cleanup of a failed test)."""
        self.tree = descendants(self.proc.pid)
        return self.tree

    def stop_and_check(self, sig: int, tree: set[int], port: int) -> float:
        """Send ``sig`` to the CLI only; assert it exits 0 within 20 s, frees the port, and leaves
        none of ``tree`` (its descendants while it served) alive. Returns the seconds to exit."""
        t0 = time.monotonic()
        os.kill(self.proc.pid, sig)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the CLI did not exit within 20 s of {signal.Signals(sig).name}:\n{self.text()[-3000:]}")
        took = time.monotonic() - t0
        assert rc == 0, (rc, self.text()[-3000:])
        left = {pid for pid in tree if alive(pid)}
        assert not left, f"left running: {[(p, Path(f'/proc/{p}/cmdline').read_bytes()) for p in left]}"
        assert port_free(port), f"port {port} still taken: {listening_addresses(port)}"
        return took

    def text(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def cleanup(self) -> None:
        """Whatever a failed test left: the CLI and its processes, orphaned or not."""
        tree = self.tree | (descendants(self.proc.pid) if self.proc.poll() is None else set())
        for pid in [self.proc.pid, *tree]:
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture
def server_factory():
    made: list[Server] = []

    def make(args: list[str], log: Path, **kwargs) -> Server:
        made.append(Server(args, log, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.cleanup()


# -- the module's parts ------------------------------------------------------------------------------


def test_run_server_stops_a_group_that_ignores_sigterm(tmp_path):
    """A child that ignores SIGTERM, with a grandchild in its group: the stop kills both after the
    grace period and still counts as a requested stop (exit 0); a server that ends on its own
    gives its own code, 128+N for a signal."""
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
        "time.sleep(600)\n"
    )
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        "from pal_study.servers import run_server\n"
        f"sys.exit(run_server([sys.executable, {str(script)!r}], grace_s=1.0, name='stubborn'))\n"
    )
    proc = subprocess.Popen([sys.executable, str(driver)], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "ready").exists() or len(descendants(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        tree = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGHUP)
        assert proc.wait(timeout=15) == 0
        assert "did not stop within 1 s of SIGTERM: killed" in proc.stderr.read()
        assert not [pid for pid in tree if alive(pid)]
    finally:
        for pid in [proc.pid, *descendants(proc.pid)]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    from pal_study.servers import run_server

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    assert run_server([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert run_server([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]) == 137
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored


# -- pal-study ui ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stops_mlflow_server_and_its_children(sig, tmp_path, server_factory):
    port = free_port()
    srv = server_factory(
        ["ui", "--port", str(port), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], tmp_path / "ui.log"
    )
    wait_http(srv.proc, f"http://127.0.0.1:{port}/health", 35, srv.log)
    tree = srv.descendants()
    # mlflow server, and the uvicorn it starts
    assert len(tree) >= 2, tree
    assert listening_addresses(port) == {"127.0.0.1"}
    srv.stop_and_check(sig, tree, port)


# -- pal-study dashboard -----------------------------------------------------------------------------


def make_journal(runs: Path, study: str = "demo") -> Path:
    """An Optuna journal as pal-study writes one: a tuning study per cell (with intermediate
    values and a pruned trial) and a finals study."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = runs / study / "optuna.journal"
    path.parent.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    # cell000 as an older pal-study stored it (factors, no title); cell001 with its title.
    attrs = {
        "cell000": {"factors": json.dumps({"method": "ce", "data.noise.rate": 0.6})},
        "cell001": {"factors": json.dumps({"method": "ce+fnpal", "data.noise.rate": 0.6}), "title": "ce+fnpal"},
    }
    for cell in ("cell000", "cell001"):
        st = optuna.create_study(storage=storage, study_name=f"{study}/{cell}", direction="maximize")
        for k, v in attrs[cell].items():
            st.set_user_attr(k, v)
        for i in range(3):
            t = st.ask(
                {
                    "optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                    "loss.margin": optuna.distributions.FloatDistribution(0.0, 1.0),
                }
            )
            for step in range(3):
                t.report(0.1 * i + 0.05 * step, step)
            if i == 1:
                st.tell(t, state=optuna.trial.TrialState.PRUNED)
            else:
                st.tell(t, 0.1 * i + 0.1)
    finals = optuna.create_study(storage=storage, study_name=f"{study}/cell000/finals", direction="maximize")
    finals.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    return path


def test_dashboard_serves_the_journal_live_and_read_only_then_stops(tmp_path, server_factory):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = make_journal(tmp_path / "runs")
    port = free_port()
    srv = server_factory(
        ["dashboard", "demo", "--port", str(port), "--runs-dir", str(tmp_path / "runs")], tmp_path / "dashboard.log"
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(srv.proc, f"{base}/api/meta", 30, srv.log)
    tree = srv.descendants()
    assert tree
    assert listening_addresses(port) == {"127.0.0.1"}
    assert f"http://127.0.0.1:{port}/" in srv.text()

    # Listed and titled with each cell's short name (stored, or from the stored factors of an
    # older journal); the stored names, which a resume finds studies by, are untouched.
    listed = {s["study_name"]: s for s in json.loads(get(f"{base}/api/studies"))["study_summaries"]}
    assert set(listed) == {"demo/cell000 · ce", "demo/cell001 · ce+fnpal", "demo/cell000/finals · ce"}
    studies = {name.split(" · ")[0]: s for name, s in listed.items()}
    detail = json.loads(get(f"{base}/api/studies/{studies['demo/cell000']['study_id']}"))
    assert detail["name"] == "demo/cell000 · ce"
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Pruned", "Complete"]
    # The importances load the study by its stored name (optuna-dashboard's get_study_name_from_id)
    imp = json.loads(get(f"{base}/api/studies/{studies['demo/cell000']['study_id']}/param_importances"))
    assert {i["name"] for i in imp["param_importances"][0]} == {"optim.lr", "loss.margin"}
    stored = JournalStorage(JournalFileBackend(str(journal)))
    assert {s.study_name for s in stored.get_all_studies()} == set(studies)
    assert detail["has_intermediate_values"] and len(detail["trials"][1]["intermediate_values"]) == 3
    assert b"<html" in get(f"{base}/dashboard").lower()

    # Read-only: the dashboard's "delete study" is refused and the journal stays as it was.
    before = journal.read_bytes()
    req = urllib.request.Request(f"{base}/api/studies/{studies['demo/cell001']['study_id']}", method="DELETE")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(req, timeout=10)
    assert journal.read_bytes() == before

    # Live, and never in the writer's way: a trial added now (through Optuna's lock) is served.
    storage = JournalStorage(JournalFileBackend(str(journal)))
    st = optuna.load_study(study_name="demo/cell001", storage=storage)
    st.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={}))
    assert not Path(f"{journal}.lock").exists()
    detail = json.loads(get(f"{base}/api/studies/{studies['demo/cell001']['study_id']}"))
    assert len(detail["trials"]) == 4 and detail["trials"][-1]["values"] == [0.9]

    srv.stop_and_check(signal.SIGTERM, tree, port)


def test_dashboard_stops_on_sigint(tmp_path, server_factory):
    make_journal(tmp_path / "runs")
    port = free_port()
    srv = server_factory(
        ["dashboard", "demo", "--port", str(port), "--journal", str(tmp_path / "runs" / "demo" / "optuna.journal")],
        tmp_path / "dashboard.log",
    )
    wait_http(srv.proc, f"http://127.0.0.1:{port}/api/studies", 30, srv.log)
    tree = srv.descendants()
    srv.stop_and_check(signal.SIGINT, tree, port)


def test_dashboard_without_optuna_dashboard_or_journal_exits_2(tmp_path):
    fake = tmp_path / "site" / "optuna_dashboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named optuna_dashboard (test)')\n")
    make_journal(tmp_path / "runs")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    r = subprocess.run(
        [*CLI, "dashboard", "demo", "--runs-dir", str(tmp_path / "runs"), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "pip install 'pal-study[dashboard]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr

    r = subprocess.run(
        [*CLI, "dashboard", "nostudy", "--runs-dir", str(tmp_path / "runs"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "no Optuna journal" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "nostudy").exists()
