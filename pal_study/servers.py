"""Long-running servers (``pal-study ui``, ``pal-study dashboard``) as children that stop when told.

:func:`run_server` starts a server command in its own session, so in its own process group, and
treats the whole group as the server: ``mlflow server`` is a Python process that starts
``python -m uvicorn`` and waits for it, so a signal to its pid alone ends the waiting process and
leaves uvicorn serving, its port taken. Here SIGTERM, SIGINT and SIGHUP to the CLI become SIGTERM
to the group, then, after a grace period, SIGKILL to whatever of the group is left; an atexit hook
does the same when the CLI ends another way (an exception). A SIGKILL of the CLI itself cannot be
caught: the group is then left running. A server that starts processes in a session of their own
leaves the group, and this cannot follow them (neither mlflow's server nor optuna-dashboard does).

Exit code of :func:`run_server`: ``0`` when the server stopped because the CLI was told to stop
(that is how a server ends: ``docker stop``, a service manager, Ctrl-C), even where
the group had to be killed after the grace period (it says so on stderr); otherwise the server's
own: its exit status, or ``128 + N`` where signal ``N`` (not sent by us) ended it.

``python -m pal_study.servers optuna-dashboard JOURNAL --host H --port P`` is the dashboard's
child: optuna-dashboard over an Optuna journal file opened read-only (see :func:`serve_optuna_dashboard`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pal_study.analysis.journal import open_journal_readonly

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 10.0
_POLL_S = 0.1


def _group_members(pgid: int) -> list[int] | None:
    """Live (not zombie) pids in process group ``pgid`` per /proc; None where /proc is unreadable."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after its last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies do not count)."""
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:  # no /proc: a signal 0 to the group (zombies count there)
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(pgid: int, grace_s: float = GRACE_S) -> bool:
    """SIGTERM the group, wait up to ``grace_s`` for it to end, then SIGKILL what is left.
    Returns True where it ended within the grace period (or was gone already)."""
    if not group_alive(pgid):
        return True
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(_POLL_S)
    _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return False


def run_server(
    cmd: Sequence[str], *, env: Mapping[str, str] | None = None, grace_s: float = GRACE_S, name: str = "server"
) -> int:
    """Run ``cmd`` until it exits or the CLI is told to stop (SIGTERM, SIGINT, SIGHUP); never leaves
    a process of its group behind. Returns the exit code described in the module docstring.

    Must be called from the main thread (it installs signal handlers, and restores the previous
    ones on return). stdin is /dev/null (the child has no controlling terminal); stdout and stderr
    are the CLI's."""
    stop: list[int] = []
    proc: subprocess.Popen[bytes] | None = None
    stopper: list[threading.Thread] = []
    killed_late = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        first = not stop
        stop.append(signum)
        if proc is None:
            return  # not started yet: run_server stops it as soon as it is
        if first:
            _start_stopper()
        else:
            _signal_group(proc.pid, signal.SIGKILL)  # told twice: no more waiting

    def _stop() -> None:
        assert proc is not None
        if not stop_group(proc.pid, grace_s):
            killed_late.set()

    def _start_stopper() -> None:
        # A thread does the terminate, wait, kill; the main thread keeps reaping the leader.
        stopper.append(threading.Thread(target=_stop, name=f"stop-{name}", daemon=True))
        stopper[-1].start()

    # Handlers first: a signal between the start and the handlers would end the CLI and orphan the group.
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    guard: Callable[[], object] | None = None
    done = False
    try:
        proc = subprocess.Popen(
            list(cmd), env=None if env is None else dict(env), stdin=subprocess.DEVNULL, start_new_session=True
        )
        # The CLI ending without coming back here (an exception raised past the finally below, an
        # interpreter shutdown) still stops the group.
        guard = atexit.register(functools.partial(stop_group, proc.pid, grace_s))  # unique: unregister by identity
        if stop:
            _start_stopper()
        rc = proc.wait()
        for thread in stopper:
            thread.join()
        # The leader is gone; its children (uvicorn under mlflow server) may not be.
        if not stop_group(proc.pid, grace_s):
            killed_late.set()
        done = True
    finally:
        if proc is not None and not done:  # an exception here: the group goes with it
            stop_group(proc.pid, grace_s)
        if guard is not None:
            atexit.unregister(guard)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop:
        if killed_late.is_set():
            print(f"{name} did not stop within {grace_s:g} s of SIGTERM: killed", file=sys.stderr)
        return 0
    return 128 - rc if rc < 0 else rc


# -- optuna-dashboard -----------------------------------------------------------------------------


def serve_optuna_dashboard(journal: str | Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard over ``journal`` on ``host:port`` until killed, with a threaded
    wsgiref server (as optuna-dashboard's own CLI; its ``run_server`` is single-threaded) that
    does not log every request. The journal is opened read-only, which keeps the dashboard's
    buttons (delete a study, tell a trial, notes) from changing the study under its driver, and
    never blocks the driver's appends."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from optuna_dashboard import wsgi

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    app = wsgi(open_journal_readonly(journal, titled=True))
    try:
        httpd = make_server(host, port, app, server_class=Server, handler_class=QuietHandler)
    except OSError as e:
        print(f"error: optuna-dashboard cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
    httpd.serve_forever()


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pal_study.servers")
    sub = parser.add_subparsers(dest="server", required=True)
    dash = sub.add_parser("optuna-dashboard", help="optuna-dashboard over an Optuna journal file, read-only")
    dash.add_argument("journal")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    # run_server's SIGTERM ends this process at once (Python's default): nothing to flush, the
    # journal is never written.
    serve_optuna_dashboard(args.journal, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
