"""Method labels split through the loss and head registries: every registered loss on every
head, labels of losses the registry no longer has, and the registries' order."""

from __future__ import annotations

import itertools

import pytest

from pal_study.heads import HEAD_REGISTRY, PLAIN_HEAD
from pal_study.losses import LOSS_REGISTRY
from pal_study.methods import (
    base_loss,
    head_of,
    method_label,
    method_order,
    parse_method,
    split_method,
    suffix_heads,
)


@pytest.mark.parametrize(("loss", "head"), list(itertools.product(LOSS_REGISTRY.names(), HEAD_REGISTRY.names())))
def test_every_loss_on_every_head_round_trips(loss, head):
    label = method_label(loss, head)
    assert split_method(label) == (loss, "" if head == PLAIN_HEAD else head)
    assert base_loss(label) == loss and head_of(label) == ("" if head == PLAIN_HEAD else head)
    if head != PLAIN_HEAD:
        assert parse_method(label) == (loss, head)


def test_a_composite_loss_is_never_cut_at_its_own_plus():
    assert split_method("nce+rce") == ("nce+rce", "")
    assert split_method("nce+rce+fnpal") == ("nce+rce", "fnpal")


def test_labels_of_losses_the_registry_does_not_have_still_split():
    assert split_method("oldloss+pal") == ("oldloss", "pal")
    assert split_method("oldloss") == ("oldloss", "")
    assert split_method("ce+linear") == ("ce+linear", "")  # the plain head is never a suffix
    with pytest.raises(ValueError, match="loss part 'oldloss'"):
        parse_method("oldloss+pal")


def test_suffix_heads_follow_the_head_registry():
    assert suffix_heads() == tuple(h for h in HEAD_REGISTRY.names() if h != PLAIN_HEAD)
    assert PLAIN_HEAD in HEAD_REGISTRY


def test_methods_sort_in_the_registries_order():
    losses = LOSS_REGISTRY.names()
    labels = [method_label(loss, head) for loss in losses for head in HEAD_REGISTRY.names()]
    shuffled = [*sorted(labels, key=lambda m: m[::-1]), "zz+pal", "aa"]
    ordered = sorted(shuffled, key=method_order)
    assert ordered[: len(labels)] == labels
    assert ordered[len(labels) :] == ["aa", "zz+pal"]  # unregistered losses after, by name
