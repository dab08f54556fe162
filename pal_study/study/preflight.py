"""Checks before any trial starts: what would otherwise fail every trial the same way."""

from __future__ import annotations

import os

from pal_study.data import dataset_needs_files, expected_files
from pal_study.errors import ConfigError
from pal_study.study.spec import Study


def check_data(study: Study) -> None:
    """Missing data set files are bad input, said before any trial starts (not 100 failed trials)."""
    seen: set[tuple[str, str]] = set()
    for cell in study.cells:
        d = cell.config.data
        if not dataset_needs_files(d.name) or d.download or not d.root:
            continue
        if (d.name, d.root) in seen:
            continue
        seen.add((d.name, d.root))
        missing = [p for p in expected_files(d.name, os.path.abspath(d.root)) if not p.exists()]
        if missing:
            key = next((f"factors.{k}" for k in cell.factors if k.startswith("data.")), "base.data.root")
            raise ConfigError(
                f"{d.name} files are not under data.root {d.root!r} (missing {missing[0]}"
                f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}); put the torchvision files "
                "there, point --set base.data.root=DIR at them, or set data.download: true where a network exists",
                source=str(study.path),
                key=key,
            )
