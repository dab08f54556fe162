from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pal_study.data.corruption import (
    ASYMMETRIC_MAPS,
    apply_noise,
    asymmetric_map,
    asymmetric_noise,
    long_tail_counts,
    long_tail_subsample,
    stratified_split,
    symmetric_noise,
)


def balanced_labels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Random labels, about n/k per class."""
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# symmetric


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
def test_symmetric_rate_is_nominal_and_never_self(rate: float, k: int) -> None:
    y = balanced_labels(10_000, k)
    noisy = symmetric_noise(y, rate, k, seed=3)
    flipped = noisy != y
    assert abs(flipped.double().mean().item() - rate) <= 0.02
    # exact per class: round(rate * n_c)
    for c in range(k):
        n_c = int((y == c).sum())
        assert int(flipped[y == c].sum()) == math.floor(rate * n_c + 0.5)
    assert noisy.min() >= 0 and noisy.max() < k
    assert noisy.dtype == torch.int64
    assert torch.equal(y, balanced_labels(10_000, k)), "input must not be modified"


def test_symmetric_targets_uniform_over_other_classes() -> None:
    k = 5
    y = torch.zeros(20_000, dtype=torch.int64)
    noisy = symmetric_noise(y, 0.5, k, seed=0)
    targets = noisy[noisy != 0]
    counts = torch.bincount(targets, minlength=k)
    assert counts[0] == 0
    expected = targets.numel() / (k - 1)
    assert all(abs(int(c) - expected) < 5 * math.sqrt(expected) for c in counts[1:])


def test_symmetric_deterministic_per_seed_and_nested_across_rates() -> None:
    y = balanced_labels(3000, 10)
    a = symmetric_noise(y, 0.4, 10, seed=7)
    assert torch.equal(a, symmetric_noise(y, 0.4, 10, seed=7))
    assert not torch.equal(a, symmetric_noise(y, 0.4, 10, seed=8))
    small = symmetric_noise(y, 0.2, 10, seed=7)
    changed = small != y
    assert torch.equal(small[changed], a[changed]), "flips at 0.2 are a subset of those at 0.4, same targets"


def test_symmetric_accepts_numpy_and_zero_rate() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    assert torch.equal(symmetric_noise(y, 0.0, 3, seed=0), torch.as_tensor(y))


# --------------------------------------------------------------------------------------------
# asymmetric


def test_asymmetric_maps_exactly_as_specified() -> None:
    assert ASYMMETRIC_MAPS["mnist"] == {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
    assert ASYMMETRIC_MAPS["digits"] == ASYMMETRIC_MAPS["mnist"]
    assert ASYMMETRIC_MAPS["cifar10"] == {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
    c100 = ASYMMETRIC_MAPS["cifar100"]
    assert len(c100) == 100
    assert c100[0] == 1 and c100[3] == 4 and c100[4] == 0 and c100[97] == 98 and c100[99] == 95
    assert all(c100[i] // 5 == i // 5 and c100[i] != i for i in range(100))
    assert asymmetric_map("synthetic", 7) == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 0}


@pytest.mark.parametrize(
    "dataset,k", [("mnist", 10), ("digits", 10), ("cifar10", 10), ("cifar100", 100), ("synthetic", 6)]
)
@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_asymmetric_flips_to_target_at_exact_rate(dataset: str, k: int, rate: float) -> None:
    y = balanced_labels(10_000, k, seed=1)
    noisy = asymmetric_noise(y, rate, dataset, k, seed=2)
    mapping = asymmetric_map(dataset, k)
    changed = noisy != y
    for i in torch.nonzero(changed).flatten().tolist():
        assert int(noisy[i]) == mapping[int(y[i])]
    for c in range(k):
        n_c = int((y == c).sum())
        expected = math.floor(rate * n_c + 0.5) if c in mapping else 0
        assert int(changed[y == c].sum()) == expected, f"class {c}"


def test_asymmetric_swap_decided_on_clean_labels() -> None:
    # cats (3) and dogs (5) swap simultaneously: a cat relabelled dog stays dog, and dogs flip to
    # cat at the full rate too (APL's sequential code would turn some new "dogs" back into cats).
    y = torch.tensor([3] * 1000 + [5] * 1000)
    noisy = asymmetric_noise(y, 0.4, "cifar10", 10, seed=0)
    assert int(((y == 3) & (noisy == 5)).sum()) == 400
    assert int(((y == 5) & (noisy == 3)).sum()) == 400
    assert int(((y == 3) & (noisy == 3)).sum()) == 600
    assert set(noisy.tolist()) == {3, 5}


def test_asymmetric_deterministic_and_untouched_classes() -> None:
    y = balanced_labels(5000, 10)
    a = asymmetric_noise(y, 0.3, "mnist", 10, seed=4)
    assert torch.equal(a, asymmetric_noise(y, 0.3, "mnist", 10, seed=4))
    assert not torch.equal(a, asymmetric_noise(y, 0.3, "mnist", 10, seed=5))
    for c in (0, 1, 4, 8, 9):
        assert torch.equal(a[y == c], y[y == c])


def test_apply_noise_dispatch() -> None:
    y = balanced_labels(1000, 10)
    assert torch.equal(apply_noise(y, "symmetric", 0.3, "mnist", 10, 1), symmetric_noise(y, 0.3, 10, 1))
    assert torch.equal(apply_noise(y, "asymmetric", 0.3, "mnist", 10, 1), asymmetric_noise(y, 0.3, "mnist", 10, 1))


# --------------------------------------------------------------------------------------------
# long tail


def test_long_tail_exp_matches_formula_and_known_totals() -> None:
    counts = long_tail_counts(5000, 10, 100, "exp")
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT, ρ=100
    assert sum(long_tail_counts(500, 100, 100)) == 10847  # CIFAR-100-LT, ρ=100
    for n_max, k, rho in [(500, 10, 10), (173, 7, 3.5), (1000, 100, 50)]:
        got = long_tail_counts(n_max, k, rho)
        assert got[0] == n_max and got[-1] == math.floor(n_max / rho)
        for i, n in enumerate(got):
            exact = n_max * rho ** (-i / (k - 1))
            nearest = round(exact)  # float error may put an exact integer just below it
            assert n == max(1, nearest if abs(exact - nearest) < 1e-6 else math.floor(exact))
        assert got == sorted(got, reverse=True)


def test_long_tail_step_and_balanced() -> None:
    assert long_tail_counts(500, 10, 10, "step") == [500] * 5 + [50] * 5
    assert long_tail_counts(500, 5, 10, "step") == [500] * 2 + [50] * 3
    assert long_tail_counts(77, 4, 1.0) == [77] * 4
    assert long_tail_counts(77, 4, 1.0, "step") == [77] * 4
    assert long_tail_counts(10, 3, 1000) == [10, 1, 1], "at least one sample per class"


def test_long_tail_subsample_matches_counts() -> None:
    y = torch.arange(3000) % 10  # 300 per class
    counts = long_tail_counts(300, 10, 20)
    idx = long_tail_subsample(y, counts, seed=0)
    assert idx.unique().numel() == idx.numel() == sum(counts)
    assert torch.bincount(y[idx], minlength=10).tolist() == counts
    assert torch.equal(idx, long_tail_subsample(y, counts, seed=0))
    assert not torch.equal(idx, long_tail_subsample(y, counts, seed=1))
    # nested: the subset at a higher ratio lies inside the one at a lower ratio
    more = long_tail_subsample(y, long_tail_counts(300, 10, 5), seed=0)
    assert set(idx.tolist()) <= set(more.tolist())


def test_stratified_split() -> None:
    y = torch.tensor([0] * 100 + [1] * 30 + [2] * 1)
    keep, held = stratified_split(y, 0.1, seed=0)
    assert torch.bincount(y[held], minlength=3).tolist() == [10, 3, 0]
    assert sorted(keep.tolist() + held.tolist()) == list(range(131))
    k0, h0 = stratified_split(y, 0.0, seed=0)
    assert h0.numel() == 0 and k0.numel() == 131
    # total is round(f * N); per class floor or ceil of f * n_c; a class's last sample stays
    y = torch.tensor([0] * 25 + [1] * 25 + [2] * 25 + [3] * 15 + [4] * 1)
    keep, held = stratified_split(y, 0.1, seed=3)
    per_class = torch.bincount(y[held], minlength=5).tolist()
    assert sum(per_class) == 9
    assert all(
        math.floor(0.1 * n) <= m <= math.ceil(0.1 * n) for m, n in zip(per_class, [25, 25, 25, 15, 1], strict=False)
    )
    assert per_class[4] == 0
    assert torch.equal(held, stratified_split(y, 0.1, seed=3)[1])
    assert not torch.equal(held, stratified_split(y, 0.1, seed=4)[1])


# --------------------------------------------------------------------------------------------
# bad values


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: symmetric_noise([0, 1], 1.0, 2, 0), r"\[0, 1\)"),
        (lambda: symmetric_noise([0, 1], -0.1, 2, 0), "-0.1"),
        (lambda: symmetric_noise([0, 1], float("nan"), 2, 0), "nan"),
        (lambda: symmetric_noise([0, 5], 0.1, 2, 0), "lie in"),
        (lambda: symmetric_noise([0, 1], 0.1, 1, 0), "num_classes"),
        (lambda: asymmetric_noise([0, 1], 0.1, "imagenet", 10, 0), "imagenet.*known"),
        (lambda: asymmetric_noise([0, 1], 0.1, "cifar100", 10, 0), "num_classes=100"),
        (lambda: apply_noise([0, 1], "pairflip", 0.1, "mnist", 10, 0), "symmetric.*pairflip"),
        (lambda: long_tail_counts(100, 10, 0.5), "0.5"),
        (lambda: long_tail_counts(100, 10, float("inf")), "inf"),
        (lambda: long_tail_counts(100, 10, 10, "linear"), "exp.*step.*linear"),
        (lambda: long_tail_counts(0, 10, 10), "n_max"),
        (lambda: long_tail_subsample([0, 0, 1], [3, 1], 0), "class 0 has 2"),
        (lambda: stratified_split([0, 1], 1.0, 0), "fraction"),
        (lambda: symmetric_noise([0.5, 1.0], 0.1, 2, 0), "integers"),
    ],
)
def test_bad_values_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
