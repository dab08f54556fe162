"""Label noise, long-tail subsampling and stratified splits (docs/method.md §4), as pure functions.

Every function takes labels (a 1-D int tensor, numpy array or sequence) and an integer ``seed``
and returns a new CPU ``int64`` tensor; nothing is modified in place and no global RNG is used,
so a given seed gives bit-for-bit the same result.

Nesting: each function draws one random permutation per class whose size depends only on the
class's size, never on the rate or the count asked for. With the same seed, the samples flipped at
rate 0.2 are therefore a subset of those flipped at 0.4 (with the same targets), and a long-tail
subset at ratio 100 is a subset of the one at ratio 10 — which makes cells of a study paired.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pal_study.data.sets import DATASET_REGISTRY

LabelsLike = torch.Tensor | np.ndarray | Sequence[int]

NOISE_KINDS = ("symmetric", "asymmetric")
IMBALANCE_PROFILES = ("exp", "step")


# Source class -> target class, per data set: each data set declares its own map (DatasetSpec.
# asymmetric_map in data/sets/); this is a read-only view of the fixed ones. CIFAR-100 maps i to the
# next class inside its block of 5 consecutive indices; synthetic data (any k) use i -> (i+1) mod k.
ASYMMETRIC_MAPS: dict[str, dict[int, int]] = {
    spec.name: dict(spec.asymmetric_map)
    for spec in DATASET_REGISTRY.entries()
    if spec.asymmetric_map is not None and not callable(spec.asymmetric_map)
}


def _as_labels(labels: LabelsLike, num_classes: int | None = None) -> torch.Tensor:
    t = labels.detach().to("cpu") if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if t.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"labels must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
            f"got range [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


def _check_rate(rate: float) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"noise rate must be a number in [0, 1), got {rate!r}") from None
    if not (0.0 <= r < 1.0):  # also rejects NaN
        raise ValueError(f"noise rate must be in [0, 1), got {rate!r}")
    return r


def round_half_up(x: float) -> int:
    """``round`` without banker's rounding, so 2.5 -> 3 (Python's round gives 2)."""
    return math.floor(x + 0.5)


def n_flipped(rate: float, n: int) -> int:
    """Number of samples of a class of size ``n`` that noise at ``rate`` flips: round(rate·n)."""
    return min(n, round_half_up(rate * n))


# --------------------------------------------------------------------------------------------
# Long tail


def long_tail_counts(n_max: int, num_classes: int, ratio: float, profile: str = "exp") -> list[int]:
    """Per-class sizes of a long-tailed training set (class 0 is the head).

    exp:  n_i = ⌊n_max · ρ^(−i/(k−1))⌋, so n_0 = n_max and n_{k−1} = ⌊n_max/ρ⌋.
    step: the first ⌊k/2⌋ classes keep n_max, the rest get ⌊n_max/ρ⌋.
    ρ = 1 gives n_max for every class. Every class keeps at least one sample.
    """
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max must be an int >= 1, got {n_max!r}")
    k = _check_num_classes(num_classes)
    try:
        rho = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"imbalance ratio must be a number >= 1, got {ratio!r}") from None
    if not (math.isfinite(rho) and rho >= 1.0):
        raise ValueError(f"imbalance ratio must be a finite number >= 1, got {ratio!r}")
    if profile not in IMBALANCE_PROFILES:
        raise ValueError(f"imbalance profile must be one of {IMBALANCE_PROFILES}, got {profile!r}")
    # The relative epsilon keeps exact products such as 500·100^(-1) = 5 from flooring to 4
    # through float error; it is far below one sample for any realistic n_max.
    eps = 1e-9
    if profile == "exp":
        raw = [n_max * rho ** (-i / (k - 1)) for i in range(k)]
    else:
        half = k // 2
        raw = [float(n_max)] * half + [n_max / rho] * (k - half)
    return [max(1, math.floor(v * (1 + eps))) for v in raw]


def long_tail_subsample(labels: LabelsLike, counts: Sequence[int], seed: int) -> torch.Tensor:
    """Indices (ascending, int64) of a random subset holding ``counts[c]`` samples of class c."""
    k = len(counts)
    if k < 1:
        raise ValueError("counts must name at least one class")
    y = _as_labels(labels, k)
    gen = _generator(seed)
    parts = []
    for c in range(k):
        idx = torch.nonzero(y == c).flatten()
        want = counts[c]
        if isinstance(want, bool) or not isinstance(want, (int, np.integer)) or want < 0:
            raise ValueError(f"counts[{c}] must be an int >= 0, got {want!r}")
        if want > idx.numel():
            raise ValueError(f"class {c} has {idx.numel()} samples, cannot keep counts[{c}]={want}")
        perm = torch.randperm(idx.numel(), generator=gen)
        parts.append(idx[perm[:want]])
    return torch.sort(torch.cat(parts)).values


# --------------------------------------------------------------------------------------------
# Label noise


def symmetric_noise(labels: LabelsLike, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """Flip exactly round(rate·n_c) labels of each class c, each to a uniformly random other class.

    The nominal rate is the actual rate (up to per-class rounding); a label never "flips" to
    itself. Which samples flip is decided on the given (clean) labels.
    """
    k = _check_num_classes(num_classes)
    r = _check_rate(rate)
    y = _as_labels(labels, k)
    gen = _generator(seed)
    out = y.clone()
    for c in range(k):
        idx = torch.nonzero(y == c).flatten()
        n = idx.numel()
        perm = torch.randperm(n, generator=gen)
        # offsets in 1..k-1: uniform over the k-1 other classes, never c itself
        offsets = torch.randint(1, k, (n,), generator=gen)
        m = n_flipped(r, n)
        chosen = idx[perm[:m]]
        out[chosen] = (c + offsets[:m]) % k
    return out


def asymmetric_map(dataset: str, num_classes: int) -> dict[int, int]:
    """The class-dependent flip map of ``dataset`` (its ``DatasetSpec.asymmetric_map``; synthetic: i -> i+1 mod k)."""
    k = _check_num_classes(num_classes)
    spec = DATASET_REGISTRY.get(dataset) if dataset in DATASET_REGISTRY else None
    if spec is None or spec.asymmetric_map is None:
        known = tuple(s.name for s in DATASET_REGISTRY.entries() if s.asymmetric_map is not None)
        raise ValueError(f"no asymmetric noise map for dataset {dataset!r}; known: {known}")
    return spec.noise_map(k)


def asymmetric_noise(labels: LabelsLike, rate: float, dataset: str, num_classes: int, seed: int) -> torch.Tensor:
    """Class-dependent noise: for each source class s of the map, exactly round(rate·n_s) samples
    are relabelled to map[s]; classes not in the map are untouched.

    All flips are decided on the ORIGINAL labels at once. So for a swap (MNIST 5↔6, CIFAR-10
    cat↔dog) a cat relabelled "dog" is never relabelled back, unlike APL's code which flips
    cat→dog and then dog→cat on the already-flipped labels. The overall measured rate is below
    ``rate`` because only the mapped classes are corrupted (for CIFAR-100 and synthetic data every
    class is mapped, so it equals ``rate`` up to rounding).
    """
    k = _check_num_classes(num_classes)
    r = _check_rate(rate)
    mapping = asymmetric_map(dataset, k)
    y = _as_labels(labels, k)
    gen = _generator(seed)
    out = y.clone()
    for src in sorted(mapping):
        idx = torch.nonzero(y == src).flatten()
        perm = torch.randperm(idx.numel(), generator=gen)
        out[idx[perm[: n_flipped(r, idx.numel())]]] = mapping[src]
    return out


def apply_noise(labels: LabelsLike, kind: str, rate: float, dataset: str, num_classes: int, seed: int) -> torch.Tensor:
    """Dispatch on ``kind`` ("symmetric" | "asymmetric")."""
    if kind == "symmetric":
        return symmetric_noise(labels, rate, num_classes, seed)
    if kind == "asymmetric":
        return asymmetric_noise(labels, rate, dataset, num_classes, seed)
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# Splits


def stratified_split(labels: LabelsLike, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held_out) ascending index tensors, held_out stratified by label.

    held_out has round(fraction·N) samples in all (largest-remainder apportionment): each class c
    gives ⌊fraction·n_c⌋, and the classes with the largest remainders one more, never taking a
    class's last sample. Within a class the samples are a seeded random choice. Unlike sklearn's
    stratified split this never fails on classes with one or two samples (long tails, noise).
    """
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"split fraction must be a number in [0, 1), got {fraction!r}") from None
    if not (0.0 <= f < 1.0):
        raise ValueError(f"split fraction must be in [0, 1), got {fraction!r}")
    y = _as_labels(labels)
    gen = _generator(seed)
    classes = torch.unique(y).tolist()
    sizes = [int((y == c).sum()) for c in classes]
    quota = [f * n for n in sizes]
    take = [math.floor(q) for q in quota]
    extra = round_half_up(f * y.numel()) - sum(take)
    # stable sort: ties go to the smaller class index, so the result depends on the labels only
    order = sorted(range(len(classes)), key=lambda i: -(quota[i] - take[i]))
    for i in order:
        if extra <= 0:
            break
        if quota[i] > take[i] and take[i] + 1 < sizes[i]:
            take[i] += 1
            extra -= 1
    held = []
    for c, m in zip(classes, take, strict=False):
        idx = torch.nonzero(y == c).flatten()
        perm = torch.randperm(idx.numel(), generator=gen)
        held.append(idx[perm[:m]])
    mask = torch.zeros(y.numel(), dtype=torch.bool)
    if held:
        mask[torch.cat(held)] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
