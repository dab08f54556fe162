"""Property-based fuzzing of the inputs users write: trial configs, study files, search spaces.

Whatever the bytes, `validate` and `run` either accept the file or exit 2 with one message that
names the file — never a traceback, never a run directory or MLflow run left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pal_study.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = yaml.safe_load((ROOT / "studies/quickstart.yaml").read_text())
SPACE = yaml.safe_load((ROOT / "search_spaces/pal_scale.yaml").read_text())
TRIAL = {
    "method": "ce+fnpal",
    "data": {"name": "digits", "noise": {"rate": 0.4}},
    "optim": {"epochs": 2, "lr": 0.05},
    "head": {"scale": 8.0},
}

WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just("nan"),
    st.just("NaN"),
    st.just("inf"),
    st.just("1e999"),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just([]),
    st.just({}),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


def _mutate(doc: dict, path: tuple, value) -> dict:
    import copy

    d = copy.deepcopy(doc)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


def _check(capsys, tmp_path: Path, file: Path, kind: str) -> None:
    runs = tmp_path / "runs"
    mlruns = tmp_path / "mlruns"
    rc = main(["validate", str(file)])
    out = capsys.readouterr()
    assert rc in (0, 2), (rc, out.err)
    assert "Traceback" not in out.err
    if rc == 2:
        assert ".yaml" in out.err, out.err  # the study, or the search space the bad key is in
        assert out.err.count("error:") == 1
        if kind == "study":
            rc_run = main(["run", str(file), "--runs-dir", str(runs), "--tracking-uri", f"sqlite:///{mlruns}/m.db"])
            err = capsys.readouterr().err
            assert rc_run == 2 and "Traceback" not in err
            assert not runs.exists() or not any(runs.iterdir())
            assert not mlruns.exists()


@SETTINGS
@given(data=st.data())
def test_fuzzed_study_files(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("fz")
    path = data.draw(st.sampled_from(_paths(QUICKSTART)))
    doc = _mutate(QUICKSTART, path, data.draw(WEIRD))
    if data.draw(st.booleans()):
        doc = _mutate(doc, (data.draw(st.text(min_size=1, max_size=8)),), data.draw(WEIRD))  # unknown key
    f = tmp / "study.yaml"
    f.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _check(capsys, tmp, f, "study")


@SETTINGS
@given(data=st.data())
def test_fuzzed_trial_configs(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("fz")
    path = data.draw(st.sampled_from(_paths(TRIAL)))
    doc = _mutate(TRIAL, path, data.draw(WEIRD))
    f = tmp / "trial.yaml"
    f.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _check(capsys, tmp, f, "trial")


@SETTINGS
@given(data=st.data())
def test_fuzzed_search_spaces(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("fz")
    space_path = data.draw(st.sampled_from(_paths(SPACE)))
    space = _mutate(SPACE, space_path, data.draw(WEIRD))
    (tmp / "search_spaces").mkdir()
    (tmp / "search_spaces" / "fuzzed.yaml").write_text(yaml.safe_dump(space, allow_unicode=True))
    (tmp / "studies").mkdir()
    study = {**QUICKSTART, "search": ["fuzzed"]}
    f = tmp / "studies" / "study.yaml"
    f.write_text(yaml.safe_dump(study))
    _check(capsys, tmp, f, "study")


@pytest.mark.parametrize(
    "content",
    [
        b"name: [unclosed\n",
        b"\xff\xfe\x00bad bytes",
        b"name: x\n  bad: indent\n",
        b"- just\n- a list\n",
        b"name: quickstart\nfactors: {method: [ce]}\nbudget: {trials_per_cell: 1e999}\n",
        b"name: quickstart\nbudget: {trials_per_cell: .nan}\n",
        b"!!python/object:os.system ls\n",
    ],
)
def test_broken_files_exit_2_naming_the_file(tmp_path, capsys, content):
    f = tmp_path / "study.yaml"
    f.write_bytes(content)
    for cmd in (
        ["validate", str(f)],
        ["run", str(f), "--runs-dir", str(tmp_path / "runs"), "--no-track"],
        ["train", str(f), "--no-track", "-o", str(tmp_path / "r.json")],
    ):
        rc = main(cmd)
        err = capsys.readouterr().err
        assert rc == 2, (cmd, err)
        assert "study.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.json").exists()
