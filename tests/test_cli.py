"""The command line: exit codes, messages, files written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pal_study.cli import main


def run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_help_lists_subcommands(capsys):
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0
    for cmd in ("train", "prototypes", "validate"):
        assert cmd in out


def test_train_writes_result_json(tmp_path, capsys):
    out_file = tmp_path / "res" / "result.json"
    rc, out, err = run(
        [
            "train",
            "--set",
            "method=nce+rce+fnpal",
            "--set",
            "optim.epochs=2",
            "--set",
            "data.noise.rate=0.4",
            "--out",
            str(out_file),
        ],
        capsys,
    )
    assert rc == 0, err
    d = json.loads(out_file.read_text())
    assert d["status"] == "completed" and d["method"] == "nce+rce+fnpal"
    assert len(d["history"]) == 2 and abs(d["noise_rate_measured"] - 0.4) < 0.02
    assert "test_acc" in out


PACK = ["train", "--set", "data.name=mnist1d", "--set", "model.arch=mnist1d_mlp", "--set", "optim.epochs=2"]


def test_train_a_pack_of_variants_fused_or_one_after_another(tmp_path, capsys):
    """``--member``: each variant its own result and MLflow run; fused where they share data,
    seed, model and loss (``--fuse on``; ``auto`` where fusing measured faster: nowhere yet), else
    apart."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    members = ["--member", "optim.lr=0.05", "--member", "optim.lr=0.1; head.scale=5"]
    members += ["--member", "optim.weight_decay=0", "--member", "optim.momentum=0.5"]
    where = ["--out", str(tmp_path / "fused"), "--tracking-uri", uri]
    rc, out, err = run([*PACK, "--set", "method=ce+fnpal", *members, "--fuse", "on", *where], capsys)
    assert rc == 0, err
    assert "pack of 4 members, fused into one model" in err and "one run per member" in err
    results = [json.loads((tmp_path / "fused" / f"member{n}" / "result.json").read_text()) for n in range(4)]
    assert [r["config"]["optim"]["lr"] for r in results] == [0.05, 0.1, 0.05, 0.05]
    assert results[1]["config"]["head"]["scale"] == 5.0 and all(r["status"] == "completed" for r in results)
    assert "optim.lr=0.1; head.scale=5" in out and "member" in out
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("pal-study-train").experiment_id])
    assert len(runs) == 4

    rc, _, err = run(
        [*PACK, "--member", "seed=1", "--member", "seed=2", "--out", str(tmp_path / "apart"), "-q", "--no-track"],
        capsys,
    )
    assert rc == 0, err
    assert "one after another (member 1 differs from member 0 in seed" in err
    seeds = [
        json.loads((tmp_path / "apart" / f"member{n}" / "result.json").read_text())["config"]["seed"] for n in (0, 1)
    ]
    assert seeds == [1, 2]
    rc, _, err = run(
        [
            *PACK,
            "--member",
            "optim.lr=0.05",
            "--member",
            "optim.lr=0.1",
            "--fuse",
            "off",
            "-q",
            "--no-track",
            "--out",
            str(tmp_path / "off"),
        ],
        capsys,
    )
    assert rc == 0 and "one after another (--fuse off)" in err
    # auto: fusing measured no faster for whole trials here, so auto packs them one by one.
    auto = ["--out", str(tmp_path / "auto"), "-q", "--no-track"]
    rc, _, err = run([*PACK, "--member", "optim.lr=0.05", "--member", "optim.lr=0.1", *auto], capsys)
    assert rc == 0 and "one after another (fusing measured no faster for this model here)" in err


@pytest.mark.parametrize(
    "extra, code, fragment",
    [
        (
            ["--member", "seed=1", "--member", "seed=2", "--fuse", "on"],
            2,
            "--fuse on: these members do not fuse: member 1",
        ),
        (["--member", "seed=1", "--fuse", "sometimes"], 2, "--fuse: unknown 'sometimes'; allowed: auto, on, off"),
        (["--member", "seed=1", "--checkpoint-dir", "ck"], 2, "a pack (--member) writes no checkpoints"),
        (["--member", "optim.lr=0.05", "--member", "optim.lrr=2"], 2, "optim.lrr"),
        (["--member", "optim.lr=0.05", "--member", "optim.lr=1e12", "--fuse", "on"], 1, "failed: 1 of 2 members"),
        (["--member", "optim.lr=0.05", "--member", "optim.lr=1e12"], 1, "failed: 1 of 2 members"),
    ],
)
def test_a_pack_with_bad_members_says_why(tmp_path, capsys, monkeypatch, extra, code, fragment):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run([*PACK, "--set", "method=ce", *extra, "-q", "--no-track"], capsys)
    assert rc == code and fragment in err, err


def test_train_from_yaml_and_default_run_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.yaml").write_text("method: ce+pal\noptim:\n  epochs: 1\nseed: 3\n")
    rc, _, err = run(["train", "t.yaml", "-q"], capsys)
    assert rc == 0, err
    runs = list((tmp_path / "runs" / "train").iterdir())
    assert len(runs) == 1
    assert json.loads((runs[0] / "result.json").read_text())["config"]["seed"] == 3
    assert "kind: pal" in (runs[0] / "config.yaml").read_text()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "optim.epoch=5"], "optim.epoch"),
        (["--set", "method=xent"], "method"),
        (["--set", "data.noise.rate=1.0"], "data.noise.rate"),
        (["--set", "data.imbalance.ratio=-1"], "data.imbalance.ratio"),
        (["--set", "data.name=cifar10"], "data.root"),
        (["--set", "data.name=mnist", "--set", "data.root=/nonexistent/x"], "--download"),
        (["missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_input_exits_2_naming_the_key(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(["train", *args], capsys)
    assert rc == 2
    assert fragment in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_validate(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("method: sce+fnpal\ndata:\n  noise:\n    rate: 0.6\n")
    rc, out, _ = run(["validate", str(good)], capsys)
    assert rc == 0 and "sce+fnpal" in out and "ok" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sce+fnpal\nhead:\n  scale: -1\n")
    rc, _, err = run(["validate", str(bad)], capsys)
    assert rc == 2 and "head.scale" in err and str(bad) in err


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_prototypes_command(tmp_path, capsys, suffix):
    f = tmp_path / f"w{suffix}"
    rc, out, _ = run(["prototypes", "--classes", "10", "--dim", "32", "--out", str(f)], capsys)
    assert rc == 0 and "max_dev_from_etf" in out
    w = torch.load(f, weights_only=True) if suffix == ".pt" else torch.from_numpy(np.load(f))
    assert tuple(w.shape) == (10, 32)
    cos = (w @ w.T)[~torch.eye(10, dtype=torch.bool)]
    assert torch.allclose(cos, torch.full_like(cos, -1 / 9), atol=1e-5)


def test_prototypes_bad_method_exits_2(capsys):
    rc, _, err = run(["prototypes", "--classes", "10", "--dim", "4", "--method", "etf"], capsys)
    assert rc == 2 and "etf" in err
    rc, _, err = run(["prototypes", "--classes", "10", "--dim", "4", "--method", "simplex"], capsys)
    assert rc == 2 and "allowed" in err


def test_console_script_exit_codes(tmp_path):
    exe = [sys.executable, "-m", "pal_study.cli"]
    ok = subprocess.run(
        [*exe, "validate", "--set", "seed=1", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert ok.returncode == 2 and "file not found" in ok.stderr and "Traceback" not in ok.stderr
    usage = subprocess.run([*exe, "train", "--no-such-flag"], capture_output=True, text=True)
    assert usage.returncode == 2


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["status", "--help"], ["report", "--help"], ["run", "--help"]]
)
def test_help_and_version_import_no_heavy_framework(args):
    """`pal-study --help` answers without importing torch, Ray, MLflow or Optuna (seconds each)."""
    code = (
        "import sys\nfrom pal_study.cli import main\nrc = main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\nsys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stderr, res.stderr
    assert "pal-study" in res.stdout or "Usage" in res.stdout
