"""The shipped studies and search spaces, found by bare name from any directory.

The repository keeps them at its top level (``studies/``, ``search_spaces/``); an install puts
them into the package as ``pal_study/studies/*.yaml`` and ``pal_study/search_spaces/*.yaml``
(pyproject.toml maps the two folders to the packages ``pal_study.studies`` and
``pal_study.search_spaces``). Where pal_study is imported from a checkout (an editable install,
whose finder cannot map a package folder without ``__init__.py``, or no install at all), they
are the checkout's own top-level folders.

    resolve_study("quickstart")            # the shipped studies/quickstart.yaml
    resolve_study("my/own.yaml")           # an existing file always wins
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pal_study.errors import ConfigError

Kind = Literal["studies", "search_spaces"]
KINDS: tuple[str, ...] = ("studies", "search_spaces")
SUFFIXES = (".yaml", ".yml")
_WHAT = {"studies": "study", "search_spaces": "search space"}


def shipped_dir(kind: Kind) -> Path:
    """The folder of the shipped studies or search spaces (it may be missing in a broken install)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    package = f"{__package__}.{kind}"
    root: Any
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        root = None
    except Exception:  # an importlib.resources that cannot read namespace packages (see below)
        root = ...
    if isinstance(root, Path) and root.is_dir():
        return root
    if root is not None:
        # A folder without __init__.py is a namespace package: importlib.resources gives a
        # MultiplexedPath over its locations (every install has exactly one); take it as a Path.
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            if Path(location).is_dir():
                return Path(location)
    # pal_study imported from a checkout (editable install, or none): its top-level folder.
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / kind).is_dir():
        return checkout / kind
    return Path(__file__).resolve().parent / kind  # missing: a broken install; callers say so


def list_shipped(kind: Kind) -> list[str]:
    """The names (file names without .yaml) of the shipped studies or search spaces, sorted."""
    folder = shipped_dir(kind)
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()})


def _bare(arg: str) -> bool:
    return "/" not in arg and "\\" not in arg and not Path(arg).is_absolute()


def _stem(arg: str) -> str:
    for suffix in SUFFIXES:
        if arg.endswith(suffix):
            return arg[: -len(suffix)]
    return arg


def find_shipped(kind: Kind, name: str) -> Path | None:
    """The shipped file called ``name`` (``quickstart`` or ``quickstart.yaml``), or None."""
    if not name or not _bare(name):
        return None
    folder = shipped_dir(kind)
    stem = _stem(name)
    for suffix in SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _resolve(kind: Kind, arg: str | Path) -> Path:
    text = str(arg)
    path = Path(arg)
    if path.is_file():
        return path
    shipped = find_shipped(kind, text)
    if shipped is not None:
        return shipped
    if path.exists():
        return path  # a directory: the YAML reader says so
    names = ", ".join(list_shipped(kind)) or "(none: the install lacks them)"
    looked = repr(text) if path.is_absolute() else f"{text!r} in {Path.cwd()}"
    if _bare(text):
        looked += f" and {_stem(text) + '.yaml'!r} in {shipped_dir(kind)}"
    raise ConfigError(
        f"file not found, and no shipped {_WHAT[kind]} of that name (looked for {looked}); "
        f"shipped {kind.replace('_', ' ')}: {names}",
        source=text,
    )


def resolve_study(arg: str | Path) -> Path:
    """A study file: an existing path wins; else a bare name (``quickstart`` or ``quickstart.yaml``)
    is a shipped study; else a ConfigError naming what was looked for and the shipped names."""
    return _resolve("studies", arg)


def resolve_search_space(arg: str | Path) -> Path:
    """A search-space file, resolved like :func:`resolve_study` among the shipped search spaces."""
    return _resolve("search_spaces", arg)
