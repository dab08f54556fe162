"""Every report format renders the fixed report byte for byte as stored in ``fixtures/`` (csv
with its CRLF line ends), and ``report_files`` writes the same files."""

from __future__ import annotations

import pytest

from pal_study.analysis.report import EXTENSIONS, FORMATS, render, report_files
from tests.analysis.fixed_report import FIXTURES, TITLE, fixed_report, stable_html


@pytest.fixture(scope="module")
def report():
    return fixed_report()


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_matches_the_stored_output(report, fmt):
    rows, claims, analysis = report
    text = render(rows, fmt, claims, analysis, title=TITLE)
    if fmt == "html":
        text = stable_html(text)
    assert text.encode() == (FIXTURES / f"render.{EXTENSIONS[fmt]}").read_bytes()


def test_report_files_match_the_stored_outputs(report):
    rows, claims, analysis = report
    files = report_files(rows, TITLE, claims, analysis)
    assert sorted(files) == sorted(
        [
            "report/comparison.md",
            "report/comparison.csv",
            "report/comparison.tex",
            "report/comparison.json",
            "report/sensitivity.csv",
            "report/acc_vs_noise_digits.png",
            "report/forest.png",
            "report/many_medium_few_digits.png",
            "report/norms_digits.png",
            "report/sensitivity.png",
            "report/critical_difference.png",
            "report/report.html",
        ]
    )
    stored = FIXTURES / "report_files"
    assert files["report/comparison.md"].encode() == (stored / "comparison.md").read_bytes()
    assert files["report/sensitivity.csv"].encode() == (stored / "sensitivity.csv").read_bytes()
    assert stable_html(files["report/report.html"]).encode() == (stored / "report.html").read_bytes()
    for ext in ("csv", "tex", "json"):
        assert files[f"report/comparison.{ext}"].encode() == (FIXTURES / f"render.{ext}").read_bytes()
