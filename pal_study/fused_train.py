"""A pack of trial configs trained as one fused model: ``train_fused(cfgs) -> [TrialResult]``.

The members of a tuning pack of one cell share their data set and seed, hence the same split,
noisy labels, initial weights and batch order, and the same architecture, batch size and epochs;
they differ in their hyperparameters (learning rate and schedule, momentum, weight decay, head
scale, loss parameters). So one batch stream feeds all of them: their parameters are stacked
along a member axis and run as one vmapped forward and one backward (:mod:`pal_study.fusion`),
with an SGD step that takes each member's learning rate, momentum, weight decay and schedule.
Each member keeps its own head scale (applied to the stacked logits as a (K, 1, 1) tensor), its
own loss with its own parameters, its own gradient clipping, batch-norm statistics, evaluation
and stop: a member whose ``on_epoch`` returns True (pruned) or whose loss goes non-finite leaves
the stack, the others train on.

What fuses is checked by :func:`fuse_blocker`, which says why not (the caller then trains the
members one at a time with :func:`pal_study.train.train`). A fused member equals the same config
trained alone up to float rounding: the forward of the first step is bit-identical; the SGD
update multiplies by per-member tensors where ``torch.optim.SGD`` uses Python scalars, and the
members' gradient norms are reduced per member, so the last bits drift (tests/test_fused_train.py
bounds it after one epoch and checks the final metrics). Like :func:`~pal_study.train.train`, it
knows nothing of Ray, Optuna or MLflow. Each member may save checkpoints in ``train()``'s format:
an interrupted member goes on alone from its last save. Not here: resuming a whole pack,
``torch.compile``, deferred re-weighting (DRW changes a member's loss weights per epoch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pal_study import checkpoint as ckpt
from pal_study.checkpoint import CheckpointPolicy
from pal_study.classifier import build_classifier
from pal_study.config import TrainConfig, flatten, resolve
from pal_study.data import DataBundle
from pal_study.device import configure_threads, select_device
from pal_study.fusion import FusedSGD, StackedModules
from pal_study.losses import build_loss
from pal_study.train import (
    EpochMetrics,
    TrialResult,
    _result,
    accuracy,
    autocast_for,
    build_dataset_for,
    evaluate,
    loss_params,
    lr_factor,
    make_optimizer,
    save_trial,
    train_batches,
    use_channels_last,
)

log = logging.getLogger(__name__)

OnEpoch = Callable[[EpochMetrics], "bool | None"]


# Config keys a fused pack's members share, as dotted keys or prefixes ending in ".": their data
# and seed (split, noisy labels, initial weights, batch order), model, head, loss, batch size,
# epochs and device; what is not here (lr, schedule, momentum, weight decay, clipping, head scale,
# loss parameters) is each member's own. A search over one of them gives members that cannot fuse.
SHARED_KEYS = (
    "method",
    "data.",
    "seed",
    "model.",
    "head.kind",
    "head.prototypes",
    "head.last_relu",
    "head.use_relu_prototypes",
    "loss.name",
    "loss.drw_",
    "optim.batch_size",
    "optim.epochs",
    "device",
    "threads",
    "amp",
    "channels_last",
)


def _is_shared(key: str) -> bool:
    return any(key == p or (p[-1] in "._" and key.startswith(p)) for p in SHARED_KEYS)


def _shared(cfg: TrainConfig) -> dict[str, Any]:
    """The values of :data:`SHARED_KEYS` in a resolved config, by dotted key."""
    return {k: v for k, v in flatten(cfg.model_dump(mode="json")).items() if _is_shared(k)}


def searched_blocker(keys: Sequence[str]) -> str | None:
    """Why trials that search ``keys`` cannot fuse (None: what they vary is per member)."""
    shared = [k for k in keys if _is_shared(k)]
    if any(k.startswith("loss.drw_") for k in shared):
        return "deferred re-weighting (loss.drw_epoch) changes a member's loss weights per epoch"
    return f"the search varies {', '.join(shared)}, which a fused pack's members share" if shared else None


def fuse_blocker(cfgs: Sequence[TrainConfig]) -> str | None:
    """Why these configs cannot train as one fused model (None: they can)."""
    if not cfgs:
        return "no configs"
    resolved = [resolve(c) for c in cfgs]
    first = _shared(resolved[0])
    for n, cfg in enumerate(resolved[1:], start=1):
        mine = _shared(cfg)
        differ = [key for key in first if mine[key] != first[key]]
        if differ:
            return (
                f"member {n} differs from member 0 in {', '.join(differ)}: a fused pack shares its data, seed "
                "(split, noisy labels, initial weights, batch order), model, head, loss, batch size and epochs"
            )
    if any(c.loss.drw_start is not None for c in resolved):
        return "deferred re-weighting (loss.drw_epoch) changes a member's loss weights per epoch"
    return None


# Where fusing paid, and from how many members: nowhere measured so far, so ``auto`` fuses
# nothing. On the CPU one training step of the MNIST-1D MLP ran 1.13-1.23x faster per member
# fused (K = 4-16, members sharing their batches; benchmarks/README.md (k)), but whole trials did
# not: the quickstart on that model with fused packs took 105.5 s against 103.9 s with packs
# unfused (benchmarks/README.md (c), "Fused packs"): each member is still evaluated alone every
# epoch, and a cell's trials asked together leave its pruner no finished trial to compare with
# (it pruned nothing). Every conv net and the digits MLP ran slower fused even per step. CUDA is
# not measured (no GPU was lent). ``fuse: on`` (``--fuse on``) fuses wherever members can.
FUSION_PAYS: dict[str, dict[str, int]] = {"cpu": {}, "cuda": {}}


def fusion_pays(cfg: TrainConfig, members: int) -> bool:
    """Whether fusing ``members`` copies of ``cfg``'s model measured faster on its device."""
    # From the config's word, not the device: the study's driver decides for trials that run on
    # other nodes (a GPU study's head may have no GPU), and only "auto" depends on this process.
    kind = "cuda" if cfg.device.startswith("cuda") else "cpu" if cfg.device == "cpu" else select_device("auto").type
    least = FUSION_PAYS.get(kind, {}).get(cfg.model.arch)
    return least is not None and members >= least


def _member_lrs(cfgs: Sequence[TrainConfig], steps_per_epoch: int) -> torch.Tensor:
    """(steps, K) learning rates, each what ``LambdaLR`` gives that member at each step
    (its base lr times its warm-up and schedule factor, in double precision as Python does)."""
    epochs = cfgs[0].optim.resolved.epochs
    total = epochs * steps_per_epoch
    cols = [[c.optim.resolved.lr * lr_factor(s, steps_per_epoch, c) for s in range(total)] for c in cfgs]
    return torch.tensor(cols, dtype=torch.float64).T.contiguous()


class _MemberSaver:
    """Writes one member's checkpoints in :func:`pal_study.train.train`'s format (a real
    ``torch.optim.SGD`` and ``LambdaLR`` state), so an interrupted member goes on alone from its
    last save with ``train(cfg, checkpoint=policy)``."""

    def __init__(self, policy: CheckpointPolicy, cfg: TrainConfig, model: nn.Module, steps_per_epoch: int):
        self.policy, self.cfg, self.model = policy, cfg, model
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg)
        )
        ckpt.remove_stale_tmp(policy.path)
        self.schedule = ckpt.SaveSchedule(policy.every_epochs)

    def due(self, epoch: int) -> bool:
        final = epoch == self.cfg.optim.resolved.epochs
        return self.policy.keep_final if final else self.schedule.due(epoch)

    def save(self, epoch: int, step: int, buffers: list[torch.Tensor | None], **state: Any) -> None:
        params = self.optimizer.param_groups[0]["params"]
        self.optimizer.state.clear()
        for p, buf in zip(params, buffers, strict=True):
            if buf is not None:
                self.optimizer.state[p]["momentum_buffer"] = buf
        # The schedule where this member stands: ``step`` optimiser steps taken, the next at lr(step).
        lr = self.cfg.optim.resolved.lr * lr_factor(step, state["steps_per_epoch"], self.cfg)
        sched = self.scheduler.state_dict()
        sched.update(last_epoch=step, _step_count=step + 1, _last_lr=[lr])
        self.scheduler.load_state_dict(sched)
        self.optimizer.param_groups[0]["lr"] = lr
        save_trial(
            self.policy,
            self.schedule,
            self.cfg,
            state["data"],
            epoch,
            self.model,
            self.optimizer,
            self.scheduler,
            state["gen"],
            state["history"],
            state["wall_time_s"],
        )


def train_fused(
    cfgs: Sequence[TrainConfig],
    on_epoch: Sequence[OnEpoch | None] | None = None,
    *,
    data: DataBundle | None = None,
    checkpoints: Sequence[CheckpointPolicy | None] | None = None,
) -> list[TrialResult]:
    """Train ``cfgs`` (see :func:`fuse_blocker`) together; one :class:`TrialResult` per config,
    in order. ``on_epoch[k]`` gets member k's epochs; True stops that member (status stopped).
    ``data``: the bundle all members share (built from the first config otherwise).
    ``checkpoints[k]``: where member k saves as it goes, in :func:`pal_study.train.train`'s format
    (a fused pack always starts afresh; an interrupted member resumes alone from its file)."""
    t_start = time.perf_counter()
    cfgs = [resolve(c) for c in cfgs]
    why = fuse_blocker(cfgs)
    if why is not None:
        raise ValueError(f"these configs do not train fused: {why}")
    k_all = len(cfgs)
    hooks = list(on_epoch) if on_epoch is not None else [None] * k_all
    if len(hooks) != k_all:
        raise ValueError(f"{k_all} configs, {len(hooks)} on_epoch callbacks")
    base = cfgs[0]
    device = select_device(base.device)
    threads = configure_threads(base.threads)
    if data is None:
        data = build_dataset_for(base)
    data = data.to(device)
    k = data.num_classes
    train_counts = torch.bincount(data.train_y.cpu(), minlength=k).tolist()

    models = [build_classifier(c, tuple(data.input_shape), k).to(device) for c in cfgs]
    channels_last = use_channels_last(base, device, data.train_x)
    if channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    criteria = [
        build_loss(c.loss.name, k, **loss_params(c, m.head, train_counts)).to(device)
        for c, m in zip(cfgs, models, strict=True)
    ]
    scales_all = torch.tensor([float(m.head.logit_scale) for m in models], device=device)
    stack = StackedModules(models)
    # The stack runs member 0's structure; its head then gives unscaled logits, and each member's
    # scale multiplies its own slice (s · cos either way: one multiply, the same bits).
    stack.structure.head.logit_scale = 1.0  # type: ignore[union-attr]
    optims = [c.optim.resolved for c in cfgs]
    opt = FusedSGD(
        stack.parameters(),
        lr=[o.lr for o in optims],
        momentum=[o.momentum for o in optims],
        weight_decay=[o.weight_decay for o in optims],
        nesterov=[bool(o.nesterov and o.momentum > 0) for o in optims],
    )
    autocast = autocast_for(device, base.amp)
    gen, batches = train_batches(base, data)  # the members share their seed, hence one batch order
    optim = base.optim.resolved
    steps_per_epoch = len(batches)
    lrs_all = _member_lrs(cfgs, steps_per_epoch).to(device)
    clips = torch.tensor([c.optim.resolved.grad_clip or 0.0 for c in cfgs], device=device)
    policies = list(checkpoints) if checkpoints is not None else [None] * k_all
    savers = [
        None if p is None else _MemberSaver(p, c, m, steps_per_epoch)
        for p, c, m in zip(policies, cfgs, models, strict=True)
    ]

    active = list(range(k_all))  # members still training, in stack order
    histories: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    outcome: list[tuple[str, str | None]] = [("completed", None)] * k_all
    last_eval: list[dict[str, Any]] = [{} for _ in cfgs]
    step = 0
    for epoch in range(1, optim.epochs + 1):
        if not active:
            break
        t0 = time.perf_counter()
        idx = torch.tensor(active, device=device)
        scales = scales_all[idx].view(-1, 1, 1)
        clip = clips[idx]
        stack.train()
        loss_sum = torch.zeros(len(active), device=device)
        n = 0
        for xb, yb in batches:
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast():
                _, raw = stack.shared(xb)
            logits = raw.float() * scales
            losses = torch.stack([criteria[m](logits[j], yb) for j, m in enumerate(active)])
            opt.zero_grad()
            losses.sum().backward()
            if bool((clip > 0).any()):
                _clip_per_member(stack.parameters(), clip)
            opt.step(lr=lrs_all[step, idx])
            step += 1
            loss_sum += losses.detach() * yb.shape[0]
            n += yb.shape[0]
        train_losses = (loss_sum / max(1, n)).tolist()
        train_share = (time.perf_counter() - t0) / len(active)

        stack.eval()
        stay = []
        for j, m in enumerate(active):
            t1 = time.perf_counter()
            lr_now = float(lrs_all[step - steps_per_epoch, m])  # at the epoch's start, as train() reports it
            if not math.isfinite(train_losses[j]):
                outcome[m] = ("failed", f"non-finite training loss ({train_losses[j]}) in epoch {epoch}")
                log.warning("fused member %d failed: %s", m, outcome[m][1])
                continue
            model = models[m]
            stack.load_member(j, model)
            model.eval()
            val_acc, val_clean = accuracy(model, data.val_x, [data.val_y, data.val_y_clean], autocast, channels_last)
            last_eval[m] = evaluate(model, data.test_x, data.test_y, k, autocast, channels_last)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_losses[j],
                val_acc=val_acc,
                val_acc_clean=val_clean,
                test_acc=last_eval[m]["acc"],
                ece=last_eval[m]["ece"],
                gamma_min=last_eval[m]["gamma_min"],
                margin_mean=last_eval[m]["margin_mean"],
                lr=lr_now,
                train_time_s=train_share,
                eval_time_s=time.perf_counter() - t1,
            )
            histories[m].append(metrics.as_dict())
            hook = hooks[m]
            if hook is not None and hook(metrics):
                outcome[m] = ("stopped", f"stopped by caller after epoch {epoch}")
                continue
            saver = savers[m]
            if saver is not None and saver.due(epoch):
                saver.save(
                    epoch,
                    step,
                    opt.momentum_buffers(j),
                    steps_per_epoch=steps_per_epoch,
                    data=data,
                    gen=gen,
                    history=histories[m],
                    wall_time_s=time.perf_counter() - t_start,
                )
            stay.append(j)
        if len(stay) < len(active):
            # Members that stopped or failed leave the stack: they cost nothing from here on.
            active = [active[j] for j in stay]
            if stay:
                stack = stack.select(stay)
                opt = opt.select(stay, stack.parameters())
    if active:
        for j, m in enumerate(active):
            stack.load_member(j, models[m])
    return [
        _result(c, status, reason, histories[m], last_eval[m], data, models[m], device, threads, t_start)
        for m, (c, (status, reason)) in enumerate(zip(cfgs, outcome, strict=True))
    ]


@torch.no_grad()
def _clip_per_member(params: Sequence[torch.Tensor], max_norm: torch.Tensor) -> None:
    """``torch.nn.utils.clip_grad_norm_`` per member of stacked (K, ...) gradients: each member's
    total 2-norm over its own parameters, scaled by min(1, max_norm / (norm + 1e-6)); a member
    with ``max_norm`` 0 is not clipped."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    coef = torch.where(max_norm > 0, coef, torch.ones_like(coef))
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


__all__ = ["FUSION_PAYS", "SHARED_KEYS", "fuse_blocker", "fusion_pays", "searched_blocker", "train_fused"]
