"""Every name a study's tracking record is written and read by: tag keys, the tag queries built
from them, run statuses, metric keys, artifact paths. Writers (the study's run tree, ``pal-study
train``) and readers (``report``, ``export``, resume) use these, so both sides agree."""

from __future__ import annotations

# The final-run numbers (final_<key> metrics) are the run dir's summary keys too: pal_study.layout.SUMMARY_KEYS.

# -- tags a run is found by ------------------------------------------------------------------
STAGE_TAG = "pal.stage"  # "study" or "cell": the runs a study's record is rooted in
FINGERPRINT_TAG = "pal.fingerprint"  # the study run's: which study definition it tracks
RUN_KEY_TAG = "pal.run_key"  # cellNNN, cellNNN/tune/<trial>, cellNNN/final/seed<seed>
STUDY_RUN_TAG = "pal.study_run"  # the study run's id, on every run below it (any depth)
# The parent run's id. MLflow's own key (its UI nests runs by it); every store uses it, so studies
# tracked before cell runs existed (trials directly below the study run) are found the same way.
PARENT_TAG = "mlflow.parentRunId"
RECONCILED_TAG = "pal.reconciled"  # a run rebuilt from the Optuna record after a killed driver
CHECKPOINT_TAG = "pal.checkpoint"  # a final's trained model: pal-study export --weights
# A sensitivity cell's runs (cell and finals): the knob it fixes as JSON ({"head.scale": 5}) and
# the label of the cell whose best config it re-runs.
SENSITIVITY_TAG = "pal.sensitivity"
SENSITIVITY_OF_TAG = "pal.sensitivity_of"

# -- tags shown in the UI (and read back by the report) --------------------------------------
USER_STAGE_TAG = "stage"  # study, cell, tune, final, train
OUTCOME_TAG = "outcome"  # completed, pruned, failed
OUTCOME_REASON_TAG = "outcome_reason"

STAGE_STUDY, STAGE_CELL, STAGE_TUNE, STAGE_FINAL = "study", "cell", "tune", "final"
# Finals the report reads: ended with a result or without one; never a run still open.
ENDED_OUTCOMES = ("completed", "failed")

# -- run statuses (MLflow's names; every store uses them) ------------------------------------
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
OUTCOME_STATUS = {"completed": FINISHED, "pruned": KILLED, "failed": FAILED}

# -- metrics ----------------------------------------------------------------------------------
# Per epoch (step = epoch); timings only in the closing summary: every key costs on every epoch.
METRIC_KEYS = ("train_loss", "val_acc", "val_acc_clean", "test_acc", "ece", "gamma_min", "margin_mean", "lr")
# A ``pal-study train`` run logs its per-epoch timings too (one run, one write).
TRAIN_METRIC_KEYS = (*METRIC_KEYS, "train_time_s", "eval_time_s")
# A trial's closing numbers, logged as ``final_<key>`` at step 0 (and kept by the study's journal).
SUMMARY_PREFIX = "final_"
# A cell run's metrics: its aggregates over its finals and its comparison with its baseline.
CELL_METRICS = (
    "final_test_acc_mean",
    "final_test_acc_std",
    "delta_test_acc",
    "ci_low",
    "ci_high",
    "q",
    "final_val_acc_mean",
    "ece_mean",
    "n_finals",
)

# A cell run's headline numbers as text, rounded as the report prints them: the UI's first columns
# (MLflow shows a metric with every digit). Tag keys allow no "%" or "±": units live in the docs.
TEST_ACC_TEXT = "test acc"  # mean ± std over the final seeds, in %
DELTA_TEXT = "Δ test acc"  # against the base loss, in points, [interval] as the report's
Q_TEXT = "q"  # the report's q (adjusted over the whole study)
VERDICT_TEXT = "verdict"  # of the claims that compare this cell with its base, where any does
CELL_TEXT_TAGS = (TEST_ACC_TEXT, DELTA_TEXT, Q_TEXT, VERDICT_TEXT)

# -- artifacts --------------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
CLAIMS_FILE = "claims.json"
RESOLVED_SPEC_FILE = "study_resolved.json"
TABLE_FILE = "report/comparison_table.json"


# -- queries: the tag values a search must match (all of them) ------------------------------
def study_runs(fingerprint: str | None = None) -> dict[str, str]:
    """A store's study runs (of one study definition, with ``fingerprint``)."""
    return {STAGE_TAG: STAGE_STUDY, **({FINGERPRINT_TAG: fingerprint} if fingerprint else {})}


def below_study(study_run_id: str) -> dict[str, str]:
    """Every run below a study run (cell, tuning and final runs)."""
    return {STUDY_RUN_TAG: study_run_id}


def children_of(run_id: str) -> dict[str, str]:
    """The runs directly below ``run_id`` (how studies tracked before cell runs hold their trials)."""
    return {PARENT_TAG: run_id}


def finals_of(study_run_id: str, link: str = STUDY_RUN_TAG) -> dict[str, str]:
    """A study's final runs, by the study run's id in ``link`` (``STUDY_RUN_TAG`` or ``PARENT_TAG``)."""
    return {link: study_run_id, USER_STAGE_TAG: STAGE_FINAL}


def cell_runs() -> dict[str, str]:
    return {USER_STAGE_TAG: STAGE_CELL}


def mlflow_filter(tags: dict[str, str]) -> str:
    """The MLflow search filter matching every tag of ``tags``."""
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
