"""Study engine benchmark: slot efficiency against plain Ray Tune, and what pruning saves.

    .venv/bin/python benchmarks/study_slots.py                      # the quickstart, ~8 min
    .venv/bin/python benchmarks/study_slots.py --out study_slots_2.json             # a repeat, another file
    .venv/bin/python benchmarks/study_slots.py --set budget.trials_per_cell=3 --no-ablations   # smoke, ~2 min

Runs, each in a fresh process (so Ray and Tune's environment start clean), in one invocation:
  pal-median  ``pal-study run`` of the study as shipped (its pruner), MLflow tracking on;
  pal-none    the same study and seeds with ``budget.pruner.name=none``;
  unpacked    the study as shipped with ``budget.pack.size=1``: one Ray Tune trial per trial;
  fuse-off    (``--fuse-off``) the study with packs but ``budget.pack.fuse=off``;
  ablations   pal-median with one driver lever off (``--no-ablations`` skips them): every epoch
              its own report (no batching), and the MLflow writes on Tune's event loop (no
              tracking thread);
  tune-reuse  a plain Ray Tune script running exactly pal-median's trials (same configs, each for
              the epochs it ran) with ``reuse_actors=True`` and Tune's loggers off: no Optuna, no
              pruning, no tracking;
  optuna      plain Optuna running the same trials in one process, ``n_jobs`` = slots threads;
  tune-plain  (``--tune-defaults``, ~10 min more) the same with Tune's defaults (no actor reuse,
              default loggers).
Slot efficiency = Σ epoch time in trials (the trainer's own per-epoch train + eval time) /
(wall time of the whole command × concurrent slots). Writes benchmarks/results/study_slots.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _bench  # noqa: E402


def _trial_records(runs: Path, name: str) -> list[dict[str, Any]]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(runs / name / "optuna.journal")))
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        st = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in st.trials:
            out.append(
                {
                    "study": summary.study_name,
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "epochs": t.user_attrs.get("epochs_run"),
                    "epoch_time_s": t.user_attrs.get("train_time_s"),
                    "params": t.params,
                    "config": t.user_attrs.get("config"),
                    "start": t.datetime_start.timestamp() if t.datetime_start else None,
                    "end": t.datetime_complete.timestamp() if t.datetime_complete else None,
                }
            )
    return out


def _ablate(lever: str) -> None:
    """Turn one of the driver levers off in this process (benchmark only, not a product switch)."""
    if lever == "batching":  # every epoch its own report, as before the batching
        import dataclasses

        from pal_study.study import engine

        trial_job = engine.StudySearcher._trial_job

        def every_epoch(self, job):
            out = trial_job(self, job)
            return dataclasses.replace(out, decision_epochs=None) if out.stage == "tune" else out

        engine.StudySearcher._trial_job = every_epoch
    elif lever == "thread":  # MLflow writes on Tune's event loop, as before the tracking thread
        from pal_study.study import tracker_thread

        class Inline:
            def __init__(self, t):
                self.tracker = t

            def __call__(self, event):
                self.tracker(event)

            def close(self):
                pass

        tracker_thread.TrackerThread = Inline
    elif lever:
        raise SystemExit(f"unknown lever {lever!r}")


def side_pal(study_path: str, overrides: list[str], out: Path, ablate: str = "") -> dict[str, Any]:
    from rich.console import Console

    from pal_study.study import load_study
    from pal_study.study.runner import run_study

    _ablate(ablate)

    t0, cpu0 = time.perf_counter(), time.process_time()
    study = load_study(study_path, overrides)
    runs = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    outcome = run_study(
        study,
        runs_dir=runs,
        console=Console(stderr=True, quiet=True),
        tracking_uri=f"sqlite:///{runs}/mlruns/mlflow.db",
    )
    wall = time.perf_counter() - t0
    driver_cpu = time.process_time() - cpu0  # every thread of the driver process: what it takes from trials
    records = _trial_records(runs, study.spec.name)
    # The tuning trials' configs, for the plain Tune side to re-run exactly.
    from pal_study.study.engine import StudySearcher
    from pal_study.study.store import StudyStore

    searcher = StudySearcher(study, StudyStore(study, runs), slots=outcome.slots)
    cells = {c.index: c for c in study.cells}
    jobs = []
    for r in records:
        if r["study"].endswith("/finals"):
            cfg = json.loads(r["config"])
        else:
            cell = cells[int(r["study"].rsplit("cell", 1)[1])]
            cfg = searcher.trial_config(cell, r["params"])
        cfg["optim"]["epochs"] = int(r["epochs"] or cfg["optim"]["epochs"])
        jobs.append(cfg)
    (out / "jobs.json").write_text(json.dumps(jobs))
    return {
        "wall_s": wall,
        "driver_cpu_s": driver_cpu,
        "slots": outcome.slots,
        "timings": outcome.timings,
        "records": records,
        "epoch_time_s": sum(r["epoch_time_s"] or 0.0 for r in records),
        "epochs": sum(int(r["epochs"] or 0) for r in records if not r["study"].endswith("/finals")),
        "best_by_cell": {r["study"]: r["value"] for r in _best(records, study.spec.objective.mode)},
        "cells": [{"label": c.label, "test_mean": c.test_mean, "best_value": c.best_value} for c in outcome.cells],
    }


def _best(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["study"].endswith("/finals") or r["state"] != "COMPLETE":
            continue
        b = best.get(r["study"])
        if b is None or (r["value"] > b["value"] if mode == "max" else r["value"] < b["value"]):
            best[r["study"]] = r
    return list(best.values())


def side_tune(jobs_path: Path, reuse: bool, slots: int) -> dict[str, Any]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if reuse:
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import tune

    from pal_study.study.trainable import run_one

    jobs = json.loads(jobs_path.read_text())

    def trainable(config: dict[str, Any]) -> None:
        spent = [0.0]

        def on_epoch(m) -> None:
            spent[0] += m.train_time_s + m.eval_time_s
            tune.report({"val_acc": m.val_acc or 0.0, "epoch_time_s": spent[0]})

        run_one(config["cfg"], on_epoch)

    ray.init(address="local", num_cpus=slots, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    storage = tempfile.mkdtemp(prefix="bench-tune-")
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"cfg": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(reuse_actors=reuse, max_concurrent_trials=slots),
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    )
    grid = tuner.fit()
    ray.shutdown()
    wall = time.perf_counter() - t0
    spent = sum(r.metrics.get("epoch_time_s", 0.0) for r in grid)
    return {
        "wall_s": wall,
        "driver_cpu_s": time.process_time() - cpu0,
        "slots": slots,
        "epoch_time_s": spent,
        "trials": len(jobs),
        "errors": grid.num_errors,
    }


def side_optuna(jobs_path: Path, slots: int) -> dict[str, Any]:
    """Plain Optuna in one process: ``study.optimize(n_jobs=slots)`` (threads; torch releases the
    GIL in its kernels), each trial training the next of the same jobs with the project's trainer,
    one torch thread each. No Ray, no pruning, no tracking."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    import threading

    import optuna
    import torch

    from pal_study.study.trainable import run_one

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    jobs = json.loads(jobs_path.read_text())
    lock = threading.Lock()
    spent = [0.0]

    def objective(trial: optuna.Trial) -> float:
        cfg = jobs[trial.number]
        done = [0.0]

        def on_epoch(m) -> None:
            done[0] += m.train_time_s + m.eval_time_s
            trial.report(m.val_acc or 0.0, step=m.epoch)

        closing = run_one(cfg, on_epoch)
        with lock:
            spent[0] += done[0]
        return float(closing.metrics.get("val_acc") or 0.0)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=len(jobs), n_jobs=slots)
    return {
        "wall_s": time.perf_counter() - t0,
        "driver_cpu_s": time.process_time() - cpu0,
        "slots": slots,
        "epoch_time_s": spent[0],
        "trials": len(jobs),
        "errors": sum(t.state != optuna.trial.TrialState.COMPLETE for t in study.trials),
    }


def _child(args: list[str]) -> dict[str, Any]:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"benchmark side {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=str(ROOT / "studies/quickstart.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--side", choices=["pal", "tune", "optuna"], help=argparse.SUPPRESS)
    ap.add_argument("--reuse", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--slots", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--ablate", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="study_slots.json", help="file name under benchmarks/results/")
    ap.add_argument(
        "--no-ablations",
        action="store_true",
        help="skip the two runs with one driver lever off each (epoch batching, tracking thread)",
    )
    ap.add_argument(
        "--fuse-off",
        action="store_true",
        help="also run pal-study with packs but budget.pack.fuse=off (what fusion adds to packs)",
    )
    ap.add_argument(
        "--tune-defaults",
        action="store_true",
        help="also run plain Tune with its defaults (no actor reuse, default loggers): ~10 min more",
    )
    a = ap.parse_args()
    if a.side == "pal":
        print(json.dumps(side_pal(a.study, a.overrides, Path(a.work), a.ablate)))
        return
    if a.side == "tune":
        print(json.dumps(side_tune(Path(a.work) / "jobs.json", a.reuse, a.slots)))
        return
    if a.side == "optuna":
        print(json.dumps(side_optuna(Path(a.work) / "jobs.json", a.slots)))
        return

    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-study-"))
    base = ["--study", a.study, "--work", str(work)] + [x for o in a.overrides for x in ("--set", o)]
    median = _child(["--side", "pal", *base])
    none_work = work / "none"
    none_work.mkdir()
    none = _child(
        [
            "--side",
            "pal",
            "--study",
            a.study,
            "--work",
            str(none_work),
            *[x for o in a.overrides for x in ("--set", o)],
            "--set",
            "budget.pruner.name=none",
        ]
    )
    unpacked_work = work / "unpacked"
    unpacked_work.mkdir()
    unpacked = _child(
        [
            "--side",
            "pal",
            "--study",
            a.study,
            "--work",
            str(unpacked_work),
            *[x for o in a.overrides for x in ("--set", o)],
            "--set",
            "budget.pack.size=1",
        ]
    )
    fuse_off = None
    if a.fuse_off:
        off_work = work / "fuse_off"
        off_work.mkdir()
        fuse_off = _child(
            [
                "--side",
                "pal",
                "--study",
                a.study,
                "--work",
                str(off_work),
                *[x for o in a.overrides for x in ("--set", o)],
                "--set",
                "budget.pack.fuse=off",
            ]
        )
    ablations = {}
    for lever in [] if a.no_ablations else ["batching", "thread"]:
        lever_work = work / lever
        lever_work.mkdir()
        ablations[lever] = _child(
            [
                "--side",
                "pal",
                "--study",
                a.study,
                "--work",
                str(lever_work),
                "--ablate",
                lever,
                *[x for o in a.overrides for x in ("--set", o)],
            ]
        )
    reuse = _child(["--side", "tune", "--reuse", "--work", str(work), "--slots", str(median["slots"])])
    in_optuna = _child(["--side", "optuna", "--work", str(work), "--slots", str(median["slots"])])
    plain = (
        _child(["--side", "tune", "--work", str(work), "--slots", str(median["slots"])]) if a.tune_defaults else None
    )

    def eff(r: dict[str, Any]) -> float:
        return r["epoch_time_s"] / (r["wall_s"] * r["slots"])

    rows = [
        ("pal-study (shipped pruner)", median),
        ("pal-study (pruner none)", none),
        ("pal-study, packs off (pack.size 1)", unpacked),
    ]
    if fuse_off is not None:
        rows.append(("pal-study, packs, fusion off", fuse_off))
    rows += [
        (f"pal-study, {'one report per epoch' if k == 'batching' else 'MLflow on Tune loop'}", r)
        for k, r in ablations.items()
    ]
    rows.append(("plain Ray Tune, reuse_actors + loggers off", reuse))
    rows.append(("plain Optuna, n_jobs = slots, in-process", in_optuna))
    if plain is not None:
        rows.append(("plain Ray Tune, defaults", plain))
    print(f"\nslot efficiency = Σ epoch time / (wall × {median['slots']} slots); study {a.study} {a.overrides}")
    for label, r in rows:
        print(
            f"  {label:<46} wall {r['wall_s']:7.1f} s  Σ epochs {r['epoch_time_s']:7.1f} s  "
            f"efficiency {100 * eff(r):5.1f} %  driver CPU {r.get('driver_cpu_s', 0):5.1f} s"
        )
    print(
        f"  the same trials' Σ epoch time in plain Tune / in pal-study: "
        f"{reuse['epoch_time_s'] / median['epoch_time_s']:.2f} (below 1: pal-study's epochs ran slower, "
        f"sharing the cores with its driver); wall pal-study / plain Tune {median['wall_s'] / reuse['wall_s']:.2f}"
    )
    print(
        f"  wall / plain Tune's: pal-study {median['wall_s'] / reuse['wall_s']:.2f}, packs off "
        f"{unpacked['wall_s'] / reuse['wall_s']:.2f}, plain Optuna {in_optuna['wall_s'] / reuse['wall_s']:.2f}"
    )
    t = median["timings"]
    print(
        f"  pal-study wall: setup {t.get('setup_s', 0):.1f} s, Ray start {t.get('ray_start_s', 0):.1f} s, "
        f"fit {t.get('fit_s', 0):.1f} s, Ray shutdown {t.get('ray_shutdown_s', 0):.1f} s"
    )
    first = min((r for r in median["records"] if r["start"] and r["end"]), key=lambda r: r["start"])
    print(
        f"  first trial: {first['end'] - first['start']:.1f} s from ask to tell (actor start, imports, data) "
        f"for {first['epoch_time_s'] or 0:.1f} s of epochs; first trial handed out after "
        f"{median['timings'].get('ready_s', 0):.1f} s"
    )
    tune = [r for r in median["records"] if not r["study"].endswith("/finals") and r["start"] and r["end"]]
    over = sorted(r["end"] - r["start"] - (r["epoch_time_s"] or 0.0) for r in tune)
    print(
        f"  tuning trials: ask to tell minus epoch time, median {over[len(over) // 2]:.3f} s, "
        f"90th percentile {over[int(0.9 * len(over))]:.3f} s ({len(over)} trials)"
    )
    print(
        f"  driver process CPU {median['driver_cpu_s']:.1f} s = "
        f"{100 * median['driver_cpu_s'] / median['epoch_time_s']:.1f} % of Σ epoch time; MLflow logging in the driver "
        f"{t.get('tracking_s', 0):.1f} s wall, {t.get('tracking_cpu_s', 0):.1f} s CPU = "
        f"{100 * t.get('tracking_cpu_s', 0) / median['epoch_time_s']:.1f} % of Σ epoch time"
    )

    b_med = median["best_by_cell"]
    b_none = none["best_by_cell"]
    diffs = [100 * (b_none[k] - b_med[k]) for k in b_none if k in b_med]
    mean_med = sum(b_med.values()) / len(b_med)
    mean_none = sum(b_none.values()) / len(b_none)
    saved = 1 - median["epochs"] / none["epochs"]
    print(
        f"\npruning: tuning epochs {median['epochs']} (median) vs {none['epochs']} (none): "
        f"{100 * saved:.1f} % fewer; best {('val_acc')} per cell, mean over cells "
        f"{100 * mean_med:.2f} vs {100 * mean_none:.2f} (Δ {100 * (mean_med - mean_none):+.2f} points); "
        f"per-cell Δ (none − median) max {max(diffs):+.2f}, min {min(diffs):+.2f} points"
    )
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": _bench.machine([1]),
        "wall_s": time.perf_counter() - t_all,
        "efficiency": {label: eff(r) for label, r in rows},
        "sides": {label: {k: v for k, v in r.items() if k != "records"} for label, r in rows},
        "pruning": {
            "epochs_median": median["epochs"],
            "epochs_none": none["epochs"],
            "saved": saved,
            "best_mean_median": mean_med,
            "best_mean_none": mean_none,
            "per_cell_diff_points": diffs,
        },
    }
    out = ROOT / "benchmarks" / "results" / a.out
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
