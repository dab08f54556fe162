"""Packaging: the wheel, a real non-editable install used from an empty directory, an editable
install, the shipped studies and search spaces by bare name, --version, shell completion, and
the README's / CI's commands.

The installs go into fresh virtual environments without torch & co.: a ``.pth`` file points them
at this interpreter's site-packages for the heavy dependencies (installing torch costs 5.5 GB),
and the project itself comes only from the new environment (checked: ``pal_study.__file__``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from pal_study.cli import main
from pal_study.config import ConfigError
from pal_study.resources import list_shipped, resolve_search_space, resolve_study, shipped_dir
from pal_study.study.space import resolve_space_path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "pal_study", "studies", "search_spaces")
TEST_TOOLS = {"pytest", "hypothesis", "pytest-xdist", "playwright", "psycopg2-binary", "psycopg2"}


def _copy_sources(dest: Path) -> Path:
    """The files a build reads, copied, so that building writes nothing into the repository."""
    dest.mkdir(parents=True)
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    }
    env.update(extra)
    return env


def _sh(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"{proc.args} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _fresh_venv(path: Path) -> Path:
    """A venv without pip or the project; the heavy dependencies visible through a .pth file."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = _ok(_sh([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path)).strip()
    ours = sysconfig.get_paths()
    deps = dict.fromkeys([ours["purelib"], ours["platlib"]])  # this interpreter's (the project venv's)
    # Lines of a .pth file only extend sys.path: the project venv's own .pth files (its editable
    # pal_study finder) are not processed, so pal_study is importable only from the new venv.
    (Path(purelib) / "_pal_study_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    return python


def _pip_install(python: Path, *args: str, cwd: Path) -> None:
    # pip comes from the project venv via the .pth file and installs into the running venv;
    # --ignore-installed: the project venv's own pal-study (also on sys.path) is neither taken for
    # this install nor uninstalled.
    _ok(
        _sh(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--ignore-installed",
                "--disable-pip-version-check",
                "-q",
                *args,
            ],
            cwd,
            timeout=300,
        )
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    _ok(
        _sh(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--disable-pip-version-check",
                "-q",
                str(src),
                "-w",
                str(tmp / "dist"),
            ],
            tmp,
            timeout=300,
        )
    )
    (found,) = (tmp / "dist").glob("pal_study-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, Path]:
    """A non-editable install of the wheel into a fresh venv, and an empty working directory."""
    tmp = tmp_path_factory.mktemp("installed")
    python = _fresh_venv(tmp / "venv")
    _pip_install(python, str(wheel), cwd=tmp)
    cwd = tmp / "empty"
    cwd.mkdir()
    return {"python": python, "venv": tmp / "venv", "exe": tmp / "venv" / "bin" / "pal-study", "cwd": cwd, "tmp": tmp}


# --------------------------------------------------------------------------------------------
# The wheel and its metadata
# --------------------------------------------------------------------------------------------


def test_wheel_holds_every_module_and_the_shipped_yaml(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pal_study").rglob("*.py")}
    missing = sorted(modules - names)
    assert not missing, f"not in the wheel (add the subpackage to pyproject.toml's packages): {missing}"
    for kind in ("studies", "search_spaces"):
        expected = {f"pal_study/{kind}/{p.name}" for p in (ROOT / kind).glob("*.yaml")}
        assert expected and expected <= names, sorted(expected - names)
    assert not any(n.startswith(("studies/", "search_spaces/", "tests/")) for n in names)


def test_metadata_extras_and_bounds(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [
        Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines() if line.startswith("Requires-Dist:")
    ]
    core = [r for r in reqs if r.marker is None]
    assert not {r.name.lower() for r in core} & TEST_TOOLS, "plain `pip install .` would install test tools"
    for r in core:
        assert any(s.operator == "<" for s in r.specifier), f"{r}: no upper bound"
        assert any(s.operator == ">=" for s in r.specifier), f"{r}: no lower bound"
    by_name = {r.name.lower(): r for r in core}
    # The locally served pair is accepted; newer releases of the same major version are too.
    assert by_name["torch"].specifier.contains("2.14.1") and by_name["torch"].specifier.contains("2.99.0")
    assert by_name["torchvision"].specifier.contains("0.29.1") and by_name["torchvision"].specifier.contains("0.99.0")
    for r in core:  # the upper bound is the next major version (0.x: 1.0)
        cap = next(Version(s.version) for s in r.specifier if s.operator == "<")
        assert cap.minor == 0 and cap.micro == 0, f"{r}: cap {cap} is not a major version"
    extras = {}
    for r in reqs:
        if r.marker is not None:
            extra = re.search(r'extra == "([^"]+)"', str(r.marker)).group(1)
            extras.setdefault(extra, set()).add(
                r.name.lower() + ("[" + ",".join(sorted(r.extras)) + "]" if r.extras else "")
            )
    assert extras["postgres"] == {"psycopg2-binary"}
    assert {"pytest", "hypothesis", "pytest-xdist", "playwright", "pal-study[postgres]"} <= extras["test"]


# --------------------------------------------------------------------------------------------
# A non-editable install, used from an empty directory
# --------------------------------------------------------------------------------------------


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    code = (
        "import pal_study, pal_study.resources as r; print(pal_study.__file__); "
        "print(r.shipped_dir('studies')); print(r.shipped_dir('search_spaces'))"
    )
    lines = _ok(_sh([str(installed["python"]), "-c", code], installed["cwd"])).splitlines()
    venv = installed["venv"].resolve()
    for line in lines:
        assert Path(line).resolve().is_relative_to(venv), f"{line} is not inside the fresh venv {venv}"
        assert not Path(line).resolve().is_relative_to(ROOT)
    assert Path(lines[1]).name == "studies" and Path(lines[1]).parent.name == "pal_study"


def test_installed_version_list_and_validate_from_an_empty_dir(installed):
    exe, cwd = str(installed["exe"]), installed["cwd"]
    from importlib.metadata import version

    out = _ok(_sh([exe, "--version"], cwd))
    assert out.strip() == f"pal-study {version('pal-study')}"
    out = _ok(_sh([exe, "validate", "quickstart"], cwd))
    assert "ok:" in out and "study 'quickstart': 14 cells" in out
    assert str(installed["venv"]) in out.replace("\n", "")  # the shipped file, not a checkout's
    _ok(_sh([exe, "validate", "noisy_labels.yaml"], cwd))  # bare name with the suffix too
    bad = _sh([exe, "validate", "no_such_study"], cwd)
    assert bad.returncode == 2 and "quickstart" in bad.stderr and "Traceback" not in bad.stderr
    assert list(cwd.iterdir()) == []


def test_installed_list_methods(installed):
    exe, cwd = str(installed["exe"]), installed["cwd"]
    out = _ok(_sh([exe, "list", "methods"], cwd))
    assert "ce+fnpal" in out and "nce+rce+fnpal" in out
    rows = json.loads(_ok(_sh([exe, "list", "studies", "--json"], cwd)))
    assert "quickstart" in {r["name"] for r in rows}


def test_installed_shell_completion(installed):
    exe, cwd = str(installed["exe"]), installed["cwd"]
    # Typer's own switch for "no shell auto-detection": --show-completion then takes the shell.
    script = _ok(_sh([exe, "--show-completion", "bash"], cwd, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"))
    assert (
        "_PAL_STUDY_COMPLETE=complete_bash" in script and "complete -o default -F" in script and "pal-study" in script
    )
    script = _ok(_sh([exe], cwd, _PAL_STUDY_COMPLETE="source_zsh"))
    assert "compdef" in script and "pal-study" in script
    words = _ok(_sh([exe], cwd, _PAL_STUDY_COMPLETE="complete_bash", COMP_WORDS="pal-study va", COMP_CWORD="1"))
    assert words.split() == ["validate"]
    words = _ok(_sh([exe], cwd, _PAL_STUDY_COMPLETE="complete_bash", COMP_WORDS="pal-study run q", COMP_CWORD="2"))
    assert words.split() == ["quickstart"]


@pytest.mark.slow
def test_installed_run_quickstart_from_an_empty_dir(installed):
    exe, tmp = str(installed["exe"]), installed["tmp"]
    cwd = tmp / "run-here"
    cwd.mkdir()
    runs = tmp / "runs"
    proc = _sh(
        [
            exe,
            "run",
            "quickstart",
            "--set",
            "budget.trials_per_cell=2",
            # smaller than the README's run: 3 epochs, one final seed, no MLflow
            "--set",
            "budget.epochs=3",
            "--set",
            "finals.seeds=[0]",
            "--no-track",
            "--runs-dir",
            str(runs),
            "--progress",
            "plain",
        ],
        cwd,
        timeout=900,
    )
    _ok(proc)
    from importlib.metadata import version

    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"pal-study {version('pal-study')} · study 'quickstart': 14 cells × 2 tuning trials"), first
    assert (runs / "quickstart" / "summary.json").is_file()
    assert "nce+rce+fnpal" in proc.stdout


# --------------------------------------------------------------------------------------------
# An editable install (CI's `pip install -e '.[test]'`) reads the top-level folders
# --------------------------------------------------------------------------------------------


def test_editable_install_maps_the_top_level_folders(tmp_path):
    src = _copy_sources(tmp_path / "checkout")
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "-e", str(src), cwd=tmp_path)
    cwd = tmp_path / "empty"
    cwd.mkdir()
    code = (
        "import pal_study, pal_study.resources as r; print(pal_study.__file__); "
        "print(r.shipped_dir('studies')); print(r.shipped_dir('search_spaces'))"
    )
    mod, studies, spaces = _ok(_sh([str(python), "-c", code], cwd)).splitlines()
    assert Path(mod).resolve() == (src / "pal_study" / "__init__.py").resolve()
    assert Path(studies).resolve() == (src / "studies").resolve()
    assert Path(spaces).resolve() == (src / "search_spaces").resolve()
    out = _ok(_sh([str(tmp_path / "venv" / "bin" / "pal-study"), "validate", "quickstart"], cwd))
    assert str((src / "studies" / "quickstart.yaml").resolve()) in out.replace("\n", "")


# --------------------------------------------------------------------------------------------
# Resolution rules, in process
# --------------------------------------------------------------------------------------------


def test_shipped_names():
    assert {"quickstart", "noisy_labels", "long_tail"} <= set(list_shipped("studies"))
    assert {"pal_scale", "margin", "weight_decay"} <= set(list_shipped("search_spaces"))
    assert (shipped_dir("studies") / "quickstart.yaml").is_file()
    with pytest.raises(ValueError):
        shipped_dir("models")


def test_resolve_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = shipped_dir("studies") / "quickstart.yaml"
    assert resolve_study("quickstart") == shipped
    assert resolve_study("quickstart.yaml") == shipped
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")
    assert resolve_study("quickstart.yaml") == Path("quickstart.yaml")  # an existing file wins
    assert resolve_study(tmp_path / "quickstart.yaml") == tmp_path / "quickstart.yaml"
    with pytest.raises(ConfigError) as e:
        resolve_study("quikstart")
    msg = str(e.value)
    assert "quikstart" in msg and "file not found" in msg and "quickstart" in msg.split("shipped studies:")[1]
    with pytest.raises(ConfigError) as e:
        resolve_study("sub/quickstart.yaml")  # a path is never taken for a shipped name
    assert "sub/quickstart.yaml" in str(e.value)
    assert resolve_search_space("margin") == shipped_dir("search_spaces") / "margin.yaml"


def test_bare_space_names_fall_back_to_the_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study_dir = tmp_path / "elsewhere"
    study_dir.mkdir()
    shipped = shipped_dir("search_spaces") / "weight_decay.yaml"
    assert resolve_space_path("weight_decay", study_dir) == shipped
    assert resolve_space_path("weight_decay.yaml", study_dir) == shipped
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "weight_decay.yaml").write_text("params: {}\n")
    assert resolve_space_path("weight_decay", study_dir) == tmp_path / "search_spaces" / "weight_decay.yaml"
    assert not resolve_space_path("no_such_space", study_dir).is_file()


def test_cli_version_and_bare_names(tmp_path, monkeypatch, capsys):
    from importlib.metadata import version

    monkeypatch.chdir(tmp_path)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pal-study {version('pal-study')}"
    assert main(["validate", "margin_ablation"]) == 0
    assert "study 'margin_ablation'" in capsys.readouterr().out
    assert main(["run", "nope", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "quickstart" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# README's commands and CI
# --------------------------------------------------------------------------------------------


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text.split("\n---\n", 1)[0], re.S)


def test_readme_top_commands_and_ci():
    run_cmd, test_cmd = _readme_commands()
    assert "[test]" not in run_cmd and "pytest" not in run_cmd and "psycopg" not in run_cmd
    assert run_cmd.endswith("pal-study run quickstart")
    assert "torch==2.14.1 torchvision==0.29.1" in run_cmd and "torch==2.14.1 torchvision==0.29.1" in test_cmd
    assert "'.[test]'" in test_cmd
    pytest_cmd = test_cmd.rsplit(" && ", 1)[1]
    assert pytest_cmd == ".venv/bin/python -m pytest -n 2"  # the whole suite in two xdist workers
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci[-1] == pytest_cmd, "CI's last command is not the README's test command"
    installs = [line for line in ci if "pip install" in line and "upgrade pip" not in line]
    assert installs == [
        ".venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1",
        ".venv/bin/pip install -q -e '.[test]'",
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(pyproject["project"]["optional-dependencies"]) >= {"test", "postgres"}
