"""K models of one architecture trained as one (horizontal fusion, as HFTA does operator by
operator, here with ``torch.func``): their parameters and buffers stacked along a leading member
axis, one vmapped forward and one backward for all, and an SGD step with per-member learning
rate, momentum, weight decay and Nesterov flag. Each member keeps its own batch-norm statistics
and hyperparameters; its inputs are its own (``x`` is (K, batch, ...): per-member data order and
labels are the caller's). A member's numbers match the same model trained alone with
``torch.optim.SGD`` to float rounding, not bit for bit (the fused update multiplies by a
per-member tensor where ``torch.optim.SGD`` uses a scalar): after 30 steps every parameter and
BN statistic within 1e-5 · (1 + |value|), measured worst 2.8e-6 (tests/test_fusion.py). The
forward of equal weights on equal inputs is bit-identical.

Whether fusing pays depends on the model and the device (benchmarks/fusion.py measures the step
time per member, fused against one member at a time).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class StackedModules:
    """``members`` (same class and shapes) as one callable on (K, batch, ...) inputs.

    ``params`` are new leaf tensors of shape (K, ...) that require grad (the members' own
    parameters are not trained); ``buffers`` (BN running statistics) are updated in place, per
    member, by a forward in training mode."""

    def __init__(self, members: Sequence[nn.Module]):
        if not members:
            raise ValueError("no members to stack")
        shapes = [[(n, tuple(t.shape)) for n, t in m.state_dict().items()] for m in members]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("members differ in their parameters or buffers: only copies of one architecture fuse")
        self.k = len(members)
        params, buffers = stack_module_state(list(members))
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        # The structure only: functional_call runs it with the stacked tensors.
        self._base = copy.deepcopy(members[0]).to("meta")
        self._base.train(members[0].training)

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        return functional_call(self._base, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor) -> Any:
        if x.shape[0] != self.k:
            raise ValueError(f"inputs for {x.shape[0]} members, {self.k} stacked")
        return vmap(self._one, randomness="different")(self.params, self.buffers, x)

    @property
    def structure(self) -> nn.Module:
        """The module (member 0's, on the meta device) that every member's tensors run through."""
        return self._base

    def shared(self, x: torch.Tensor) -> Any:
        """Every member on the same inputs ``x`` (batch, ...): a pack whose members share their
        data order (a tuning pack of one cell: one seed, one batch stream)."""
        return vmap(self._one, in_dims=(0, 0, None), randomness="different")(self.params, self.buffers, x)

    def select(self, keep: Sequence[int]) -> StackedModules:
        """The members ``keep`` (indices, in order) as a new stack of their current state: how a
        pack drops a member that stopped. The new parameters are new leaves."""
        out = copy.copy(self)
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=next(iter(self.params.values())).device)
        out.k = len(keep)
        out.params = {n: t.detach()[idx].clone().requires_grad_(t.requires_grad) for n, t in self.params.items()}
        out.buffers = {n: t[idx].clone() for n, t in self.buffers.items()}
        return out

    @torch.no_grad()
    def load_member(self, k: int, model: nn.Module) -> nn.Module:
        """Copy member ``k``'s parameters and buffers into ``model`` (one model of the
        architecture, e.g. the member's own, to evaluate or save it alone)."""
        for n, t in self.params.items():
            model.get_parameter(n).copy_(t[k])
        for n, t in self.buffers.items():
            model.get_buffer(n).copy_(t[k])
        return model

    def train(self, mode: bool = True) -> StackedModules:
        self._base.train(mode)
        return self

    def eval(self) -> StackedModules:
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s state_dict (copies), loadable into one model of the architecture."""
        if not 0 <= k < self.k:
            raise IndexError(f"member {k} of {self.k}")
        return {n: t[k].detach().clone() for n, t in {**self.params, **self.buffers}.items()}


def _per_member(values: Sequence[float] | float, k: int, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(values if not isinstance(values, (int, float)) else [values] * k, dtype=like.dtype)
    if v.shape != (k,):
        raise ValueError(f"{k} members, {tuple(v.shape)} values")
    return v.to(like.device)


class FusedSGD:
    """``torch.optim.SGD``'s update rule (PyTorch's documented one: weight decay added to the
    gradient, a momentum buffer started from the first gradient, Nesterov's look-ahead, no
    dampening) applied to stacked (K, ...) parameters with a value per member of ``lr``,
    ``momentum``, ``weight_decay`` and ``nesterov``. ``step(factor)`` scales every member's
    learning rate by ``factor`` (a schedule shared by the pack)."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        *,
        lr: Sequence[float] | float,
        momentum: Sequence[float] | float = 0.0,
        weight_decay: Sequence[float] | float = 0.0,
        nesterov: Sequence[bool] | bool = False,
    ):
        self.params = list(params)
        if not self.params:
            raise ValueError("no parameters")
        k = self.params[0].shape[0]
        like = self.params[0]
        self.k = k
        self.lr = _per_member(lr, k, like)
        self.momentum = _per_member(momentum, k, like)
        self.weight_decay = _per_member(weight_decay, k, like)
        nest = [nesterov] * k if isinstance(nesterov, bool) else list(nesterov)
        if len(nest) != k:
            raise ValueError(f"{k} members, {len(nest)} nesterov flags")
        self.nesterov = torch.tensor([bool(n) for n in nest], device=like.device)
        if bool((self.nesterov & (self.momentum <= 0)).any()):
            raise ValueError("nesterov needs momentum > 0 (as torch.optim.SGD)")
        self._buf: list[torch.Tensor | None] = [None] * len(self.params)

    @staticmethod
    def _b(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def select(self, keep: Sequence[int], params: Sequence[torch.Tensor]) -> FusedSGD:
        """The optimiser of the members ``keep`` (indices) over their new stacked ``params``
        (:meth:`StackedModules.select`'s), momentum buffers carried over."""
        out = copy.copy(self)
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=self.lr.device)
        out.params = list(params)
        out.k = len(keep)
        out.lr, out.momentum, out.weight_decay = self.lr[idx], self.momentum[idx], self.weight_decay[idx]
        out.nesterov = self.nesterov[idx]
        out._buf = [None if b is None else b[idx].clone() for b in self._buf]
        return out

    def momentum_buffers(self, k: int) -> list[torch.Tensor | None]:
        """Member ``k``'s momentum buffer per parameter (None before its first step or without
        momentum), in parameter order: what ``torch.optim.SGD`` keeps as ``momentum_buffer``."""
        if float(self.momentum[k]) <= 0:
            return [None] * len(self.params)
        return [None if b is None else b[k].clone() for b in self._buf]

    @torch.no_grad()
    def step(self, factor: float = 1.0, lr: torch.Tensor | None = None) -> None:
        """One update; ``lr`` (K,) replaces the learning rates for this step (a schedule per
        member), else each member's ``lr`` times ``factor``."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            b = self._b
            m = b(self.momentum, p)
            g = p.grad + b(self.weight_decay, p) * p
            buf = self._buf[i]
            if buf is None:
                buf = g.clone()
                self._buf[i] = buf
            else:
                buf.mul_(m).add_(g)
            # Members without momentum step on the gradient itself (their buffer is unused).
            direction = torch.where(m > 0, torch.where(b(self.nesterov, p), g + m * buf, buf), g)
            step_lr = b(lr.to(p.dtype), p) if lr is not None else b(self.lr, p) * factor
            p.sub_(step_lr * direction)


__all__ = ["FusedSGD", "StackedModules"]
