"""Per-trial checkpoints of :func:`pal_study.train.train`: atomic files, exact resume.

A checkpoint is one ``torch.save`` file holding only tensors and Python primitives, so it is
read with ``torch.load(weights_only=True)`` (no arbitrary unpickling). It holds everything an
epoch of training reads: model, optimiser and LR-scheduler state, the epoch just completed,
every RNG state (torch CPU and CUDA, numpy's and Python's global ones, the batcher's generator),
the history so far, and the resolved config with its hash. On the CPU a trial killed after
epoch k and resumed ends with exactly the metrics of an uninterrupted one.

    from pal_study.checkpoint import CheckpointPolicy
    train(cfg, checkpoint=CheckpointPolicy(Path("ckpt/trial-17.pt")))   # resumes if the file is there

    model = build_model_from_checkpoint("ckpt/trial-17.pt")               # a finished, kept model

When to save (``CheckpointPolicy.every_epochs``):

- ``N > 0``: after every epoch that is a multiple of N (1-based epoch numbers, so a resumed trial
  keeps the same schedule); ``0``: never.
- ``"auto"`` (default): keep the checkpoint cost under :data:`AUTO_BUDGET` (2 %) of training time.
  Save after epoch 1; after each save the interval is ``auto_interval(mean save time, mean epoch
  time)`` = ``max(1, ceil(s / (0.02 · e)))`` epochs, re-estimated at every save. Means, not the
  running max: the first save pays one-off costs (directory, cold page cache) that a max would
  carry for the rest of the trial. The save times travel in the checkpoint, the epoch times are
  the history's ``train_time_s + eval_time_s``, so a resumed trial continues the estimate. A
  consequence worth knowing: the work a kill can lose is at most one interval, i.e. about
  ``s / 0.02`` = 50 save times of training beyond the last epoch.

The final epoch is saved only with ``keep_final`` (a completed tuning trial needs no checkpoint;
a final trial keeps its trained model). Saves happen after the trainer's ``on_epoch`` callback
returned, so an epoch after which the caller stopped the trial, or in which training failed, is
never checkpointed. A checkpoint left from an earlier epoch is not deleted when a trial ends:
removing it is the caller's decision, once the trial's result is safely stored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pal_study.classifier import build_classifier
from pal_study.config import TrainConfig, resolve
from pal_study.fingerprints import FINGERPRINT_VERSION, digest
from pal_study.fingerprints_v1 import config_hash_v1

log = logging.getLogger(__name__)

FORMAT = "pal-study-checkpoint"
VERSION = 1
# Config keys that do not change what is trained: a trial resumed on another node, with another
# thread count or device, still resumes.
HASH_EXCLUDED = ("threads", "device")
AUTO_BUDGET = 0.02  # "auto": checkpoint time at most this share of epoch time
REQUIRED_KEYS = (
    "config_hash",
    "config",
    "input_shape",
    "num_classes",
    "epoch",
    "model",
    "optimizer",
    "scheduler",
    "rng",
    "history",
)


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where one trial checkpoints and how often (see the module docstring)."""

    path: Path  # this trial's checkpoint file; its directory is created on the first save
    every_epochs: int | str = "auto"  # N > 0: after every N-th epoch; 0: never; "auto": <= 2 % cost
    keep_final: bool = False  # also save after the last epoch (the trained model; finals keep it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        e = self.every_epochs
        if e != "auto" and (isinstance(e, bool) or not isinstance(e, int) or e < 0):
            raise ValueError(f"every_epochs must be an int >= 0 or 'auto', got {e!r}")
        if not isinstance(self.keep_final, bool):
            raise ValueError(f"keep_final must be a bool, got {self.keep_final!r}")


def auto_interval(save_s: float, epoch_s: float, budget: float = AUTO_BUDGET) -> int:
    """Epochs between saves so that one save of ``save_s`` seconds costs at most ``budget`` of the
    epochs (of ``epoch_s`` seconds each) it follows: ``max(1, ceil(save_s / (budget · epoch_s)))``."""
    if not (math.isfinite(save_s) and math.isfinite(epoch_s)) or save_s <= 0:
        return 1
    if epoch_s <= 0:
        return 1
    # The epsilon keeps float noise (0.006 / (0.02 · 0.03) = 10.000000000000002) from adding an epoch.
    return max(1, math.ceil(save_s / (budget * epoch_s) - 1e-9))


class SaveSchedule:
    """Which completed epochs to save after (the final epoch is the trainer's business).

    ``save_times`` are the wall times of earlier saves (restored from a checkpoint on resume);
    ``epoch_times`` is a callable giving the train+eval seconds of the epochs so far.
    """

    def __init__(
        self,
        every_epochs: int | str,
        *,
        last_saved: int = 0,
        save_times: list[float] | None = None,
        epoch_times: list[float] | None = None,
    ) -> None:
        self.every = every_epochs
        self.save_times: list[float] = list(save_times or [])
        self.next_auto = 1 if last_saved == 0 else last_saved + self._interval(epoch_times or [])

    def _interval(self, epoch_times: list[float]) -> int:
        if not self.save_times or not epoch_times:
            return 1  # nothing measured yet: save at the next epoch and measure
        return auto_interval(sum(self.save_times) / len(self.save_times), sum(epoch_times) / len(epoch_times))

    def due(self, epoch: int) -> bool:
        if isinstance(self.every, int):
            return self.every > 0 and epoch % self.every == 0
        return epoch >= self.next_auto  # "auto", the one string CheckpointPolicy admits

    def saved(self, epoch: int, save_s: float, epoch_times: list[float]) -> None:
        """Record a save after ``epoch`` that took ``save_s`` seconds; re-plan "auto"."""
        self.save_times.append(float(save_s))
        if self.every == "auto":
            self.next_auto = epoch + self._interval(epoch_times)


def _hashed_config(cfg: Any) -> dict[str, Any]:
    d = resolve(cfg).model_dump(mode="json")
    for key in HASH_EXCLUDED:
        d.pop(key, None)
    return d


def checkpoint_config_hash(cfg: Any) -> str:
    """The fingerprint (:func:`pal_study.fingerprints.digest`, version :data:`FINGERPRINT_VERSION`) of
    the resolved config, without ``threads`` and ``device``."""
    return digest(_hashed_config(cfg))


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format and version keys) atomically to ``path``.

    The bytes go to ``<name>.tmp-<pid>`` in the same directory, are flushed and fsync'd, then
    renamed over ``path``: a reader (or a resumed trial) sees the old file or the new one, never
    a torn one. The temporary file is removed if anything fails.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.tmp-{os.getpid()}")
    payload = {**state, "format": FORMAT, "version": VERSION, "config_hash_version": FINGERPRINT_VERSION}
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(p.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_tmp(path: str | os.PathLike[str]) -> list[Path]:
    """Delete ``<name>.tmp-<pid>`` files left by writers that died mid-save (their pid is not a
    live process here); returns what was removed. A trial has one writer at a time, so a new run
    of it may clean up after the last one."""
    p = Path(path)
    removed = []
    for tmp in p.parent.glob(f"{p.name}.tmp-*") if p.parent.is_dir() else []:
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours (EPERM)
        return True
    return True


def load_checkpoint(
    path: str | os.PathLike[str], expected_hash: str | None, *, config: Any = None
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is usable for a config of hash ``expected_hash``, else None.

    A missing file is None without a word. A torn, truncated or garbage file, one of another
    format version, or one written for another config ("foreign") is None with one warning that
    names the file and the reason; none of these raise. ``expected_hash=None`` skips the config
    check (for reading a model out of any checkpoint). A checkpoint whose hash predates versioned
    config hashes (version 1) is checked against the version-1 hash of ``config``, the trial's
    config (without it, such a checkpoint counts as foreign).
    """
    p = Path(path)
    if not p.exists():
        return None
    try:
        state = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as e:  # zip/pickle errors, EOF, unsupported types, unreadable file
        log.warning(
            "ignoring checkpoint %s: unreadable (torn, truncated or not a checkpoint): %s: %s",
            p,
            type(e).__name__,
            _short(e),
        )
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        log.warning("ignoring checkpoint %s: not a pal-study checkpoint (no format key %r)", p, FORMAT)
        return None
    if state.get("version") != VERSION:
        log.warning(
            "ignoring checkpoint %s: format version %r, this pal-study reads version %d",
            p,
            state.get("version"),
            VERSION,
        )
        return None
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        log.warning("ignoring checkpoint %s: incomplete, missing %s", p, ", ".join(missing))
        return None
    if expected_hash is not None and state["config_hash"] != _expected(state, expected_hash, config):
        log.warning(
            "ignoring checkpoint %s: foreign checkpoint, written for another config "
            "(config hash %.12s, this trial's config hash %.12s)",
            p,
            state["config_hash"],
            expected_hash,
        )
        return None
    return state


def _expected(state: dict[str, Any], expected_hash: str, config: Any) -> str | None:
    """The hash ``state`` must carry to belong to this trial, in the version it was written with."""
    version = state.get("config_hash_version", 1)
    if version == FINGERPRINT_VERSION:
        return expected_hash
    if version == 1 and config is not None:
        return config_hash_v1(_hashed_config(config))
    return None


def incompatibility(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``state`` cannot be loaded into ``model``/``optimizer`` (None if it can), checked before
    anything is modified: a checkpoint of the same config written by code whose network differs."""
    have = model.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict) or set(saved) != set(have):
        extra, missing = sorted(set(saved) - set(have)), sorted(set(have) - set(saved))
        return f"its model does not match this one (unexpected {extra[:3]}, missing {missing[:3]})"
    for key, t in have.items():
        if not isinstance(saved[key], torch.Tensor) or saved[key].shape != t.shape:
            return (
                f"its model does not match this one ({key}: {tuple(getattr(saved[key], 'shape', ()))} "
                f"vs {tuple(t.shape)})"
            )
    groups = state["optimizer"].get("param_groups", []) if isinstance(state["optimizer"], dict) else []
    if [len(g.get("params", [])) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        return "its optimizer state does not match this model's parameters"
    return None


def _short(e: BaseException, limit: int = 200) -> str:
    s = str(e)
    marker = "WeightsUnpickler error:"  # torch's long weights_only message: keep the actual reason
    if marker in s:
        s = s[s.index(marker) :].split("\n", 1)[0]
    s = s.replace("\n", " ")
    return s if len(s) <= limit else s[:limit] + "..."


# --------------------------------------------------------------------------------------------
# RNG states as tensors and primitives (weights_only-loadable)


def capture_rng(generator: torch.Generator, on_cuda: bool) -> dict[str, Any]:
    """Every RNG a trial may draw from: torch CPU (+ CUDA), numpy and Python globals, the batcher's."""
    state = np.random.get_state(legacy=True)
    if isinstance(state, dict):  # only a generator other than MT19937 gives one; the global one is MT19937
        raise RuntimeError(f"numpy's global RNG is not MT19937: {state.get('bit_generator')!r}")
    name, keys, pos, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if on_cuda else None,
        "numpy": [str(name), [int(v) for v in keys.tolist()], int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
        "batches": generator.get_state(),
    }


def restore_rng(rng: dict[str, Any], generator: torch.Generator, on_cuda: bool) -> None:
    generator.set_state(rng["batches"])
    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = rng.get("cuda")
    if on_cuda and cuda:
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.info(
                "checkpoint has CUDA RNG states of %d devices, this process sees %d: not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


# --------------------------------------------------------------------------------------------
# For users: the trained model out of a checkpoint


def load_model_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(resolved config dict, model state_dict) of the checkpoint at ``path``.

    Raises FileNotFoundError when there is no file and ValueError when it is not a usable
    checkpoint (the warning logged says why).
    """
    state = _usable(path)
    return state["config"], state["model"]


def _usable(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint a user asked for by path: missing or unusable files raise."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    state = load_checkpoint(p, None)
    if state is None:
        raise ValueError(f"{p}: not a usable pal-study checkpoint (see the warning above)")
    return state


def build_model_from_checkpoint(path: str | os.PathLike[str]) -> torch.nn.Module:
    """The checkpoint's Classifier (backbone + head) with its weights, on the CPU, in eval mode."""
    state = _usable(path)
    cfg = TrainConfig.model_validate(state["config"])
    model = build_classifier(cfg, tuple(state["input_shape"]), int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model.eval()


def export_weights(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy a finished trial's checkpoint to ``dest`` (atomically) after checking it loads: the
    whole file, so ``build_model_from_checkpoint(dest)`` rebuilds the model and the optimiser and
    RNG states come along for fine-tuning."""
    load_model_weights(source)  # raises for a missing or unusable file
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, out)
    return out
