"""Cells as MLflow runs: study run > one run per cell > that cell's tuning and final runs, read
back through ``mlflow.MlflowClient`` only (real Ray, real training, a real SQLite store)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient

from pal_study.cli import main
from pal_study.study import load_study
from tests.support import study_file

# Studies run on one local Ray per test process (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("local_ray")

SEEDS = (0, 1, 2)  # the shared study's
CELLS, TRIALS = 4, 3
TABLE = "report/comparison_table.json"


def _all_runs(client: MlflowClient, exp_id: str) -> list:
    return client.search_runs([exp_id], max_results=1000)


@pytest.fixture
def cells(tracked_study):
    """The shared tracked study (tests/conftest.py: 4 cells, 3 trials each, 3 final seeds) as
    MLflow holds it."""
    tmp, uri, path = tracked_study
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("tracked").experiment_id
    runs = _all_runs(client, exp_id)
    [study_run] = [r for r in runs if r.data.tags.get("pal.stage") == "study"]
    cell_runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{study_run.info.run_id}'")
    return SimpleNamespace(
        tmp=tmp,
        uri=uri,
        path=path,
        client=client,
        exp_id=exp_id,
        runs=runs,
        study=study_run,
        cells={r.data.tags["cell"]: r for r in cell_runs},
        cell_runs=cell_runs,
        spec=load_study(path),
    )


def _trials_and_finals(cells) -> list:
    return [r for r in cells.runs if r.data.tags.get("stage") in ("tune", "final")]


def test_one_cell_run_per_cell_parents_its_tuning_and_final_runs(cells):
    study_id = cells.study.info.run_id
    # The study run's children are exactly its cells, one run each, named by the cell's short title
    # (tagged with its label).
    assert [r.data.tags["stage"] for r in cells.cell_runs] == ["cell"] * CELLS
    labels = {c.label: c for c in cells.spec.cells}
    assert sorted(cells.cells) == sorted(labels)
    titles = {r.data.tags["cell"]: r.info.run_name for r in cells.cell_runs}
    assert titles == {c.label: c.title for c in cells.spec.cells} and len(set(titles.values())) == CELLS
    assert len(cells.runs) == 1 + CELLS + CELLS * TRIALS + CELLS * len(SEEDS)
    for label, run in cells.cells.items():
        t = run.data.tags
        assert run.info.status == "FINISHED"
        assert t["pal.stage"] == "cell" and t["pal.run_key"] == f"cell{labels[label].index:03d}"
        assert t["study"] == "tracked" and t["pal.study_run"] == study_id
        assert t["method"] == labels[label].method and t["dataset"] == "digits"
        rate = labels[label].factors["data.noise.rate"]
        assert float(t["noise_rate"]) == rate and float(t["imbalance_ratio"]) == 1.0
        assert t["cell_group"] == f"data.noise.rate={rate:g}"
        assert "seed" not in t and "config_hash" not in t
    # Every tuning and final run sits below its own cell's run and names the study run.
    kids = _trials_and_finals(cells)
    assert len(kids) == CELLS * TRIALS + CELLS * len(SEEDS)
    for r in kids:
        t = r.data.tags
        assert t["mlflow.parentRunId"] == cells.cells[t["cell"]].info.run_id, t["pal.run_key"]
        assert t["pal.study_run"] == study_id
    # Filtering by tag works the same on cell runs as on trial runs.
    fnpal = cells.client.search_runs([cells.exp_id], "tags.stage = 'cell' and tags.method = 'ce+fnpal'")
    assert sorted(r.data.tags["cell"] for r in fnpal) == sorted(
        c.label for c in cells.spec.cells if c.method == "ce+fnpal"
    )
    # Params: the cell's best config as its finals log it, less their seed.
    for label, run in cells.cells.items():
        final = next(r for r in kids if r.data.tags["cell"] == label and r.data.tags["stage"] == "final")
        assert run.data.params == {k: v for k, v in final.data.params.items() if k != "seed"}


def test_cell_metrics_aggregate_its_completed_finals(cells):
    kids = _trials_and_finals(cells)
    for label, run in cells.cells.items():
        finals = [
            r
            for r in kids
            if r.data.tags["cell"] == label
            and r.data.tags["stage"] == "final"
            and r.data.tags["outcome"] == "completed"
        ]
        assert len(finals) == len(SEEDS)
        m = run.data.metrics
        assert m["n_finals"] == len(finals)
        for key in ("test_acc", "val_acc"):
            values = [r.data.metrics[f"final_{key}"] for r in finals]
            assert m[f"final_{key}_mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert m[f"final_{key}_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert m["ece_mean"] == pytest.approx(statistics.fmean(r.data.metrics["final_ece"] for r in finals), abs=1e-12)


def test_cell_comparison_is_the_reports(cells, capsys):
    capsys.readouterr()
    assert main(["report", "tracked", "--format", "json", "--tracking-uri", cells.uri]) == 0
    report = json.loads(capsys.readouterr().out)
    comps = report["comparisons"]  # ce+fnpal against ce at each noise rate
    assert len(comps) == 2
    for comp in comps:
        run = cells.cells[comp["cell"]]
        m = run.data.metrics
        [ce] = [
            c.label
            for c in cells.spec.cells
            if c.method == "ce" and c.factors["data.noise.rate"] == float(run.data.tags["noise_rate"])
        ]
        assert run.data.tags["baseline"] == comp["baseline"] == ce
        assert m["delta_test_acc"] == pytest.approx(comp["delta"], abs=1e-12)
        for key in ("ci_low", "ci_high", "p", "q"):
            if comp[key] is None:
                assert key not in m
            else:
                assert m[key] == pytest.approx(comp[key], abs=1e-12), key
        baseline = cells.cells[comp["baseline"]]
        assert "baseline" not in baseline.data.tags and "delta_test_acc" not in baseline.data.metrics
    # 3 seeds with differing differences: a test, and q adjusted over the 2 comparisons
    assert any(comp["q"] is not None for comp in comps)


def test_comparison_table_is_an_mlflow_table_on_the_study_run(cells, capsys):
    c = cells.client
    study_id = cells.study.info.run_id
    assert TABLE in {a.path for a in c.list_artifacts(study_id, "report")}
    logged = json.loads(c.get_run(study_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": TABLE, "type": "table"} in logged
    path = Path(c.download_artifacts(study_id, TABLE, str(cells.tmp / "table")))
    doc = json.loads(path.read_text())
    assert {
        "cell",
        "method",
        "n",
        "test_acc_mean",
        "test_acc_std",
        "baseline",
        "n_pairs",
        "delta",
        "ci_low",
        "ci_high",
        "p",
        "q",
        "test",
    } <= set(doc["columns"])
    rows = [dict(zip(doc["columns"], row, strict=False)) for row in doc["data"]]
    assert sorted(r["cell"] for r in rows) == sorted(cells.cells)
    for r in rows:
        m = cells.cells[r["cell"]].data.metrics
        assert r["test_acc_mean"] == pytest.approx(m["final_test_acc_mean"])
        assert r["test_acc_std"] == pytest.approx(m["final_test_acc_std"])
        assert r["n"] == len(SEEDS)
        if r["method"] == "ce+fnpal":
            assert r["delta"] == pytest.approx(m["delta_test_acc"]) and r["q"] == pytest.approx(m["q"])
        else:
            assert r["delta"] is None and r["baseline"] is None
    # As MLflow reads a table back (its load_table searches the fluent API's store, not this client's).
    import pandas as pd

    df = pd.read_json(path, orient="split")
    assert len(df) == CELLS and set(df["cell"]) == set(cells.cells)


def test_rerunning_the_finished_study_adds_nothing(cells):
    """The resume path on a finished study: the same runs, no cell run added, nothing logged twice
    (the comparison table replaced, not appended to)."""
    assert main(["run", str(cells.path), "--runs-dir", str(cells.tmp / "runs"), "--tracking-uri", cells.uri]) == 0
    c = cells.client
    after = _all_runs(c, cells.exp_id)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in cells.runs)
    cell_runs = [r for r in after if r.data.tags.get("stage") == "cell"]
    assert len(cell_runs) == CELLS and all(r.info.status == "FINISHED" for r in cell_runs)
    for r in cell_runs:
        for key in ("n_finals", "final_test_acc_mean", *(("delta_test_acc", "q") if "baseline" in r.data.tags else ())):
            assert len(c.get_metric_history(r.info.run_id, key)) == 1, key
    doc = json.loads(Path(c.download_artifacts(cells.study.info.run_id, TABLE, str(cells.tmp / "table2"))).read_text())
    assert len(doc["data"]) == CELLS


# -- without training --------------------------------------------------------------------------------


def _final_tags(cell: str, method: str, seed: int, **extra: str) -> dict[str, str]:
    return {
        "stage": "final",
        "outcome": "completed",
        "cell": cell,
        "cell_group": "data.noise.rate=0.4",
        "method": method,
        "dataset": "digits",
        "noise_rate": "0.4",
        "imbalance_ratio": "1.0",
        "seed": str(seed),
        **extra,
    }


def _log_final(client: MlflowClient, exp_id: str, tags: dict[str, str], acc: float) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=f"{tags['cell']} final seed {tags['seed']}", tags=tags)
    client.log_batch(
        run.info.run_id,
        metrics=[
            Metric("final_test_acc", acc, 0, 0),
            Metric("final_val_acc", acc - 0.01, 0, 0),
            Metric("test_acc", acc, 0, 2),
        ],
        params=[Param("optim.weight_decay", "0.0005"), Param("seed", str(tags["seed"]))],
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _fetched(finals) -> list[tuple]:
    return [(f.cell, f.method, f.seed, f.weight_decay, f.noise_rate, f.metrics) for f in finals]


def test_fetch_finals_reads_studies_tracked_before_cell_runs(tmp_path):
    """A study logged in the old layout (finals directly under the study run, no cell runs, no
    ``pal.study_run``) reports the same finals as one in the cell layout, each run once."""
    from pal_study.analysis.report import aggregate, fetch_finals
    from pal_study.tracking import open_store

    tracking = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    client = tracking.client
    accs = {("ce", 0): 0.80, ("ce", 1): 0.82, ("ce+fnpal", 0): 0.85, ("ce+fnpal", 1): 0.88}
    results = {}
    for layout in ("old", "new"):
        exp_id = client.create_experiment(layout)
        study = client.create_run(exp_id, run_name="study", tags={"pal.stage": "study", "stage": "study"}).info.run_id
        for method in ("ce", "ce+fnpal"):
            cell = f"method={method},data.noise.rate=0.4"
            parent = study
            if layout == "new":
                parent = client.create_run(
                    exp_id,
                    run_name=cell,
                    tags={
                        "mlflow.parentRunId": study,
                        "pal.study_run": study,
                        "stage": "cell",
                        "pal.stage": "cell",
                        "cell": cell,
                        "method": method,
                    },
                ).info.run_id
            link = {"mlflow.parentRunId": parent} | ({"pal.study_run": study} if layout == "new" else {})
            for seed in (0, 1):
                _log_final(client, exp_id, _final_tags(cell, method, seed, **link), accs[(method, seed)])
            # A tuning run is no final; a failed final is read as failed.
            client.create_run(exp_id, tags={**_final_tags(cell, method, 0, **link), "stage": "tune"})
            client.create_run(exp_id, tags={**_final_tags(cell, method, 2, **link), "outcome": "failed"})
        if layout == "old":
            # A final carrying both the old parent link and the new tag is one final, not two.
            _log_final(
                client,
                exp_id,
                _final_tags(
                    "method=ce,data.noise.rate=0.4", "ce", 3, **{"mlflow.parentRunId": study, "pal.study_run": study}
                ),
                0.81,
            )
        got_exp, got_study, finals = fetch_finals(tracking, layout)
        assert (got_exp, got_study) == (exp_id, study)
        results[layout] = finals
    # Failed finals are read too (the report counts them), marked failed and without metrics.
    for layout, finals in results.items():
        failed = [f for f in finals if f.failed]
        assert sorted((f.method, f.seed) for f in failed) == [("ce", 2), ("ce+fnpal", 2)], layout
        assert all(f.metrics == {} for f in failed)
        results[layout] = [f for f in finals if not f.failed]
    old, new = results["old"], results["new"]
    assert len(old) == 5 and len({f.run_id for f in old}) == 5
    old_without_extra = [f for f in old if f.seed != 3]
    assert _fetched(old_without_extra) == _fetched(new)
    ce, fnpal = "method=ce,data.noise.rate=0.4", "method=ce+fnpal,data.noise.rate=0.4"
    assert [(f.cell, f.seed) for f in new] == [(fnpal, 0), (fnpal, 1), (ce, 0), (ce, 1)]
    assert new[0].metrics == {"test_acc": 0.85, "val_acc": pytest.approx(0.84)} and new[0].weight_decay == 5e-4
    a, b = aggregate(old_without_extra), aggregate(new)
    assert [(r.cell, r.stats, r.comparison.delta if r.comparison else None) for r in a] == [
        (r.cell, r.stats, r.comparison.delta if r.comparison else None) for r in b
    ]


def test_resume_reuses_or_creates_cell_runs_and_moves_old_runs_below_them(tmp_path):
    """A study logged before cell runs, then killed drivers: reconcile creates each cell run once,
    moves the old runs below it, attaches repaired runs to it, and closes it when its finals are in."""
    from pal_study.analysis.report import fetch_finals
    from pal_study.study.engine import StudySearcher
    from pal_study.study.store import StudyStore
    from pal_study.study.tracker import StudyTracker
    from pal_study.tracking import open_store

    study = load_study(study_file(tmp_path, "resume_cells", methods=("ce",), noise=(0.4,), seeds=(0, 1)))
    store = StudyStore(study, tmp_path / "runs")
    tracking = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    client = tracking.client
    tracker = StudyTracker(tracking, study, store)
    study_id = tracker.start()
    [cell] = study.cells
    cfg = StudySearcher(study, store, slots=1).trial_config(cell, {"optim.weight_decay": 1e-4})
    finals = store.open_finals(cell)

    def record(seed: int, acc: float) -> None:
        finals.add_trial(
            optuna.trial.create_trial(
                value=acc + 0.01,
                user_attrs={
                    "seed": seed,
                    "val_acc": acc + 0.01,
                    "test_acc": acc,
                    "ece": 0.1,
                    "config": json.dumps({**cfg, "seed": seed}),
                },
            )
        )

    # The old layout: a finished final directly under the study run, no cell run, no pal.study_run.
    record(0, 0.80)
    old = _log_final(
        client,
        tracker.exp_id,
        _final_tags(cell.label, "ce", 0, **{"mlflow.parentRunId": study_id, "pal.run_key": "cell000/final/seed0"}),
        0.80,
    )

    def resume() -> tuple[int, list]:
        t = StudyTracker(tracking, study, store)
        assert t.start() == study_id
        n = t.reconcile(lambda c, params: StudySearcher(study, store, slots=1).trial_config(c, params))
        return n, client.search_runs([tracker.exp_id], "tags.stage = 'cell'")

    n, cell_runs = resume()
    assert n == 0  # nothing half-logged: the old final is only moved
    [cell_run] = cell_runs
    cell_id = cell_run.info.run_id
    assert cell_run.data.tags["mlflow.parentRunId"] == study_id and cell_run.info.status == "RUNNING"
    assert cell_run.data.params["optim.weight_decay"] == "0.0001" and "seed" not in cell_run.data.params
    moved = client.get_run(old).data.tags
    assert moved["mlflow.parentRunId"] == cell_id and moved["pal.study_run"] == study_id
    # A driver killed after seed 1 was recorded in Optuna, before its run was logged.
    record(1, 0.84)
    n, cell_runs = resume()
    assert n == 1 and [r.info.run_id for r in cell_runs] == [cell_id]
    repaired = client.search_runs([tracker.exp_id], "tags.`pal.run_key` = 'cell000/final/seed1'")
    assert [r.data.tags["mlflow.parentRunId"] for r in repaired] == [cell_id]
    done = client.get_run(cell_id)
    assert done.info.status == "FINISHED"
    assert done.data.metrics["n_finals"] == 2 and done.data.metrics["final_test_acc_mean"] == pytest.approx(0.82)
    assert done.data.metrics["final_test_acc_std"] == pytest.approx(statistics.stdev([0.80, 0.84]))
    assert sorted(f.seed for f in fetch_finals(tracking, "resume_cells")[2]) == [0, 1]
    # Once more: nothing left to do, still one cell run.
    n, cell_runs = resume()
    assert n == 0 and [r.info.run_id for r in cell_runs] == [cell_id]
    assert len(client.search_runs([tracker.exp_id], f"tags.`pal.study_run` = '{study_id}'")) == 3
