"""One trial: ``train(cfg, on_epoch=None) -> TrialResult``.

The trainer knows nothing of Ray, Optuna or MLflow. It calls ``on_epoch(EpochMetrics)`` after
every epoch; an adapter turns that into ``tune.report`` or logged metrics. If ``on_epoch``
returns True the trial stops early with status ``stopped`` (how an in-process pruner stops it).
With ``checkpoint=CheckpointPolicy(path)`` it saves the trial's state every few epochs and, when
that file exists for the same config, resumes from it (exactly, on the CPU): see
:mod:`pal_study.checkpoint`.

    python -c "from pal_study.config import TrainConfig; from pal_study.train import train; \
print(train(TrainConfig(method='ce+fnpal')).final)"
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pal_study import __version__
from pal_study import checkpoint as ckpt
from pal_study.checkpoint import CheckpointPolicy
from pal_study.classifier import Classifier, build_classifier
from pal_study.config import TrainConfig, method_name, resolve
from pal_study.data import DataBundle, DeviceBatches, build_dataset, get_dataset
from pal_study.device import configure_threads, select_device
from pal_study.heads import ANCHORED_HEADS, Head
from pal_study.losses import build_loss, class_balanced_weights, config_params, get_loss
from pal_study.metrics import EvalAccumulator, group_accuracy
from pal_study.prototypes import prototype_geometry

log = logging.getLogger(__name__)

# Evaluation batch per device: big batches keep a GPU busy, but on the CPU a 2048 batch cost
# 1.8-2.3x more per sample than 128-256 (benchmarks/README.md, diagnostics).
EVAL_BATCH = {"cuda": 2048, "cpu": 256}

# channels_last on the CPU, per backbone: the ones where whole training epochs through this
# module's train_epoch measured faster than contiguous NCHW (median speed-up over interleaved
# rounds, 1 thread / 2 threads, the latter on a loaded machine; benchmarks/README.md (i),
# benchmarks/cpu_layout.py):
# digits_cnn 1.30x / 1.45x, mnist_cnn 1.63x / 1.51x, cifar_cnn8 1.31x / 1.02x, resnet32
# 1.17x / 1.32x (evaluation included: 1.35x / 1.72x / 1.32x / 1.17x at 1 thread). Not measured,
# hence off on the CPU: the MLPs and any backbone registered later. mnist1d_cnn's (N, C, L)
# batches have no channels_last layout. On CUDA every 4-D image batch runs channels_last.
CPU_CHANNELS_LAST = frozenset({"digits_cnn", "mnist_cnn", "cifar_cnn8", "resnet32"})

# torch.compile stays CUDA-only (cfg.compile): on the CPU it did not pay over the recipes'
# length (README (i): 1 thread, the cold compile and eval counted, time to finish the recipe
# against eager channels_last, median of interleaved rounds): mnist_cnn 0.76x, digits_cnn 0.14x,
# mnist1d_cnn 0.47x, cifar_cnn8 0.99x / 1.02x (two runs); only resnet32's 200 epochs repaid it,
# 1.12x / 1.17x. And with torch's default (automatic dynamic shapes) a compiled run is not
# repeatable: the graph its full batches use depends on what the process compiled before
# (static first, dynamic after the first partial batch), so a fresh and a reused worker, or a
# resumed and an uninterrupted trial, gave different results. dynamic=True makes them equal,
# bit for bit; so compiled, resnet32 came out at 1.11x (rounds 0.86x-1.39x), cifar_cnn8 0.97x.


def use_channels_last(cfg: TrainConfig, device: torch.device, x: torch.Tensor) -> bool:
    """Whether ``train()`` runs the model and its batches in channels_last: ``cfg.channels_last``,
    4-D (N, C, H, W) batches only (a 1-D conv's (N, C, L) has no such layout), and on the CPU only
    for the backbones in :data:`CPU_CHANNELS_LAST`. It changes the last bits of CPU results (a
    run stays bit-for-bit repeatable; tests/test_cpu_layout.py)."""
    if not cfg.channels_last or x.dim() != 4:
        return False
    return device.type == "cuda" or cfg.model.arch in CPU_CHANNELS_LAST


@dataclass
class EpochMetrics:
    """What every epoch reports. ``val_acc`` is on the observed (possibly noisy) labels: it is
    what a practitioner can measure, hence the study objective; ``val_acc_clean`` is for analysis."""

    epoch: int
    train_loss: float
    val_acc: float | None
    val_acc_clean: float | None
    test_acc: float
    ece: float
    gamma_min: float
    margin_mean: float
    lr: float
    train_time_s: float
    eval_time_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialResult:
    status: str  # completed | stopped | failed
    reason: str | None
    method: str
    config: dict[str, Any]
    epochs_completed: int
    final: dict[str, Any]
    history: list[dict[str, Any]]
    per_class_acc: list[float | None] = field(default_factory=list)
    group_acc: dict[str, Any] | None = None
    noise_rate_measured: float = 0.0
    class_counts: list[int] = field(default_factory=list)
    prototype_geometry: dict[str, float] = field(default_factory=dict)
    feature_norm: dict[str, Any] = field(default_factory=dict)
    reliability: list[dict[str, float]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0  # on resume: includes the earlier run(s) up to the checkpoint
    resumed_from_epoch: int | None = None  # the checkpoint's epoch when this run resumed one
    checkpoint_path: str | None = None  # the trial's checkpoint file when one exists at the end

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees a half-written result."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False))
        tmp.replace(p)


def _finite(o: Any) -> Any:
    """``o`` with every NaN or infinity as None (JSON has neither; a diverged trial has both)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def loss_params(cfg: TrainConfig, head: Head, class_counts: list[int]) -> dict[str, Any]:
    """build_loss's keywords: the config's loss.* values the loss takes, the head's scale, the
    training class sizes where the loss takes them (LDAM). DRW's weights are not among them: the
    epoch loop sets them (:func:`drw_applies`)."""
    accepted = get_loss(cfg.loss.name).accepted
    params: dict[str, Any] = {}
    for key in config_params():
        value = getattr(cfg.loss, key)
        if value is not None and key in accepted:
            params[key] = value
    params["margin"] = cfg.loss.margin
    params["scale"] = float(head.logit_scale)
    if "class_counts" in accepted:
        params["class_counts"] = class_counts
    return params


def drw_applies(cfg: TrainConfig, epoch: int) -> bool:
    """Whether DRW's class weights apply to the training loss of (1-based) ``epoch``: once
    ``loss.drw_epoch`` epochs are done, counted like ``optim.milestones`` (LDAM-DRW's
    ``epoch // 160`` on 0-based epochs: drw_epoch=160 weights the 161st epoch on)."""
    start = cfg.loss.drw_start
    return start is not None and epoch > start


def drw_class_weights(
    cfg: TrainConfig, class_counts: list[int], device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """DRW's class-balanced weights of a resolved config, from the training split's observed class
    counts (the ones LDAM's margins use), or None when deferred re-weighting is off."""
    start, beta = cfg.loss.drw_start, cfg.loss.drw_beta
    if start is None:
        return None
    epochs = cfg.optim.resolved.epochs
    if start >= epochs:
        log.warning("loss.drw_epoch=%d >= optim.epochs=%d: the class weights never apply", start, epochs)
    if min(class_counts) < 1:
        empty = [c for c, n in enumerate(class_counts) if n < 1]
        raise ValueError(f"deferred re-weighting needs every class in the training split; empty: {empty}")
    if beta is None:
        raise ValueError("loss.drw_beta is unset: resolve the config first (config.resolve)")
    return class_balanced_weights(class_counts, beta).to(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Anchored prototypes are buffers, so they are not here and never weight-decayed.
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim.resolved
    return torch.optim.SGD(
        params,
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov and o.momentum > 0,
        weight_decay=o.weight_decay,
    )


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): warm-up, then schedule."""
    o = cfg.optim.resolved
    total = max(1, o.epochs * steps_per_epoch)
    warm = o.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if o.schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if o.schedule == "step":
        epoch = step // steps_per_epoch
        return o.step_gamma ** sum(1 for m in o.milestones if epoch >= m)
    return 1.0


def autocast_for(device: torch.device, amp: bool) -> Callable[[], Any]:
    """The context a trial's forward passes run in: bf16 autocast on CUDA with ``amp``, else none."""
    if device.type == "cuda" and amp:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def train_batches(cfg: TrainConfig, data: DataBundle) -> tuple[torch.Generator, DeviceBatches]:
    """A trial's shuffled training batches, in the order its seed fixes, and that generator (a
    checkpoint saves and restores it)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = DeviceBatches(
        data.train_x, data.train_y, cfg.optim.resolved.batch_size, shuffle=True, generator=gen, augment=data.augment
    )
    return gen, batches


def _forward_batches(model: Classifier, x: torch.Tensor, autocast: Any, channels_last: bool):
    """Evaluation forward passes in large batches: yields (slice, features, logits) in float32."""
    size = EVAL_BATCH.get(x.device.type, 256)
    for start in range(0, x.shape[0], size):
        sl = slice(start, start + size)
        xb = x[sl]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast():
            z, logits = model(xb)
        yield sl, z.float(), logits.float()


@torch.no_grad()
def evaluate(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, num_classes: int, autocast: Any, channels_last: bool
) -> dict[str, Any]:
    """The test metrics of ``model`` on (x, y): accuracy, per-class accuracy, ECE, margins (metrics.py)."""
    acc = EvalAccumulator(num_classes)
    for sl, z, logits in _forward_batches(model, x, autocast, channels_last):
        acc.update(z, logits, model.head.cosine_logits(z), y[sl])
    return acc.compute()


@torch.no_grad()
def accuracy(
    model: Classifier, x: torch.Tensor, labels: list[torch.Tensor], autocast: Any, channels_last: bool
) -> list[float | None]:
    """Accuracy against each label set in ``labels`` (e.g. noisy and clean validation labels), one pass."""
    if x.shape[0] == 0:
        return [None for _ in labels]
    correct = [torch.zeros((), dtype=torch.long, device=x.device) for _ in labels]
    for sl, _, logits in _forward_batches(model, x, autocast, channels_last):
        pred = logits.argmax(1)
        for i, y in enumerate(labels):
            correct[i] += (pred == y[sl]).sum()
    return [c.item() / x.shape[0] for c in correct]


def train(
    cfg: TrainConfig,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    *,
    data: DataBundle | None = None,
    checkpoint: CheckpointPolicy | None = None,
    replay: bool = False,
) -> TrialResult:
    """Train one trial described by ``cfg`` (resolved here if it is not already).

    ``data`` lets a caller that runs many trials on the same corrupted data set pass it in
    (it must have been built from the same ``cfg.data`` and seed).

    ``checkpoint``: if its file holds a checkpoint of this config, training resumes after the
    checkpoint's epoch (``on_epoch`` is not called again for the restored epochs; a finished
    checkpoint is only re-evaluated); then the trial saves after ``on_epoch`` returned, as the
    policy says. See :mod:`pal_study.checkpoint`. ``replay=True`` calls ``on_epoch`` for the
    restored epochs too, before training on: a caller that dedupes by epoch (the study engine)
    then gets every epoch even if a report was lost with a killed driver.
    """
    t_start = time.perf_counter()
    cfg = resolve(cfg)
    device = select_device(cfg.device)
    threads = configure_threads(cfg.threads)
    on_cuda = device.type == "cuda"

    if data is None:
        data = build_dataset_for(cfg)
    data = data.to(device)
    k = data.num_classes
    train_counts = torch.bincount(data.train_y.cpu(), minlength=k).tolist()

    model = build_classifier(cfg, tuple(data.input_shape), k).to(device)
    channels_last = use_channels_last(cfg, device, data.train_x)
    if channels_last:  # before a checkpoint is loaded: load_state_dict copies into this layout
        model = model.to(memory_format=torch.channels_last)
    criterion = build_loss(cfg.loss.name, k, **loss_params(cfg, model.head, train_counts)).to(device)
    drw_weights = drw_class_weights(cfg, train_counts, device)
    # The compiled module shares parameters with ``model``; the CPU path never compiles (it did
    # not pay there: the torch.compile note under CPU_CHANNELS_LAST).
    net = torch.compile(model) if on_cuda and cfg.compile else model
    optimizer = make_optimizer(model, cfg)
    autocast = autocast_for(device, cfg.amp)
    gen, batches = train_batches(cfg, data)
    optim = cfg.optim.resolved
    steps_per_epoch = len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg))
    clip = optim.grad_clip or 0.0

    history: list[dict[str, Any]] = []
    status, reason = "completed", None
    last_eval: dict[str, Any] = {}
    start_epoch, resumed_from, wall_before = 1, None, 0.0
    schedule: ckpt.SaveSchedule | None = None
    if checkpoint is not None:
        config_hash = ckpt.checkpoint_config_hash(cfg)
        ckpt.remove_stale_tmp(checkpoint.path)
        state = ckpt.load_checkpoint(checkpoint.path, config_hash, config=cfg)
        mismatch = ckpt.incompatibility(state, model, optimizer) if state is not None else None
        if mismatch:
            log.warning("ignoring checkpoint %s: %s", checkpoint.path, mismatch)
            state = None
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            ckpt.restore_rng(state["rng"], gen, on_cuda)
            resumed_from = int(state["epoch"])
            history = list(state["history"])
            wall_before = float(state.get("wall_time_s", 0.0))
            start_epoch = resumed_from + 1
            log.info("resumed from epoch %d (checkpoint %s)", resumed_from, checkpoint.path)
            # What an uninterrupted trial holds after that epoch (and all a finished one needs).
            model.eval()
            last_eval = evaluate(model, data.test_x, data.test_y, k, autocast, channels_last)
        schedule = ckpt.SaveSchedule(
            checkpoint.every_epochs,
            last_saved=resumed_from or 0,
            save_times=list(state.get("save_times", [])) if state is not None else None,
            epoch_times=_epoch_times(history),
        )

    def save(epoch: int, policy: CheckpointPolicy, schedule: ckpt.SaveSchedule) -> None:
        wall = wall_before + (time.perf_counter() - t_start)
        save_trial(policy, schedule, cfg, data, epoch, model, optimizer, scheduler, gen, history, wall)

    if replay and resumed_from is not None and on_epoch is not None:
        for h in history:
            if on_epoch(EpochMetrics(**h)):
                status, reason = "stopped", f"stopped by caller after epoch {h['epoch']}"
                start_epoch = optim.epochs + 1  # nothing more to train
                break

    for epoch in range(start_epoch, optim.epochs + 1):
        t0 = time.perf_counter()
        lr_now = optimizer.param_groups[0]["lr"]
        if drw_weights is not None:
            # Set at the start of every epoch (idempotent): a resumed trial gets the weights too.
            criterion.set_weight(drw_weights if drw_applies(cfg, epoch) else None)
        train_loss = train_epoch(
            model,
            net,
            batches,
            criterion,
            optimizer,
            scheduler,
            clip=clip,
            autocast=autocast,
            channels_last=channels_last,
        )
        t1 = time.perf_counter()
        if not math.isfinite(train_loss):
            status, reason = "failed", f"non-finite training loss ({train_loss}) in epoch {epoch}"
            log.warning("trial failed: %s", reason)
            break

        model.eval()
        val_acc, val_clean = accuracy(model, data.val_x, [data.val_y, data.val_y_clean], autocast, channels_last)
        last_eval = evaluate(model, data.test_x, data.test_y, k, autocast, channels_last)
        t2 = time.perf_counter()
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            val_acc=val_acc,
            val_acc_clean=val_clean,
            test_acc=last_eval["acc"],
            ece=last_eval["ece"],
            gamma_min=last_eval["gamma_min"],
            margin_mean=last_eval["margin_mean"],
            lr=lr_now,
            train_time_s=t1 - t0,
            eval_time_s=t2 - t1,
        )
        history.append(metrics.as_dict())
        if on_epoch is not None and on_epoch(metrics):
            status, reason = "stopped", f"stopped by caller after epoch {epoch}"
            break
        if checkpoint is not None and schedule is not None:
            final_epoch = epoch == optim.epochs
            if checkpoint.keep_final if final_epoch else schedule.due(epoch):
                save(epoch, checkpoint, schedule)

    result = _result(cfg, status, reason, history, last_eval, data, model, device, threads, t_start)
    if checkpoint is not None:
        result.wall_time_s += wall_before
        result.resumed_from_epoch = resumed_from
        result.checkpoint_path = str(checkpoint.path) if checkpoint.path.is_file() else None
    return result


def save_trial(
    policy: CheckpointPolicy,
    schedule: ckpt.SaveSchedule,
    cfg: TrainConfig,
    data: DataBundle,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    gen: torch.Generator,
    history: list[dict[str, Any]],
    wall_time_s: float,
) -> None:
    """Write a trial's checkpoint after ``epoch``: everything :func:`train` needs to go on from
    there exactly (model, optimizer, schedule, the batch order's generator, history)."""
    t = time.perf_counter()
    on_cuda = next(model.parameters()).device.type == "cuda"
    state = {
        "config_hash": ckpt.checkpoint_config_hash(cfg),
        "config": cfg.model_dump(mode="json"),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": ckpt.capture_rng(gen, on_cuda),
        "history": history,
        "save_times": list(schedule.save_times),
        "wall_time_s": wall_time_s,
        "pal_study": str(__version__),
        "torch": str(torch.__version__),
    }
    try:
        ckpt.save_checkpoint(policy.path, state)
    except OSError as e:
        # The trial's result matters more than its checkpoint: warn and keep training.
        log.warning("could not write checkpoint %s after epoch %d (training continues): %s", policy.path, epoch, e)
        return
    dt = time.perf_counter() - t
    schedule.saved(epoch, dt, _epoch_times(history))
    log.debug("checkpoint after epoch %d: %.1f ms", epoch, 1000 * dt)


def _epoch_times(history: list[dict[str, Any]]) -> list[float]:
    return [h["train_time_s"] + h["eval_time_s"] for h in history]


PHASES = ("data", "forward", "backward", "optimizer", "metrics")


def train_epoch(
    model: Classifier,
    net: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batches: DeviceBatches,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    clip: float = 0.0,
    autocast: Any = nullcontext,
    channels_last: bool = False,
    phases: dict[str, float] | None = None,
) -> float:
    """One pass over the training batches; returns the mean training loss (one host sync).

    ``net`` is ``model`` or its compiled form. ``phases``: a dict to which the seconds spent in
    each of :data:`PHASES` are added (benchmarks/epochs.py times the trainer's own epoch this way;
    on the CPU every op is synchronous, so the boundaries are exact). None in training.
    """
    lap = _Laps(phases)
    model.train()
    loss_sum = torch.zeros((), device=batches.y.device)
    n = 0
    for xb, yb in lap.iterate(batches):
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast():
            _, logits = net(xb)
        loss = criterion(logits.float(), yb)
        lap("forward")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward")
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        optimizer.step()
        scheduler.step()
        lap("optimizer")
        # Summed on the device: one host sync per epoch, not per step.
        loss_sum += loss.detach() * yb.shape[0]
        n += yb.shape[0]
        lap("metrics")
    train_loss = (loss_sum / max(1, n)).item()
    lap("metrics")
    return train_loss


class _Laps:
    """Adds the time since the last lap to a phase (a no-op without a ``phases`` dict)."""

    def __init__(self, phases: dict[str, float] | None):
        self.phases = phases
        self.t = time.perf_counter() if phases is not None else 0.0

    def __call__(self, phase: str) -> None:
        if self.phases is not None:
            now = time.perf_counter()
            self.phases[phase] = self.phases.get(phase, 0.0) + now - self.t
            self.t = now

    def iterate(self, batches: Any):
        it = iter(batches)
        while True:
            try:
                item = next(it)
            except StopIteration:
                self("data")
                return
            self("data")
            yield item


def build_dataset_for(cfg: TrainConfig) -> DataBundle:
    d = cfg.data
    key = get_dataset(d.name).options_key
    return build_dataset(
        d.name,
        root=d.root,
        download=d.download,
        noise_kind=d.noise.kind,
        noise_rate=d.noise.rate,
        imbalance_ratio=d.imbalance.ratio,
        imbalance_profile=d.imbalance.profile,
        val_fraction=d.val_fraction,
        seed=cfg.seed,
        options=getattr(d, key).model_dump() if key else None,
    )


def _result(
    cfg: TrainConfig,
    status: str,
    reason: str | None,
    history: list[dict[str, Any]],
    last_eval: dict[str, Any],
    data: DataBundle,
    model: Classifier,
    device: torch.device,
    threads: int,
    t_start: float,
) -> TrialResult:
    final = dict(history[-1]) if history else {}
    groups = None
    if last_eval and cfg.data.imbalance.ratio > 1:
        hi, lo = get_dataset(cfg.data.name).group_thresholds_for(data.class_counts)
        groups = group_accuracy(last_eval["per_class_acc"], data.class_counts, thresholds=(hi, lo))
    return TrialResult(
        status=status,
        reason=reason,
        method=method_name(cfg),
        config=cfg.model_dump(mode="json"),
        epochs_completed=len(history),
        final=final,
        history=history,
        per_class_acc=last_eval.get("per_class_acc", []),
        group_acc=groups,
        noise_rate_measured=float(data.noise_rate_measured),
        class_counts=list(data.class_counts),
        prototype_geometry=prototype_geometry(model.head.weight_matrix().float().cpu()),
        feature_norm=last_eval.get("feature_norm", {}),
        reliability=last_eval.get("reliability", []),
        data=data.summary(),
        env={
            "pal_study": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "threads": threads,
            "anchored": cfg.head.kind in ANCHORED_HEADS,
        },
        wall_time_s=time.perf_counter() - t_start,
    )
