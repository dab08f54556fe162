"""The study figures (pal_study.analysis.figures): real matplotlib rendering of report rows built by hand
and of tuning trials read from a real Optuna journal."""

from __future__ import annotations

import colorsys
import functools
import itertools
import json
import math
import operator
import random
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pal_study.analysis import figures as F
from pal_study.analysis.report import CellRow, baseline_method
from pal_study.analysis.stats import Paired, adjust_all, paired

optuna.logging.set_verbosity(optuna.logging.WARNING)

ARTIFACTS = Path(__file__).parent / "artifacts" / "figures"
PNG = b"\x89PNG\r\n\x1a\n"
NOISY_METHODS = ("ce", "fl", "gce", "sce", "nce+rce", "nfl+rce", "nsl", "ce+fnpal", "sce+fnpal", "nce+rce+fnpal")


def _save(files: dict[str, bytes], prefix: str) -> None:
    (ARTIFACTS / prefix).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (ARTIFACTS / prefix / name).write_bytes(data)


def _row(
    group: str,
    method: str,
    dataset: str = "cifar10",
    noise: float = 0.0,
    ratio: float = 1.0,
    wd: float | None = 5e-4,
    n: int = 3,
    **stats,
) -> CellRow:
    cell = f"{group},method={method}" if group else f"method={method}"
    return CellRow(
        cell=cell,
        group=group or "all",
        method=method,
        dataset=dataset,
        noise_rate=noise,
        imbalance_ratio=ratio,
        weight_decay=wd,
        n=n,
        seeds=list(range(n)),
        run_ids=[],
        stats=dict(stats),
    )


def noisy_rows(
    datasets=("cifar10",), rates=(0.0, 0.2, 0.4, 0.6, 0.8), methods=NOISY_METHODS, n=3, ratios=(None,), seed=0
) -> list[CellRow]:
    """A noisy-labels study: one cell per data set × noise rate (× imbalance ratio) × method,
    with per-seed test accuracies and the paired comparisons with the base loss."""
    rng = random.Random(seed)
    rows: list[CellRow] = []
    for ds, rate, ratio in itertools.product(datasets, rates, ratios):
        group = ",".join(
            [f"data.name={ds}"] + ([f"data.imbalance.ratio={ratio:g}"] if ratio else []) + [f"data.noise.rate={rate:g}"]
        )
        per = {}
        for m in methods:
            level = 0.92 - 0.5 * rate * (0.6 if m.endswith("+fnpal") else 1.0) - (0.001 * (ratio or 1))
            per[m] = {s: level + rng.gauss(0, 0.01) for s in range(n)}
            vals = list(per[m].values())
            mu = sum(vals) / n
            sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
            rows.append(
                _row(
                    group,
                    m,
                    ds,
                    rate,
                    float(ratio or 1),
                    n=n,
                    test_acc=(mu, sd),
                    proto_norm_max=(2 + rng.random(), 0.1),
                    proto_norm_min=(1 + rng.random(), 0.1),
                    feature_norm_mean=(8 + rng.random(), 0.4),
                )
            )
        for r in rows[-len(methods) :]:
            b = baseline_method(r.method)
            if b in per:
                r.comparison = paired(r.cell, f"{group},method={b}", "test_acc", per[r.method], per[b])
    adjust_all([r.comparison for r in rows if r.comparison is not None], "bh")
    return rows


def wd_rows() -> list[CellRow]:
    """The weight-decay study: method × weight decay (0 included) on long-tailed digits."""
    rows = []
    for wd in (0.0, 1e-4, 5e-4, 1e-3, 5e-3):
        for m in ("ce", "ce+pal", "ce+fnpal"):
            pn = 1.0 if "pal" in m else 3.0 - 200 * wd
            rows.append(
                _row(
                    f"optim.weight_decay={wd:g}",
                    m,
                    "digits",
                    0.0,
                    10.0,
                    wd,
                    test_acc=(0.9, 0.01),
                    ece=(0.05, 0.01),
                    proto_norm_max=(pn + 0.5, 0.05),
                    proto_norm_min=(pn - 0.5, 0.05),
                    feature_norm_mean=(10 - 500 * wd, 0.3),
                    test_acc_many=(0.95, 0.01),
                    test_acc_medium=(0.85, 0.02),
                    test_acc_few=(0.6, 0.05),
                )
            )
    return rows


def lt_rows() -> list[CellRow]:
    """Long-tailed CIFAR: ratio × DRW × method, with many/medium/few accuracies."""
    rows = []
    for ratio, drw, m in itertools.product((10, 50, 100), ("false", "160"), ("ce", "ce+pal", "ldam", "ldam+pal")):
        few = 0.7 - ratio / 300 + (0.05 if "pal" in m else 0) + (0.05 if drw == "160" else 0)
        rows.append(
            _row(
                f"data.imbalance.ratio={ratio},loss.drw_epoch={drw}",
                m,
                "cifar10",
                0.0,
                float(ratio),
                2e-4,
                test_acc=(0.8 - ratio / 500, 0.01),
                test_acc_many=(0.92, 0.01),
                test_acc_medium=(0.8, 0.02),
                test_acc_few=(few, 0.04),
            )
        )
    return rows


def _rgb(c: str) -> tuple[float, float, float]:
    return tuple(int(c[i : i + 2], 16) / 255 for i in (1, 3, 5))


# -- colours -------------------------------------------------------------------------------------


def test_method_colors_are_deterministic_distinct_and_related_per_family():
    methods = [
        *NOISY_METHODS,
        "mae",
        "nce+mae",
        "ldam",
        "ldam+pal",
        "ldam+fnpal",
        "ce+pal",
        "ce+norm",
        "fl+pal",
        "gce+fnpal",
        "nsl+pal",
    ]
    assert len(set(methods)) == 20
    a = F.method_colors(methods)
    b = F.method_colors(list(reversed(methods)))
    assert a == b and list(a) == sorted(methods)
    assert len(set(a.values())) == 20
    dist = min(math.dist(_rgb(a[x]), _rgb(a[y])) for x, y in itertools.combinations(methods, 2))
    assert dist > 0.08, dist  # distinguishable, not merely different hex strings
    # a base loss and its +pal/+fnpal/+norm versions: the same hue, another shade
    for base in ("ce", "ldam"):
        h0 = colorsys.rgb_to_hls(*_rgb(a[base]))[0]
        for head in ("pal", "fnpal", "norm"):
            if f"{base}+{head}" in a:
                h = colorsys.rgb_to_hls(*_rgb(a[f"{base}+{head}"]))[0]
                assert min(abs(h - h0), 1 - abs(h - h0)) < 0.02
    assert F.method_style("ce") != F.method_style("ce+pal") != F.method_style("ce+fnpal")
    # past ten families the palette stays distinct
    many = F.method_colors([f"loss{i}" for i in range(20)])
    assert len(set(many.values())) == 20


def test_method_panels_keep_families_together_and_at_most_eight():
    chunks = F.method_panels(NOISY_METHODS)
    assert sorted(functools.reduce(operator.iadd, chunks, [])) == sorted(NOISY_METHODS)
    assert all(len(c) <= 8 for c in chunks) and len(chunks) == 2
    for c in chunks:  # a family is never split across panels
        for m in c:
            assert F.base_loss(m) in c
    assert F.method_panels(["ce", "ce+pal"]) == [["ce", "ce+pal"]]
    assert F.method_panels([]) == []


# -- accuracy vs noise ---------------------------------------------------------------------------


def _lines_by_axes(fig):
    return [(ax, [ln for ln in ax.get_lines() if ln.get_gid()]) for ax in fig.axes]


def test_acc_vs_noise_facets_methods_and_never_joins_unrelated_cells():
    rows = noisy_rows(datasets=("cifar10", "mnist"), ratios=(None,))
    rows += noisy_rows(datasets=("cifar100",), ratios=(10, 100), seed=1)  # two imbalance ratios: facets
    figs = F.acc_vs_noise(rows, return_figures=True)
    assert set(figs) == {"acc_vs_noise_cifar10.png", "acc_vs_noise_mnist.png", "acc_vs_noise_cifar100.png"}
    assert len(figs["acc_vs_noise_cifar10.png"].axes) == 2  # 10 methods: two families' panels
    assert len(figs["acc_vs_noise_cifar100.png"].axes) == 4  # × 2 imbalance ratios
    by_cell = {r.cell: r for r in rows}
    colors = F.method_colors(r.method for r in rows)
    for fig in figs.values():
        for ax, lines in _lines_by_axes(fig):
            assert 0 < len(lines) <= 8 and len(ax.get_lines()) <= 8
            for ln in lines:
                cells = [by_cell[c] for c in json.loads(ln.get_gid())]
                assert len(cells) == 5 and len({c.method for c in cells}) == 1
                assert len({(c.dataset, c.imbalance_ratio) for c in cells}) == 1
                # the groups differ in the noise rate alone
                rest = {
                    tuple(sorted((k, v) for k, v in F.factors_of(c.group).items() if k != F.NOISE_KEY)) for c in cells
                }
                assert len(rest) == 1
                xs = list(ln.get_xdata())
                assert xs == sorted(set(xs)) == [100 * c.noise_rate for c in cells]
                assert ln.get_color() == colors[cells[0].method]
                assert ln.get_label() == cells[0].method
    png = F.acc_vs_noise(rows)
    assert all(v.startswith(PNG) for v in png.values())
    _save(png, "acc_vs_noise")


def test_acc_vs_noise_band_is_the_t_interval_and_absent_for_one_seed():
    from scipy import stats

    rows = [_row(f"data.noise.rate={r:g}", "ce", noise=r, n=4, test_acc=(0.9 - r / 2, 0.02)) for r in (0.0, 0.4)]
    rows += [_row(f"data.noise.rate={r:g}", "gce", noise=r, n=1, test_acc=(0.8 - r / 2, 0.0)) for r in (0.0, 0.4)]
    fig = F.acc_vs_noise(rows, return_figures=True)["acc_vs_noise_cifar10.png"]
    (ax,) = fig.axes
    bands = [c for c in ax.collections if c.get_paths()]
    assert len(bands) == 1  # ce's; none for the one-seed method
    ys = bands[0].get_paths()[0].vertices[:, 1]
    hw = stats.t.ppf(0.975, 3) * 0.02 / 2 * 100
    assert max(ys) == pytest.approx(90 + hw) and min(ys) == pytest.approx(90 - 20 - hw)


def test_a_repeated_x_is_never_joined():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    F._draw_line(
        ax, [(0.0, 90.0, None, None, "a"), (0.0, 80.0, None, None, "b"), (40.0, 70.0, None, None, "c")], "#000000", "ce"
    )
    (ln,) = ax.get_lines()
    assert ln.get_linestyle() == "None" and ln.get_marker() == "o"


def test_acc_vs_noise_is_empty_for_one_noise_rate_or_no_rows():
    assert F.acc_vs_noise(wd_rows()) == {}
    assert F.acc_vs_noise([]) == {}
    assert F.acc_vs_noise([_row("", "ce", test_acc=(0.9, 0.0))]) == {}


def test_acc_vs_imbalance_log_x_per_condition():
    figs = F.acc_vs_imbalance(lt_rows(), return_figures=True)
    assert list(figs) == ["acc_vs_imbalance_cifar10.png"]
    fig = figs["acc_vs_imbalance_cifar10.png"]
    assert len(fig.axes) == 2  # DRW on / off
    for ax, lines in _lines_by_axes(fig):
        assert ax.get_xscale() == "log" and len(lines) == 4
        for ln in lines:
            assert list(ln.get_xdata()) == [10.0, 50.0, 100.0]


# -- forest --------------------------------------------------------------------------------------


def _comparison_rows(qs: list[float | None]) -> list[CellRow]:
    rows = []
    for i, q in enumerate(qs):
        group = f"data.noise.rate={i / 100:g}"
        rows.append(_row(group, "ce", noise=i / 100, test_acc=(0.8, 0.01)))
        r = _row(group, "ce+fnpal", noise=i / 100, test_acc=(0.82, 0.01))
        r.comparison = Paired(
            r.cell,
            rows[-1].cell,
            "test_acc",
            3,
            0.02 + i / 1000,
            None if q is None else 0.0,
            None if q is None else 0.04,
            q,
            q,
            "paired t",
        )
        rows.append(r)
    return rows


def test_forest_marks_exactly_the_comparisons_with_q_at_most_alpha():
    qs = [0.001, 0.2, 0.049, 0.05, None, 0.9, 0.01]
    rows = _comparison_rows(qs)
    fig = F.forest(rows, alpha=0.05, return_figures=True)["forest.png"]
    (ax,) = fig.axes
    labels = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    sig_col = next(c for c in ax.collections if c.get_label().startswith("q ≤"))
    ns_col = next(c for c in ax.collections if c.get_label().startswith("q >"))
    marked = {labels[round(y)] for _, y in sig_col.get_offsets()}
    unmarked = {labels[round(y)] for _, y in ns_col.get_offsets()}
    # Significant means q ≤ α, as for every verdict: 0.05 itself is marked.
    expect = {f"ce+fnpal vs ce  [noise={i / 100:g}]" for i, q in enumerate(qs) if q is not None and q <= 0.05}
    assert marked == expect and len(marked) == 4
    assert len(unmarked) == 3 and not marked & unmarked
    # the zero line, and the CI segments of the comparisons that have one
    assert any(list(ln.get_xdata()) == [0, 0] for ln in ax.get_lines())
    ci = next(c for c in ax.collections if "CI" in c.get_label())
    assert len(ci.get_segments()) == 6
    png = F.forest(rows)
    assert png["forest.png"].startswith(PNG)


def test_forest_splits_long_lists_and_is_empty_without_comparisons():
    rows = noisy_rows(datasets=("cifar10", "mnist", "cifar100", "svhn"), rates=(0.0, 0.2, 0.4, 0.6, 0.8))
    n = sum(r.comparison is not None for r in rows)
    assert n == 60
    figs = F.forest(rows, return_figures=True)
    assert list(figs) == ["forest_1.png", "forest_2.png"]
    sizes = [len(f.axes[0].get_yticklabels()) for f in figs.values()]
    assert sizes == [30, 30]
    assert figs["forest_1.png"].get_size_inches()[1] > 8  # tall enough to read 30 rows
    assert F.forest(wd_rows()) == {}
    assert F.forest([]) == {}
    _save(F.forest(rows), "forest_split")


# -- the journal: learning curves and objective vs parameters -----------------------------------


def _tuning_cell(storage, name: str, cell: str, method: str, plan: list[tuple[str, int]], seed: int = 0):
    """A tuning study: per trial (state, epochs reported)."""
    st = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    st.set_user_attr("cell", cell)
    st.set_user_attr("method", method)
    for state, epochs in plan:
        t = st.ask()
        wd = t.suggest_float("optim.weight_decay", 1e-5, 1e-2, log=True)
        scale = t.suggest_float("head.scale", 4.0, 32.0) if "pal" in method else None
        top = 0.9 - abs(math.log10(wd) + 3) / 10 - (0 if scale is None else abs(scale - 16) / 200)
        for e in range(1, epochs + 1):
            t.report(top * (1 - math.exp(-e / 3)), e)
        if state == "complete":
            st.tell(t, top * (1 - math.exp(-epochs / 3)))
        elif state == "pruned":
            st.tell(t, state=TrialState.PRUNED)
        elif state == "fail":
            st.tell(t, state=TrialState.FAIL)
        # "running": left unfinished
    return st


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    path = tmp_path_factory.mktemp("journal") / "optuna.journal"
    storage = JournalStorage(JournalFileBackend(str(path)))
    plan = [
        ("complete", 10),
        ("pruned", 4),
        ("complete", 10),
        ("pruned", 6),
        ("fail", 2),
        ("complete", 10),
        ("running", 3),
    ]
    _tuning_cell(storage, "s/cell000", "data.name=mnist,data.noise.rate=0.4,method=ce", "ce", plan)
    _tuning_cell(storage, "s/cell001", "data.name=mnist,data.noise.rate=0.4,method=ce+fnpal", "ce+fnpal", plan, 1)
    _tuning_cell(storage, "s/cell002", "data.name=cifar10,data.noise.rate=0.4,method=ce", "ce", plan[:3], 2)
    fin = optuna.create_study(storage=storage, study_name="s/cell000/finals", direction="maximize")
    fin.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"seed": 0}))
    return path


def test_journal_curves_reads_states_values_params_and_skips_finals(journal, tmp_path):
    before = journal.read_bytes()
    curves = F.journal_curves(journal)
    assert journal.read_bytes() == before  # read only
    assert list(curves) == [
        "data.name=mnist,data.noise.rate=0.4,method=ce",
        "data.name=mnist,data.noise.rate=0.4,method=ce+fnpal",
        "data.name=cifar10,data.noise.rate=0.4,method=ce",
    ]
    ce = curves["data.name=mnist,data.noise.rate=0.4,method=ce"]
    assert [t.state for t in ce] == ["complete", "pruned", "complete", "pruned", "fail", "complete", "running"]
    assert [t.number for t in ce] == list(range(7))
    assert [len(t.values) for t in ce] == [10, 4, 10, 6, 2, 10, 3]
    assert ce[1].last[0] == 4 and ce[1].value is None and ce[4].value is None
    assert ce[0].value == pytest.approx(ce[0].values[10]) and ce[0].method == "ce"
    assert set(ce[0].params) == {"optim.weight_decay"} and 1e-5 <= ce[0].params["optim.weight_decay"] <= 1e-2
    fn = curves["data.name=mnist,data.noise.rate=0.4,method=ce+fnpal"]
    assert set(fn[0].params) == {"optim.weight_decay", "head.scale"} and fn[0].method == "ce+fnpal"
    assert F.journal_curves(tmp_path / "missing.journal") == {}
    assert not (tmp_path / "missing.journal").exists()


def test_learning_curves_mark_pruned_trials_at_their_last_epoch(journal):
    curves = F.journal_curves(journal)
    figs = F.learning_curves(curves, return_figures=True)
    assert list(figs) == ["learning_curves.png"]
    fig = figs["learning_curves.png"]
    assert len(fig.axes) == 3
    colors = F.method_colors(["ce", "ce+fnpal"])
    for ax, (_cell, trials) in zip(fig.axes, curves.items(), strict=False):
        assert len(ax.collections) <= 8
        cols = {c.get_label(): c for c in ax.collections}
        crosses = cols["pruned here (last epoch)"]
        pruned = [t for t in trials if t.state == "pruned"]
        want = sorted((t.last[0], 100 * t.last[1]) for t in pruned)
        got = sorted(map(tuple, crosses.get_offsets().tolist()))
        assert [e for e, _ in got] == [e for e, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want])
        assert len(cols["complete"].get_segments()) == sum(t.state == "complete" for t in trials)
        assert len(cols["pruned"].get_segments()) == len(pruned)
        assert cols["pruned"].get_alpha() < cols["complete"].get_alpha()
        if any(t.state == "fail" for t in trials):
            assert cols["fail"].get_linestyle()[0][1] is not None  # dotted, not solid
        method = trials[0].method
        assert F._hex(cols["complete"].get_colors()[0][:3]) == colors[method]
    png = F.learning_curves(curves)
    assert png["learning_curves.png"].startswith(PNG)
    _save(png, "journal")
    assert F.learning_curves({}) == {}
    assert F.learning_curves({"c": [F.TrialCurve("c", "ce", 0, "fail")]}) == {}


def test_learning_curves_split_past_24_cells():
    curves = {
        f"data.noise.rate={i / 100:g},method=ce": [
            F.TrialCurve(f"c{i}", "ce", 0, "complete", {1: 0.5, 2: 0.6}, {"head.scale": 8.0}, 0.6)
        ]
        for i in range(30)
    }
    figs = F.learning_curves(curves, return_figures=True)
    assert list(figs) == ["learning_curves_1.png", "learning_curves_2.png"]
    assert [len(f.axes) for f in figs.values()] == [15, 15]


def test_objective_vs_params_per_parameter_log_where_wide(journal):
    curves = F.journal_curves(journal)
    figs = F.objective_vs_params(curves, return_figures=True)
    fig = figs["objective_vs_params.png"]
    axes = fig.axes
    assert len(axes) == 4  # (cifar10, mnist) × (weight decay, scale)
    xlabels = [ax.get_xlabel() for ax in axes]
    assert xlabels[0].startswith("logit scale") and xlabels[1].startswith("weight decay")
    scale_axes, wd_axes = axes[0::2], axes[1::2]
    trials = [t for ts in curves.values() for t in ts]
    wds = [t.params["optim.weight_decay"] for t in trials]
    assert max(wds) / min(wds) > 100
    assert all(ax.get_xscale() == "log" for ax in wd_axes)
    assert all(ax.get_xscale() == "linear" for ax in scale_axes)
    n_points = {
        s: sum(len(c.get_offsets()) for ax in wd_axes for c in ax.collections if c.get_label().startswith(s))
        for s in ("complete", "pruned")
    }
    assert n_points == {
        "complete": sum(t.state == "complete" for t in trials),
        "pruned": sum(t.state == "pruned" for t in trials),
    }
    pruned = next(c for c in wd_axes[1].collections if c.get_label().startswith("pruned"))
    assert pruned.get_alpha() < 1
    assert F.objective_vs_params(curves)["objective_vs_params.png"].startswith(PNG)
    assert F.objective_vs_params({}) == {}
    fixed = {"c": [F.TrialCurve("c", "ce", i, "complete", {1: 0.5}, {"head.scale": 8.0}, 0.5) for i in range(3)]}
    assert F.objective_vs_params(fixed) == {}  # nothing varied


# -- many / medium / few, norms -----------------------------------------------------------------


def test_many_medium_few_bars_per_method_per_condition():
    figs = F.many_medium_few(lt_rows(), return_figures=True)
    fig = figs["many_medium_few_cifar10.png"]
    assert len(fig.axes) == 6  # 3 ratios × DRW on/off
    colors = F.method_colors(["ce", "ce+pal", "ldam", "ldam+pal"])
    for ax in fig.axes:
        assert len(ax.containers) <= 8
        bars = [c for c in ax.containers if hasattr(c, "patches")]
        assert len(bars) == 4 and all(len(b.patches) == 3 for b in bars)
        for b in bars:
            assert F._hex(b.patches[0].get_facecolor()[:3]) == colors[b.get_label()]
    assert F.many_medium_few(noisy_rows()) == {}
    png = F.many_medium_few(lt_rows())
    assert png["many_medium_few_cifar10.png"].startswith(PNG)
    _save(png, "long_tail")


def test_norms_vs_weight_decay_join_only_cells_of_one_method():
    rows = wd_rows()
    figs = F.norms(rows, return_figures=True)
    fig = figs["norms_digits.png"]
    assert len(fig.axes) == 3  # one per norm metric
    by_cell = {r.cell: r for r in rows}
    for ax, lines in _lines_by_axes(fig):
        assert ax.get_xscale() == "log" and len(lines) == 3 and len(ax.get_lines()) <= 8
        assert next(t.get_text() for t in ax.get_xticklabels()) == "0"
        for ln in lines:
            cells = [by_cell[c] for c in json.loads(ln.get_gid())]
            assert len({c.method for c in cells}) == 1 and len(cells) == 5
            xs = list(ln.get_xdata())
            assert xs == sorted(set(xs)) and xs[0] == pytest.approx(1e-5)  # 0: a decade below 1e-4
    png = F.norms(rows)
    assert png["norms_digits.png"].startswith(PNG)
    _save(png, "weight_decay")


def test_norms_bars_without_a_weight_decay_factor_and_empty_without_norms():
    figs = F.norms(noisy_rows(), return_figures=True)
    fig = figs["norms_cifar10.png"]
    assert len(fig.axes) == 6  # 3 metrics × 2 method panels (10 methods)
    for ax in fig.axes:
        assert 0 < len([c for c in ax.containers if hasattr(c, "patches")]) <= 8
        assert len(ax.get_xticklabels()) == 5  # the noise rates
    assert F.norms(lt_rows()) == {}
    assert F.norms([]) == {}


# -- everything ---------------------------------------------------------------------------------


def test_study_figures_names_colours_and_speed(journal):
    rows = noisy_rows(rates=(0.0, 0.2, 0.4, 0.6, 0.8))  # 50 cells
    assert len(rows) == 50
    curves = F.journal_curves(journal)
    t0 = time.perf_counter()
    files = F.study_figures(rows, curves)
    took = time.perf_counter() - t0
    assert set(files) == {
        "acc_vs_noise_cifar10.png",
        "forest.png",
        "norms_cifar10.png",
        "learning_curves.png",
        "objective_vs_params.png",
    }
    assert all(v.startswith(PNG) for v in files.values())
    assert took < 20, took  # a few seconds on a free core
    _save(files, "noisy_labels")
    # one colour per method across every figure of the study
    figs = F.study_figures(rows, curves, return_figures=True)
    colors = F.method_colors({r.method for r in rows} | {"ce", "ce+fnpal"})
    seen: dict[str, set[str]] = {}
    for fig in figs.values():
        for ax in fig.axes:
            for ln in ax.get_lines():
                if ln.get_gid():
                    seen.setdefault(ln.get_label(), set()).add(ln.get_color())
        for leg in fig.legends:
            for h in leg.legend_handles:
                if h.get_label() in colors and hasattr(h, "get_color"):
                    seen.setdefault(h.get_label(), set()).add(h.get_color())
    assert seen and all(c == {colors[m]} for m, c in seen.items())
    assert F.study_figures([]) == {}
    # the whole of the other studies
    assert set(F.study_figures(wd_rows())) == {"many_medium_few_digits.png", "norms_digits.png"}
    assert set(F.study_figures(lt_rows())) == {"acc_vs_imbalance_cifar10.png", "many_medium_few_cifar10.png"}


def test_figures_leave_no_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    F.study_figures(wd_rows() + noisy_rows(rates=(0.0, 0.4)))
    assert plt.get_fignums() == before
