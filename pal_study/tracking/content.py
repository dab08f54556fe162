"""What a run holds, whatever the store: its config as flat params, the tags its runs are filtered
and grouped by, which code made it, and its files (config.yaml, geometry, per-class accuracy,
reliability)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pal_study import __version__
from pal_study.config import TrainConfig, method_name
from pal_study.tracking.names import CONFIG_FILE

_GIT: dict[str, Any] = {}


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def code_tags() -> dict[str, str]:
    """Which code made a run: the package version and, in a git checkout, the commit."""
    commit = _GIT.get("commit", "unset")
    if commit == "unset":
        commit = _GIT["commit"] = _git_commit()
    return {"pal_study_version": __version__, **({"git_commit": commit} if commit else {})}


def config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def trial_tags(cfg: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The tags a child run is filtered and grouped by in the UI."""
    data = cfg.get("data", {})
    tags = {
        "method": method_name(TrainConfig.model_validate(cfg)),
        "loss": cfg.get("loss", {}).get("name"),
        "head": cfg.get("head", {}).get("kind"),
        "dataset": data.get("name"),
        "noise_kind": data.get("noise", {}).get("kind"),
        "noise_rate": data.get("noise", {}).get("rate"),
        "imbalance_ratio": data.get("imbalance", {}).get("ratio"),
        "seed": cfg.get("seed"),
        "config_hash": config_hash(cfg),
        **code_tags(),
    }
    tags.update(extra)
    # Strings: an MLflow server rejects other tag types (SQLite stores would take them).
    return {k: str(v) for k, v in tags.items() if v is not None}


def config_yaml(cfg: dict[str, Any], header: str = "") -> str:
    body = yaml.safe_dump(cfg, sort_keys=False)
    return (f"# {header}\n" if header else "") + body


def trial_artifacts(cfg: dict[str, Any], details: dict[str, Any] | None, header: str) -> dict[str, bytes | str]:
    """config.yaml (re-runnable with ``pal-study train``), prototype geometry, per-class accuracy,
    the reliability diagram (rendered by the trial's worker: finals) or its bins (tuning trials)."""
    files: dict[str, bytes | str] = {CONFIG_FILE: config_yaml(cfg, header)}
    if details:
        if details.get("prototype_geometry"):
            files["prototype_geometry.json"] = json.dumps(details["prototype_geometry"], indent=1)
        pca = details.get("per_class_acc")
        if pca:
            counts = details.get("class_counts") or [None] * len(pca)
            rows = ["class,train_count,test_acc"] + [
                f"{i},{n if n is not None else ''},{'' if a is None else a}"
                for i, (a, n) in enumerate(zip(pca, counts, strict=False))
            ]
            files["per_class_acc.csv"] = "\n".join(rows) + "\n"
        if details.get("reliability_png"):
            files["reliability.png"] = base64.b64decode(details["reliability_png"])
        elif details.get("reliability"):
            files["reliability.json"] = json.dumps(details["reliability"], indent=1)
    return files
