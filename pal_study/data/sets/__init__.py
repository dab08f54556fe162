"""The data sets: one module each in this package, each defining ``SPEC = DatasetSpec(...)``.

Adding a data set is adding a module here (see ``digits.py`` for a set held in memory,
``mnist.py`` for one read from files) and a row for it in ``tests/test_registries.py``. A data set
with options of its own defines their model beside its ``SPEC`` and names it there (``options``,
under the config section ``data.<options_key>``; see ``mnist1d.py``): the trial config's
``data`` section is built from these, so the options are validated with the config. Every
module of the package (but ``base`` and ``_*``) is registered under ``SPEC.name`` when the package
is imported: those in ``ORDER`` first (the order of listings and of every "allowed: ..."
message), then the others alphabetically.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

from pal_study.data.sets.base import DATASET_REGISTRY, DatasetSpec, Recipe

ORDER = ("digits", "mnist", "cifar10", "cifar100", "synthetic")


def _import_all() -> None:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "base")
    for name in [*(n for n in ORDER if n in found), *(n for n in found if n not in ORDER)]:
        spec = importlib.import_module(f"{__name__}.{name}").SPEC
        DATASET_REGISTRY.add(spec.name, spec)


_import_all()


def get_dataset(name: str) -> DatasetSpec:
    """The spec of data set ``name``; an error listing the known names (a KeyError and a ValueError)."""
    return DATASET_REGISTRY.get(name)


def dataset_names() -> tuple[str, ...]:
    return DATASET_REGISTRY.names()


def dataset_needs_files(name: str) -> bool:
    """Whether ``name`` is read from files under ``data.root`` (so a missing root is an error)."""
    return get_dataset(name).needs_files


def expected_files(name: str, root: str | os.PathLike[str]) -> list[Path]:
    """The files data set ``name`` reads under ``root`` ([] for one that needs no files)."""
    return get_dataset(name).expected_files(root)


__all__ = [
    "DATASET_REGISTRY",
    "ORDER",
    "DatasetSpec",
    "Recipe",
    "dataset_names",
    "dataset_needs_files",
    "expected_files",
    "get_dataset",
]
