"""Shared helpers of the benchmark scripts: machine description, timing, tables, JSON output.

Not a package module: the scripts run as ``python benchmarks/<name>.py``, which puts this
folder on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: Sequence[int]) -> dict[str, Any]:
    """What the figures were measured on; ``threads`` are the torch intra-op counts used."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    import torchvision

    return {
        "nproc": cores,
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_threads": list(threads),
        "cuda": torch.cuda.is_available(),
        "loadavg_at_start": _loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in os.getloadavg()]
    except OSError:
        return None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def write_json(name: str, quick: bool, payload: dict[str, Any]) -> Path:
    """``results/<name>.json`` (``<name>_quick.json`` for smoke runs, so they never overwrite)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"{name}_quick.json" if quick else f"{name}.json")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, right-aligned numbers, for stdout."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths, strict=False)))
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.01:
            return f"{v:.3f}"
        return f"{v:.2e}"
    return str(v)


def _numeric(s: str) -> bool:
    try:
        float(s.rstrip("x%"))
        return True
    except ValueError:
        return False


def temp_root(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)


def cifar10_class() -> type:
    """torchvision's ``CIFAR10`` reading our own files: the same class, only without md5 sums.

    torchvision checks each file against the release's md5; files with synthetic pixels cannot
    match. ``check_integrity(path, None)`` only checks that the file exists, so declaring the
    lists with md5 ``None`` keeps torchvision's own loading and per-sample ``__getitem__``
    (uint8 HWC array -> PIL image -> transform) untouched.
    """
    from torchvision.datasets import CIFAR10

    class CIFAR10NoMD5(CIFAR10):
        train_list: ClassVar = [[f"data_batch_{i}", None] for i in range(1, 6)]
        test_list: ClassVar = [["test_batch", None]]
        meta: ClassVar = {"filename": "batches.meta", "key": "label_names", "md5": None}

    return CIFAR10NoMD5
