"""A study logged to a real MLflow tracking server on PostgreSQL, read back through the client API and
shown in the MLflow UI in headless Chromium.

Everything runs on 127.0.0.1: a throwaway PostgreSQL cluster (``initdb``/``pg_ctl``, run as the
``postgres`` user when the tests run as root), ``mlflow server`` as a subprocess in its own process
group, and Debian's ``/usr/bin/chromium`` driven by playwright (no browser download).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pal_study.cli import main
from tests.support import ensure_local_ray, study_file  # the same small study the SQLite tests log

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STUDY = "pg_study"
EPOCHS = 3
METHODS = ["ce", "ce+fnpal"]
TRIALS_PER_CELL = 2
SEEDS = [0]

# Studies run on one local Ray per test process (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else the newest /usr/lib/postgresql/<v>/bin (Debian)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def run_checked(cmd: list[str], what: str, timeout: float = 120) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{what} failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout}\n{res.stderr}"


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode} before {url} answered:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the whole process group (uvicorn workers too), then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def pg_mlflow_server(tmp_path_factory):
    """PostgreSQL on a free loopback port, ``mlflow server`` on top of it, and one small study logged to it.

    Yields (tracking URI, experiment id). Both are torn down at module end.
    """
    initdb, pg_ctl, createdb = pg_bin("initdb"), pg_bin("pg_ctl"), pg_bin("createdb")
    if not (initdb and pg_ctl and createdb):
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, createdb) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; install postgresql-15 (.ci/run does)"
        )
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no 'postgres' user to run PostgreSQL as")
    # pytest's tmp dirs are private to root (0700): the postgres user needs a directory of its own.
    pg_dir = Path(tempfile.mkdtemp(prefix="pal-pg-"))
    if os.geteuid() == 0:
        os.chown(pg_dir, pg_user.pw_uid, pg_user.pw_gid)
    data = pg_dir / "data"
    pg_port = free_port()
    pg_started = False
    server = None
    server_log = None
    try:
        run_checked(as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "mlflow", "-E", "UTF8"]), "initdb")
        run_checked(
            as_postgres(
                [
                    pg_ctl,
                    "-D",
                    str(data),
                    "-l",
                    str(pg_dir / "postgres.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-k {pg_dir} -h 127.0.0.1 -p {pg_port}",
                    "start",
                ]
            ),
            "pg_ctl start",
        )
        pg_started = True
        run_checked(
            as_postgres([createdb, "-h", "127.0.0.1", "-p", str(pg_port), "-U", "mlflow", "mlflow"]), "createdb"
        )

        tmp = tmp_path_factory.mktemp("mlflow_server")
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        server_log = tmp / "mlflow_server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        # The server's job runner (GenAI judges etc.) forks ~7 consumer processes of ~240 MB each: not needed.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with open(server_log, "wb") as log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    f"postgresql+psycopg2://mlflow@127.0.0.1:{pg_port}/mlflow",
                    "--artifacts-destination",
                    str(tmp / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=tmp,
                start_new_session=True,
            )
        wait_http_ok(f"{uri}/health", 90, server, server_log)

        path = study_file(tmp, STUDY, methods=METHODS, noise=[0.0], trials=TRIALS_PER_CELL, seeds=SEEDS, epochs=EPOCHS)
        ensure_local_ray()  # module fixtures run before function ones (the local_ray mark)
        rc = main(["run", str(path), "--runs-dir", str(tmp / "runs"), "--tracking-uri", uri])
        assert rc == 0, f"pal-study run exited {rc}; server log:\n{tail(server_log)}"
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(STUDY)
        assert exp is not None, f"no experiment {STUDY!r} on the server"
        yield uri, exp.experiment_id
    finally:
        if server is not None:
            stop_group(server)
        if pg_started:
            subprocess.run(
                as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True, timeout=60
            )
        shutil.rmtree(pg_dir, ignore_errors=True)


def study_runs(client: MlflowClient, exp_id: str) -> tuple:
    runs = client.search_runs([exp_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("pal.stage") == "study"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    kids = [r for r in runs if r.info.run_id != parent.info.run_id and r.data.tags.get("stage") != "cell"]
    return parent, kids


def test_study_logged_to_mlflow_server_on_postgresql(pg_mlflow_server, tmp_path):
    uri, exp_id = pg_mlflow_server
    client = MlflowClient(tracking_uri=uri)
    parent, kids = study_runs(client, exp_id)
    assert parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    cells = len(METHODS)
    # Every tuning trial and every final seed is a run under its cell's run, which is a child of
    # the study run (tags must be strings over REST).
    n_kids, expected = len(kids), cells * TRIALS_PER_CELL + cells * len(SEEDS)
    assert n_kids == expected, sorted(r.info.run_name for r in kids)
    cell_runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    assert len(cell_runs) == cells and {r.data.tags["stage"] for r in cell_runs} == {"cell"}
    cell_ids = {r.info.run_id for r in cell_runs}
    assert all(r.data.tags.get("mlflow.parentRunId") in cell_ids for r in kids)
    by_filter = client.search_runs(
        [exp_id], f"tags.`pal.study_run` = '{parent.info.run_id}' and tags.stage != 'cell'", max_results=1000
    )
    assert {r.info.run_id for r in by_filter} == {r.info.run_id for r in kids}
    tune = [r for r in kids if r.data.tags["stage"] == "tune"]
    final = [r for r in kids if r.data.tags["stage"] == "final"]
    assert len(tune) == cells * TRIALS_PER_CELL and len(final) == cells * len(SEEDS)
    assert {r.data.tags["method"] for r in kids} == set(METHODS)
    assert all(r.data.tags["outcome"] in ("completed", "pruned") and r.data.tags.get("cell") for r in kids)
    for r in final:
        hist = client.get_metric_history(r.info.run_id, "val_acc")
        assert sorted(m.step for m in hist) == list(range(1, EPOCHS + 1)), r.info.run_name
    names = {a.path for a in client.list_artifacts(final[0].info.run_id)}
    assert "config.yaml" in names, names
    cfg = yaml.safe_load(
        Path(client.download_artifacts(final[0].info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    assert cfg["optim"]["epochs"] == EPOCHS and cfg["seed"] == int(final[0].data.tags["seed"])


def _dismiss_popups(page) -> None:
    """Close the MLflow Assistant side panel and any dialog/tour that may cover the table."""
    page.keyboard.press("Escape")
    for name in ("Close", "Dismiss", "Got it", "Skip"):
        buttons = page.get_by_role("button", name=name, exact=True)
        for i in range(buttons.count()):
            try:
                if buttons.nth(i).is_visible():
                    buttons.nth(i).click(timeout=2000)
            except Exception:
                pass


def test_mlflow_ui_lists_study_runs_in_headless_chromium(pg_mlflow_server):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found; install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright

    uri, exp_id = pg_mlflow_server
    client = MlflowClient(tracking_uri=uri)
    parent, _kids = study_runs(client, exp_id)
    cells = client.search_runs([exp_id], "tags.stage = 'cell'", max_results=100)
    # The cell runs (named by their labels) are what the UI lists at the first level below the study.
    fnpal_names = sorted(r.info.run_name for r in cells if r.data.tags["method"] == "ce+fnpal")
    assert fnpal_names
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "mlflow_ui.png"
    shot.unlink(missing_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            # The experiment's default landing page is the GenAI overview: go to the runs table directly.
            page.goto(f"{uri}/#/experiments/{exp_id}/runs")
            try:
                # The parent run row; its children are collapsed under it.
                page.get_by_text(parent.info.run_name, exact=True).first.wait_for(timeout=60_000)
                _dismiss_popups(page)
                box = page.get_by_test_id("search-box")
                if box.count() == 0:
                    box = page.get_by_placeholder("metrics.rmse", exact=False)
                box.first.fill("tags.method = 'ce+fnpal' and tags.stage = 'cell'")
                box.first.press("Enter")
                page.get_by_text("matching runs").first.wait_for()
                # The matching cells sit under the study run: expand it if still collapsed.
                if not page.get_by_text(fnpal_names[0], exact=True).first.is_visible():
                    row = page.locator("[role=row]", has_text=parent.info.run_name).first
                    row.locator("[col-id*='Run Name'] button").first.click()
                for name in fnpal_names:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
                # Best effort: show the `method` tag as a column (its values are in the run names anyway).
                try:
                    page.get_by_role("button", name="Columns", exact=True).click(timeout=5000)
                    page.get_by_placeholder("Search columns").fill("method", timeout=5000)
                    page.get_by_text("method", exact=True).last.click(timeout=5000)  # Tags come after Params
                    page.keyboard.press("Escape")
                except Exception:
                    page.keyboard.press("Escape")
                page.wait_for_timeout(500)
                text = page.inner_text("body")
                ce_shown = [
                    n
                    for n in (r.info.run_name for r in cells if r.data.tags["method"] == "ce")
                    if page.get_by_text(n, exact=True).count()
                ]
            finally:
                page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    for name in fnpal_names:
        assert name in text, (name, text[:3000])
    assert "ce+fnpal" in text
    assert not ce_shown, f"the tag filter did not hide the CE cells: {ce_shown}"
    assert shot.exists() and shot.stat().st_size > 0
    assert shot.read_bytes()[:4] == b"\x89PNG"
