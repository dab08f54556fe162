"""MLflow tracking of studies and trainings, read back through ``mlflow.MlflowClient`` only."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pal_study.analysis.report import aggregate, fetch_finals
from pal_study.cli import main
from pal_study.tracking import open_store
from tests.support import EPOCHS, study_file

# Studies run on one local Ray per test process (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("local_ray")

ROOT = Path(__file__).resolve().parents[2]


def children(client: MlflowClient, exp_id: str, parent: str) -> list:
    """The study's tuning and final runs (below its cell runs, tests/tracking/test_cell_runs.py)."""
    return client.search_runs([exp_id], f"tags.`pal.study_run` = '{parent}' and tags.stage != 'cell'", max_results=1000)


def test_parent_and_child_runs_with_tags_metrics_artifacts(tracked_study):
    tmp, uri, _ = tracked_study
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    kids = children(client, exp.experiment_id, parent.info.run_id)
    # Every run of the study is below its study run: 4 cells x 3 trials + 4 cells x 3 seeds (and 4 cell runs).
    assert len(kids) == len(runs) - 1 - 4 == 4 * 3 + 4 * 3
    tune = [r for r in kids if r.data.tags["stage"] == "tune"]
    final = [r for r in kids if r.data.tags["stage"] == "final"]
    assert len(tune) == 12 and len(final) == 12
    assert {r.info.status for r in kids} <= {"FINISHED", "KILLED"}
    for r in kids:
        t = r.data.tags
        for key in (
            "method",
            "loss",
            "head",
            "dataset",
            "noise_kind",
            "noise_rate",
            "imbalance_ratio",
            "seed",
            "cell",
            "stage",
            "outcome",
            "config_hash",
            "pal_study_version",
        ):
            assert key in t, (key, t)
        assert t["outcome"] in ("completed", "pruned")
        assert r.data.params["optim.epochs"] == str(EPOCHS)
        assert t["method"] in ("ce", "ce+fnpal") and t["dataset"] == "digits"
    pruned = [r for r in tune if r.data.tags["outcome"] == "pruned"]
    for r in pruned:
        assert r.info.status == "KILLED" and r.data.tags["outcome_reason"].startswith("pruned by median")
    done = [r for r in tune if r.data.tags["outcome"] == "completed"]
    assert done
    for r in done[:2] + final[:2]:
        hist = client.get_metric_history(r.info.run_id, "val_acc")
        assert sorted(m.step for m in hist) == list(range(1, EPOCHS + 1))
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        # Finals get the reliability diagram; tuning trials its bins (not drawn: it costs the slot).
        diagram = "reliability.png" if r.data.tags["stage"] == "final" else "reliability.json"
        assert {"config.yaml", "prototype_geometry.json", "per_class_acc.csv", diagram} <= names
        assert ({"reliability.png", "reliability.json"} - {diagram}).isdisjoint(names)
        cfg = yaml.safe_load(Path(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp))).read_text())
        assert cfg["optim"]["epochs"] == EPOCHS and cfg["seed"] == int(r.data.tags["seed"])
    assert sorted(int(r.data.tags["seed"]) for r in final) == [0] * 4 + [1] * 4 + [2] * 4
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "study.yaml" in parent_files and "report" in parent_files
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/comparison.md", "report/comparison.csv", "report/acc_vs_noise_digits.png"} <= report_files
    md = Path(client.download_artifacts(parent.info.run_id, "report/comparison.md", str(tmp))).read_text()
    # The FNPAL rows carry their difference to the CE cell of the same noise rate and a p-value.
    fnpal_rows = [line for line in md.splitlines() if "| ce+fnpal |" in line and "method=ce+fnpal" in line]
    assert len(fnpal_rows) == 2 and all(line.split("|")[6].strip() not in ("", "-") for line in fnpal_rows)


def test_report_from_a_fresh_process_matches_the_study_end(tracked_study):
    tmp, uri, _ = tracked_study
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    parent = client.search_runs([exp.experiment_id], "tags.`pal.stage` = 'study'")[0]
    logged = Path(client.download_artifacts(parent.info.run_id, "report/comparison.csv", str(tmp / "dl"))).read_text()
    out = tmp / "report"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pal_study.cli",
            "report",
            "tracked",
            "--format",
            "csv",
            "--out",
            str(out),
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert (out / "comparison.csv").read_text() == logged
    assert (out / "acc_vs_noise_digits.png").read_bytes()[:4] == b"\x89PNG"
    assert res.stdout == "" and "report.html" in res.stderr  # --out: files only, stdout stays clean
    html = (out / "report.html").read_text()
    # self-contained: the figures inline, nothing fetched from elsewhere
    assert "data:image/png;base64," in html and "ce+fnpal" in html and "<script" not in html
    assert "http://" not in html and "https://" not in html


def _report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "pal_study.cli", *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=env
    )


@pytest.mark.slow
def test_report_formats_go_to_stdout_and_parse(tracked_study):
    import csv
    import io

    tmp, uri, _ = tracked_study
    common = ["--tracking-uri", uri, "--runs-dir", str(tmp / "runs")]
    res = _report("report", "tracked", "--format", "csv", *common)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))  # plain CSV on stdout, no boxed table
    assert len(rows) == 4 and {r["method"] for r in rows} == {"ce", "ce+fnpal"}
    assert all(r["q"] for r in rows if r["method"] == "ce+fnpal")
    res = _report("report", "tracked", "--format", "json", *common)
    doc = json.loads(res.stdout)
    assert len(doc["comparisons"]) == 2 and {"ranking", "improvements", "importance", "claims"} <= set(doc)
    (imp,) = doc["improvements"]
    assert imp["method"] == "ce+fnpal" and imp["base"] == "ce" and imp["n_conditions"] == 2
    assert 0.0 <= imp["probability"] <= 1.0
    assert {i["cell"] for i in doc["importance"]} == {r["cell"] for r in rows}  # from the journal
    tex = _report("report", "tracked", "--format", "latex", *common).stdout
    assert r"\begin{tabular}" in tex and r"val acc \%" in tex and r"$\pm$" in tex
    assert "Δ" not in tex and "±" not in tex and " % " not in tex
    html = _report("report", "tracked", "--format", "html", *common).stdout
    assert html.startswith("<!doctype html>") and "Probability of improvement" in html


@pytest.mark.slow
def test_report_and_export_from_the_run_directory_equal_the_tracking_stores(tracked_study, tmp_path):
    tmp, uri, _ = tracked_study
    runs = str(tmp / "runs")
    from_store = _report(
        "report", "tracked", "--format", "md", "--source", "mlflow", "--tracking-uri", uri, "--runs-dir", runs
    )
    from_runs = _report("report", "tracked", "--format", "md", "--source", "runs", "--runs-dir", runs)
    assert from_store.returncode == from_runs.returncode == 0, from_runs.stderr
    assert from_runs.stdout == from_store.stdout and "## Claims" in from_runs.stdout
    # auto: a store that does not hold the study (a --no-track run) falls back to the run directory
    auto = _report(
        "report", "tracked", "--format", "md", "--tracking-uri", f"sqlite:///{tmp_path}/empty.db", "--runs-dir", runs
    )
    assert auto.stdout == from_store.stdout
    # auto with no store at all (no mlruns/ in the working directory): the run directory, same table
    (tmp_path / "cwd").mkdir()
    auto = _report("report", "tracked", "--format", "md", "--runs-dir", runs, cwd=tmp_path / "cwd")
    assert auto.stdout == from_store.stdout and not (tmp_path / "cwd" / "mlruns").exists()
    # export: the same configs from either source
    assert (
        main(
            [
                "export",
                "tracked",
                "--out",
                str(tmp_path / "a"),
                "--source",
                "mlflow",
                "--tracking-uri",
                uri,
                "--runs-dir",
                runs,
            ]
        )
        == 0
    )
    assert main(["export", "tracked", "--out", str(tmp_path / "b"), "--source", "runs", "--runs-dir", runs]) == 0
    a, b = (
        json.loads((tmp_path / "a/tracked/index.json").read_text()),
        json.loads((tmp_path / "b/tracked/index.json").read_text()),
    )
    assert [i["config"] for i in a] == [i["config"] for i in b] and len(a) == 4
    for x, y in zip(a, b, strict=False):
        assert (tmp_path / "a/tracked" / x["config"]).read_text() == (tmp_path / "b/tracked" / y["config"]).read_text()
        for key in (
            "cell",
            "seed",
            "test_acc_mean",
            "test_acc_std",
            "val_acc_mean",
            "test_acc_of_exported_seed",
            "tune_best_value",
            "n_seeds",
        ):
            assert x[key] == y[key], key
    missing = _report("report", "nosuch", "--runs-dir", runs, "--tracking-uri", uri)
    assert missing.returncode == 2 and "nosuch" in missing.stderr and "Traceback" not in missing.stderr


def test_export_then_train_reproduces_the_metric(tracked_study):
    tmp, uri, _ = tracked_study
    out = tmp / "exports"
    assert main(["export", "tracked", "--out", str(out), "--tracking-uri", uri]) == 0
    index = json.loads((out / "tracked" / "index.json").read_text())
    assert len(index) == 4 and {i["method"] for i in index} == {"ce", "ce+fnpal"}
    item = next(i for i in index if i["method"] == "ce+fnpal")
    result = tmp / "rerun.json"
    assert main(["train", str(out / "tracked" / item["config"]), "--no-track", "-q", "-o", str(result)]) == 0
    final = json.loads(result.read_text())["final"]
    assert final["test_acc"] == item["test_acc_of_exported_seed"]
    client = MlflowClient(tracking_uri=uri)
    names = {a.path for a in client.list_artifacts(item["parent_run_id"], "export")}
    assert "export/index.json" in names and f"export/{item['config']}" in names


def test_train_is_tracked(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["train", "--set", "optim.epochs=2", "-q", "-o", str(tmp_path / "r.json"), "--tracking-uri", uri]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pal-study-train")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["stage"] == "train" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [1, 2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_exits_2_before_training(tmp_path, capsys):
    uri = f"http://127.0.0.1:{_closed_port()}"
    path = study_file(tmp_path, "unreachable")
    env_retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert "cannot reach the MLflow tracking store" in err and "Traceback" not in err
        assert not (tmp_path / "runs" / "unreachable").exists()
        assert main(["train", "--tracking-uri", uri, "-q", "-o", str(tmp_path / "r.json")]) == 2
        assert not (tmp_path / "r.json").exists()
    finally:
        if env_retries is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = env_retries


CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"


def _read_url(proc: subprocess.Popen, label: str, deadline: float) -> str:
    """The URL printed after ``label`` on the UI's stderr (read line by line while it serves)."""
    import re
    import time

    seen = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            assert proc.poll() is None, "".join(seen)
            continue
        seen.append(line)
        if label in line:
            return re.search(r"http://\S+", line).group(0)
    raise AssertionError(f"no {label!r} line: {''.join(seen)}")


# Is the element's text shown in full (no ellipsis: nothing cut by its own or an ancestor's width)?
_SHOWN_IN_FULL = """(el) => {
  for (let e = el; e && e !== document.body; e = e.parentElement) {
    if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible') return false;
  }
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.right <= window.innerWidth;
}"""


def _close_assistant(page) -> None:
    """MLflow 3 opens its assistant panel beside the runs on a first visit (a third of a 1400 px
    window); a person closes it once and the UI remembers."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)


def _headers(page) -> list[str]:
    """The runs table's column headers, left to right as drawn."""
    cells = page.eval_on_selector_all(
        ".ag-header-cell[col-id]",
        "els => els.map(e => [e.getBoundingClientRect().left, e.getAttribute('col-id'), e.innerText.trim()])",
    )
    return [text for _left, _id, text in sorted(cells) if text]


def test_ui_opens_on_the_cells_in_a_real_browser(tracked_study):
    """`pal-study ui --study` serves on loopback only and prints the URL of the study's cells; in
    headless Chromium 1400 px wide, as a person would open it, that page lists every cell by its
    short title in full, and opens on the columns people read first, in order and rounded (test
    acc mean ± std, Δ [interval], q, verdict: the report's numbers); the chart view shows test
    accuracy per cell and Δ with its interval, each cell named in full in the legends.
    Screenshots: tests/artifacts/."""
    import time
    import urllib.request

    from pal_study.study import load_study

    _tmp, uri, path = tracked_study
    port = _closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pal_study.cli", "ui", "--port", str(port), "--study", "tracked", "--tracking-uri", uri],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.time() + 120
        table_url = _read_url(proc, "(table)", deadline)
        chart_url = _read_url(proc, "(charts)", deadline)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "the UI did not come up"
                time.sleep(0.5)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        addrs = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines() if line.strip()}
        assert addrs == {"127.0.0.1"}, listening
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("tracked")
        assert (
            table_url == f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=pal-cells"
        )
        assert chart_url == table_url + "&compareRunsMode=CHART"
        cells = client.search_runs([exp.experiment_id], "tags.stage = 'cell'")
        assert len(cells) == 4
        titles = {c.title for c in load_study(path).cells}
        assert {c.info.run_name for c in cells} == titles
        assert titles == {"ce · noise 0", "ce · noise 0.4", "ce+fnpal · noise 0", "ce+fnpal · noise 0.4"}
        if not os.path.exists(CHROMIUM):
            pytest.skip(f"{CHROMIUM} not found; install Debian's chromium package (.ci/run does)")
        from playwright.sync_api import sync_playwright

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shots = {"table": ARTIFACTS / "mlflow_cells_table.png", "charts": ARTIFACTS / "mlflow_cells_charts.png"}
        for shot in shots.values():
            shot.unlink(missing_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                page.goto(table_url)
                page.get_by_text("4 matching runs").first.wait_for()
                page.get_by_text("Δ test acc", exact=True).first.wait_for()
                _close_assistant(page)
                page.keyboard.press("Escape")
                text = page.inner_text("body")
                headers = _headers(page)
                names_in_full = {t: page.get_by_text(t, exact=True).first.evaluate(_SHOWN_IN_FULL) for t in titles}
                page.screenshot(path=str(shots["table"]))
                page.goto(chart_url)
                page.get_by_text("4 matching runs").first.wait_for()
                page.get_by_text("Test accuracy per cell", exact=False).first.wait_for()
                _close_assistant(page)
                page.wait_for_timeout(1500)  # the charts draw after the runs list
                charts = page.inner_text("body")
                legend_in_full = {}
                for t in titles:  # a name is in the run list and in each chart's legend
                    found = page.get_by_text(t, exact=True)
                    legend_in_full[t] = [found.nth(i).evaluate(_SHOWN_IN_FULL) for i in range(found.count())]
                page.screenshot(path=str(shots["charts"]))
            finally:
                browser.close()
        # Every cell's name readable in full in the table ...
        assert all(names_in_full.values()), names_in_full
        # ... and the first columns after the run's name and date, in this order:
        first = [h for h in headers if h not in ("Run Name", "Created")][:4]
        assert first == ["test acc", "Δ test acc", "q", "verdict"], headers
        rows = aggregate(fetch_finals(open_store(uri), "tracked")[2])
        for cell in cells:
            tags = cell.data.tags
            row = next(r for r in rows if r.cell == tags["cell"])
            mean, std = row.stats["test_acc"]
            # rounded as the report prints it, the report's numbers
            assert tags["test acc"] == f"{100 * mean:.2f} ± {100 * std:.2f}" and tags["test acc"] in text
            if row.comparison is not None:
                assert tags["Δ test acc"].startswith(f"{100 * row.comparison.delta:+.2f}")
                assert tags["Δ test acc"] in text and tags["q"] == f"{row.comparison.q:.3g}"
                assert tags["verdict"] in text  # the noise-0.4 pair is a claim's; the other is in the ece claim
        # The chart view: test accuracy per cell, Δ and its interval; legends name cells in full.
        assert "final_test_acc_mean" in charts and "delta_test_acc" in charts
        assert all(len(v) >= 2 and all(v) for v in legend_in_full.values()), legend_in_full
        # the chart view compares cells: no seed's or trial's run is listed
        assert "· final seed" not in charts and " #0" not in charts
        for shot in shots.values():
            assert shot.read_bytes()[:4] == b"\x89PNG"
    finally:
        proc.send_signal(__import__("signal").SIGTERM)  # pal-study ui stops the server it started
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_ui_warns_before_binding_publicly():
    from pal_study.cli import public_bind_warning

    assert public_bind_warning("127.0.0.1") is None and public_bind_warning("localhost") is None
    assert "reachable from other machines" in public_bind_warning("0.0.0.0")


def test_reconcile_finishes_runs_a_killed_driver_left_behind(tmp_path):
    """A trial told PRUNED in Optuna whose MLflow run was left RUNNING, and a final seed recorded
    in Optuna with no MLflow run at all: both end finished, from the Optuna record, curves included."""
    import optuna

    from pal_study.study import load_study
    from pal_study.study.engine import StudySearcher
    from pal_study.study.store import StudyStore
    from pal_study.study.tracker import StudyTracker
    from pal_study.tracking import open_store

    study = load_study(study_file(tmp_path, "reconcile"))
    store = StudyStore(study, tmp_path / "runs")
    tracking = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    tracker = StudyTracker(tracking, study, store)
    parent = tracker.start()
    cell = study.cells[0]
    st = store.open_tuning(cell)
    trial = st.ask()
    trial.suggest_float("optim.weight_decay", 1e-5, 1e-2, log=True)
    trial.report(0.5, 1)
    st.tell(trial, state=optuna.trial.TrialState.PRUNED)
    orphan = tracking.client.create_run(
        tracker.exp_id, tags={"mlflow.parentRunId": parent, "pal.run_key": "cell000/tune/0"}
    )
    searcher = StudySearcher(study, store, slots=1)
    cfg = searcher.trial_config(cell, {})
    store.open_finals(cell).add_trial(
        optuna.trial.create_trial(
            value=0.9,
            user_attrs={"seed": 0, "val_acc": 0.9, "test_acc": 0.88, "config": json.dumps({**cfg, "seed": 0})},
            intermediate_values={1: 0.7, 2: 0.8, 3: 0.9},  # as the engine records a final's curve
        )
    )

    tracker2 = StudyTracker(tracking, study, store)
    tracker2.start()
    assert tracker2.reconcile(searcher.trial_config) == 2
    client = tracking.client
    runs = client.search_runs([tracker.exp_id], f"tags.`pal.study_run` = '{parent}'")
    by_key = {r.data.tags["pal.run_key"]: r for r in runs}
    assert set(by_key) == {"cell000", "cell000/tune/0", "cell000/final/seed0"}
    # Repaired runs hang below the cell run reconcile created (one final seed of two: still open).
    cell_run = by_key.pop("cell000")
    assert cell_run.data.tags["mlflow.parentRunId"] == parent and cell_run.info.status == "RUNNING"
    assert {r.data.tags["mlflow.parentRunId"] for r in by_key.values()} == {cell_run.info.run_id}
    assert client.get_run(orphan.info.run_id).info.lifecycle_stage == "deleted"
    tune = by_key["cell000/tune/0"]
    assert tune.info.status == "KILLED" and tune.data.tags["outcome"] == "pruned"
    assert [m.step for m in client.get_metric_history(tune.info.run_id, "val_acc")] == [1]
    final = by_key["cell000/final/seed0"]
    assert final.info.status == "FINISHED" and final.data.metrics["final_test_acc"] == 0.88
    curve = [(m.step, m.value) for m in client.get_metric_history(final.info.run_id, "val_acc")]
    assert curve == [(1, 0.7), (2, 0.8), (3, 0.9)]
    assert final.data.params["seed"] == "0"
    # A second start finds nothing left to repair.
    tracker3 = StudyTracker(tracking, study, store)
    tracker3.start()
    assert tracker3.reconcile(searcher.trial_config) == 0


def test_report_json_pairs_finals_by_seed_and_adjusts_over_comparisons(tracked_study):
    """Recomputed from MLflow's records: each ce+fnpal cell against the ce cell of its noise rate,
    paired by seed (exact sign-flip p; scipy's paired t beside it), q-values by Benjamini-Hochberg
    over both comparisons."""
    from scipy import stats as st

    _tmp, uri, _ = tracked_study
    res = subprocess.run(
        [sys.executable, "-m", "pal_study.cli", "report", "tracked", "--format", "json", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    comps = doc["comparisons"]
    assert len(comps) == 2 and all(
        set(c) >= {"cell", "baseline", "metric", "n_pairs", "delta", "ci_low", "ci_high", "p", "q", "test"}
        for c in comps
    )
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    finals = client.search_runs([exp.experiment_id], "tags.stage = 'final' and tags.outcome = 'completed'")
    acc = {}
    for r in finals:
        acc.setdefault(r.data.tags["cell"], {})[int(r.data.tags["seed"])] = r.data.metrics["final_test_acc"]
    ps = []
    for c in comps:
        assert "ce+fnpal" in c["cell"] and "method=ce," in c["baseline"] + "," and c["metric"] == "test_acc"
        a, b = acc[c["cell"]], acc[c["baseline"]]
        seeds = sorted(set(a) & set(b))
        assert c["n_pairs"] == len(seeds) == 3
        d = [a[s] - b[s] for s in seeds]
        assert c["delta"] == pytest.approx(sum(d) / len(d))
        # The verdicts' test: the exact sign-flip p over the 2^n sign assignments (n = 3: at least
        # 0.25), an interval that is unbounded at this n; the paired t-test beside it.
        hits = sum(
            abs(sum(x * sg for x, sg in zip(d, signs, strict=True))) >= abs(sum(d)) - 1e-12
            for signs in itertools.product((1, -1), repeat=len(d))
        )
        assert c["p"] == pytest.approx(hits / 2 ** len(d)) and c["ci_low"] is None and c["ci_high"] is None
        if len(set(d)) > 1:
            assert c["p_t"] == pytest.approx(st.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
        ps.append(c["p"])
    if all(p is not None for p in ps):
        lo, hi = sorted(ps)
        want = {lo: min(2 * lo, hi), hi: hi}  # BH with m = 2
        assert {c["p"]: c["q"] for c in comps} == pytest.approx(want)
    bad = subprocess.run(
        [sys.executable, "-m", "pal_study.cli", "report", "tracked", "--baseline", "best", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "allowed: base, ce" in bad.stderr


def test_claims_get_verdicts_at_the_end_in_summary_mlflow_and_report(tracked_study):
    tmp, uri, _ = tracked_study
    summary = json.loads((tmp / "runs" / "tracked" / "summary.json").read_text())
    claims = summary["claims"]
    assert [c["claim"] for c in claims] == [
        "*+fnpal better than * on test_acc where data.noise.rate=0.4",
        "ce+fnpal better than ce on ece",
    ]
    assert [len(c["comparisons"]) for c in claims] == [1, 2]
    for c in claims:
        assert c["verdict"] in ("supported", "contradicted", "inconclusive")
        for comp in c["comparisons"]:
            assert comp["verdict"] in ("supported", "contradicted", "inconclusive") and comp["n_pairs"] == 3
            decided = comp["q"] is not None and comp["q"] < 0.05
            assert (comp["verdict"] != "inconclusive") == (decided and comp["delta"] != 0)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    parent = client.search_runs([exp.experiment_id], "tags.`pal.stage` = 'study'")[0]
    assert parent.data.tags["claims"].startswith(claims[0]["verdict"] + ": *+fnpal better than *")
    logged = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "claims.json", str(tmp / "dlc"))).read_text()
    )
    assert [c["verdict"] for c in logged] == [c["verdict"] for c in claims]
    res = subprocess.run(
        [sys.executable, "-m", "pal_study.cli", "report", "tracked", "--format", "json", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    from_store = json.loads(res.stdout)["claims"]
    # Recomputed from MLflow's records, the same verdicts and numbers as at the study's end.
    assert [c["verdict"] for c in from_store] == [c["verdict"] for c in claims]
    for a, b in zip(from_store, claims, strict=False):
        for x, y in zip(a["comparisons"], b["comparisons"], strict=False):
            assert (x["cell"], x["baseline"], x["n_pairs"]) == (y["cell"], y["baseline"], y["n_pairs"])
            assert x["delta"] == pytest.approx(y["delta"]) and (x["q"] is None) == (y["q"] is None)
