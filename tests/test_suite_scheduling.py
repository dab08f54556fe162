"""The suite's own scheduling (tests/conftest.py): tests that share a module-scoped study run on
one xdist worker, so the study runs once; a pytest or pytest-xdist upgrade that silently stops the
grouping (as pytest 9.2 with pytest-xdist 3.8 does) fails here instead of doubling those studies."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def shared_here():
    return os.getpid()


def test_tests_sharing_a_module_fixture_are_grouped_on_one_worker(shared_here, request):
    assert request.node.get_closest_marker("xdist_group").args == (__name__,)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("the grouping is xdist's: run under -n")
    assert request.node.nodeid.endswith(f"@{__name__}"), request.node.nodeid


def test_slow_tests_are_handed_out_first(request):
    items = request.session.items
    slow = [i for i, item in enumerate(items) if item.get_closest_marker("slow")]
    assert slow == list(range(len(slow)))  # every slow test before the first other one
