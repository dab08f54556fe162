"""Every report format renders the fixed report byte for byte as stored in ``fixtures/`` (csv
with its CRLF line ends), ``report_files`` writes the same files, and every registered format
keeps the contract: it renders the fixed report, non-empty, in a form its parser reads."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest

from pal_study.analysis.formats import REPORT_FORMATS, Report, render, report_files
from pal_study.registry import UnknownName
from tests.analysis.fixed_report import FIXTURES, TITLE, fixed_report, stable_html


@pytest.fixture(scope="module")
def report():
    return fixed_report()


@pytest.mark.parametrize("fmt", REPORT_FORMATS.names())
def test_render_matches_the_stored_output(report, fmt):
    rows, claims, analysis = report
    text = render(rows, fmt, claims, analysis, title=TITLE)
    if fmt == "html":
        text = stable_html(text)
    assert text.encode() == (FIXTURES / f"render.{REPORT_FORMATS.get(fmt).extension}").read_bytes()


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


def test_the_registry_lists_the_formats_the_cli_offers():
    assert REPORT_FORMATS.names() == ("md", "csv", "latex", "json", "html")
    assert [f.filename for f in REPORT_FORMATS.entries()] == [
        "comparison.md",
        "comparison.csv",
        "comparison.tex",
        "comparison.json",
        "report.html",
    ]
    with pytest.raises(UnknownName, match="unknown report format 'pdf'; known: md, csv, latex, json, html"):
        render([], "pdf")


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in ("meta", "img", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (self.open, tag)
        self.open.pop()


def _parses(name: str, text: str, report: Report) -> None:
    if name == "json":
        doc = json.loads(text)
        assert len(doc["cells"]) == len(report.rows) and doc["claims"]
    elif name == "csv":
        table = list(csv.reader(io.StringIO(text, newline="")))
        assert len(table) == 1 + len(report.rows) and len({len(r) for r in table}) == 1
    elif name == "html":
        parser = _Html()
        parser.feed(text)
        parser.close()
        assert not parser.open and {"table", "img", "h1"} <= set(parser.tags)
    elif name == "latex":
        assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 2
    elif name == "md":
        assert text.splitlines()[1].startswith("|---|")


@pytest.mark.parametrize("fmt", REPORT_FORMATS.entries(), ids=REPORT_FORMATS.names())
def test_every_format_renders_the_fixed_report(report, fmt):
    rows, claims, analysis = report
    r = Report(rows, claims, analysis, TITLE)
    text = fmt.render(r)
    assert text.strip() and text.endswith("\n")
    assert fmt.name and fmt.extension and "/" not in fmt.filename
    _parses(fmt.name, text, r)
