"""The protocol behind a study's claims: equal tuning effort for the methods a claim compares, the
knobs a study fixes on purpose, and what ``validate`` warns about before compute is spent (claims
that cannot reach their α with the study's seeds, a validation signal drowned by label noise).

A claim "X+fnpal beats X" means little if X+fnpal was tuned and X was not, or if the head's own knob
(the scale s) sat at a value nobody chose. So by default every compared pair of cells must search
the same knobs that apply to both (optimiser, loss) with the same number of trials, and a knob only
one side has (the scale of a normalised head) must be searched or declared ``protocol.fixed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pal_study.analysis.claims import CellInfo, expand
from pal_study.analysis.stats import underpowered
from pal_study.config import TrainConfig, resolve
from pal_study.data.sets import get_dataset
from pal_study.errors import ConfigError
from pal_study.specs.heads import NORMALIZED_HEADS

# What these checks read of a study and its cells, as structural types: study/spec.py builds both
# and calls in here, so naming its classes would tie the two modules in a cycle.
StudySpec = Any  # pal_study.study.spec.StudySpec


class Cell(Protocol):
    # Read-only: these checks never set them, and a cell's label is a property of its factors.
    @property
    def label(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def factors(self) -> dict[str, Any]: ...
    @property
    def config(self) -> TrainConfig: ...
    @property
    def params(self) -> dict[str, Any]: ...


CellT = TypeVar("CellT", bound=Cell)


# Knobs of a head that have no neutral value: leaving one unsearched is a choice the study must own.
HEAD_KNOBS = ("head.scale",)
# Knobs that act only on normalised heads (fnpal, norm): s·cos and the additive cosine margin.
_NORMALIZED_ONLY = ("head.scale", "loss.margin")


def knob_applies(key: str, cfg: TrainConfig) -> bool:
    """Whether setting ``key`` changes what a cell with config ``cfg`` trains."""
    if key in _NORMALIZED_ONLY:
        return cfg.head.kind in NORMALIZED_HEADS
    return True


def knob_value(key: str, cfg: TrainConfig) -> Any:
    """The value ``key`` has in ``cfg`` as a trial resolves it (the scale's default included)."""
    value: Any = resolve(cfg)
    for part in key.split("."):
        value = getattr(value, part, None)
    return value


def tuning_budget(spec: StudySpec, cell: Cell) -> int:
    """Tuning trials of a factor cell: the study's budget, or 1 where nothing is searched (more
    trials of one fixed config would only repeat it)."""
    return spec.budget.trials_per_cell if cell.params else 1


def _describe(spec: StudySpec, cell: Cell) -> str:
    searched = ", ".join(cell.params) or "nothing"
    return f"{cell.label} searches {searched} ({tuning_budget(spec, cell)} trials)"


def pair_problems(spec: StudySpec, cell: Cell, base: Cell) -> list[str]:
    """Why ``cell`` and ``base`` were not tuned with equal effort ([] when they were)."""
    problems = []
    if tuning_budget(spec, cell) != tuning_budget(spec, base):
        problems.append(f"unequal budgets: {_describe(spec, cell)}, {_describe(spec, base)}")
    for key in sorted(set(cell.params) | set(base.params)):
        a, b = knob_applies(key, cell.config), knob_applies(key, base.config)
        if not (a and b):
            continue
        pa, pb = cell.params.get(key), base.params.get(key)
        if pa is None or pb is None:
            who, other = (cell, base) if pa is not None else (base, cell)
            problems.append(
                f"{key} applies to both, but only {who.method} searches it ({other.method} keeps its config value)"
            )
        elif pa.model_dump(mode="json") != pb.model_dump(mode="json"):
            problems.append(f"{key} is searched over different ranges for {cell.method} and {base.method}")
    for one, other in ((cell, base), (base, cell)):
        for key in HEAD_KNOBS:
            if (
                knob_applies(key, one.config)
                and not knob_applies(key, other.config)
                and key not in one.params
                and key not in spec.protocol.fixed
            ):
                problems.append(
                    f"{one.method}'s {key} is neither searched nor declared fixed (it would sit at "
                    f"{knob_value(key, one.config)!r}, a value nobody chose)"
                )
    return problems


def claim_pairs(spec: StudySpec, cells: Sequence[CellT]) -> list[list[tuple[CellT, CellT]]]:
    """Per claim, its (cell, baseline) pairs as Cell objects."""
    by_label = {c.label: c for c in cells}
    infos = [CellInfo(c.label, c.method, c.factors) for c in cells]
    return [[(by_label[a.label], by_label[b.label]) for a, b in expand(claim, infos)] for claim in spec.claims]


def check_equal_tuning(spec: StudySpec, cells: Sequence[Cell], source: str) -> None:
    """Bad input (exit 2) when a claim compares cells tuned with unequal effort."""
    for i, pairs in enumerate(claim_pairs(spec, cells)):
        for cell, base in pairs:
            problems = pair_problems(spec, cell, base)
            if problems:
                raise ConfigError(
                    f"unequal tuning effort: {cell.label} vs {base.label}: {'; '.join(problems)}. Give both the "
                    "same search (search spaces apply to every method unless their `when` says otherwise), "
                    "declare a knob kept on purpose in protocol.fixed, or set protocol.equal_tuning: false to "
                    "compare them anyway (the report then says so beside the verdict)",
                    source=source,
                    key=f"claims[{i}]",
                )


def protocol_notes(spec: StudySpec, cells: Sequence[Cell]) -> list[list[str]]:
    """Per claim, what a reader must know beside its verdict: knobs fixed on purpose (and at which
    value), unequal tuning where the study allowed it, the knobs a sensitivity section varies."""
    out = []
    for pairs in claim_pairs(spec, cells):
        notes: list[str] = []
        for cell, base in pairs:
            for one in (cell, base):
                for key in spec.protocol.fixed:
                    if knob_applies(key, one.config) and key not in one.params:
                        note = f"{key} fixed at {knob_value(key, one.config)!r} for {one.method} (protocol.fixed)"
                        if note not in notes:
                            notes.append(note)
            if not spec.protocol.equal_tuning:
                for problem in pair_problems(spec, cell, base):
                    note = f"unequal tuning allowed (protocol.equal_tuning: false): {problem}"
                    if note not in notes:
                        notes.append(note)
        for key, values in spec.sensitivity.items():
            notes.append(f"{key} also judged at fixed values {values} (sensitivity)")
        out.append(notes)
    return out


# -- warnings before compute ------------------------------------------------------------------
def noisy_slope(kind: str, rate: float, k: int) -> float | None:
    """d E[noisy accuracy] / d (clean accuracy) under symmetric noise: 1 − ηk/(k−1); None otherwise."""
    if kind != "symmetric" or k < 2:
        return None
    return 1.0 - rate * k / (k - 1)


def validation_size(cfg: TrainConfig) -> int | None:
    """Examples in a trial's validation split (round(f·n_c) per class of the noisy, subsampled
    training pool), from the data set's training size; None where it is not known without loading."""
    spec = get_dataset(cfg.data.name)
    options = cfg.data.model_dump().get(spec.options_key or "", {}) if spec.options_key else {}
    n_train = spec.train_size_for(options)
    if n_train is None:
        return None
    k = spec.classes_for(options)
    n_max = n_train // k
    rho = cfg.data.imbalance.ratio
    counts = []
    for i in range(k):
        if rho <= 1:
            counts.append(n_max)
        elif cfg.data.imbalance.profile == "step":
            counts.append(n_max if i < k // 2 else int(n_max / rho))
        else:
            counts.append(int(n_max * rho ** (-i / (k - 1))))
    return sum(round(cfg.data.val_fraction * n) for n in counts)


def objective_warnings(spec: StudySpec, cells: Sequence[Cell], gap: float = 0.05) -> list[str]:
    """Cells whose tuning objective (noisy validation accuracy) cannot see a ``gap`` in clean accuracy:
    the expected noisy difference, slope·gap, below one validation accuracy's standard error."""
    if spec.objective.metric != "val_acc":
        return []
    out = []
    seen = set()
    for cell in cells:
        d = cell.config.data
        ds = get_dataset(d.name)
        options = d.model_dump().get(ds.options_key or "", {}) if ds.options_key else {}
        k = ds.classes_for(options)
        slope = noisy_slope(d.noise.kind, d.noise.rate, k)
        m = validation_size(cell.config)
        key = (d.name, d.noise.kind, d.noise.rate, d.val_fraction, d.imbalance.ratio)
        if slope is None or not m or key in seen:
            continue
        seen.add(key)
        se = math.sqrt(0.25 / m)  # one accuracy's standard error at p = 0.5, the largest
        if abs(slope) * gap < se:
            need = math.ceil(0.25 / (slope * gap) ** 2) if slope else None
            frac = (
                f"; data.val_fraction {min(0.5, need / (m / d.val_fraction)):.2f} would reach it"
                if need and need / (m / d.val_fraction) <= 0.5
                else ""
            )
            out.append(
                f"{d.name} at {d.noise.kind} noise {d.noise.rate:g}: a {100 * gap:.0f}-point clean gap moves noisy "
                f"val_acc by {100 * slope * gap:.1f} points (slope {slope:.2f}), below the ~{m}-example validation "
                f"split's standard error ({100 * se:.1f} points): tuning there is close to random{frac} "
                "(each point of val_fraction is training data the models lose)"
            )
    return out


def power_warnings(spec: StudySpec, cells: Sequence[Cell]) -> list[str]:
    """Claims the study's final seeds can never decide (the exact test's smallest p above α)."""
    if not spec.claims:
        return []
    sizes = [len(pairs) for pairs in claim_pairs(spec, cells)]
    return underpowered(len(spec.finals.seeds), sizes, spec.claims_alpha)


__all__ = [
    "HEAD_KNOBS",
    "check_equal_tuning",
    "claim_pairs",
    "knob_applies",
    "knob_value",
    "noisy_slope",
    "objective_warnings",
    "pair_problems",
    "power_warnings",
    "protocol_notes",
    "tuning_budget",
    "validation_size",
]
