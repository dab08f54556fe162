"""Pruning under label noise: what each pruner saves in tuning epochs and what it costs in the
answer, on MNIST-1D at symmetric noise 0, 0.4 and 0.6.

    nice -n 10 .venv/bin/python benchmarks/pruners.py            # full run (resumes from its pool file)
    .venv/bin/python benchmarks/pruners.py --quick               # cost estimate: 2 methods, 1 noise, pool 6, 10 epochs

Record once, replay many. The study is the quickstart (``studies/quickstart.yaml``: its search
spaces pal_scale, margin, weight_decay) with ``base.data.name=mnist1d`` at the data set's recipe
(60 epochs), the methods and noise rates below, and Optuna's random sampler (``budget.sampler.name
=random``), so the configs a study draws do not depend on results. Each cell's trial configs come
from the study machinery itself (``load_study`` → the cell's search-space parameters →
``space.suggest`` on a RandomSampler → ``StudySearcher.trial_config``).

1. Pool: every cell's ``--pool`` configs are trained once to the full budget, no pruning, and every
   epoch's val_acc (on the noisy validation split: the study objective) is recorded. The pool is
   checkpointed to ``results/pruners_pool.json`` after every run; a rerun trains only what is missing.
2. Study seeds: study seed s draws, per cell, a random ordered subset of ``--budget`` pool configs
   (the same subset and order for every pruner). Each pruner (built by the study's own
   ``build_pruner`` where it is a shipped one) is replayed through a real in-memory Optuna study:
   ask, ``trial.report(val_acc[e], e)`` for e = 1, 2, ..., stop at the first ``should_prune()``
   (tell PRUNED), else tell the last epoch's val_acc (what the engine tells); epochs counted; the
   pick is ``store.best_trial`` (the engine's rule). This is what a *sequential* study does; the
   engine's concurrent slots show the pruner slightly different states (a trial starts before its
   predecessor has finished), and a pruned trial there usually starts one more epoch.
3. Finals: each distinct picked config is trained with ``--final-seeds`` (seed 0 is the pool run
   itself: the tuning trials run with seed 0 and the finals' seed-0 config is the same config) and
   cached; regret = finals test accuracy (mean over seeds, last epoch) of none's pick minus that of
   the pruner's pick, in points.
4. Ranking: per noise rate and study seed, the methods ordered by their picks' finals test
   accuracy; a pruner "changes the ranking" when its order differs from none's.

Writes results/pruners.json (``pruners_quick.json`` for --quick): every curve, every study seed's
picks and epochs, finals per seed, machine, command, date, load average at start and end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import _bench  # noqa: E402

METRICS = ("val_acc", "val_acc_clean", "test_acc", "train_loss")
RECIPE_EPOCHS = 60  # MNIST-1D's recipe; the candidates' later warm-ups are given for it and scaled


# --------------------------------------------------------------------------------------------
# Worker: one training run, one torch thread.

_DATA: dict[str, Any] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _train_one(job: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    from pal_study.config import TrainConfig
    from pal_study.train import build_dataset_for, train

    key, cfg_dict = job
    cfg = TrainConfig.model_validate(cfg_dict)
    dkey = json.dumps([cfg_dict["data"], cfg_dict["seed"]], sort_keys=True)
    if dkey not in _DATA:
        _DATA[dkey] = build_dataset_for(cfg)
    t0 = time.perf_counter()
    res = train(cfg, data=_DATA[dkey])
    wall = time.perf_counter() - t0
    curve = {m: [None if h.get(m) is None else round(float(h[m]), 6) for h in res.history] for m in METRICS}
    return key, {
        "status": res.status,
        "reason": res.reason,
        "epochs": res.epochs_completed,
        "curve": curve,
        "wall_s": round(wall, 3),
        "epoch_time_s": round(sum(h["train_time_s"] + h["eval_time_s"] for h in res.history), 3),
    }


def config_key(cfg: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Pool file (checkpoint): {"runs": {key: record}}; written atomically after every run.


class PoolFile:
    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[str, dict[str, Any]] = {}
        self.invocations: list[dict[str, Any]] = []  # every invocation that used this pool: when, load
        if path.is_file():
            stored = json.loads(path.read_text())
            self.runs = stored.get("runs", {})
            self.invocations = stored.get("invocations", [])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"invocations": self.invocations, "runs": self.runs}, separators=(",", ":")) + "\n")
        tmp.replace(self.path)


def run_jobs(
    jobs: list[tuple[str, dict[str, Any], dict[str, Any]]], pool_file: PoolFile, procs: int, label: str
) -> float:
    """Train the (key, config, meta) jobs not yet in the pool file; returns the wall seconds."""
    todo = [(k, c, m) for k, c, m in jobs if k not in pool_file.runs]  # a failed run is recorded too
    if not todo:
        print(f"{label}: all {len(jobs)} runs already recorded", flush=True)
        return 0.0
    print(
        f"{label}: {len(todo)} runs to train ({len(jobs) - len(todo)} recorded), {procs} processes x 1 thread",
        flush=True,
    )
    meta = {k: (c, m) for k, c, m in todo}
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    done = 0
    with ctx.Pool(procs, initializer=_init_worker) as pool:
        for key, rec in pool.imap_unordered(_train_one, [(k, c) for k, c, _ in todo]):
            cfg, m = meta[key]
            pool_file.runs[key] = {
                **m,
                "config": cfg,
                **rec,
                "trained_by": pool_file.invocations[-1]["start"] if pool_file.invocations else None,
            }
            pool_file.save()
            done += 1
            el = time.perf_counter() - t0
            eta = el / done * (len(todo) - done)
            print(
                f"  [{done}/{len(todo)}] {m.get('cell')} #{m.get('pool_index')} seed {m.get('seed')}: "
                f"{rec['status']}, {rec['epochs']} ep, {rec['wall_s']:.1f} s; elapsed {el / 60:.1f} min, "
                f"ETA {eta / 60:.1f} min, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Pruner candidates: the shipped pruners through the study's own builder, and two wrappers.


def _shipped(name: str, **opts: Any) -> Callable[[int], Any]:
    from pal_study.study.pruners import PRUNER_REGISTRY, build_pruner

    spec = PRUNER_REGISTRY.get(name)(**opts)
    return lambda epochs: build_pruner(spec, epochs)


def _patient(patience: int, **median_opts: Any) -> Callable[[int], Any]:
    import warnings

    import optuna

    inner = _shipped("median", **median_opts)

    def build(epochs: int) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(inner(epochs), patience=patience)

    return build


class CurrentValuePercentilePruner:
    """Like Optuna's PercentilePruner (maximize) but compares the trial's *current* value at this
    epoch, not its best so far, with the completed trials' values at the same epoch. Not shipped;
    a candidate for noisy labels, where a memorising trial's early best stays high."""

    def __new__(cls, percentile: float, n_startup_trials: int, n_warmup_steps: int):
        import numpy as np
        import optuna
        from optuna.trial import TrialState

        class _P(optuna.pruners.BasePruner):
            def prune(self, study, trial) -> bool:
                step = trial.last_step
                if step is None or step < n_warmup_steps:
                    return False
                done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if not done or len(done) < n_startup_trials:
                    return False
                others = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
                if not others:
                    return False
                return trial.intermediate_values[step] < float(np.percentile(others, 100 - percentile))

        return _P()


def candidates(epochs: int) -> list[dict[str, Any]]:
    """(key, label, what, factory(epochs) -> pruner); warm-ups past the shipped ones scale with epochs."""

    def sc(e: int) -> int:
        return max(1, round(e * epochs / RECIPE_EPOCHS))

    out = [
        ("none", "none", {"name": "none"}, _shipped("none")),
        (
            "median_qs",
            "median, startup 1, warm-up 3 (quickstart)",
            {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 3},
            _shipped("median", n_startup_trials=1, n_warmup_steps=3),
        ),
        (
            "median_default",
            "median, startup 2, warm-up 2 (the default)",
            {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 2},
            _shipped("median", n_startup_trials=2, n_warmup_steps=2),
        ),
        (
            "median_nl",
            "median, startup 3, warm-up 10 (noisy_labels)",
            {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 10},
            _shipped("median", n_startup_trials=3, n_warmup_steps=10),
        ),
        (
            "percentile75",
            "percentile 75 (prunes the bottom 25 %), startup 1, warm-up 3",
            {"name": "percentile", "percentile": 75.0, "n_startup_trials": 1, "n_warmup_steps": 3},
            _shipped("percentile", percentile=75.0, n_startup_trials=1, n_warmup_steps=3),
        ),
        (
            "percentile25",
            "percentile 25 (keeps the top 25 %), startup 1, warm-up 3",
            {"name": "percentile", "percentile": 25.0, "n_startup_trials": 1, "n_warmup_steps": 3},
            _shipped("percentile", percentile=25.0, n_startup_trials=1, n_warmup_steps=3),
        ),
        (
            "sh",
            "successive_halving, defaults (min auto, rf 3)",
            {"name": "successive_halving"},
            _shipped("successive_halving"),
        ),
        (
            "sh_min10",
            f"successive_halving, min_resource {sc(10)}, rf 3",
            {"name": "successive_halving", "min_resource": sc(10), "reduction_factor": 3},
            _shipped("successive_halving", min_resource=sc(10), reduction_factor=3),
        ),
        ("hyperband", "hyperband, defaults (min 1, rf 3)", {"name": "hyperband"}, _shipped("hyperband")),
        (
            "hyperband_min10",
            f"hyperband, min_resource {sc(10)}, rf 3",
            {"name": "hyperband", "min_resource": sc(10), "reduction_factor": 3},
            _shipped("hyperband", min_resource=sc(10), reduction_factor=3),
        ),
        (
            "median_w20",
            f"median, startup 1, warm-up {sc(20)}",
            {"name": "median", "n_startup_trials": 1, "n_warmup_steps": sc(20)},
            _shipped("median", n_startup_trials=1, n_warmup_steps=sc(20)),
        ),
        (
            "median_w30",
            f"median, startup 1, warm-up {sc(30)}",
            {"name": "median", "n_startup_trials": 1, "n_warmup_steps": sc(30)},
            _shipped("median", n_startup_trials=1, n_warmup_steps=sc(30)),
        ),
        (
            "patient5",
            f"PatientPruner(median startup 1 warm-up 3, patience {sc(5)})",
            {
                "wrapper": "optuna.pruners.PatientPruner",
                "patience": sc(5),
                "wrapped": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 3},
            },
            _patient(sc(5), n_startup_trials=1, n_warmup_steps=3),
        ),
        (
            "patient10",
            f"PatientPruner(median startup 1 warm-up 3, patience {sc(10)})",
            {
                "wrapper": "optuna.pruners.PatientPruner",
                "patience": sc(10),
                "wrapped": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 3},
            },
            _patient(sc(10), n_startup_trials=1, n_warmup_steps=3),
        ),
        (
            "median_w10",
            f"median, startup 1, warm-up {sc(10)}",
            {"name": "median", "n_startup_trials": 1, "n_warmup_steps": sc(10)},
            _shipped("median", n_startup_trials=1, n_warmup_steps=sc(10)),
        ),
        (
            "sh_min20",
            f"successive_halving, min_resource {sc(20)}, rf 3",
            {"name": "successive_halving", "min_resource": sc(20), "reduction_factor": 3},
            _shipped("successive_halving", min_resource=sc(20), reduction_factor=3),
        ),
        (
            "median_current",
            "median of the current value (not best so far), startup 1, warm-up 3",
            {"custom": "CurrentValuePercentilePruner", "percentile": 50.0, "n_startup_trials": 1, "n_warmup_steps": 3},
            lambda e: CurrentValuePercentilePruner(50.0, 1, 3),
        ),
        (
            "median_current_w10",
            f"median of the current value, startup 1, warm-up {sc(10)}",
            {
                "custom": "CurrentValuePercentilePruner",
                "percentile": 50.0,
                "n_startup_trials": 1,
                "n_warmup_steps": sc(10),
            },
            lambda e: CurrentValuePercentilePruner(50.0, 1, sc(10)),
        ),
        (
            "median_current_w20",
            f"median of the current value, startup 1, warm-up {sc(20)}",
            {
                "custom": "CurrentValuePercentilePruner",
                "percentile": 50.0,
                "n_startup_trials": 1,
                "n_warmup_steps": sc(20),
            },
            lambda e: CurrentValuePercentilePruner(50.0, 1, sc(20)),
        ),
    ]
    return [{"key": k, "label": lab, "spec": spec, "factory": f} for k, lab, spec, f in out]


# --------------------------------------------------------------------------------------------
# Replay


def replay(
    factory: Callable[[int], Any],
    epochs: int,
    curves: list[list[float]],
    order: list[int],
    study_name: str,
    completed: list[bool] | None = None,
) -> dict[str, Any]:
    """One sequential study over the pool configs ``order`` with this pruner; a pool run that
    failed (``completed[i]`` False) is told FAIL after its epochs, as the engine does."""
    import optuna
    from optuna.trial import TrialState

    from pal_study.study.store import best_trial

    study = optuna.create_study(
        direction="maximize",
        pruner=factory(epochs),
        study_name=study_name,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    per_trial = []
    for idx in order:
        trial = study.ask()
        trial.set_user_attr("pool_index", idx)
        ran, pruned = 0, False
        for e, v in enumerate(curves[idx], start=1):
            trial.report(float(v), step=e)
            ran = e
            if trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif completed is not None and not completed[idx]:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(curves[idx][-1]))
        per_trial.append({"pool_index": idx, "epochs": ran, "pruned": pruned})
    best = best_trial(study.trials, "max")
    return {
        "pick": None if best is None else int(best.user_attrs["pool_index"]),
        "pick_val": None if best is None else float(best.value),
        "epochs": sum(t["epochs"] for t in per_trial),
        "trials": per_trial,
    }


def spearman(a: list[float], b: list[float]) -> float:
    import warnings

    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = spearmanr(a, b).statistic
    return float(r) if r == r else float("nan")


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="cost estimate: 2 methods, noise 0.6, pool 6, 10 epochs")
    ap.add_argument("--study", default=str(ROOT / "studies/quickstart.yaml"))
    ap.add_argument("--methods", nargs="+", default=["ce", "ce+fnpal", "gce", "gce+fnpal"])
    ap.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.4, 0.6])
    ap.add_argument("--pool", type=int, default=16, help="configs trained per cell")
    ap.add_argument("--budget", type=int, default=8, help="tuning trials per cell in each replayed study")
    ap.add_argument("--study-seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=RECIPE_EPOCHS)
    ap.add_argument("--final-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--pool-seed", type=int, default=0, help="seeds the configs drawn for the pool")
    a = ap.parse_args()
    if a.quick:
        a.methods, a.noise, a.pool, a.budget, a.study_seeds, a.epochs = ["ce", "ce+fnpal"], [0.6], 6, 4, 3, 10
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_all = time.perf_counter()
    machine = _bench.machine([1])

    import numpy as np
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from pal_study.study import load_study
    from pal_study.study.engine import StudySearcher
    from pal_study.study.space import suggest

    def yl(xs: list[Any]) -> str:
        return "[" + ", ".join(str(x) for x in xs) + "]"

    overrides = [
        "base.data.name=mnist1d",
        f"base.optim.epochs={a.epochs}",
        f"factors.method={yl(a.methods)}",
        f"factors.data.noise.rate={yl(a.noise)}",
        "budget.sampler.name=random",
        f"budget.trials_per_cell={a.budget}",
    ]
    study = load_study(a.study, overrides)
    # StudySearcher.trial_config only reads .spec and .study: the exact resolved trial config.
    tc = SimpleNamespace(spec=study.spec, study=study)

    def trial_config(cell, params, seed=None):
        return StudySearcher.trial_config(tc, cell, params, seed=seed)

    cells = study.cells
    method_of = {c.index: c.method for c in cells}
    noise_of = {c.index: float(c.factors["data.noise.rate"]) for c in cells}

    # 1. pool: the same draws for a method at every noise rate (a RandomSampler seeded per method).
    pool: dict[int, list[dict[str, Any]]] = {}
    for c in cells:
        mi = a.methods.index(c.method)
        sampler = optuna.samplers.RandomSampler(seed=a.pool_seed * 1000 + mi)
        st = optuna.create_study(direction="maximize", sampler=sampler)
        entries = []
        for i in range(a.pool):
            params = suggest(st.ask(), c.params)
            cfg = trial_config(c, params)
            entries.append({"pool_index": i, "params": params, "config": cfg, "key": config_key(cfg)})
        pool[c.index] = entries
    pool_path = _bench.RESULTS / ("pruners_pool_quick.json" if a.quick else "pruners_pool.json")
    pf = PoolFile(pool_path)
    invocation = {
        "command": " ".join([sys.executable, *sys.argv]),
        "start": machine["date"],
        "loadavg_start": machine["loadavg_at_start"],
    }
    pf.invocations.append(invocation)
    pf.save()
    jobs = [
        (
            e["key"],
            e["config"],
            {
                "cell": c.label,
                "pool_index": e["pool_index"],
                "seed": e["config"]["seed"],
                "params": e["params"],
                "role": "pool",
            },
        )
        for i in range(a.pool)
        for c in cells
        for e in [pool[c.index][i]]
    ]
    pool_wall = run_jobs(jobs, pf, a.procs, "pool")
    bad = [k for k, _, _ in jobs if pf.runs[k]["status"] != "completed"]
    if bad:
        print(f"warning: {len(bad)} pool runs did not complete (their val_acc curves are shorter): {bad[:5]}")

    def curve(entry: dict[str, Any], metric: str = "val_acc") -> list[float]:
        return pf.runs[entry["key"]]["curve"][metric]

    # 2. replay
    cands = candidates(a.epochs)
    replays: dict[str, dict[int, list[dict[str, Any]]]] = {p["key"]: {} for p in cands}
    orders: dict[int, list[list[int]]] = {}
    t_rep = time.perf_counter()
    for c in cells:
        curves = [curve(e) for e in pool[c.index]]
        ok = [pf.runs[e["key"]]["status"] == "completed" for e in pool[c.index]]
        orders[c.index] = []
        for s in range(a.study_seeds):
            rng = np.random.default_rng([a.pool_seed, s, c.index])
            order = [int(x) for x in rng.permutation(a.pool)[: a.budget]]
            orders[c.index].append(order)
            for p in cands:
                r = replay(p["factory"], a.epochs, curves, order, f"s{s}-cell{c.index:03d}", ok)
                replays[p["key"]].setdefault(c.index, []).append(r)
    replay_s = time.perf_counter() - t_rep
    print(
        f"replayed {len(cands)} pruners x {len(cells)} cells x {a.study_seeds} study seeds in {replay_s:.1f} s",
        flush=True,
    )

    # 3. finals of every distinct pick
    picks = sorted(
        {(ci, r["pick"]) for p in replays.values() for ci, rs in p.items() for r in rs if r["pick"] is not None}
    )
    final_key: dict[tuple[int, int, int], str] = {}
    fjobs = []
    cell_by_index = {c.index: c for c in cells}
    for ci, idx in picks:
        e = pool[ci][idx]
        for seed in a.final_seeds:
            cfg = trial_config(cell_by_index[ci], e["params"], seed=seed)
            k = config_key(cfg)
            final_key[(ci, idx, seed)] = k
            fjobs.append(
                (
                    k,
                    cfg,
                    {
                        "cell": cell_by_index[ci].label,
                        "pool_index": idx,
                        "seed": seed,
                        "params": e["params"],
                        "role": "final",
                    },
                )
            )
    # Seed by seed: a run cut short leaves complete finals over the first seeds.
    fjobs.sort(key=lambda j: a.final_seeds.index(j[2]["seed"]))
    seed0_reused = sum(1 for ci, idx in picks if final_key.get((ci, idx, 0)) == pool[ci][idx]["key"])
    print(
        f"finals: {len(picks)} distinct picked configs x {len(a.final_seeds)} seeds "
        f"(seed 0 = the pool run for {seed0_reused} of them)",
        flush=True,
    )
    finals_wall = run_jobs(fjobs, pf, a.procs, "finals")

    def final_test(ci: int, idx: int) -> list[float]:
        return [pf.runs[final_key[(ci, idx, s)]]["curve"]["test_acc"][-1] for s in a.final_seeds]

    ftest = {(ci, idx): float(np.mean(final_test(ci, idx))) for ci, idx in picks}

    # 4. tables
    rows, summary = [], {}
    none = replays["none"]
    for p in cands:
        for nz in a.noise:
            cis = [c.index for c in cells if noise_of[c.index] == nz]
            used = sum(replays[p["key"]][ci][s]["epochs"] for ci in cis for s in range(a.study_seeds))
            base = sum(none[ci][s]["epochs"] for ci in cis for s in range(a.study_seeds))
            per_seed, cell_regrets, same, changed, winner, pal_flips = [], [], 0, 0, 0, 0
            for s in range(a.study_seeds):
                regs = []
                score_p, score_n = {}, {}
                for ci in cis:
                    pn, pp = none[ci][s]["pick"], replays[p["key"]][ci][s]["pick"]
                    tn = ftest[(ci, pn)]
                    tp = ftest[(ci, pp)] if pp is not None else float("nan")
                    regs.append(100 * (tn - tp))
                    same += int(pn == pp)
                    score_p[method_of[ci]], score_n[method_of[ci]] = tp, tn
                cell_regrets += regs
                per_seed.append(float(np.mean(regs)))
                rank_p = sorted(score_p, key=lambda m: -score_p[m])
                rank_n = sorted(score_n, key=lambda m: -score_n[m])
                changed += int(rank_p != rank_n)
                winner += int(rank_p[0] != rank_n[0])
                for m in score_p:
                    if "+fnpal" in m and m.replace("+fnpal", "") in score_p:
                        b = m.replace("+fnpal", "")
                        pal_flips += int((score_p[m] > score_p[b]) != (score_n[m] > score_n[b]))
            saved = 1 - used / base
            mean_reg = float(np.mean(per_seed))
            meets = saved >= 0.60 and mean_reg <= 0.5 and changed == 0
            rec = {
                "noise": nz,
                "epochs": used,
                "epochs_none": base,
                "saved": saved,
                "regret_mean": mean_reg,
                "regret_per_seed": per_seed,
                "regret_min": min(per_seed),
                "regret_max": max(per_seed),
                "regret_worst_cell": max(cell_regrets),
                "same_pick_share": same / (len(cis) * a.study_seeds),
                "ranking_changed": changed,
                "winner_changed": winner,
                "pal_claim_flips": pal_flips,
                "meets_goal": meets,
            }
            summary.setdefault(p["key"], {})[str(nz)] = rec
            rows.append(
                [
                    p["label"],
                    nz,
                    used,
                    f"{100 * saved:.1f}%",
                    f"{mean_reg:+.2f}",
                    f"[{min(per_seed):+.2f}, {max(per_seed):+.2f}]",
                    f"{max(cell_regrets):+.2f}",
                    f"{100 * same / (len(cis) * a.study_seeds):.0f}%",
                    f"{changed}/{a.study_seeds}",
                    f"{winner}/{a.study_seeds}",
                    pal_flips,
                    "yes" if meets else "",
                ]
            )
    # Per cell: where the regret comes from.
    per_cell: dict[str, dict[str, Any]] = {}
    cell_rows = []
    for c in cells:
        ci = c.index
        none_t = [ftest[(ci, none[ci][s]["pick"])] for s in range(a.study_seeds)]
        per_cell[c.label] = {"none_pick_test_mean": float(np.mean(none_t))}
        row = [c.label, f"{100 * np.mean(none_t):.1f}"]
        for p in cands[1:]:
            regs = [
                100 * (ftest[(ci, none[ci][s]["pick"])] - ftest[(ci, r["pick"])])
                for s, r in enumerate(replays[p["key"]][ci])
                if r["pick"] is not None
            ]
            per_cell[c.label][p["key"]] = {"regret_mean": float(np.mean(regs)), "regret_max": float(max(regs))}
            row.append(f"{np.mean(regs):+.2f}")
        cell_rows.append(row)

    # Context: how often two study seeds of `none` itself disagree on the ranking / the winner.
    none_rank_disagree = {}
    for nz in a.noise:
        cis = [c.index for c in cells if noise_of[c.index] == nz]
        ranks = [
            tuple(
                sorted(
                    (method_of[ci] for ci in cis),
                    key=lambda m, s=s: -next(ftest[(ci, none[ci][s]["pick"])] for ci in cis if method_of[ci] == m),
                )
            )
            for s in range(a.study_seeds)
        ]
        pairs = [(i, j) for i in range(len(ranks)) for j in range(i + 1, len(ranks))]
        none_rank_disagree[str(nz)] = {
            "order": sum(ranks[i] != ranks[j] for i, j in pairs) / max(1, len(pairs)),
            "winner": sum(ranks[i][0] != ranks[j][0] for i, j in pairs) / max(1, len(pairs)),
            "rankings": [list(r) for r in ranks],
        }
    print()
    print(
        _bench.table(
            [
                "pruner",
                "noise",
                "epochs",
                "saved",
                "regret",
                "[min, max] over seeds",
                "worst cell",
                "same pick",
                "ranking changed",
                "winner changed",
                "PAL-claim flips",
                "goal",
            ],
            rows,
        )
    )

    # Diagnostics: how the noisy val_acc curve behaves, and how well early epochs rank the configs.
    diag_rows, diag = [], {}
    probe_epochs = [e for e in (1, 3, 10, 20, 30) if e < a.epochs]
    for nz in a.noise:
        cis = [c.index for c in cells if noise_of[c.index] == nz]
        peaks, drops, corr_final = [], [], {e: [] for e in probe_epochs}
        corr_best, corr_sel = {e: [] for e in probe_epochs}, []
        for ci in cis:
            vals = [curve(e) for e in pool[ci]]
            tests = [pf.runs[e["key"]]["curve"]["test_acc"][-1] for e in pool[ci]]
            finals_v = [v[-1] for v in vals]
            for v in vals:
                peaks.append(int(np.argmax(v)) + 1)
                drops.append(100 * (max(v) - v[-1]))
            for e in probe_epochs:
                corr_final[e].append(spearman([v[e - 1] for v in vals], finals_v))
                corr_best[e].append(spearman([max(v[:e]) for v in vals], finals_v))
            corr_sel.append(spearman(finals_v, tests))
        d = {
            "peak_epoch_median": float(np.median(peaks)),
            "drop_peak_to_final_points_mean": float(np.mean(drops)),
            "spearman_val_at_e_vs_final_val": {e: float(np.nanmean(corr_final[e])) for e in probe_epochs},
            "spearman_best_so_far_at_e_vs_final_val": {e: float(np.nanmean(corr_best[e])) for e in probe_epochs},
            "spearman_final_val_vs_test_seed0": float(np.nanmean(corr_sel)),
        }
        diag[str(nz)] = d
        diag_rows.append(
            [
                nz,
                d["peak_epoch_median"],
                f"{d['drop_peak_to_final_points_mean']:.2f}",
                *[
                    f"{d['spearman_val_at_e_vs_final_val'][e]:.2f} / "
                    f"{d['spearman_best_so_far_at_e_vs_final_val'][e]:.2f}"
                    for e in probe_epochs
                ],
                f"{d['spearman_final_val_vs_test_seed0']:.2f}",
            ]
        )
    print(
        "\nval_acc curves of the pool (Spearman over a cell's configs, mean over methods; "
        "at epoch e: current value / best so far, against the last epoch's val_acc)"
    )
    print(
        _bench.table(
            [
                "noise",
                "peak epoch (median)",
                "peak - last (points)",
                *[f"rho @ {e}" for e in probe_epochs],
                "rho(last val, test)",
            ],
            diag_rows,
        )
    )

    print("\nmean regret (points) per cell; the none column is none's picks' finals test acc (%)")
    print(_bench.table(["cell", "none", *[p["key"] for p in cands[1:]]], cell_rows))
    print(
        "\n`none` against itself over pairs of study seeds (different trial draws): ranking differs in "
        + ", ".join(
            f"{100 * v['order']:.0f} % (winner {100 * v['winner']:.0f} %) at noise {k}"
            for k, v in none_rank_disagree.items()
        )
    )

    invocation.update(
        end=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        loadavg_end=list(os.getloadavg()),
        trained=sum(1 for r in pf.runs.values() if r.get("trained_by") == invocation["start"]),
    )
    pf.save()

    runs_used = {k for k, _, _ in jobs} | {k for k, _, _ in fjobs}
    compute_s = sum(pf.runs[k]["wall_s"] for k in runs_used)
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine,
        "loadavg_at_end": list(os.getloadavg()),
        "date_end": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "invocations": pf.invocations,
        "wall_s": time.perf_counter() - t_all,
        "pool_train_wall_s": pool_wall,
        "finals_train_wall_s": finals_wall,
        "replay_s": replay_s,
        "sum_run_wall_s": compute_s,
        "note": "wall times of this invocation only; a resumed run's earlier training is in sum_run_wall_s; "
        "invocations: every invocation that used the pool file (those before the list existed were "
        "reconstructed from their console logs)",
        "setup": {
            "study": a.study,
            "overrides": overrides,
            "methods": a.methods,
            "noise": a.noise,
            "pool": a.pool,
            "budget": a.budget,
            "study_seeds": a.study_seeds,
            "epochs": a.epochs,
            "final_seeds": a.final_seeds,
            "procs": a.procs,
            "pool_seed": a.pool_seed,
            "objective": "val_acc of the last epoch on the noisy validation split (the study's)",
            "regret": "points of finals test acc (mean over final seeds, last epoch): none's pick - pruner's pick",
        },
        "pruners": [{"key": p["key"], "label": p["label"], "spec": p["spec"]} for p in cands],
        "summary": summary,
        "diagnostics": diag,
        "none_ranking_between_study_seeds": none_rank_disagree,
        "regret_per_cell": per_cell,
        "cells": [
            {
                "index": c.index,
                "label": c.label,
                "method": c.method,
                "noise": noise_of[c.index],
                "pool": [
                    {
                        "pool_index": e["pool_index"],
                        "params": e["params"],
                        "key": e["key"],
                        "curve": pf.runs[e["key"]]["curve"],
                        "wall_s": pf.runs[e["key"]]["wall_s"],
                        "status": pf.runs[e["key"]]["status"],
                    }
                    for e in pool[c.index]
                ],
                "orders": orders[c.index],
                "replays": {p["key"]: replays[p["key"]][c.index] for p in cands},
            }
            for c in cells
        ],
        "finals": [
            {
                "cell": cell_by_index[ci].label,
                "pool_index": idx,
                "test_acc_per_seed": dict(zip(map(str, a.final_seeds), final_test(ci, idx), strict=False)),
                "test_acc_mean": ftest[(ci, idx)],
                "val_acc_per_seed": {
                    str(s): pf.runs[final_key[(ci, idx, s)]]["curve"]["val_acc"][-1] for s in a.final_seeds
                },
            }
            for ci, idx in picks
        ],
    }
    path = _bench.write_json("pruners", a.quick, result)
    print(
        f"\nwrote {path}; wall {result['wall_s'] / 60:.1f} min (this invocation), "
        f"Σ run wall {compute_s / 60:.1f} min over {len(runs_used)} runs"
    )


if __name__ == "__main__":
    main()
