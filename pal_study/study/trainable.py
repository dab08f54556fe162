"""The Ray Tune trainable: a thin adapter from a Tune trial to :func:`pal_study.train.train`.

A tuning trial reports every epoch (the Optuna pruner's scheduler decides on each) and then one
closing result (``closing: True``) with the trial's outcome. A final trial runs several seeds of
one config in turn (same actor, data and model code warm: the fixed costs are paid once) and
reports once per seed. Exceptions never escape: they become a closing ``failed`` result with the
reason, so Optuna records why. What a trial gets and reports is typed in :mod:`pal_study.study.trial`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pal_study.checkpoint import CheckpointPolicy
from pal_study.config import TrainConfig
from pal_study.study.pack import is_pruned, next_member
from pal_study.study.trial import Stage, TrialJob, TrialReport, held_to_tune
from pal_study.tracking import flatten
from pal_study.train import build_dataset_for, train

# Trials in a reused actor often share a data set (same cell or same seed): keep a few built.
_DATA_CACHE: OrderedDict[str, Any] = OrderedDict()
_DATA_CACHE_SIZE = 4


def _data_for(cfg: TrainConfig):
    key = json.dumps([cfg.data.model_dump(mode="json"), cfg.seed], sort_keys=True)
    if key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(key)
        return _DATA_CACHE[key]
    data = build_dataset_for(cfg)
    _DATA_CACHE[key] = data
    while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
        _DATA_CACHE.popitem(last=False)
    return data


def summarize(result, *, stage: Stage = "tune", seed: int | None = None) -> TrialReport:
    """The closing report of one trained config: the numbers Optuna and the tables keep."""
    final = result.final or {}
    scores = {key: final.get(key) for key in ("val_acc", "val_acc_clean", "test_acc", "ece", "gamma_min")}
    scores.update({key: final.get(key) for key in ("margin_mean", "train_loss")})
    geo = result.prototype_geometry or {}
    for key in ("norm_min", "norm_max", "cos_max"):
        if key in geo:
            scores[f"proto_{key}"] = geo[key]
    fn = result.feature_norm or {}
    if "overall_mean" in fn:
        scores["feature_norm_mean"], scores["feature_norm_std"] = fn["overall_mean"], fn.get("overall_std")
    if result.group_acc:
        for group in ("many", "medium", "few"):
            g = result.group_acc.get(group)
            scores[f"test_acc_{group}"] = g.get("acc") if isinstance(g, dict) else g
    return TrialReport(
        stage=stage,
        closing=True,
        metrics=scores,
        status=result.status,
        reason=result.reason,
        epochs_run=result.epochs_completed,
        wall_time_s=result.wall_time_s,
        train_time_s=sum(h["train_time_s"] + h["eval_time_s"] for h in result.history),
        resumed_from_epoch=result.resumed_from_epoch,
        checkpoint_path=result.checkpoint_path or None,
        seed=seed,
    )


def details(result, png: bool = True) -> dict[str, Any]:
    """What the trial's MLflow artifacts are made of. The reliability diagram is drawn here, in
    the worker, so a driver with many trials does not render every PNG; ``png=False`` (tuning
    trials) sends its bins instead: drawing costs ~50 ms of the slot per trial, a tenth of a
    digits trial, and the diagrams people read are the finals' (benchmarks/trial_details.py)."""
    out: dict[str, Any] = {
        "prototype_geometry": result.prototype_geometry,
        "per_class_acc": result.per_class_acc,
        "class_counts": result.class_counts,
    }
    if result.reliability and png:
        import base64

        # Here, not at the top: matplotlib costs every trial worker ~0.5 s to import, and only
        # trials that log details (tracking on) draw.
        from pal_study.plots import reliability_png

        png_bytes = reliability_png(result.reliability, (result.final or {}).get("ece"), result.method)
        out["reliability_png"] = base64.b64encode(png_bytes).decode()
    elif result.reliability:
        out["reliability"] = result.reliability
    return out


FAULT_ENV = "PAL_STUDY_FAULT"


def inject_fault(cfg_dict: dict[str, Any]) -> Callable[[int], None]:
    """Fault injection for tests of the harness (never set in normal use):
    ``PAL_STUDY_FAULT="raise:head.kind=pal;kill:loss.name=gce"`` makes the trials whose config
    matches (``key=value``, several joined by ``&``) raise an exception, or be SIGKILLed like a process the OS killed;
    ``killonce:head.kind=pal@2`` SIGKILLs the first matching trial once it has reported epoch 2, one
    time only (a marker in ``$PAL_STUDY_FAULT_DIR``), like a node lost mid-trial. Returns the
    per-epoch hook."""
    spec = os.environ.get(FAULT_ENV)
    hooks: list[Callable[[int], None]] = []
    if not spec:
        return lambda epoch: None

    flat = {k: str(v) for k, v in flatten(cfg_dict).items()}
    for rule in spec.split(";"):
        action, _, cond = rule.partition(":")
        cond, _, at = cond.partition("@")
        # Conditions joined by "&" must all hold: "raise:seed=2&head.kind=fnpal".
        pairs = [part.partition("=") for part in cond.split("&")]
        if any(flat.get(key.strip()) != value.strip() for key, _, value in pairs):
            continue
        if action == "raise":
            raise RuntimeError(f"injected fault ({FAULT_ENV}: {rule})")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "killonce":
            # Not the cwd: Tune runs each attempt in its own trial directory, where a retry would
            # find no marker and be killed again.
            marker = (
                Path(os.environ.get("PAL_STUDY_FAULT_DIR") or tempfile.gettempdir())
                / f"pal-fault-{hashlib.sha1(rule.encode()).hexdigest()[:12]}"
            )

            def hook(epoch: int, marker: Path = marker, at: int = int(at or 0)) -> None:
                if epoch >= at:
                    try:
                        marker.touch(exist_ok=False)
                    except FileExistsError:
                        return
                    os.kill(os.getpid(), signal.SIGKILL)

            hook(0)
            hooks.append(hook)

    def on_epoch(epoch: int) -> None:
        for h in hooks:
            h(epoch)

    return on_epoch


def run_one(
    cfg_dict: dict[str, Any],
    on_epoch=None,
    *,
    with_details: bool = False,
    details_png: bool = True,
    with_history: bool = False,
    checkpoint: CheckpointPolicy | None = None,
    stage: Stage = "tune",
) -> TrialReport:
    """Train one config into its closing report; never raises for a trial's own failure.
    ``checkpoint`` makes it save as it goes and continue from its last save."""
    seed = cfg_dict.get("seed") if stage == "final" else None
    try:
        fault = inject_fault(cfg_dict)
        cfg = TrainConfig.model_validate(cfg_dict)

        def report(m) -> bool | None:
            stop = on_epoch(m) if on_epoch is not None else None
            fault(m.epoch)
            return stop

        result = train(cfg, report, data=_data_for(cfg), checkpoint=checkpoint, replay=True)
        out = summarize(result, stage=stage, seed=seed)
        if with_details and result.status == "completed":
            out = replace(out, details=details(result, png=details_png))
        if with_history:
            out = replace(out, history=result.history)
        return out
    except Exception as e:
        return _failed_report(e, stage, seed)


def _failed_report(e: Exception, stage: Stage, seed: int | None) -> TrialReport:
    """The closing report of a trial whose training raised."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return TrialReport(
        stage=stage,
        closing=True,
        status="failed",
        reason=f"{type(e).__name__}: {e}{where}",
        epochs_run=0,
        wall_time_s=0.0,
        train_time_s=0.0,
        seed=seed,
    )


def _policy(path: str | None, every_epochs: int | str, keep_final: bool = False) -> CheckpointPolicy | None:
    return CheckpointPolicy(path=Path(path), every_epochs=every_epochs, keep_final=keep_final) if path else None


def tune_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable; ``config`` is a :class:`TrialJob` made by the study's searcher.
    In a pack (``job.pack``) it then runs each job the driver hands it, until none comes."""
    job: TrialJob | None = TrialJob.from_tune(config)
    done = 0
    while job is not None:
        failed = run_job(job)
        done += 1
        if failed:
            # After its closing report, so the searcher holds the reason: Tune marks the trial
            # ERROR and the searcher does not take it for a death. It also ends a pack.
            raise TrialFailed(failed)
        job = next_member(job.pack, done) if job.pack else None


def run_job(job: TrialJob) -> str | None:
    """One job to its closing report(s); returns why it failed (None: it did not)."""
    from ray import tune

    if job.fused:
        return run_fused(job)
    ckpt = job.checkpoint
    if job.stage == "tune":
        batch = EpochBatcher(job.decision_epochs, min_gap_s=DECISION_GAP_S)
        closing = run_one(
            job.config,
            _reporter(batch, job.pack, job.name),
            with_details=job.details,
            details_png=False,
            checkpoint=_policy(ckpt.path, ckpt.every_epochs) if ckpt else None,
        )
        tune.report(replace(closing, held=batch.take_rest(), node=_node()).to_tune())
        return (closing.reason or "failed") if closing.status == "failed" else None
    failed = []
    for seed in job.seeds:
        # A final keeps its last checkpoint: the trained model of the cell's best config.
        policy = _policy(ckpt.paths[seed], ckpt.every_epochs, keep_final=True) if ckpt else None
        closing = run_one(
            {**job.config, "seed": seed},
            with_details=job.details,
            with_history=True,
            checkpoint=policy,
            stage="final",
        )
        tune.report(replace(closing, node=_node()).to_tune())
        if closing.status == "failed":
            failed.append(f"seed {seed}: {closing.reason or 'failed'}")
    return "; ".join(failed) or None


# A decision epoch is reported at once only when this long has passed since the last report; the
# driver decides on the held ones in order (see EpochBatcher).
DECISION_GAP_S = 0.25


def _reporter(batch: EpochBatcher, pack: str | None, name: str, member: bool = False) -> Callable[[Any], bool]:
    """A tuning job's ``on_epoch``: report the epochs ``batch`` lets through (a fused ``member``'s
    carrying its name); True once the driver pruned ``name``: in a pack its pruner answers through
    the pack's channel, not with a STOP."""
    from ray import tune

    def on_epoch(m) -> bool:
        ready = batch.take({k: v for k, v in m.as_dict().items() if v is not None})
        if ready is None:
            return False
        held, metrics = ready
        tune.report(TrialReport(stage="tune", metrics=metrics, held=held, member=name if member else None).to_tune())
        return pack is not None and is_pruned(pack, name)

    return on_epoch


def run_fused(job: TrialJob) -> str | None:
    """A fused pack: its tuning trials trained as one model, each reporting as its own trial
    (``member``: its name) and stopped alone when the driver prunes it."""
    from ray import tune

    from pal_study.fused_train import train_fused

    members = job.fused
    names = [m.name for m in members]
    batches = [EpochBatcher(m.decision_epochs, min_gap_s=DECISION_GAP_S) for m in members]

    def hook(k: int, fault: Callable[[int], None]) -> Callable[[Any], bool]:
        report = _reporter(batches[k], job.pack, names[k], member=True)

        def on_epoch(m) -> bool:
            fault(m.epoch)
            return report(m)

        return on_epoch

    try:
        hooks = [hook(k, inject_fault(m.config)) for k, m in enumerate(members)]
        cfgs = [TrainConfig.model_validate(m.config) for m in members]
        # Each member saves in train()'s format: after a death it resumes alone from its file.
        policies = [_policy(m.checkpoint.path, m.checkpoint.every_epochs) if m.checkpoint else None for m in members]
        results = train_fused(cfgs, hooks, data=_data_for(cfgs[0]), checkpoints=policies)
        closings = [summarize(r) for r in results]
        closings = [
            replace(c, details=details(r, png=False)) if m.details and r.status == "completed" else c
            for c, r, m in zip(closings, results, members, strict=True)
        ]
    except Exception as e:
        closings = [_failed_report(e, "tune", None)] * len(members)
    failed = []
    for k, closing in enumerate(closings):
        tune.report(replace(closing, held=batches[k].take_rest(), node=_node(), member=names[k]).to_tune())
        if closing.status == "failed":
            failed.append(f"{names[k]}: {closing.reason or 'failed'}")
    return "; ".join(failed) or None


class EpochBatcher:
    """Which epochs a tuning trial reports to Ray Tune at once, and which it holds back.

    Every ``tune.report`` of a function trainable is a round trip: the trial's thread waits until
    the driver has taken the result and asked for the next one, and the driver also takes every
    other trial's results, the Optuna journal and the tracking. On short epochs (digits: 20 ms)
    that wait is a large share of the slot. So an epoch is reported at once only where the
    study's pruner can stop the trial (``plan``: the pruner's ``decision_epochs``; the pruner then
    sees exactly the epochs it would have seen one by one), or when ``max_gap_s`` has passed since
    the last report (live progress on long epochs); the epochs held back travel with the next
    report as ``epochs_json``, in order. ``plan=None`` reports every epoch.

    ``min_gap_s``: a decision epoch waits too, until that long has passed since the last report.
    Each report costs the trial a round trip through the driver's loop, and the quickstart's
    pruner decides at each of its last 16 epochs of 30-ms digits epochs. The driver asks the pruner
    at every held decision epoch in order (the searcher knows the plan), so it prunes at the same
    epoch with the same record as one report per epoch; a trial pruned at a held epoch has trained
    at most ``min_gap_s`` longer than it had to (tests/study/test_epoch_batching.py)."""

    def __init__(self, plan: dict[str, Any] | None, max_gap_s: float = 2.0, min_gap_s: float = 0.0):
        self.plan = plan
        self.max_gap_s = max_gap_s
        self.min_gap_s = min_gap_s
        self.held: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def decides(self, epoch: int) -> bool:
        if self.plan is None:
            return True
        start, every = self.plan.get("from"), max(1, int(self.plan.get("every") or 1))
        if start is None:
            return False
        # Optuna's median/percentile decide at the first epoch at or after n_warmup_steps, then
        # at the first epoch of each later interval.
        return epoch >= start and (epoch == max(start, 1) or (epoch - start) % every == 0)

    def take(self, metrics: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]] | None:
        """(the held epochs, this one) to report now, or None while holding this one."""
        waited = time.monotonic() - self.last
        due = self.decides(int(metrics["epoch"])) and waited >= self.min_gap_s
        if not due and waited < self.max_gap_s:
            self.held.append(metrics)
            return None
        self.last = time.monotonic()
        return self.take_rest(), metrics

    def take_rest(self) -> tuple[dict[str, Any], ...]:
        """The held epochs, for the next report (the closing one at the end), then forgotten."""
        held, self.held = tuple(self.held), []
        return held

    def add(self, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """:meth:`take` as the fields of the Tune result it becomes (this epoch and ``epochs_json``)."""
        ready = self.take(metrics)
        return None if ready is None else {**ready[1], **held_to_tune(ready[0])}

    def rest(self) -> dict[str, Any]:
        """:meth:`take_rest` as the field of the Tune result that carries them (none: no field)."""
        return held_to_tune(self.take_rest())


class TrialFailed(RuntimeError):
    """A trial's own failure (a NaN loss, an exception in training), raised once its closing
    result is reported: Ray Tune then marks the trial ERROR with the reason (its error.txt), and
    the searcher, holding that result, records the reason and does not retry it."""


def _node() -> str:
    import ray

    return ray.util.get_node_ip_address()
