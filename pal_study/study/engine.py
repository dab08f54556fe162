"""The study engine on Ray Tune: a searcher that hands out work from the Optuna storage and a
scheduler that asks a real Optuna pruner at every reported epoch.

Why not ``OptunaSearch`` + ASHA (docs/study-engine.md): OptunaSearch creates its study
with a ``NopPruner`` and never asks ``should_prune``; a Tune scheduler that stops a trial makes
OptunaSearch tell COMPLETE with a truncated value; and Tune does not restore scheduler state.
Here the Optuna storage is the only state: the searcher asks (or resumes) Optuna trials per cell
with an equal budget per cell, the scheduler reports each epoch to the trial and stops it when the
study's pruner says so, and the searcher tells PRUNED / COMPLETE / FAIL. Finals (the best config
of each cell over the final seeds, no pruning) are recorded per seed as they finish.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from pal_study._compat import resume_trial, searcher_pickle_state
from pal_study.config import apply_overrides, resolve, validate_train_config
from pal_study.layout import TUNE_LOGS
from pal_study.study.events import (
    EpochReported,
    FinalEnded,
    FinalsSkipped,
    Sink,
    TrialEnded,
    TrialOutcome,
    TrialRetried,
    TrialStarted,
)
from pal_study.study.pack import PackChannel, new_pack_key
from pal_study.study.pruners import build_pruner
from pal_study.study.samplers import build_sampler
from pal_study.study.space import suggest
from pal_study.study.spec import Cell, Study, _yaml_value
from pal_study.study.store import StudyStore, best_trial, jsonable
from pal_study.study.trainable import EpochBatcher
from pal_study.study.trial import CheckpointPlan, Stage, TrialJob, TrialReport, job_name

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One Tune trial as the searcher handed it out."""

    stage: Stage
    cell: Cell
    trial: optuna.trial.Trial | None = None
    seeds: list[int] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)
    pruned_at: int | None = None
    closing: TrialReport | None = None
    last_epoch: int = 0
    epoch_time_s: float = 0.0
    failed: bool = False  # a final seed or the tuning trial reported its own failure
    resumed: bool = False  # an interrupted tuning trial run again (never fused: it trains alone)
    tune_name: str | None = None  # the Ray Tune trial it ran in (a pack's: its first member's)

    @property
    def tuning_trial(self) -> optuna.trial.Trial:
        """The Optuna trial of a tuning job (a final has none)."""
        if self.trial is None:
            raise ValueError(f"a {self.stage} job has no Optuna trial")
        return self.trial


class StudySearcher(Searcher):
    """Hands out tuning trials (equal budget per cell), resumed trials, then finals."""

    def __init__(
        self, study: Study, store: StudyStore, *, slots: int = 1, on_event: Sink | None = None, retries: int = 0
    ):
        super().__init__(metric=study.spec.objective.metric, mode=study.spec.objective.mode)
        # Work whose process or node died is handed out again, up to `retries` times, by the
        # searcher itself rather than by Tune's FailureConfig: when a node dies, Tune can see the
        # trial's actor fail twice (one error per pending future), recover it on the first and
        # give up on the second, whatever max_failures says.
        self.retries = retries
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._session_quota: int | None = None
        self._session_issued = 0
        self.study = study
        self.spec = study.spec
        self.store = store
        self.on_event: Sink = on_event or (lambda event: None)
        # Artifacts (geometry, per-class accuracy, reliability PNG) in closing results: for tracking.
        self.details = True
        self.jobs: dict[str, Job] = {}
        self._plan = EpochBatcher(study.spec.budget.pruner.decision_epochs())
        # Ray Tune trial id -> its pack's channel, when packs hold more than one trial.
        self.pack_size = study.spec.budget.pack.members
        self.packs: dict[str, PackChannel] = {}
        self._fusion: dict[int, bool] = {}
        epochs = study.spec.budget.epochs or max(c.config.optim.epochs or 1 for c in study.cells)
        self._tuning: dict[int, optuna.Study] = {}
        self._resume: list[tuple[Cell, int]] = []
        self._issued: dict[int, int] = {}
        self._finals_issued: dict[int, set[int]] = {}
        self._finals_skipped: dict[int, str] = {}
        for cell in study.cells:
            self._finals_issued[cell.index] = set(store.final_results(cell))
            if cell.is_variant:  # a sensitivity cell: its parent's tuning picks its config
                self._issued[cell.index] = 0
                continue
            st = store.open_tuning(
                cell,
                build_sampler(study.spec.budget.sampler, cell.index),
                build_pruner(study.spec.budget.pruner, cell.config.optim.epochs or epochs),
            )
            self._tuning[cell.index] = st
            trials = st.get_trials(deepcopy=False)
            # Trials left RUNNING by a killed driver are run again under the same Optuna trial.
            running = [t for t in trials if t.state == TrialState.RUNNING]
            self._resume += [(cell, t.number) for t in running]
            self._issued[cell.index] = sum(t.state.is_finished() for t in trials) + len(running)
        n_seeds = len(study.spec.finals.seeds)
        # Few cells for many slots: one seed per trial keeps the slots busy; otherwise all seeds of
        # a cell in one trial, paying the per-trial costs once.
        self._seeds_per_trial = n_seeds if len(study.cells) >= slots else 1
        # At most this many tuning trials of one cell at a time. With at least as many cells as
        # slots that is one: each ask and each pruning decision then sees exactly the cell's
        # earlier trials, so a study re-run with the same seeds gives the same trials and table.
        self._per_cell = max(1, math.ceil(slots / max(1, len(study.factor_cells))))

    # -- Tune's serialisation: the state lives in the Optuna storage, nothing to save --------
    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its config (tuner.pkl) for Tuner.restore, which pal-study does not use.
        return searcher_pickle_state(self)

    # -- handing out work ------------------------------------------------------------------
    def start_session(self, quota: int | None) -> None:
        """Hand out at most ``quota`` trials to the next Tuner, then say FINISHED (see the runner:
        a Tuner keeps every trial it ran in memory until it returns)."""
        self._session_quota, self._session_issued = quota, 0

    @property
    def interrupted_to_resume(self) -> int:
        """Trials left RUNNING by an earlier driver, still to be run again."""
        return len(self._resume)

    @property
    def session_full(self) -> bool:
        return self._session_quota is not None and self._session_issued >= self._session_quota

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray's annotation leaves out Searcher.FINISHED, a documented return
        if self.session_full:
            return Searcher.FINISHED
        job = self._next_job()
        if job is None:
            return Searcher.FINISHED if self.done() else None
        if self.pack_size > 1:
            self.packs[trial_id] = PackChannel(new_pack_key(), self.pack_size)
        return self._launch(trial_id, job).to_tune()

    def _launch(self, trial_id: str, job: Job) -> TrialJob:
        """What Tune trial ``trial_id`` runs next: ``job``, or, where its cell fuses, a fused pack of
        it and more new trials of the cell (up to the pack size and the cell's budget; keys
        ``<trial_id>#<member name>`` in :attr:`jobs`). Each is asked and sampled in turn, its sampler
        seeded for its own number; TPE's constant liar keeps such concurrent asks apart."""
        grow = job.stage == "tune" and not job.resumed and self._fuses(job.cell)
        group = [job]
        members = [self._start(trial_id, job, self._member_key(trial_id, job) if grow else trial_id)]
        while grow and len(group) < self.pack_size and self._issued[job.cell.index] < self.study.budget(job.cell):
            group.append(self._ask(job.cell))
            members.append(self._start(trial_id, group[-1], self._member_key(trial_id, group[-1])))
        if grow and len(members) == 1:  # the cell's last trial: it trains alone
            self.jobs[trial_id] = self.jobs.pop(self._member_key(trial_id, job))
        trial_job = replace(members[0], fused=tuple(members)) if len(members) > 1 else members[0]
        pack = self.packs.get(trial_id)
        if pack is None:
            return trial_job
        if pack.first is None:  # the Tune trial and its log directory are named after it
            pack.first = trial_job.name
        for j in group:
            j.tune_name = pack.first
        return replace(trial_job, pack=pack.key)

    def _start(self, trial_id: str, job: Job, key: str) -> TrialJob:
        self._session_issued += 1
        self.jobs[key] = job
        if job.trial is not None:
            job.trial.set_user_attr("tune_trial_id", trial_id)
        trial_job = self._trial_job(job)
        self.on_event(TrialStarted(job, trial_job))
        return trial_job

    def _fuses(self, cell: Cell) -> bool:
        """Whether ``cell``'s new tuning trials train as fused packs (``budget.pack.fuse``)."""
        if cell.index not in self._fusion:
            from pal_study.config import TrainConfig
            from pal_study.fused_train import fuse_blocker, fusion_pays, searched_blocker

            fuse = self.spec.budget.pack.fuse
            ok = fuse != "off" and self.pack_size > 1 and searched_blocker(list(cell.params)) is None
            if ok:
                cfg = TrainConfig.model_validate(self.trial_config(cell, {}))
                ok = fuse_blocker([cfg, cfg]) is None and (fuse == "on" or fusion_pays(cfg, self.pack_size))
            self._fusion[cell.index] = ok
        return self._fusion[cell.index]

    def describe_fusion(self) -> str:
        """Which cells' tuning trials train as fused packs: said at the start of a run."""
        if self.spec.budget.pack.fuse == "off" or self.pack_size < 2:
            return "fused packs: off"
        fused = [str(c.index) for c in self.study.factor_cells if self._fuses(c)]
        if not fused:
            return (
                f"fused packs: no cell (fuse {self.spec.budget.pack.fuse}: a cell fuses where its search leaves "
                "what members share alone and, under auto, its model measured faster fused on its device)"
            )
        return f"fused packs: cells {', '.join(fused)}, up to {self.pack_size} tuning trials as one model"

    def _member_key(self, trial_id: str, job: Job) -> str:
        """A fused member's key in :attr:`jobs`: its Tune trial and its own name (what its reports
        carry as ``member``), so a late report of a member never lands on a later pack's."""
        return f"{trial_id}#{self._trial_job_name(job)}"

    def _keys(self, trial_id: str) -> list[str]:
        """The keys in :attr:`jobs` of what Tune trial ``trial_id`` runs (a fused pack: several)."""
        return [k for k in self.jobs if k == trial_id or k.startswith(f"{trial_id}#")]

    def _member_done(self, trial_id: str, key: str, job: Job) -> None:
        """A pack's member has ended (its last report, or its prune in a fused pack): record it;
        once nothing of the pack runs, hand it its next job (a failed member ends the pack: its
        worker raises, as an unpacked trial does)."""
        pack = self.packs[trial_id]
        del self.jobs[key]
        self._finish(job, error=False)
        pack.failed = pack.failed or job.failed
        if self._keys(trial_id):
            return  # fused members still training
        nxt = None
        if not pack.failed and not pack.full and not self.session_full:
            following = self._next_job()
            if following is not None:
                nxt = self._launch(trial_id, following)
        pack.hand(nxt)

    def _next_job(self) -> Job | None:
        if self._resume:
            cell, number = self._resume.pop(0)
            st = self._tuning[cell.index]
            trial = resume_trial(st, self.store.storage, number)
            # A driver killed between ask() and the first suggest() leaves a trial without
            # params: it must draw them as it would have, from the sampler seeded for its number.
            st.sampler = build_sampler(self.spec.budget.sampler, cell.index, trial.number)
            frozen = next(t for t in st.get_trials(deepcopy=False) if t.number == number)
            done = set(frozen.intermediate_values)
            return Job("tune", cell, trial=trial, reported=done, resumed=True)
        for cell in self.study.cells:
            seeds = self._missing_final_seeds(cell)
            if seeds:
                seeds = seeds[: self._seeds_per_trial]
                self._finals_issued[cell.index].update(seeds)
                return Job("final", cell, seeds=seeds)
        open_cells = [
            c
            for c in self.study.cells
            if self._issued[c.index] < self.study.budget(c) and self._running(c) < self._per_cell
        ]
        if not open_cells:
            return None
        return self._ask(min(open_cells, key=lambda c: (self._issued[c.index], c.index)))

    def _ask(self, cell: Cell) -> Job:
        """A new tuning trial of ``cell`` (its sampler seeded for the trial's number)."""
        self._issued[cell.index] += 1
        st = self._tuning[cell.index]
        st.sampler = build_sampler(self.spec.budget.sampler, cell.index, len(st.get_trials(deepcopy=False)))
        trial = st.ask()
        trial.set_user_attr("cell", cell.label)
        trial.set_user_attr("seed", cell.config.seed)
        return Job("tune", cell, trial=trial)

    def _running(self, cell: Cell) -> int:
        return sum(1 for j in self.jobs.values() if j.stage == "tune" and j.cell.index == cell.index)

    def _missing_final_seeds(self, cell: Cell) -> list[int]:
        if cell.index in self._finals_skipped or not self._tuning_finished(cell):
            return []
        missing = [s for s in self.spec.finals.seeds if s not in self._finals_issued[cell.index]]
        if missing and self.best(cell) is None:
            self._finals_skipped[cell.index] = "no tuning trial completed"
            self.on_event(FinalsSkipped(Job("final", cell), "no tuning trial completed"))
            return []
        return missing

    def _tuning_finished(self, cell: Cell) -> bool:
        cell = self.study.tuning_cell(cell)
        if self._issued[cell.index] < self.study.budget(cell):
            return False
        if any(c.index == cell.index for c, _ in self._resume):
            return False
        return not any(j.stage == "tune" and j.cell.index == cell.index for j in self.jobs.values())

    def done(self) -> bool:
        if self.jobs or self._resume:
            return False
        return all(self._tuning_finished(c) and not self._missing_final_seeds(c) for c in self.study.cells)

    def best(self, cell: Cell) -> optuna.trial.FrozenTrial | None:
        """The best tuning trial behind ``cell``'s finals (a sensitivity cell's: its parent's)."""
        tuning = self.study.tuning_cell(cell)
        return best_trial(self._tuning[tuning.index].get_trials(deepcopy=False), self.spec.objective.mode)

    def final_params(self, cell: Cell, best: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
        """The searched values a final of ``cell`` runs with: the best trial's, less the knobs a
        sensitivity cell fixes (its config holds them)."""
        return {k: v for k, v in (best.params if best else {}).items() if k not in cell.variant}

    def trial_config(
        self, cell: Cell, params: dict[str, Any], *, seed: int | None = None, epochs: int | None = None
    ) -> dict[str, Any]:
        """The resolved, re-runnable trial config for a cell at these parameter values."""
        overrides = [f"{k}={_yaml_value(v)}" for k, v in params.items()]
        if seed is not None:
            overrides.append(f"seed={seed}")
        if epochs is not None:
            overrides.append(f"optim.epochs={epochs}")
        res = self.spec.resources
        data = apply_overrides(cell.config.model_dump(mode="json"), overrides)
        if data.get("threads") is None:
            data["threads"] = max(1, int(res.cpu))
        if data.get("device", "auto") == "auto":
            # A GPU share means CUDA or a failed trial saying why, never a silent CPU fallback.
            data["device"] = "cuda" if res.gpu > 0 else "cpu"
        root = (data.get("data") or {}).get("root")
        if root and not os.path.isabs(root):
            # Tune runs each trial in its own working directory: pin the user's relative path.
            data["data"]["root"] = os.path.abspath(root)
        cfg = resolve(validate_train_config(data, f"{self.study.path}: cell {cell.label}"))
        return cfg.model_dump(mode="json")

    def _logs_glob(self, job: Job) -> str:
        """Where a person finds this job's Ray Tune trial directories (one per attempt)."""
        name = job.tune_name or self._trial_job_name(job)
        return str(self.store.dir / TUNE_LOGS / "*" / f"{name}_*")

    def _trial_job(self, job: Job) -> TrialJob:
        every = self.spec.checkpoint.every_epochs
        if job.stage == "tune":
            trial = job.tuning_trial
            params = suggest(trial, job.cell.params)
            path = str(self.store.tuning_checkpoint(job.cell, trial.number))
            return TrialJob(
                stage="tune",
                cell=job.cell.index,
                optuna_trial=trial.number,
                config=self.trial_config(job.cell, params),
                details=self.details,
                checkpoint=CheckpointPlan(every, path=path) if every != 0 else None,
                decision_epochs=self.spec.budget.pruner.decision_epochs(),
            )
        best = self.best(job.cell)
        if best is None:  # finals are handed out only once the cell has a best trial
            raise ValueError(f"{job.cell.label}: finals without a completed tuning trial")
        paths = {s: str(self.store.final_checkpoint(job.cell, s)) for s in job.seeds}
        return TrialJob(
            stage="final",
            cell=job.cell.index,
            seeds=tuple(job.seeds),
            best_trial=best.number,
            config=self.trial_config(job.cell, self.final_params(job.cell, best), epochs=self.spec.finals.epochs),
            details=self.details,
            checkpoint=CheckpointPlan(every, paths=paths) if every != 0 else None,
        )

    # -- pruning (called by the scheduler, which sees every result first) -------------------
    def report(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Take one result (as the trial reported it: Tune hands searchers a flattened copy, the
        scheduler the original). Epochs of tuning trials go to the Optuna trial; returns True when
        the study's pruner prunes it. Closing results are kept (tuning) or recorded (finals)."""
        report = TrialReport.from_tune(result)
        key = trial_id if report.member is None else f"{trial_id}#{report.member}"
        job = self.jobs.get(key)
        if job is None:
            return False
        pack = self.packs.get(trial_id)
        if report.closing:
            if job.stage == "tune":
                # The first copy is whole; a later one (the same result again at completion) has
                # lost its bulky fields to DropBulkyResults.
                if job.closing is None:
                    job.closing = report
                    job.failed = report.status == "failed"
                    for held_back in report.epochs()[:-1]:  # epochs the trial held back
                        self._epoch(job, held_back, decide=self._decides(held_back.epoch))
                    if pack is not None:
                        self._member_done(trial_id, key, job)
            else:
                self._record_final(job, report)
                if pack is not None and job.reported >= set(job.seeds):
                    self._member_done(trial_id, key, job)
            return False
        if job.stage != "tune":
            return False
        *held, current = report.epochs()
        # Held decision epochs are decided now, in order; after a prune, _epoch ignores the rest.
        prune = any([self._epoch(job, earlier, decide=self._decides(earlier.epoch)) for earlier in held])
        prune = self._epoch(job, current, decide=True) or prune
        if prune and pack is not None:
            # Only this member stops (a STOP would end the pack); it answers with its closing report.
            pack.prune(self._trial_job_name(job))
            if report.member is not None:
                # A fused member: recorded now, as its pruner saw it; the pack trains on without it.
                self._member_done(trial_id, key, job)
            return False
        return prune

    @staticmethod
    def _trial_job_name(job: Job) -> str:
        number = job.trial.number if job.trial is not None else None
        return job_name(job.stage, job.cell.index, optuna_trial=number, seeds=tuple(job.seeds))

    def _decides(self, epoch: int) -> bool:
        """Whether the study's pruner can act at ``epoch`` (its decision epochs)."""
        return self._plan.decides(epoch)

    def _epoch(self, job: Job, report: TrialReport, decide: bool) -> bool:
        """One epoch of a tuning trial: to its Optuna trial and the sinks; with ``decide``, ask the
        pruner (True: prune). Held-back epochs come without ``decide``, before the one that has it."""
        if job.pruned_at is not None:
            # The stop is asynchronous: the trial has often finished another epoch before it lands.
            # Recording that epoch would make the Optuna record depend on timing (TPE ranks pruned
            # trials by their last step and value, so a rerun or a resume would sample other configs).
            return True
        metrics = report.metrics
        epoch = report.epoch
        job.last_epoch = epoch
        job.epoch_time_s += float(metrics.get("train_time_s", 0.0)) + float(metrics.get("eval_time_s", 0.0))
        value = metrics.get(self.spec.objective.metric)
        if value is None or not math.isfinite(value):
            return False
        if epoch not in job.reported:  # a resumed trial re-reports the epochs it already stored
            job.tuning_trial.report(float(value), step=epoch)
            job.reported.add(epoch)
        self.on_event(EpochReported(job, epoch, float(value), report))
        if decide and job.tuning_trial.should_prune():
            job.pruned_at = epoch
            return True
        return False

    # -- results ---------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass  # everything is taken in report(), from the scheduler, which sees results first

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        pack = self.packs.pop(trial_id, None)
        if pack is not None:
            pack.close()
        for key in self._keys(trial_id):
            self._finish(self.jobs.pop(key), error)

    def _finish(self, job: Job, error: bool) -> None:
        """Record the end of a job: its Optuna trial told, or its final seeds recorded; a job
        whose process died is handed out again while it has retries left."""
        # A trial that reported its own failure raised afterwards (TrialFailed): not a death.
        died = error and not (job.closing is not None and job.closing.status == "failed")
        if died and job.pruned_at is None and self._retry(job):
            return
        if job.stage == "final":
            recorded = set(self.store.final_results(job.cell))
            for seed in job.seeds:
                if seed not in recorded:
                    why = (
                        (
                            "the trial process died (see its Ray logs under "
                            f"{self.store.dir / TUNE_LOGS}/*/cellNNN-final-sN_*)"
                        )
                        if error
                        else "the trial ended without a result"
                    )
                    failure = TrialReport(stage="final", closing=True, status="failed", reason=why, seed=seed)
                    self._record_final(job, failure)
            return
        st = self._tuning[job.cell.index]
        trial = job.tuning_trial
        # A pruned trial's record holds what the pruner saw, not a closing report that may or may
        # not have come (in a pack it always comes; unpacked, the stop usually lands first).
        report = job.closing if job.pruned_at is None else None
        closing = report.values() if report is not None else {}
        for key in (
            "epochs_run",
            "train_time_s",
            "wall_time_s",
            "val_acc",
            "val_acc_clean",
            "test_acc",
            "ece",
            "node",
            "resumed_from_epoch",
        ):
            if key in closing:
                trial.set_user_attr(key, jsonable(closing[key]))
        # Its work is over whatever the outcome: only running trials and finals keep checkpoints.
        self.store.tuning_checkpoint(job.cell, trial.number).unlink(missing_ok=True)
        reason = None
        outcome: TrialOutcome
        if job.pruned_at is not None:
            reason = f"pruned by {self.spec.budget.pruner.name} at epoch {job.pruned_at}"
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("epochs_run", job.last_epoch)
            trial.set_user_attr("train_time_s", job.epoch_time_s)
            st.tell(trial, state=TrialState.PRUNED)
            outcome, value = "pruned", None
        elif died:
            reason = (
                "the trial process died or raised outside the trainer (see its Ray logs under "
                f"{self.store.dir / TUNE_LOGS}/*/cellNNN-tune-NNNN_*)"
            )
            trial.set_user_attr("tune_logs", self._logs_glob(job))
            log.warning("%s: tuning trial %d failed: %s", job.cell.label, trial.number, reason)
            trial.set_user_attr("reason", reason)
            st.tell(trial, state=TrialState.FAIL)
            outcome, value = "failed", None
        else:
            value = closing.get(self.spec.objective.metric)
            if closing.get("status") == "completed" and value is not None and math.isfinite(value):
                st.tell(trial, float(value))
                outcome = "completed"
            else:
                reason = closing.get("reason") or f"no finite {self.spec.objective.metric} was reported"
                trial.set_user_attr("reason", reason)
                st.tell(trial, state=TrialState.FAIL)
                outcome, value = "failed", None
        self.on_event(TrialEnded(job, outcome, value, reason, report))

    def _retry(self, job: Job) -> bool:
        """Hand a died trial's work out again if it has retries left (True), under the same
        Optuna trial (epochs it already stored are not re-reported) or for the same seeds."""
        if job.stage == "tune":
            key = ("tune", job.cell.index, job.tuning_trial.number)
        else:
            recorded = set(self.store.final_results(job.cell))
            seeds = [s for s in job.seeds if s not in recorded and s not in job.reported]
            if not seeds:
                return False
            key = ("final", job.cell.index, min(seeds))
        attempt = self._attempts.get(key, 0) + 1
        if attempt > self.retries:
            return False
        self._attempts[key] = attempt
        if job.stage == "tune":
            self._resume.append((job.cell, job.tuning_trial.number))
        else:
            self._finals_issued[job.cell.index].difference_update(seeds)
        log.warning(
            "%s: a %s trial's process or node died; running it again (retry %d of %d)",
            job.cell.label,
            "tuning" if job.stage == "tune" else "final",
            attempt,
            self.retries,
        )
        self.on_event(TrialRetried(job, attempt, seeds if job.stage == "final" else []))
        return True

    def _record_final(self, job: Job, report: TrialReport) -> None:
        if report.seed is None:
            raise ValueError(f"{job.cell.label}: a final's report without its seed")
        seed = int(report.seed)
        if seed in job.reported:
            return  # the same last result can arrive twice (as a result and at completion)
        job.reported.add(seed)
        job.failed = job.failed or report.status == "failed"
        best = self.best(job.cell)
        finals = self.store.open_finals(job.cell)
        value = report.metrics.get(self.spec.objective.metric)
        score = float(value) if report.status == "completed" and value is not None and math.isfinite(value) else None
        ok = score is not None
        attrs = {k: jsonable(v) for k, v in report.record_attrs().items()}
        cfg = self.trial_config(job.cell, self.final_params(job.cell, best), seed=seed, epochs=self.spec.finals.epochs)
        attrs.update(seed=seed, best_trial=best.number if best else None, config=json.dumps(cfg))
        # Its val_acc per epoch, as a tuning trial's: what rebuilds the final's curve in the
        # tracking store when a killed driver never logged it (the reconcile).
        curve = {
            int(h["epoch"]): float(h["val_acc"])
            for h in report.history or []
            if isinstance(h.get("val_acc"), (int, float)) and math.isfinite(h["val_acc"])
        }
        finals.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if ok else TrialState.FAIL,
                value=score,
                user_attrs=attrs,
                intermediate_values=curve,
            )
        )
        if not ok:  # a failed final's partial state is no trained model worth keeping
            self.store.final_checkpoint(job.cell, seed).unlink(missing_ok=True)
        self.on_event(
            FinalEnded(job, seed, ok, value if ok else None, report.reason, report, cfg, best.value if best else None)
        )


class OptunaPruningScheduler(FIFOScheduler):
    """Stops a Tune trial when its cell's Optuna pruner prunes it (asked on every epoch)."""

    def __init__(self, searcher: StudySearcher):
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if self.searcher.report(trial.trial_id, result):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict[str, Any]) -> None:
        # A trial's last result comes here, not to on_trial_result (and, flattened, to the searcher).
        if result and TrialReport.is_closing(result):
            self.searcher.report(trial.trial_id, result)

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        return {}
