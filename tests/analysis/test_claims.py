"""Claims: expansion over cells (with the * pattern), verdicts (intersection-union for supported, Holm
within the claim for contradicted), bad claims."""

from __future__ import annotations

import pytest
import yaml

from pal_study.analysis.claims import CellInfo, ClaimSpec, evaluate, expand, render_verdicts
from pal_study.cli import main

METHODS = ["ce", "gce", "ce+fnpal", "gce+fnpal", "nce+rce", "nce+rce+fnpal"]
CELLS = [
    CellInfo(f"method={m},data.noise.rate={r:g}", m, {"method": m, "data.noise.rate": r})
    for m in METHODS
    for r in (0.2, 0.6)
]


def test_a_pattern_expands_to_each_fnpal_cell_against_its_base_loss():
    claim = ClaimSpec(better="*+fnpal", than="*", where={"data.noise.rate": [0.6]})
    pairs = [
        (a.method, b.method, a.factors["data.noise.rate"], b.factors["data.noise.rate"])
        for a, b in expand(claim, CELLS)
    ]
    assert pairs == [
        ("ce+fnpal", "ce", 0.6, 0.6),
        ("gce+fnpal", "gce", 0.6, 0.6),
        ("nce+rce+fnpal", "nce+rce", 0.6, 0.6),
    ]
    fixed = ClaimSpec(better="gce+fnpal", than="ce", where={"data.noise.rate": 0.2})
    assert [(a.method, b.method) for a, b in expand(fixed, CELLS)] == [("gce+fnpal", "ce")]


NOISE = [0.001, -0.002, 0.0015, 0.0, -0.001, 0.002, 0.0005, -0.0005]
AT_06 = ClaimSpec(better="*+fnpal", than="*", where={"data.noise.rate": 0.6})  # 3 comparisons


def _values(shift: dict[str, float], seeds: int = 6, flat: tuple[str, ...] = ()) -> dict[str, dict[int, dict]]:
    """Seed -> metrics per cell: 0.8 + the method's shift + per-seed noise that differs by method
    (so differences are not all equal); methods in ``flat`` get noise of alternating sign and
    no shift (a difference that is not there)."""
    out = {}
    for c in CELLS:
        k = METHODS.index(c.method)
        out[c.label] = {
            s: {
                "test_acc": 0.8
                + shift.get(c.method, 0.0)
                + (0.01 * (-1) ** s * (1 + s % 3) if c.method in flat else NOISE[s] * (1 + k))
            }
            for s in range(seeds)
        }
    return out


def _by_method(result: dict) -> dict[str, dict]:
    return {c["cell"].split(",")[0].removeprefix("method="): c for c in result["comparisons"]}


def test_a_claim_every_comparison_of_which_is_significant_is_supported_without_adjustment():
    [out] = evaluate([AT_06], CELLS, _values({"ce+fnpal": 0.05, "gce+fnpal": 0.03, "nce+rce+fnpal": 0.02}))
    rows = _by_method(out)
    assert [r["p"] for r in rows.values()] == [0.03125] * 3  # 6 seeds, every difference positive
    assert all(r["verdict"] == "supported" for r in rows.values())
    # Holm over the three would be 0.094 > 0.05: supported needs no adjustment (intersection-union)
    assert [r["q_holm"] for r in rows.values()] == [pytest.approx(0.09375)] * 3
    assert out["verdict"] == "supported" and out["rule"].startswith("supported: every comparison p ≤ α")
    assert out["adjust"] == "bh" and out["alpha"] == 0.05


def test_one_comparison_without_a_difference_leaves_the_claim_inconclusive():
    [out] = evaluate([AT_06], CELLS, _values({"ce+fnpal": 0.05, "gce+fnpal": 0.03}, flat=("nce+rce+fnpal",)))
    rows = _by_method(out)
    assert rows["ce+fnpal"]["verdict"] == rows["gce+fnpal"]["verdict"] == "supported"
    assert rows["nce+rce+fnpal"]["p"] > 0.5 and rows["nce+rce+fnpal"]["verdict"] == "inconclusive"
    assert out["verdict"] == "inconclusive"


def test_one_comparison_clearly_against_contradicts_the_claim():
    # 8 seeds: p = 2/256 = 0.0078, Holm over 3: 0.0234 <= 0.05.
    [out] = evaluate([AT_06], CELLS, _values({"ce+fnpal": 0.05, "gce+fnpal": -0.05, "nce+rce+fnpal": 0.02}, seeds=8))
    rows = _by_method(out)
    assert rows["gce+fnpal"]["p"] == 0.0078125 and rows["gce+fnpal"]["q_holm"] == pytest.approx(0.0234375)
    assert rows["gce+fnpal"]["verdict"] == "contradicted" and rows["ce+fnpal"]["verdict"] == "supported"
    assert out["verdict"] == "contradicted"


def test_against_before_but_not_after_holm_is_inconclusive_not_contradicted():
    # 6 seeds: p = 0.03125 <= 0.05 against the claim, but Holm over 3 gives 0.094.
    [out] = evaluate([AT_06], CELLS, _values({"ce+fnpal": 0.05, "gce+fnpal": -0.05, "nce+rce+fnpal": 0.02}))
    rows = _by_method(out)
    assert rows["gce+fnpal"]["p"] == 0.03125 and rows["gce+fnpal"]["delta"] < 0
    assert rows["gce+fnpal"]["q_holm"] == pytest.approx(0.09375) and rows["gce+fnpal"]["verdict"] == "inconclusive"
    assert out["verdict"] == "inconclusive"


def test_three_seeds_can_never_support_a_claim():
    claim = ClaimSpec(better="ce+fnpal", than="ce", where={"data.noise.rate": 0.6})
    [out] = evaluate([claim], CELLS, _values({"ce+fnpal": 0.2}, seeds=3))
    [row] = out["comparisons"]
    assert row["p"] == 0.25 and row["p_t"] < 0.001  # the t-test would have said yes
    assert row["ci_low"] is None and row["verdict"] == "inconclusive" and out["verdict"] == "inconclusive"
    assert row["power"] == "with 3 seeds no difference can reach α=0.05 (smallest exact p 0.25): at least 6 seeds"
    text = render_verdicts([out])
    assert "interval unbounded at n=3" in text and "p=0.25, q_holm=0.25" in text
    assert text.splitlines()[2].strip() == row["power"]


def test_a_shared_comparison_is_computed_once_with_holm_per_claim():
    values = _values({"ce+fnpal": 0.05, "gce+fnpal": 0.03, "nce+rce+fnpal": 0.02})
    both = evaluate([AT_06, ClaimSpec(better="ce+fnpal", than="ce", where={"data.noise.rate": 0.6})], CELLS, values)
    shared, alone = _by_method(both[0])["ce+fnpal"], both[1]["comparisons"][0]
    assert shared["p"] == alone["p"] == 0.03125
    assert shared["q_holm"] == pytest.approx(0.09375) and alone["q_holm"] == 0.03125  # Holm within each claim
    # The report-wide q (BH over the 3 distinct comparisons, display only): all p equal, so q = p.
    assert shared["q"] == alone["q"] == pytest.approx(0.03125)
    assert [c["verdict"] for c in both] == ["supported", "supported"]
    text = render_verdicts(both)
    assert "supported    method=ce+fnpal,data.noise.rate=0.6 vs method=ce,data.noise.rate=0.6: Δ +5.05 points" in text
    assert "n=6, p=0.0312, q_holm=0.0938 (t: p=" in text and "with 6 seeds: detectable |Δ|" in text


def test_lower_is_better_for_ece():
    values = {
        c.label: {
            s: {"ece": 0.1 - (0.05 if c.method == "ce+fnpal" else 0.0) + 0.001 * s * (c.method == "ce")}
            for s in range(6)
        }
        for c in CELLS
    }
    out = evaluate([ClaimSpec(better="ce+fnpal", than="ce", metric="ece")], CELLS, values)
    assert [c["p"] for c in out[0]["comparisons"]] == [0.03125, 0.03125] and out[0]["verdict"] == "supported"
    four = {label: {s: m for s, m in per.items() if s < 4} for label, per in values.items()}
    assert (
        evaluate([ClaimSpec(better="ce+fnpal", than="ce", metric="ece")], CELLS, four)[0]["verdict"] == "inconclusive"
    )  # 4 seeds: p >= 0.125


@pytest.mark.parametrize(
    "claim, fragment",
    [
        ({"better": "*+fnpal", "than": "*", "where": {"data.noise.rte": 0.6}}, "claims[0].where"),
        ({"better": "mae+fnpal", "than": "mae"}, "matches no pair of cells"),
        ({"better": "ce+fnpal"}, "claims"),
        ({"better": "ce+fnpal", "than": "ce", "metric": "accuracy"}, "claims"),
    ],
)
def test_bad_claims_exit_2_naming_the_claim(tmp_path, capsys, claim, fragment):
    spec = {
        "name": "bad",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 1}},
        "factors": {"method": ["ce", "ce+fnpal"], "data.noise.rate": [0.0, 0.6]},
        "budget": {"trials_per_cell": 1},
        "claims": [claim],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
