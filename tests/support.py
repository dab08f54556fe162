"""Helpers the tests share: the small studies several end-to-end tests run, and readers of what a
study leaves, through Optuna's own API."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


def study_file(
    tmp_path: Path,
    name: str,
    *,
    methods=("ce", "ce+fnpal"),
    noise=(0.0, 0.4),
    trials: int = 3,
    seeds=(0, 1),
    epochs: int = EPOCHS,
    claims: list | None = None,
) -> Path:
    """A small digits study with the weight-decay space copied beside it (shared by the tests of
    tracking backends)."""
    spec = {
        "name": name,
        "base": {"data": {"name": "digits"}, "optim": {"epochs": epochs}},
        "factors": {"method": list(methods), "data.noise.rate": list(noise)},
        "search": ["weight_decay"],
        "budget": {
            "trials_per_cell": trials,
            "sampler": {"seed": 0, "n_startup_trials": 2},
            "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
        },
        "finals": {"seeds": list(seeds)},
    }
    if claims:
        spec["claims"] = claims
        # The scale of ce+fnpal stays at its default here: declared, as a fair protocol asks.
        spec["protocol"] = {"fixed": ["head.scale"]}
    (tmp_path / "search_spaces").mkdir(exist_ok=True)
    (tmp_path / "search_spaces" / "weight_decay.yaml").write_text(
        (ROOT / "search_spaces/weight_decay.yaml").read_text()
    )
    path = tmp_path / "studies" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def write_study(tmp_path: Path, name: str = "ci", pack_size: int | None = None, **overrides) -> Path:
    """The small study most tests run (4 digits cells, 5 trials each, aggressive pruner, finals
    over 2 seeds); keyword arguments replace its top-level keys; ``pack_size`` sets
    ``budget.pack.size`` (1: one Ray Tune trial per trial, as a searcher driven by hand expects)."""
    spec = {
        "name": name,
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 4}},
        "factors": {"method": ["ce", "ce+fnpal"], "data.noise.rate": [0.0, 0.4]},
        "search": [str(ROOT / "search_spaces/pal_scale.yaml"), str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {
            "trials_per_cell": 5,
            "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
            # Aggressive on purpose: a trial below the 90th percentile of the completed ones at
            # the same epoch is pruned from epoch 1 on.
            "pruner": {"name": "percentile", "percentile": 90, "n_startup_trials": 1, "n_warmup_steps": 1},
        },
        "finals": {"seeds": [0, 1]},
        "resources": {"cpu": 1},
    }
    for key, value in overrides.items():
        spec[key] = value
    if pack_size is not None:
        spec["budget"] = {**spec["budget"], "pack": {"size": pack_size}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def journal(runs: Path, name: str) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(runs / name / "optuna.journal")))


def studies_by_name(storage) -> dict[str, optuna.Study]:
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage)
    }


def ensure_local_ray() -> None:
    """Start the shared local Ray of this test process unless a Ray is up (see conftest's
    ``local_ray``): on 127.0.0.1 only, with the environment the study runner gives Ray, and one
    CPU, so one trial slot: the suite's two test processes share two cores, and a second slot per
    process bought no wall time for these small studies (the ci study: 8.3 s on two slots, 8.8 s
    on one, measured alone) while it doubled the actors each one starts."""
    import ray

    from pal_study.study.ray_env import start_ray

    if not ray.is_initialized():
        start_ray(None, num_cpus=1)


def stop_local_ray() -> None:
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
