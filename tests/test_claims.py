"""Claims: expansion over cells (with the * pattern), verdicts, one family for q-values, bad claims."""

from __future__ import annotations

import pytest
import yaml

from pal_study.claims import CellInfo, ClaimSpec, evaluate, expand
from pal_study.cli import main

METHODS = ["ce", "gce", "ce+fnpal", "gce+fnpal", "nce+rce", "nce+rce+fnpal"]
CELLS = [CellInfo(f"method={m},data.noise.rate={r:g}", m, {"method": m, "data.noise.rate": r})
         for m in METHODS for r in (0.2, 0.6)]


def test_a_pattern_expands_to_each_fnpal_cell_against_its_base_loss():
    claim = ClaimSpec(better="*+fnpal", than="*", where={"data.noise.rate": [0.6]})
    pairs = [(a.method, b.method, a.factors["data.noise.rate"], b.factors["data.noise.rate"])
             for a, b in expand(claim, CELLS)]
    assert pairs == [("ce+fnpal", "ce", 0.6, 0.6), ("gce+fnpal", "gce", 0.6, 0.6),
                     ("nce+rce+fnpal", "nce+rce", 0.6, 0.6)]
    fixed = ClaimSpec(better="gce+fnpal", than="ce", where={"data.noise.rate": 0.2})
    assert [(a.method, b.method) for a, b in expand(fixed, CELLS)] == [("gce+fnpal", "ce")]


def _values(shift: dict[str, float]) -> dict[str, dict[int, dict[str, float]]]:
    noise = [0.001, -0.002, 0.0015, 0.0, -0.001, 0.002]
    return {c.label: {s: {"test_acc": 0.8 + shift.get(c.method, 0.0) + noise[s] * (1 + METHODS.index(c.method))}
                      for s in range(6)} for c in CELLS}


def test_verdicts_supported_contradicted_inconclusive_and_one_family():
    values = _values({"ce+fnpal": 0.05, "gce+fnpal": -0.05, "nce+rce+fnpal": 0.0})
    out = evaluate([ClaimSpec(better="*+fnpal", than="*", where={"data.noise.rate": 0.6}),
                    ClaimSpec(better="ce+fnpal", than="ce", where={"data.noise.rate": 0.6})], CELLS, values)
    by_cell = {c["cell"].split(",")[0]: c for c in out[0]["comparisons"]}
    assert by_cell["method=ce+fnpal"]["verdict"] == "supported"
    assert by_cell["method=gce+fnpal"]["verdict"] == "contradicted"
    assert by_cell["method=nce+rce+fnpal"]["verdict"] == "inconclusive"
    assert out[0]["verdict"] == "contradicted" and out[1]["verdict"] == "supported"
    # The comparison both claims share is one member of the family (3 distinct comparisons).
    assert out[1]["comparisons"][0]["q"] == by_cell["method=ce+fnpal"]["q"]
    p1, p2, p3 = sorted(c["p"] for c in out[0]["comparisons"])  # BH, m = 3, by hand
    assert min(c["q"] for c in out[0]["comparisons"]) == pytest.approx(min(p1 * 3, p2 * 3 / 2, p3))
    assert max(c["q"] for c in out[0]["comparisons"]) == pytest.approx(p3)


def test_lower_is_better_for_ece():
    values = {c.label: {s: {"ece": 0.1 - (0.05 if c.method == "ce+fnpal" else 0.0) + 0.001 * s * (c.method == "ce")}
                        for s in range(4)} for c in CELLS}
    out = evaluate([ClaimSpec(better="ce+fnpal", than="ce", metric="ece")], CELLS, values)
    assert out[0]["verdict"] == "supported"


@pytest.mark.parametrize("claim, fragment", [
    ({"better": "*+fnpal", "than": "*", "where": {"data.noise.rte": 0.6}}, "claims[0].where"),
    ({"better": "mae+fnpal", "than": "mae"}, "matches no pair of cells"),
    ({"better": "ce+fnpal"}, "claims"),
    ({"better": "ce+fnpal", "than": "ce", "metric": "accuracy"}, "claims"),
])
def test_bad_claims_exit_2_naming_the_claim(tmp_path, capsys, claim, fragment):
    spec = {"name": "bad", "base": {"data": {"name": "digits"}, "optim": {"epochs": 1}},
            "factors": {"method": ["ce", "ce+fnpal"], "data.noise.rate": [0.0, 0.6]},
            "budget": {"trials_per_cell": 1}, "claims": [claim]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
