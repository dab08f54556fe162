"""``pal-study slurm``: a study as one SLURM batch job.

The job's script (written to ``RUNS_DIR/<study>/slurm.sbatch``) starts Ray's head on the
allocation's first node and one Ray worker node on each other node (``srun``, as Ray's guide
"Deploying on Slurm" does), with a port range of the job's own and Ray's token authentication,
then runs ``pal-study run --address HEAD`` on the first node against a run directory on a shared
path. SLURM's warning before the time limit (``--signal=B:USR1@S``) reaches the batch shell,
which hands the driver a SIGINT: Ray Tune stops handing out trials, the study's state is already
in the Optuna journal and the trials' checkpoints, the driver exits 130, and the job requeues
itself (``--requeue``) or prints how to resubmit; either way the next run resumes.

Imports nothing heavy: ``--dry-run`` and the script's text need neither SLURM nor Ray.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pal_study.errors import ConfigError

SCRIPT = "slurm.sbatch"
LOG = "slurm-%j.out"  # SLURM's pattern: %j is the job id
# Each job's Ray ports: base, base+1, ... (Ray's services) and base+10 .. base+PORT_SPAN-1 (its
# worker processes); the default base depends on the job id so that jobs sharing a node differ.
# All below 32768, where Linux's ephemeral ports start: a port the kernel hands to any process
# binding port 0 (Ray's own among them) could otherwise be one of the job's fixed ones.
PORT_SPAN = 200
DEFAULT_PORT_BASE, PORT_SLOTS = 10000, 110
STOP_BEFORE_S = 120
WAIT_FOR_RAY_S = 300

_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_PLAIN = re.compile(r"[A-Za-z0-9_.,:@+=/-]+")  # a partition or account: nothing that ends an #SBATCH line


@dataclass(frozen=True)
class SlurmJob:
    """What the batch script runs: the study (an absolute YAML path), where its state lives, the
    allocation and the extra ``pal-study run`` options."""

    study: str
    name: str
    runs_dir: Path
    storage: Path
    workdir: Path
    python: str = sys.executable
    nodes: int = 1
    cpus_per_node: int | None = None
    gpus_per_node: int = 0
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    stop_before_s: int = STOP_BEFORE_S
    requeue: bool = True
    ray_port: int | None = None
    run_args: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def script_path(self) -> Path:
        return self.run_dir / SCRIPT

    def log_path(self, job_id: str) -> Path:
        return self.run_dir / LOG.replace("%j", job_id)


def time_limit_s(text: str) -> int | None:
    """SLURM's ``--time`` in seconds (None: unlimited); ConfigError for what sbatch would reject.
    Forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.fullmatch(text)
    if not m:
        raise ConfigError(
            f"{text!r} is not a SLURM time; use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS", key="--time"
        )
    days, a, b, c = m.groups()
    if days is None:
        parts = [int(x) for x in (a, b, c) if x is not None]
        if len(parts) == 1:
            return parts[0] * 60
        if len(parts) == 2:
            return parts[0] * 60 + parts[1]
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
    return int(days) * 86400 + hours * 3600 + minutes * 60 + seconds


def _limit_s(text: str) -> int | None:
    limit = time_limit_s(text)
    return None if limit == 0 else limit  # sbatch: a time limit of 0 is no limit


def check(job: SlurmJob) -> None:
    """Bad input as ConfigError (exit 2) before anything is written or submitted."""
    if job.nodes < 1:
        raise ConfigError(f"{job.nodes}: a job needs at least 1 node", key="--nodes")
    if job.gpus_per_node < 0:
        raise ConfigError(f"{job.gpus_per_node}: must be 0 or more", key="--gpus-per-node")
    if job.cpus_per_node is not None and job.cpus_per_node < 1:
        raise ConfigError(f"{job.cpus_per_node}: must be 1 or more", key="--cpus-per-node")
    for key, value in (("--partition", job.partition), ("--account", job.account)):
        if value is not None and not _PLAIN.fullmatch(value):
            raise ConfigError(f"{value!r}: letters, digits and _.,:@+=/- only", key=key)
    if any(c in str(job.runs_dir) for c in '\n%"'):
        # the run directory is in #SBATCH --output, where sbatch expands % patterns, a newline ends
        # the line and double quotes delimit a path with spaces
        raise ConfigError(f"{str(job.runs_dir)!r}: no newline, % or \" in the run directory's path", key="--runs-dir")
    if job.stop_before_s < 1:
        raise ConfigError(f"{job.stop_before_s}: must be 1 second or more", key="--stop-before")
    if job.time is not None:
        limit = _limit_s(job.time)
        if limit is not None and limit <= job.stop_before_s:
            raise ConfigError(
                f"{job.time} is not longer than --stop-before {job.stop_before_s} s: the job would be told to stop "
                "as it starts; give a longer --time or a shorter --stop-before",
                key="--time",
            )
    if job.ray_port is not None and not 1024 <= job.ray_port <= 65535 - PORT_SPAN:
        raise ConfigError(f"{job.ray_port}: must be in 1024..{65535 - PORT_SPAN}", key="--ray-port")


def shared_path_warning(job: SlurmJob) -> str | None:
    """A warning when the run directory or the checkpoints look node-local (each node's own /tmp)."""
    local = ("/tmp", "/var/tmp", "/dev/shm", "/run")
    for what, path in (("--runs-dir", job.runs_dir), ("--storage", job.storage)):
        real = os.path.realpath(path)
        if any(real == p or real.startswith(p + "/") for p in local):
            return (
                f"{what} {path} is under a directory that is usually each node's own; every node of the job and "
                "the login node must reach the run directory and the checkpoints (a shared filesystem)"
            )
    return None


def _ray_command(python: str) -> list[str]:
    ray = Path(python).with_name("ray")  # the console script beside the interpreter (a venv's bin/)
    return [str(ray)] if ray.is_file() else [python, "-m", "ray.scripts.scripts"]


def render_script(job: SlurmJob, version: str = "") -> str:
    """The sbatch script (bash) for ``job``."""
    q = shlex.quote
    sbatch = [
        f"--job-name=pal-{job.name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",  # one Ray node per SLURM node; Ray places the trials within it
    ]
    if job.cpus_per_node is not None:
        sbatch.append(f"--cpus-per-task={job.cpus_per_node}")
    else:
        sbatch.append("--exclusive")  # whole nodes: SLURM would give the one task a single CPU
    if job.gpus_per_node:
        sbatch.append(f"--gres=gpu:{job.gpus_per_node}")
    for key, value in (("partition", job.partition), ("account", job.account), ("time", job.time)):
        if value is not None:
            sbatch.append(f"--{key}={value}")
    sbatch += [
        # sbatch splits an #SBATCH line at blanks unless they are in double quotes (checked on
        # slurm-wlm 22.05: unquoted, "Invalid directive found in batch script")
        f'--output="{job.run_dir / LOG}"'
        if any(c.isspace() for c in str(job.run_dir))
        else f"--output={job.run_dir / LOG}",
        "--open-mode=append",  # a requeued job's runs follow each other in one log
        f"--signal=B:USR1@{job.stop_before_s}",
        "--requeue" if job.requeue else "--no-requeue",
    ]
    run = [
        job.python,
        "-m",
        "pal_study.cli",
        "run",
        job.study,
        "--runs-dir",
        str(job.runs_dir),
        "--storage",
        str(job.storage),
        "--progress",
        "plain",
        *job.run_args,
    ]
    port = f"$(( {DEFAULT_PORT_BASE} + SLURM_JOB_ID % {PORT_SLOTS} * {PORT_SPAN} ))"
    if job.ray_port is not None:
        port = str(job.ray_port)
    resubmit = f"sbatch {q(str(job.script_path))}"
    lines = [
        "#!/bin/bash",
        f"# pal-study{' ' + version if version else ''}: study {job.name} on SLURM, written by `pal-study slurm`.",
        "# Ray's head runs on the allocation's first node and a Ray worker node on each other node (srun),",
        "# the study's driver on the first node; the study's state is in the run directory below, which",
        "# every node and the login node must reach. Resubmit (it resumes): " + resubmit,
        *(f"#SBATCH {line}" for line in sbatch),
        "",
        "set -uo pipefail",
        f"cd {q(str(job.workdir))} || exit 1",
        f"PY={q(job.python)}",
        f"RAY=({' '.join(q(a) for a in _ray_command(job.python))})",
        f"RUN=({' '.join(q(a) for a in run)})",
        f"GPUS={job.gpus_per_node}",
        f"REQUEUE={int(job.requeue)}",
        f"RESUBMIT={q(resubmit)}",
        "",
        _BODY,
    ]
    return "\n".join(lines).replace("@PORT@", port)


# The script's body; @PORT@ becomes the job's port base.
_BODY = r"""echo "pal-study slurm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST" \
  "at $(date -Is)"

# Ray's token authentication: one token for this job's nodes, made here so that no file holds it;
# srun hands the environment to the Ray nodes.
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))') || exit 1
export RAY_AUTH_TOKEN
# A port range of the job's own (Ray's SLURM guide: jobs sharing a node must not share ports).
port=@PORT@
ports=(--node-manager-port=$((port + 1)) --object-manager-port=$((port + 2))
  --dashboard-agent-listen-port=$((port + 3)) --dashboard-agent-grpc-port=$((port + 4))
  --runtime-env-agent-port=$((port + 5)) --metrics-export-port=$((port + 6))
  --min-worker-port=$((port + 10)) --max-worker-port=$((port + @SPAN@ - 1)))

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head=${nodes[0]}
node_ip() {  # the address SLURM reaches a node at (its NodeAddr), as an IPv4 address
  local addr
  addr=$(scontrol show node "$1" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
  [[ $addr =~ ^[0-9.]+$ ]] || addr=$(getent ahostsv4 "$addr" | awk 'NR == 1 {print $1}')
  echo "$addr"
}
if (( ${#nodes[@]} == 1 )); then
  # Nothing outside this node needs to reach Ray: it binds and advertises loopback only.
  head_ip=127.0.0.1
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
else
  head_ip=$(node_ip "$head")
  unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER  # a local Ray's setting the submitting shell may carry
fi
address=$head_ip:$port

steps=()
ray_node() {  # INDEX NODE RAY-START-OPTIONS...: one Ray node, started with srun on NODE
  # A temp dir per node: nodes on one filesystem would share Ray's session dir and its sockets;
  # short: Ray's socket paths must fit in 107 bytes. The CPUs are what SLURM gave the job on
  # that node, read there.
  local dir=/tmp/pal-ray-$SLURM_JOB_ID-$1 node=$2
  shift 2
  srun --nodes=1 --ntasks=1 -w "$node" bash -c \
    'exec "$@" --num-cpus="${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}"' ray-node \
    "${RAY[@]}" start --block --temp-dir="$dir" "${ports[@]}" --num-gpus="$GPUS" "$@" &
  steps+=($!)
}
stop_ray() {  # srun ends its step on SIGTERM (SIGKILL after SLURM's KillWait), then the temp dirs go
  (( ${#steps[@]} )) || return 0
  kill -TERM "${steps[@]}" 2>/dev/null
  wait "${steps[@]}" 2>/dev/null
  steps=()
  srun --nodes="${#nodes[@]}" --ntasks-per-node=1 bash -c 'rm -rf /tmp/pal-ray-"$SLURM_JOB_ID"-*'
}

stopping="" driver=""
on_signal() {
  stopping=$1
  echo "pal-study slurm: SIG$1 at $(date -Is): stopping the study (its state is kept; it resumes)"
  [ -n "$driver" ] && kill -INT "$driver" 2>/dev/null
}
# USR1: SLURM's warning before the time limit (--signal). TERM: scancel or preemption, which also
# signal the driver and Ray themselves.
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

echo "pal-study slurm: Ray head on $head ($address), $(( ${#nodes[@]} - 1 )) worker node(s)"
ray_node 0 "$head" --head --node-ip-address="$head_ip" --port="$port" --include-dashboard=false
"$PY" -m pal_study.slurm wait "$address" 1 || { stop_ray; exit 1; }
for ((i = 1; i < ${#nodes[@]}; i++)); do
  ray_node "$i" "${nodes[i]}" --address="$address" --node-ip-address="$(node_ip "${nodes[i]}")"
done
if (( ${#nodes[@]} > 1 )); then
  "$PY" -m pal_study.slurm wait "$address" "${#nodes[@]}" || { stop_ray; exit 1; }
fi

rc=130
if [ -z "$stopping" ]; then
  # Job control gives the driver a SIGINT it does not ignore (a background job of a script without
  # it ignores SIGINT): SIGINT stops a study as Ctrl-C does.
  set -m
  "${RUN[@]}" --address="$address" &
  driver=$!
  set +m
  while kill -0 "$driver" 2>/dev/null; do wait "$driver"; done  # a trapped signal ends a wait early
  wait "$driver"
  rc=$?
fi
stop_ray
if [ "$rc" = 0 ]; then
  exit 0
fi
if [ "$rc" = 130 ] && [ "$stopping" = USR1 ] && [ "$REQUEUE" = 1 ]; then
  echo "pal-study slurm: the study stopped before the time limit; requeueing job $SLURM_JOB_ID (it resumes)"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
fi
if [ "$rc" = 130 ]; then
  echo "pal-study slurm: the study stopped before its end; resume it with: $RESUBMIT"
fi
exit "$rc"
""".replace("@SPAN@", str(PORT_SPAN))


def write_script(job: SlurmJob, version: str = "") -> Path:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    path = job.script_path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_script(job, version))
    os.replace(tmp, path)
    return path


def sbatch_command() -> str:
    """sbatch's path; ConfigError (exit 2) naming what to install, or --dry-run, without it."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise ConfigError(
            "sbatch not found: install SLURM's client commands on this machine (Debian: apt-get install slurm-client) "
            "or print the script with --dry-run and submit it where sbatch runs"
        )
    return exe


def submit(script: Path) -> str:
    """Submit ``script``; returns the job id. ConfigError (exit 2) when sbatch refuses it."""
    res = subprocess.run([sbatch_command(), "--parsable", str(script)], capture_output=True, text=True)
    if res.returncode != 0:
        raise ConfigError(f"sbatch refused {script}: {(res.stderr or res.stdout).strip()}")
    return res.stdout.strip().split(";")[0]


# -- in the job --------------------------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def wait_for_cluster(address: str, nodes: int, timeout_s: float = WAIT_FOR_RAY_S) -> None:
    """Return once the Ray cluster at ``address`` has ``nodes`` live nodes; TimeoutError if not in time."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    # ray.init against a port nobody listens on yet waits long before it fails: the port first.
    while not _port_open(host, int(port)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Ray head listens at {address} after {timeout_s:.0f} s")
        time.sleep(0.5)
    import ray

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        while True:
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            if alive >= nodes:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray cluster at {address} has {alive} of {nodes} nodes after {timeout_s:.0f} s")
            time.sleep(1)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """``python -m pal_study.slurm wait ADDRESS NODES [TIMEOUT_S]``: the job script's wait for Ray."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4) or args[0] != "wait" or not args[2].isdigit():
        print("usage: python -m pal_study.slurm wait HOST:PORT NODES [TIMEOUT_S]", file=sys.stderr)
        return 2
    try:
        wait_for_cluster(args[1], int(args[2]), float(args[3]) if len(args) == 4 else WAIT_FOR_RAY_S)
    except TimeoutError as e:
        print(f"pal-study slurm: {e}", file=sys.stderr)
        return 1
    print(f"pal-study slurm: Ray at {args[1]}: {args[2]} node(s) up", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
