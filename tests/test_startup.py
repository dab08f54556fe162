"""Start-up stays light (issue 22 §4): ``pal-study --help``, ``validate`` and ``list`` import
neither torch nor Ray nor MLflow (nor Optuna, SciPy, matplotlib: the registries' names and the
config schemas need none of them), and ``report --format md`` of a complete study record imports
neither torch nor matplotlib nor MLflow. Each command runs as the console script does, in a
fresh interpreter that then lists what it imported; nothing is timed here (benchmarks/startup.py
times them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pal_study.layout import JOURNAL, SUMMARY, cell_label, finals_study_name, tuning_study_name
from pal_study.specs.losses import LOSS_REGISTRY
from pal_study.specs.models import MODEL_REGISTRY

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "optuna", "scipy", "matplotlib", "sklearn", "pandas", "torchvision")

# The console script (``main()``), then the top-level packages the process imported, last line.
_PROBE = """
import json, sys
from pal_study.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _cli(*args: str, cwd: Path = ROOT) -> tuple[int, set[str], str, str]:
    """(exit code, top-level modules imported, stdout without the probe's line, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT)  # this tree, whatever the working directory
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    out, _, last = res.stdout.rstrip("\n").rpartition("\n")
    probe = json.loads(last)
    return probe["code"], set(probe["modules"]), out, res.stderr


def _heavy(modules: set[str]) -> list[str]:
    return [m for m in HEAVY if m in modules]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["validate", "--help"],
        ["validate", "studies/quickstart.yaml"],
        ["validate", "quickstart"],
        ["list", "models"],
        ["list", "losses"],
        ["list", "datasets"],
    ],
    ids=" ".join,
)
def test_light_commands_import_no_heavy_library(args):
    code, modules, out, err = _cli(*args)
    assert code == 0, err
    assert out.strip()
    assert _heavy(modules) == [], f"{' '.join(args)} imported {_heavy(modules)}"


def test_validate_still_names_file_key_and_allowed_values_without_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: bogus\n")
    code, modules, _, err = _cli("validate", str(bad))
    assert code == 2 and "Traceback" not in err
    assert str(bad) in err and "model.arch" in err and "unknown arch 'bogus'" in err
    assert ", ".join(MODEL_REGISTRY.names()) in err
    assert _heavy(modules) == []

    study = tmp_path / "study.yaml"
    study.write_text("name: s\nbase:\n  data: {name: digits}\n  loss: {name: nope}\n")
    code, modules, _, err = _cli("validate", str(study))
    assert code == 2 and str(study) in err and "loss.name" in err
    assert ", ".join(LOSS_REGISTRY.names()) in err
    assert _heavy(modules) == []


def _write_finished_study(run_dir: Path, study: str) -> None:
    """A complete record of 3 methods × 2 noise rates (2 final seeds each, 4 tuning trials): enough
    for every section of the md report (Friedman, Nemenyi, improvements, importance)."""
    run_dir.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))
    cell = 0
    for rate in (0.0, 0.4):
        for m, method in enumerate(("ce", "ce+pal", "ce+fnpal")):
            factors = {"method": method, "data.noise.rate": rate}
            tuning = optuna.create_study(
                storage=storage, study_name=tuning_study_name(study, cell), direction="maximize"
            )
            for key, value in (("cell", cell_label(factors)), ("method", method), ("factors", json.dumps(factors))):
                tuning.set_user_attr(key, value)
            for i in range(4):
                tuning.add_trial(
                    optuna.trial.create_trial(
                        params={"optim.weight_decay": 10.0 ** -(i + 2), "optim.lr": 0.01 * (i + 1)},
                        distributions={
                            "optim.weight_decay": optuna.distributions.FloatDistribution(1e-7, 1e-1, log=True),
                            "optim.lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
                        },
                        value=0.5 + 0.05 * i - rate / 2 + 0.01 * m,
                        intermediate_values={0: 0.3, 1: 0.4 + 0.05 * i},
                    )
                )
            finals = optuna.create_study(
                storage=storage, study_name=finals_study_name(study, cell), direction="maximize"
            )
            for seed in (0, 1):
                config = {"data": {"name": "digits", "noise": {"rate": rate}}, "method": method}
                acc = 0.9 - rate / 2 + 0.02 * m + 0.01 * seed
                attrs = {"seed": seed, "config": json.dumps(config), "test_acc": acc, "val_acc": acc - 0.01}
                finals.add_trial(optuna.trial.create_trial(value=acc - 0.01, user_attrs=attrs))
            cell += 1
    (run_dir / SUMMARY).write_text(json.dumps({"study": study, "complete": True, "cells": [], "claims": []}))


def test_report_md_of_a_complete_record_imports_neither_torch_nor_matplotlib_nor_mlflow(tmp_path):
    # The layout `pal-study run` leaves in its working directory: runs/<study>/ and the default
    # store mlruns/mlflow.db (here empty: read, it would fail; a named store is read instead).
    _write_finished_study(tmp_path / "runs" / "s", "s")
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_bytes(b"")
    code, modules, out, err = _cli("report", "s", "--format", "md", cwd=tmp_path)
    assert code == 0, err
    assert out.startswith("| cell | method |") and "method=ce+fnpal,data.noise.rate=0.4" in out
    for section in ("## Ranks across conditions", "Nemenyi critical difference", "## Probability of improvement"):
        assert section in out
    assert "## Parameter importance per cell" in out
    assert [m for m in ("torch", "matplotlib", "mlflow", "ray", "torchvision") if m in modules] == []
    assert (tmp_path / "mlruns" / "mlflow.db").read_bytes() == b""  # the store was never opened
