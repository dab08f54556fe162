"""``pal-study slurm`` without a scheduler: the sbatch script's header, and its body run by bash
against stand-ins for srun, scontrol, ray and the driver that record what they are asked (the srun
lines of a three-node job, the head's address, the ports, the token, what the time-limit warning
and a cancel do); the command's bad input (exit 2) and ``--dry-run`` without SLURM installed.

The real scheduler runs the script in tests/study/test_slurm_jobs.py."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pal_study.errors import ConfigError
from pal_study.slurm import DEFAULT_PORT_BASE, PORT_SLOTS, PORT_SPAN, SlurmJob, check, render_script, time_limit_s
from tests.support import write_study

ROOT = Path(__file__).resolve().parents[1]

# Stand-ins. Each records its arguments and the Ray settings of its environment (one JSON object
# per line in $FAKE_LOG/<name>) through record.py.
RECORD = """import json, os, sys
name, *argv = sys.argv[1:]
env = {k: os.environ.get(v) for k, v in
       (("token", "RAY_AUTH_TOKEN"), ("mode", "RAY_AUTH_MODE"), ("loopback", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))}
with open(os.path.join(os.environ["FAKE_LOG"], name), "a") as f:
    f.write(json.dumps({"argv": argv, **env}) + "\\n")
"""
FAKE_SCONTROL = r"""#!/bin/bash
case "$1 $2" in
  "show hostnames") printf '%s\n' $FAKE_NODES ;;
  "show node") echo "NodeName=$3 Arch=x86_64"; echo "   NodeAddr=10.9.0.${3#n} NodeHostName=$3" ;;
  "requeue "*) echo "requeue $2" >> "$FAKE_LOG/scontrol" ;;
esac
"""
# srun: runs the command after its options here (-w takes a value).
FAKE_SRUN = r"""#!/bin/bash
"$FAKE_PY_REAL" "$FAKE_BIN/record.py" srun "$@"
while [[ $# -gt 0 && $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done
exec "$@"
"""
# ray: `start --block` blocks until signalled (the trap first: a stop never cuts the record short).
FAKE_RAY = r"""#!/bin/bash
trap 'exit 0' TERM INT
"$FAKE_PY_REAL" "$FAKE_BIN/record.py" ray "$@"
while :; do sleep 0.1; done
"""
# The interpreter: makes the token, waits for the Ray nodes, and plays the driver (FAKE_DRIVER:
# ok exits 0; wait runs until SIGINT, then exits 130 as `pal-study run` does).
FAKE_PY = r"""#!/bin/bash
if [ "$1" = -c ]; then echo faketoken123; exit 0; fi
"$FAKE_PY_REAL" "$FAKE_BIN/record.py" py "$@"
if [ "$2" = pal_study.slurm ]; then  # wait ADDRESS N: until N Ray nodes have started
  for _ in $(seq 200); do [ "$(cat "$FAKE_LOG/ray" 2>/dev/null | wc -l)" -ge "$5" ] && exit 0; sleep 0.05; done
  exit 1
fi
if [ "$FAKE_DRIVER" = ok ]; then exit 0; fi
trap 'echo interrupted >> "$FAKE_LOG/driver"; exit 130' INT
touch "$FAKE_LOG/driver-started"
while :; do sleep 0.1; done
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _job(tmp_path: Path, **kw) -> SlurmJob:
    base = {
        "study": str(tmp_path / "s.yaml"),
        "name": "s",
        "runs_dir": tmp_path / "shared" / "runs",
        "storage": tmp_path / "shared" / "ckpt",
        "workdir": tmp_path,
        "python": str(tmp_path / "bin" / "python"),
    }
    return SlurmJob(**{**base, **kw})


class Stand:
    """The script run by bash in ``tmp_path`` against the stand-ins; ``log(name)`` reads what
    each recorded."""

    def __init__(self, tmp_path: Path, nodes: int, driver: str = "ok", **kw):
        bin_dir, self.logs = tmp_path / "bin", tmp_path / "logs"
        bin_dir.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("ray", FAKE_RAY), ("python", FAKE_PY)):
            _exe(bin_dir / name, text)
        (bin_dir / "record.py").write_text(RECORD)
        self.job = _job(tmp_path, nodes=nodes, **kw)
        self.script = tmp_path / "job.sbatch"
        self.script.write_text(render_script(self.job))
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FAKE_LOG": str(self.logs),
            "FAKE_BIN": str(bin_dir),
            "FAKE_NODES": " ".join(f"n{i}" for i in range(1, nodes + 1)),
            "FAKE_PY_REAL": sys.executable,
            "FAKE_DRIVER": driver,
            "SLURM_JOB_ID": "4321",
            "SLURM_JOB_NODELIST": f"n[1-{nodes}]",
            "SLURM_CPUS_ON_NODE": "4",
            # what a shell that had started a local Ray would carry into sbatch's environment
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
        self.env.pop("SLURM_CPUS_PER_TASK", None)

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", str(self.script)], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def log(self, name: str) -> list[dict]:
        path = self.logs / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def sruns(self) -> list[list[str]]:
        return [r["argv"] for r in self.log("srun")]


PORT = DEFAULT_PORT_BASE + 4321 % PORT_SLOTS * PORT_SPAN  # the default base for job 4321


def test_the_default_ports_stay_below_the_ephemeral_range():
    assert DEFAULT_PORT_BASE + PORT_SLOTS * PORT_SPAN <= 32768


def test_a_three_node_job_starts_the_head_then_a_worker_per_other_node(tmp_path):
    s = Stand(tmp_path, nodes=3, gpus_per_node=2)
    done = s.start()
    out, _ = done.communicate(timeout=30)
    assert done.returncode == 0, out
    *starts, cleanup = s.sruns()
    assert sorted(a[:4] for a in starts) == [["--nodes=1", "--ntasks=1", "-w", f"n{i}"] for i in (1, 2, 3)]
    assert cleanup[:2] == ["--nodes=3", "--ntasks-per-node=1"] and "rm -rf /tmp/pal-ray-" in cleanup[-1]
    # by node: the stand-ins log as they start, in any order
    rays = sorted(s.log("ray"), key=lambda r: next(a for a in r["argv"] if a.startswith("--temp-dir=")))
    assert len(rays) == 3
    head_args, *workers = (r["argv"] for r in rays)
    ports = [
        f"--node-manager-port={PORT + 1}",
        f"--object-manager-port={PORT + 2}",
        f"--dashboard-agent-listen-port={PORT + 3}",
        f"--dashboard-agent-grpc-port={PORT + 4}",
        f"--runtime-env-agent-port={PORT + 5}",
        f"--metrics-export-port={PORT + 6}",
        f"--min-worker-port={PORT + 10}",
        f"--max-worker-port={PORT + 199}",
    ]
    for n, args in enumerate((head_args, *workers)):
        assert args[:2] == ["start", "--block"]
        assert f"--temp-dir=/tmp/pal-ray-4321-{n}" in args  # one per node
        assert set(ports) <= set(args)
        assert "--num-gpus=2" in args and args[-1] == "--num-cpus=4"  # SLURM's CPUs on that node
    assert {"--head", "--node-ip-address=10.9.0.1", f"--port={PORT}", "--include-dashboard=false"} <= set(head_args)
    for i, args in enumerate(workers, start=2):
        assert {f"--address=10.9.0.1:{PORT}", f"--node-ip-address=10.9.0.{i}"} <= set(args)
        assert "--head" not in args
    # One token for all, made in the job; a multi-node Ray is not held to loopback.
    assert {(r["token"], r["mode"], r["loopback"]) for r in rays} == {("faketoken123", "token", None)}
    waits, driver = s.log("py")[:-1], s.log("py")[-1]
    assert [w["argv"] for w in waits] == [
        ["-m", "pal_study.slurm", "wait", f"10.9.0.1:{PORT}", "1"],
        ["-m", "pal_study.slurm", "wait", f"10.9.0.1:{PORT}", "3"],
    ]
    runs, ckpt = s.job.runs_dir, s.job.storage
    assert driver["argv"] == [
        *("-m", "pal_study.cli", "run", str(tmp_path / "s.yaml")),
        *("--runs-dir", str(runs), "--storage", str(ckpt), "--progress", "plain"),
        f"--address=10.9.0.1:{PORT}",
    ]
    assert driver["token"] == "faketoken123"
    assert s.log("scontrol") == [] and "requeue" not in out


def test_a_one_node_job_keeps_ray_on_loopback(tmp_path):
    s = Stand(tmp_path, nodes=1, ray_port=30000)
    done = s.start()
    out, _ = done.communicate(timeout=30)
    assert done.returncode == 0, out
    (ray,) = s.log("ray")
    assert {"--head", "--node-ip-address=127.0.0.1", "--port=30000", "--min-worker-port=30010"} <= set(ray["argv"])
    assert ray["loopback"] == "0"  # Ray then binds loopback only
    assert [p["argv"][-1] for p in s.log("py")] == ["1", "--address=127.0.0.1:30000"]  # one wait, then the driver
    assert s.log("py")[-1]["loopback"] == "0"
    head, cleanup = s.sruns()  # no worker node
    assert head[:4] == ["--nodes=1", "--ntasks=1", "-w", "n1"] and cleanup[0] == "--nodes=1"


def _stop_with(s: Stand, sig: signal.Signals) -> tuple[int, str]:
    proc = s.start()
    deadline = time.time() + 30
    while not (s.logs / "driver-started").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_the_time_limit_warning_stops_the_driver_and_requeues_the_job(tmp_path):
    s = Stand(tmp_path, nodes=2, driver="wait")
    rc, out = _stop_with(s, signal.SIGUSR1)
    assert (s.logs / "driver").read_text() == "interrupted\n"  # SIGINT: the driver stops as on Ctrl-C
    assert (s.logs / "scontrol").read_text() == "requeue 4321\n"
    assert rc == 0, out
    assert "SIGUSR1" in out and "requeueing job 4321" in out
    assert s.sruns()[-1][:1] == ["--nodes=2"]  # Ray stopped and its temp dirs removed before


def test_without_requeue_the_warning_prints_how_to_resubmit(tmp_path):
    s = Stand(tmp_path, nodes=1, driver="wait", requeue=False)
    rc, out = _stop_with(s, signal.SIGUSR1)
    assert rc == 130 and not (s.logs / "scontrol").exists()
    assert f"resume it with: sbatch {s.job.script_path}" in out
    assert "#SBATCH --no-requeue" in s.script.read_text()


def test_a_cancel_stops_the_driver_and_does_not_requeue(tmp_path):
    s = Stand(tmp_path, nodes=1, driver="wait")
    rc, out = _stop_with(s, signal.SIGTERM)
    assert (s.logs / "driver").read_text() == "interrupted\n"
    assert rc == 130 and not (s.logs / "scontrol").exists()
    assert "resume it with: sbatch" in out


def test_the_header_asks_slurm_for_the_allocation_the_warning_and_requeue(tmp_path):
    job = _job(
        tmp_path,
        nodes=4,
        cpus_per_node=8,
        gpus_per_node=2,
        partition="gpu",
        account="proj-1",
        time="1-12:00:00",
        stop_before_s=300,
        run_args=("--set", "optim.epochs=3", "--no-track"),
    )
    text = render_script(job, "9.9")
    header = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert header == [
        "--job-name=pal-s",
        "--nodes=4",
        "--ntasks-per-node=1",
        "--cpus-per-task=8",
        "--gres=gpu:2",
        "--partition=gpu",
        "--account=proj-1",
        "--time=1-12:00:00",
        f"--output={job.run_dir}/slurm-%j.out",
        "--open-mode=append",
        "--signal=B:USR1@300",
        "--requeue",
    ]
    assert "GPUS=2" in text and "--set optim.epochs=3 --no-track)" in text
    assert "pal-study 9.9" in text.splitlines()[1]
    assert "#SBATCH --exclusive" not in text and "#SBATCH --exclusive" in render_script(_job(tmp_path))
    assert "RAY_AUTH_TOKEN=" in text and "faketoken" not in text  # made in the job, in no file
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 5400), ("5:30", 330), ("1:00:00", 3600), ("2-0", 172800), ("1-2:3", 93780), ("1-0:0:5", 86405)],
)
def test_slurm_time_forms(text, seconds):
    assert time_limit_s(text) == seconds
    assert time_limit_s("UNLIMITED") is None


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"nodes": 0}, "--nodes: 0: a job needs at least 1 node"),
        ({"gpus_per_node": -1}, "--gpus-per-node"),
        ({"partition": "a b"}, "--partition: 'a b'"),
        ({"time": "1h"}, "--time: '1h' is not a SLURM time"),
        ({"time": "2", "stop_before_s": 120}, "--time: 2 is not longer than --stop-before 120 s"),
        ({"ray_port": 80}, "--ray-port"),
        ({"runs_dir": Path("/shared/%u/runs")}, "--runs-dir: '/shared/%u/runs': no newline, % or \""),
        ({"runs_dir": Path('/shared/"q"/runs')}, '--runs-dir: \'/shared/"q"/runs\': no newline, % or "'),
    ],
)
def test_bad_options_are_named(tmp_path, kw, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check(_job(tmp_path, **kw))


def test_no_time_limit_needs_no_room_for_the_warning(tmp_path):
    for limit in ("0", "UNLIMITED"):
        check(_job(tmp_path, time=limit, stop_before_s=600))


# -- the command ------------------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "pal_study.cli", "slurm", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _no_slurm_path(tmp_path: Path) -> str:
    """PATH without sbatch: only the interpreter's directory and the basic tools."""
    bare = tmp_path / "bare"
    bare.mkdir(exist_ok=True)
    for tool in ("bash", "sh", "env"):
        target = next((Path(d) / tool for d in ("/usr/bin", "/bin") if (Path(d) / tool).exists()), None)
        if target is not None and not (bare / tool).exists():
            (bare / tool).symlink_to(target)
    return str(bare)


def test_a_run_directory_with_spaces_is_quoted_where_sbatch_reads_it(tmp_path):
    path = write_study(tmp_path, "spaced")
    res = _cli([str(path), "--dry-run", "--runs-dir", "my runs"], tmp_path, _no_slurm_path(tmp_path))
    assert res.returncode == 0, res.stderr
    runs = tmp_path / "my runs"
    assert f'#SBATCH --output="{runs}/spaced/slurm-%j.out"\n' in res.stdout  # sbatch keeps it one path
    assert f"--runs-dir '{runs}' --storage '{runs}'" in res.stdout  # the shell's quoting in RUN=(...)


def test_dry_run_prints_the_script_and_needs_no_slurm(tmp_path):
    path = write_study(tmp_path, "drysl")
    args = [str(path), "--dry-run", "--nodes", "2", "--runs-dir", "shared/runs"]
    res = _cli(args, tmp_path, _no_slurm_path(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in res.stdout
    runs = tmp_path / "shared" / "runs"
    assert f"RUN=({sys.executable} -m pal_study.cli run {path} --runs-dir {runs} --storage {runs}" in res.stdout
    assert not (tmp_path / "shared").exists()  # nothing written
    assert "usually each node's own" in res.stderr  # the run directory is under /tmp here


def test_without_sbatch_it_says_what_to_install(tmp_path):
    path = write_study(tmp_path, "nosb")
    res = _cli([str(path)], tmp_path, _no_slurm_path(tmp_path))
    assert res.returncode == 2
    assert "sbatch not found" in res.stderr and "--dry-run" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "0"], "--nodes: 0: a job needs at least 1 node"),
        (["--time", "soon"], "--time: 'soon' is not a SLURM time"),
        (["--time", "1"], "is not longer than --stop-before"),
    ],
)
def test_bad_input_exits_2_with_one_message(tmp_path, args, message):
    path = write_study(tmp_path, "badsl")
    res = _cli([str(path), "--dry-run", *args], tmp_path, _no_slurm_path(tmp_path))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_an_unknown_study_exits_2(tmp_path):
    res = _cli(["no_such_study", "--dry-run"], tmp_path, _no_slurm_path(tmp_path))
    assert res.returncode == 2 and "no_such_study" in res.stderr and "Traceback" not in res.stderr


def test_it_writes_the_script_into_the_run_directory_and_submits_it(tmp_path):
    path = write_study(tmp_path, "subm")
    bin_dir = tmp_path / "sbin"
    bin_dir.mkdir()
    _exe(bin_dir / "sbatch", f'#!/bin/bash\necho "$@" > {tmp_path}/sbatch-args\necho "77;palcluster"\n')
    res = _cli([str(path), "--runs-dir", "runs", "--time", "30"], tmp_path, f"{bin_dir}:{_no_slurm_path(tmp_path)}")
    assert res.returncode == 0, res.stderr
    script = tmp_path / "runs" / "subm" / "slurm.sbatch"
    assert res.stdout.strip() == "77"  # the job id alone on stdout
    assert (tmp_path / "sbatch-args").read_text().split() == ["--parsable", str(script)]
    assert f"log: {tmp_path}/runs/subm/slurm-77.out" in res.stderr
    assert f"pal-study status subm --runs-dir {tmp_path}/runs" in res.stderr
    dry = _cli([str(path), "--runs-dir", "runs", "--time", "30", "--dry-run"], tmp_path, _no_slurm_path(tmp_path))
    assert script.read_text() == dry.stdout
