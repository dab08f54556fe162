"""A real two-node Ray cluster on this machine: the head on the host side of a veth pair, a
worker node inside a network namespace the test creates (Ray refuses multi-node on loopback;
docs/study-engine.md), token auth as Ray 2.60 does it. A study runs through
``--address``; its trials run on both nodes (their MLflow ``node`` tags say so); the worker node
is killed mid-study and the study still completes every cell's budget."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"palprobe{secrets.token_hex(2)}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"cannot create network namespaces here: {e}"
    return None


can_make_namespaces = _can_make_namespaces


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    why = _can_make_namespaces()
    if why:
        pytest.skip(why)
    with cluster() as c:
        yield c


@contextlib.contextmanager
def namespace_pair():
    """A new network namespace joined to this one by a veth pair: yields (namespace, host-side
    address, namespace-side address); the veth and the namespace are deleted on exit. Needs root."""
    tag = secrets.token_hex(2)
    ns, v_host, v_ns = f"palns{tag}", f"palh{tag}", f"paln{tag}"
    net = 200 + int(tag, 16) % 50
    host_ip, ns_ip = f"10.231.{net}.1", f"10.231.{net}.2"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", v_host, "type", "veth", "peer", "name", v_ns)
        _run("ip", "link", "set", v_ns, "netns", ns)
        _run("ip", "addr", "add", f"{host_ip}/24", "dev", v_host)
        _run("ip", "link", "set", v_host, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/24", "dev", v_ns)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", v_ns, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", v_host], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def cluster(head_cpus: int = 1, worker_cpus: int = 1):
    """Head on the host side of a veth pair, one worker node in a new network namespace; both
    torn down (process groups, veth, namespace, Ray's temp dir) on exit. Needs root."""
    with namespace_pair() as (ns, head_ip, worker_ip):
        yield from _cluster_on(ns, head_ip, worker_ip, head_cpus, worker_cpus)


def _cluster_on(ns: str, head_ip: str, worker_ip: str, head_cpus: int, worker_cpus: int):
    tag = ns.removeprefix("palns")
    port = _free_port()
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", PAL_STUDY_CPUS="1")
    temp = Path(f"/tmp/ray-{tag}")  # short: Ray's socket paths must fit in 107 bytes
    procs: list[subprocess.Popen] = []
    try:
        head = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                f"--node-ip-address={head_ip}",
                f"--port={port}",
                f"--num-cpus={head_cpus}",
                "--include-dashboard=false",
                f"--temp-dir={temp}",
                "--block",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        procs.append(head)
        _wait_for_port(head_ip, port, head)
        worker = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                RAY,
                "start",
                f"--address={head_ip}:{port}",
                f"--node-ip-address={worker_ip}",
                f"--num-cpus={worker_cpus}",
                "--block",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        procs.append(worker)
        _wait_for_nodes(f"{head_ip}:{port}", env, 2)
        yield {"address": f"{head_ip}:{port}", "env": env, "head_ip": head_ip, "worker_ip": worker_ip, "worker": worker}
    finally:
        for p in reversed(procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        subprocess.run(["pkill", "-9", "-f", f"temp-dir={temp}"], capture_output=True)
        subprocess.run(["pkill", "-9", "-f", f"{head_ip}"], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"Ray head did not listen on {host}:{port}")


def _wait_for_nodes(address: str, env: dict[str, str], n: int, timeout: float = 120) -> None:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        if res.returncode == 0 and res.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(2)
    pytest.fail(f"the cluster did not reach {n} nodes: {res.stderr[-2000:]}")


@pytest.mark.slow
def test_study_on_two_nodes_survives_losing_the_worker(two_node_cluster, tmp_path):
    import optuna
    from mlflow import MlflowClient
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    c = two_node_cluster
    spec = {
        "name": "cluster",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 15}},
        "factors": {"method": ["ce", "ce+fnpal"]},
        "search": [str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {"trials_per_cell": 6, "pruner": {"name": "none"}},
        "finals": {"seeds": [0, 1]},
        "resources": {"cpu": 1},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pal_study.cli",
            "run",
            str(path),
            "--runs-dir",
            str(runs),
            "--address",
            c["address"],
            "--tracking-uri",
            uri,
        ],
        env=c["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Wait until the worker node has finished a trial, then take it away mid-study.
        journal = runs / "cluster" / "optuna.journal"
        deadline = time.time() + 300
        nodes: set[str] = set()
        while c["worker_ip"] not in nodes:
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.time() < deadline, f"no trial finished on the worker node (nodes seen: {nodes})"
            if journal.exists():
                storage = JournalStorage(JournalFileBackend(str(journal)))
                nodes = {
                    t.user_attrs.get("node")
                    for s in optuna.get_all_study_summaries(storage)
                    for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
                }
            time.sleep(0.5)
        os.killpg(c["worker"].pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", f"node-ip-address={c['worker_ip']}"], capture_output=True)
        _out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, err[-3000:]

    storage = JournalStorage(JournalFileBackend(str(runs / "cluster" / "optuna.journal")))
    for i in range(2):
        trials = optuna.load_study(study_name=f"cluster/cell00{i}", storage=storage).trials
        states = [(t.number, t.state.name, t.user_attrs.get("node"), t.user_attrs.get("reason")) for t in trials]
        assert len(trials) == 6 and all(s[1] == "COMPLETE" for s in states), (states, err[-3000:])
        finals = optuna.load_study(study_name=f"cluster/cell00{i}/finals", storage=storage).trials
        assert sorted(t.user_attrs["seed"] for t in finals) == [0, 1]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len([r for r in runs if r.data.tags.get("stage") == "cell"]) == 2
    kids = [r for r in runs if r.data.tags.get("stage") in ("tune", "final")]
    assert len(kids) == 2 * 6 + 2 * 2
    node_tags = {r.data.tags.get("node") for r in kids}
    assert {c["head_ip"], c["worker_ip"]} <= node_tags, node_tags
    assert all(r.info.status == "FINISHED" for r in kids)
