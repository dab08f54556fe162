"""A claim judged across a knob, end to end on a small digits study (real Ray, real training, a
real SQLite MLflow store, the real Optuna journal): the sensitivity cells' finals, their verdicts in
the run's output, in every report format from both sources and on the study's MLflow run; tuning
and final seeds disjoint in the journal and in MLflow; a failed final visible and counted."""

from __future__ import annotations

import io
import itertools
import json
import os
from contextlib import redirect_stdout
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from pal_study.cli import main
from tests.support import stop_local_ray

SPACES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "search_spaces")
SEEDS = [0, 1, 2]
SCALES = [3, 30]


@pytest.fixture(scope="module")
def sens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sens")
    spec = {
        "name": "sens",
        "base": {"data": {"name": "digits", "noise": {"kind": "symmetric", "rate": 0.4}}, "optim": {"epochs": 2}},
        "factors": {"method": ["ce", "ce+fnpal"]},
        "search": [f"{SPACES}/weight_decay.yaml", f"{SPACES}/pal_scale.yaml"],
        "budget": {"trials_per_cell": 2, "pruner": {"name": "none"}},
        "finals": {"seeds": SEEDS},
        "claims": [{"better": "ce+fnpal", "than": "ce"}],
        "sensitivity": {"head.scale": SCALES},
    }
    path = tmp / "sens.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    # One final of the s = 30 sensitivity cell fails (as a diverged run would): seed 2 only. The
    # trials read it from the environment, which Ray's workers take from the process that starts
    # Ray: not a shared Ray started before it was set.
    stop_local_ray()
    os.environ["PAL_STUDY_FAULT"] = "raise:seed=2&head.scale=30.0"
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            assert (
                main(["run", str(path), "--runs-dir", str(tmp / "runs"), "--tracking-uri", uri, "--progress", "none"])
                == 0
            )
    finally:
        del os.environ["PAL_STUDY_FAULT"]
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("sens").experiment_id
    runs = client.search_runs([exp_id], max_results=1000)
    return SimpleNamespace(
        tmp=tmp,
        path=path,
        uri=uri,
        client=client,
        exp_id=exp_id,
        runs=runs,
        run_dir=tmp / "runs" / "sens",
        printed=printed.getvalue(),
    )


def _report(sens, *args: str) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["report", "sens", "--runs-dir", str(sens.tmp / "runs"), "--tracking-uri", sens.uri, *args]) == 0
    return buf.getvalue()


def test_tuning_and_final_seeds_are_disjoint_in_the_journal_and_in_mlflow(sens):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sens.run_dir / "optuna.journal"))
    )
    tuning, finals = set(), set()
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
        target = finals if s.study_name.endswith("/finals") else tuning
        target |= {int(t.user_attrs["seed"]) for t in trials}
        if not s.study_name.endswith("/finals"):
            assert len(trials) == 2
            assert all(json.loads(t.user_attrs.get("config", "null") or "null") is None for t in trials)
    assert tuning == {1000} and finals == set(SEEDS)
    by_stage: dict[str, set[str]] = {}
    for r in sens.runs:
        if r.data.tags.get("stage") in ("tune", "final"):
            by_stage.setdefault(r.data.tags["stage"], set()).add(r.data.params["seed"])
            assert r.data.params["seed"] == r.data.tags["seed"]
    assert by_stage == {"tune": {"1000"}, "final": {str(s) for s in SEEDS}}


def test_sensitivity_cells_are_cell_runs_with_their_finals(sens):
    cells = [r for r in sens.runs if r.data.tags.get("pal.stage") == "cell"]
    variants = {
        json.loads(r.data.tags["pal.sensitivity"])["head.scale"]: r for r in cells if "pal.sensitivity" in r.data.tags
    }
    assert sorted(variants) == SCALES and len(cells) == 4
    for scale, run in variants.items():
        assert run.data.tags["pal.sensitivity_of"] == "method=ce+fnpal"
        assert run.data.params["head.scale"] == str(float(scale))
        kids = [r for r in sens.runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert sorted(int(k.data.tags["seed"]) for k in kids) == SEEDS
        assert all(k.data.tags["stage"] == "final" and k.data.tags["pal.sensitivity"] for k in kids)
        outcomes = sorted(k.data.tags["outcome"] for k in kids)
        assert outcomes == (["completed", "completed", "failed"] if scale == 30 else ["completed"] * 3)
        assert run.data.metrics["n_finals"] == (2 if scale == 30 else 3)
        assert run.data.metrics["n_finals_failed"] == (1 if scale == 30 else 0)


def _flip_p(d: list[float]) -> float:
    """Two-sided sign-flip p by brute force, independently of pal_study.analysis.stats."""
    t = abs(sum(d))
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d, strict=False))) >= t - 1e-12
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    return hits / 2 ** len(d)


def test_verdicts_per_value_recomputed_from_mlflow_records(sens):
    accs: dict[str, dict[int, float | None]] = {}
    for r in sens.runs:
        t = r.data.tags
        if t.get("stage") == "final":
            acc = r.data.metrics.get("final_test_acc") if t["outcome"] == "completed" else None
            accs.setdefault(t["cell"], {})[int(t["seed"])] = acc
    data = json.loads(_report(sens, "--format", "json", "--source", "mlflow"))
    [knob] = data["sensitivity"]
    assert knob["knob"] == "head.scale" and knob["values"] == SCALES
    [claim] = knob["claims"]
    for entry in claim["by_value"]:
        [c] = entry["comparisons"]
        cell = f"method=ce+fnpal,head.scale={entry['value']}"
        assert c["cell"] == cell and c["parent"] == "method=ce+fnpal" and c["baseline"] == "method=ce"
        # The failed final is paired at chance accuracy (digits: 10 classes).
        d = [(0.1 if accs[cell][s] is None else accs[cell][s]) - accs["method=ce"][s] for s in SEEDS]
        assert c["delta"] == pytest.approx(sum(d) / 3, abs=1e-9)
        assert c["p"] == pytest.approx(_flip_p(d), abs=1e-12)
        assert c["failed_cell"] == ([2] if entry["value"] == 30 else [])
        # Three seeds can never decide a claim: the exact test's smallest p is 0.25.
        assert c["p"] >= 0.25 and entry["verdict"] == "inconclusive" and c["ci_low"] is None
    assert data["claims"][0]["protocol"] == ["head.scale also judged at fixed values [3, 30] (sensitivity)"]


def test_both_sources_and_the_run_end_agree(sens):
    a = json.loads(_report(sens, "--format", "json", "--source", "mlflow"))
    b = json.loads(_report(sens, "--format", "json", "--source", "runs"))
    summary = json.loads((sens.run_dir / "summary.json").read_text())
    assert a["sensitivity"] == b["sensitivity"]
    assert (
        [c["verdict"] for c in a["claims"]]
        == [c["verdict"] for c in b["claims"]]
        == [c["verdict"] for c in summary["claims"]]
    )

    def strip(k):
        return [
            [{x: y for x, y in c.items() if x != "parent"} for c in v["comparisons"]]
            for cl in k[0]["claims"]
            for v in cl["by_value"]
        ]

    assert strip(a["sensitivity"]) == strip(summary["sensitivity"])


def test_every_report_format_carries_the_sensitivity(sens, tmp_path):
    md = _report(sens, "--format", "md")
    assert "## Verdicts across a knob (sensitivity)" in md and "| head.scale | 30 | method=ce+fnpal |" in md
    assert "| method=ce+fnpal,head.scale=30 | ce+fnpal | 2 (1 of 3 failed) |" in md
    latex = _report(sens, "--format", "latex")
    assert latex.count(r"\begin{tabular}") == 2 and "head.scale & 30" in latex
    assert "2 (1 of 3 failed)" in latex
    out = tmp_path / "rep"
    assert (
        main(["report", "sens", "--runs-dir", str(sens.tmp / "runs"), "--tracking-uri", sens.uri, "--out", str(out)])
        == 0
    )
    rows = (out / "sensitivity.csv").read_text().splitlines()
    assert rows[0].startswith("knob,value,claim,claim_verdict,cell") and len(rows) == 1 + len(SCALES)
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "Verdicts across a knob (sensitivity)" in html and "alt='sensitivity.png'" in html


def test_the_study_run_holds_the_sensitivity_and_its_figure(sens):
    [study] = [r for r in sens.runs if r.data.tags.get("pal.stage") == "study"]
    names = {a.path for a in sens.client.list_artifacts(study.info.run_id)}
    report = {a.path for a in sens.client.list_artifacts(study.info.run_id, "report")}
    assert "sensitivity.json" in names and "report/sensitivity.png" in report and "report/sensitivity.csv" in report
    assert study.data.tags["sensitivity"] == "head.scale: 3=inconclusive, 30=inconclusive"


def test_the_run_prints_the_sensitivity_and_the_failed_final(sens):
    out = sens.printed
    assert "sensitivity of ce+fnpal better than ce on test_acc to head.scale: 3: inconclusive, 30: inconclusive" in out
    assert "1 of 3 failed" in out and "(sensitivity)" in out
    assert "with 3 seeds no difference can reach α=0.05" in out
