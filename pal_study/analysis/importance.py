"""Which searched parameter mattered, per cell: Optuna's parameter importance over the cell's
tuning trials, read from the study's Optuna journal (no MLflow needed).

PED-ANOVA (Watanabe et al. 2023; ``optuna.importance.PedAnovaImportanceEvaluator``, Optuna's
own default, deterministic, handles parameters that only some methods search) is the default;
fANOVA (Hutter et al. 2014; ``FanovaImportanceEvaluator``, a random forest with a fixed seed) is
the alternative. Both use the COMPLETE trials only: a pruned trial has no final value, so each
cell says on how many trials its numbers stand. With the trial counts of a typical cell they are
a hint, not a measurement: on an objective that depends on the weight decay alone (random
search, 20 repeats) PED-ANOVA ranked it first 14/20 times with 6 trials, 17/20 with 12, 19/20
with 24; fANOVA 9, 17 and 19 of 20.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pal_study.analysis.journal import StudyRecord

EVALUATORS = ("fanova", "ped_anova")
MIN_TRIALS = 3  # fewer completed trials than this: no importance
FEW_TRIALS = 12  # below this, the note says the ranking is a hint (see the module docstring)

log = logging.getLogger(__name__)


@dataclass
class CellImportance:
    cell: str
    method: str
    optuna_study: str
    n_trials: int  # finished tuning trials
    n_complete: int  # the ones the importance stands on
    evaluator: str
    importances: dict[str, float] = field(default_factory=dict)  # param -> share (sums to 1), largest first
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _evaluator(name: str, seed: int):
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if name == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    if name == "ped_anova":
        return PedAnovaImportanceEvaluator()
    raise ValueError(f"unknown importance evaluator {name!r}; allowed: {', '.join(EVALUATORS)}")


def study_importances(
    journal: StudyRecord | str | Path, evaluator: str = "ped_anova", seed: int = 0
) -> list[CellImportance]:
    """One entry per tuning study (cell) in the study's journal (a record, or a journal file's
    path), in cell order."""
    import optuna
    from optuna.trial import TrialState

    _evaluator(evaluator, seed)  # a bad name fails before the journal is read
    record = StudyRecord.of(journal)
    out = []
    for summary in record.tuning_studies():
        st = record.load(summary)
        trials = st.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        searched = sorted({p for t in done for p in t.params})
        item = CellImportance(
            cell=str(st.user_attrs.get("cell", summary.study_name)),
            method=str(st.user_attrs.get("method", "?")),
            optuna_study=summary.study_name,
            n_trials=sum(t.state.is_finished() for t in trials),
            n_complete=len(done),
            evaluator=evaluator,
        )
        varied = [p for p in searched if len({repr(t.params.get(p)) for t in done}) > 1]
        if not searched:
            item.note = "nothing searched in this cell"
        elif len(done) < MIN_TRIALS:
            item.note = f"{len(done)} completed trial(s): at least {MIN_TRIALS} needed"
        elif not varied:
            item.note = "every completed trial has the same parameters"
        elif len(varied) == 1:
            item.importances = {varied[0]: 1.0}
            item.note = "one parameter varied: it carries all the importance by definition"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # ExperimentalWarning and the forest's own chatter
                    imp = optuna.importance.get_param_importances(
                        st, evaluator=_evaluator(evaluator, seed), params=varied
                    )
                item.importances = {k: float(v) for k, v in imp.items()}
                if len(done) < FEW_TRIALS:
                    item.note = f"only {len(done)} completed trials: a hint, not a measurement"
            except (ValueError, RuntimeError) as e:  # e.g. PED-ANOVA on too few trials
                item.note = f"{evaluator} failed: {e}"
        out.append(item)
    return out


def importance_png(items: list[CellImportance], title: str) -> bytes | None:
    """A cells × parameters heat map of the importances (blank: not searched or no estimate)."""
    rows = [i for i in items if i.importances]
    if not rows or all(len(i.importances) <= 1 for i in rows):
        return None  # one parameter per cell: nothing to compare
    import numpy as np
    from matplotlib.figure import Figure

    params = sorted({p for i in rows for p in i.importances})
    grid = np.full((len(rows), len(params)), np.nan)
    for r, i in enumerate(rows):
        for c, p in enumerate(params):
            if p in i.importances:
                grid[r, c] = i.importances[p]
    label_w = 0.065 * max(len(f"{i.cell} (n={i.n_complete})") for i in rows)  # inches at fontsize 7
    fig = Figure(figsize=(2.2 + label_w + 1.3 * len(params), 1.4 + 0.32 * len(rows)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(params)), params, rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), [f"{i.cell} (n={i.n_complete})" for i in rows], fontsize=7)
    for r in range(len(rows)):
        for c in range(len(params)):
            if not np.isnan(grid[r, c]):
                ax.text(
                    c,
                    r,
                    f"{grid[r, c]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if grid[r, c] < 0.6 else "black",
                )
    fig.colorbar(im, ax=ax, label="importance (share)")
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def render_importances(items: list[CellImportance]) -> str:
    """One line per cell: its parameters by importance, or why there is none."""
    lines = []
    for i in items:
        body = ", ".join(f"{p} {v:.2f}" for p, v in i.importances.items()) or "-"
        lines.append(
            f"{i.cell}: {body} ({i.evaluator}, {i.n_complete} of {i.n_trials} trials complete)"
            + (f" — {i.note}" if i.note else "")
        )
    return "\n".join(lines)
