"""Device and CPU-thread selection for one trial.

Ray gives a trial its GPUs by setting ``CUDA_VISIBLE_DEVICES`` (so the trial's first visible GPU
is ``cuda:0``) and its CPUs by a resource count; a trial must use exactly what it was given.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def visible_gpu_ids(environ: dict[str, str] | None = None) -> list[str] | None:
    """GPU ids in ``CUDA_VISIBLE_DEVICES``: None when unset (all GPUs), [] when set empty."""
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    ids = [p.strip() for p in raw.split(",") if p.strip()]
    # CUDA stops at the first invalid entry (e.g. "-1"), so do we.
    out = []
    for i in ids:
        if i.startswith("-"):
            break
        out.append(i)
    return out


def select_device(
    requested: str = "auto", *, cuda_available: bool | None = None, environ: dict[str, str] | None = None
) -> torch.device:
    """Resolve ``auto|cpu|cuda|cuda:N`` to a torch device.

    ``auto`` takes ``cuda:0`` when a GPU is visible to this process (Ray's allocation shows as
    ``CUDA_VISIBLE_DEVICES``), else the CPU. Asking for CUDA where none is visible is an error,
    not a silent fallback: a study that was meant for GPUs should not crawl on CPUs.
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    visible = visible_gpu_ids(environ)
    has_gpu = available and (visible is None or len(visible) > 0)
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "auto":
        return torch.device("cuda:0") if has_gpu else torch.device("cpu")
    if not has_gpu:
        shown = "unset" if visible is None else repr(",".join(visible))
        raise ValueError(
            f"device {requested!r} requested but no CUDA GPU is visible "
            f"(CUDA_VISIBLE_DEVICES {shown}); use device=cpu or auto"
        )
    index = int(requested.split(":", 1)[1]) if ":" in requested else 0
    count = (
        len(visible) if visible is not None else (torch.cuda.device_count() if cuda_available is None else index + 1)
    )
    if index >= count:
        raise ValueError(f"device {requested!r} requested but only {count} GPU(s) are visible")
    return torch.device(f"cuda:{index}")


def affinity_cpus() -> int:
    """CPUs this process may run on: its affinity mask (``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def allotted_cpus(environ: dict[str, str] | None = None) -> int:
    """CPUs this process may use: Ray's/OpenMP's explicit count, else the affinity mask."""
    env = os.environ if environ is None else environ
    for var in ("PAL_STUDY_CPUS", "OMP_NUM_THREADS"):
        value = env.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return affinity_cpus()


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to the trial's allotment (oversubscription costs 3–36×)."""
    n = threads or allotted_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
