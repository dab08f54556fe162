"""The names in a study's record (pal_study.layout): each builder and its parser agree, and the
parsers refuse whatever the builders never write."""

from __future__ import annotations

import pytest

from pal_study import layout as L


@pytest.mark.parametrize("index", [0, 7, 13, 999, 1000, 12345])
def test_cell_keys_round_trip(index):
    key = L.cell_key(index)
    assert key == f"cell{index:03d}"
    assert L.parse_cell_key(key) == index


@pytest.mark.parametrize("key", ["cell13", "cell0013", "cell", "cel013", "cell-01", "cell01a", "Cell013", "cell٠١٣"])
def test_cell_keys_that_are_not_written_are_refused(key):
    assert L.parse_cell_key(key) is None


def test_a_negative_cell_index_has_no_key():
    with pytest.raises(ValueError):
        L.cell_key(-1)


@pytest.mark.parametrize("study", ["s", "digits-ablation", "a.b_c-9"])
@pytest.mark.parametrize("index", [0, 3, 1000])
def test_study_names_round_trip(study, index):
    tuning, finals = L.tuning_study_name(study, index), L.finals_study_name(study, index)
    assert tuning == f"{study}/{L.cell_key(index)}" and finals == f"{tuning}/finals"
    assert L.parse_study_name(tuning) == L.CellStudyName(study, index, finals=False)
    assert L.parse_study_name(finals) == L.CellStudyName(study, index, finals=True)
    assert str(L.parse_study_name(tuning)) == tuning and str(L.parse_study_name(finals)) == finals
    assert L.finals_of(tuning) == finals and L.tuning_of(finals) == tuning
    assert L.is_finals_study(finals) and not L.is_finals_study(tuning)


@pytest.mark.parametrize(
    "name",
    [
        "s",
        "s/cell13",
        "s/cell013/final",
        "s/cell013/finals/x",
        "s/finals",
        "/cell013",
        "-s/cell013",
        "s/x/cell013",
        "s/cell013/",
        "s//cell013",
    ],
)
def test_other_study_names_are_not_cells(name):
    assert L.parse_study_name(name) is None


def test_tuning_of_refuses_a_tuning_name():
    with pytest.raises(ValueError, match="not a finals study"):
        L.tuning_of("s/cell000")


def test_job_names_round_trip():
    assert L.tune_job_name(3, 7) == "cell003-tune-0007"
    assert L.final_job_name(3, [0, 1]) == "cell003-final-s0-1"
    cases = {
        "cell003-tune-0007": L.JobName(3, "tune", trial=7),
        "cell012-tune-12345": L.JobName(12, "tune", trial=12345),
        "cell003-final-s0-1": L.JobName(3, "final", seeds=(0, 1)),
        "cell003-final-s5": L.JobName(3, "final", seeds=(5,)),
        "cell003-final-s": L.JobName(3, "final"),
    }
    for name, job in cases.items():
        assert L.parse_job_name(name) == job
        assert str(job) == name
        # Ray Tune's trial directories add "_<tune id>"
        assert L.parse_job_name(f"{name}_a1b2c_00003") == job


@pytest.mark.parametrize(
    "name", ["cell3-tune-0007", "cell003-tune-7", "cell003-tune-", "cell003-final-0-1", "cell003-final-s0--1", "x"]
)
def test_other_job_names_are_refused(name):
    assert L.parse_job_name(name) is None


def test_checkpoint_names_round_trip():
    assert L.tuning_checkpoint_name(7) == "tune-0007.pt"
    assert L.final_checkpoint_name(3) == "final-seed3.pt"
    for n in (0, 7, 9999, 10000):
        assert L.parse_tuning_checkpoint(L.tuning_checkpoint_name(n)) == n
    for other in ("tune-7.pt", "tune-0007.pt.tmp", "tune-0007", "final-seed3.pt", "tune-00a7.pt"):
        assert L.parse_tuning_checkpoint(other) is None


def test_run_keys():
    assert L.run_key(3) == "cell003"
    assert L.run_key(3, "tune/7") == "cell003/tune/7"
    assert L.parse_cell_key(L.run_key(3)) == 3
    assert L.parse_cell_key(L.run_key(3, "final/seed0")) is None  # a trial's run, not the cell's


@pytest.mark.parametrize(
    "factors",
    [
        {},
        {"method": "ce"},
        {"method": "ce+pal", "data.noise.rate": 0.4, "optim.weight_decay": 0.0005},
        {"data.name": "cifar10", "head.scale": 10},
        {"method": "ce", "data.noise.kind": "a,b"},  # a value with a comma in it
    ],
)
def test_cell_labels_round_trip(factors):
    label = L.cell_label(factors)
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in factors.items()]
    assert label == (",".join(parts) or "all")
    assert L.factors_of(label) == {k: L.cell_label({k: v}).partition("=")[2] for k, v in factors.items()}


def test_labels_that_name_no_factors():
    assert L.factors_of("all") == {} and L.factors_of("") == {}


def test_cell_titles_name_only_the_factors_that_vary_method_first():
    from pal_study.layout import cell_titles

    grid = [
        {"data.noise.rate": r, "method": m, "data.name": "digits"} for r in (0.0, 0.6) for m in ("ce", "nce+rce+fnpal")
    ]
    assert cell_titles(grid) == [
        "ce · noise 0",
        "nce+rce+fnpal · noise 0",
        "ce · noise 0.6",
        "nce+rce+fnpal · noise 0.6",
    ]
    # a sensitivity cell: its parent's factors and the knob, which the other cells lack
    assert cell_titles([*grid, {**grid[3], "head.scale": 5}])[-1] == "nce+rce+fnpal · noise 0.6 · scale 5"
    # a data set name stands bare, unknown keys by their last part
    assert cell_titles(
        [{"data.name": "mnist", "optim.momentum": 0.9}, {"data.name": "cifar10", "optim.momentum": 0.0}]
    ) == [
        "mnist · momentum 0.9",
        "cifar10 · momentum 0",
    ]
    # one cell: its method (nothing varies); no factors at all: "all"
    assert cell_titles([{"method": "ce"}]) == ["ce"] and cell_titles([{}]) == ["all"]


def test_cell_titles_fall_back_to_labels_where_two_would_coincide():
    from pal_study.layout import cell_label, cell_titles

    # two keys with the same word ("rate"), each cell having one of them: both would read "rate 1"
    cells = [{"a.rate": 1}, {"b.rate": 1}]
    assert cell_titles(cells) == [cell_label(c) for c in cells]
