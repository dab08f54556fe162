"""GPU and node placement: a trial fits on one node or the study is refused up front; a GPU share
means CUDA or a failed trial that says why; readable Ray Tune trial directories."""

from __future__ import annotations

import os

import pytest
import torch
from optuna.trial import TrialState

from pal_study.cli import main
from pal_study.config import ConfigError
from pal_study.study import load_study
from pal_study.study.runner import slots_for_nodes
from tests.support import journal, studies_by_name, write_study  # the same small-study helpers


def test_a_trial_must_fit_on_one_node_not_in_the_cluster_totals(tmp_path):
    study = load_study(write_study(tmp_path, name="nodes", resources={"cpu": 8}))
    four_small = [{"CPU": 4.0}] * 4
    with pytest.raises(ConfigError) as err:
        slots_for_nodes(four_small, study)
    msg = str(err.value)
    assert "resources" in msg and "cpu 8" in msg and "largest node" in msg and "4 CPUs" in msg
    assert "16 CPUs" in msg  # the totals, which would have fitted
    # Slots add up node by node: 6 CPUs left over on two nodes hold no third 8-CPU trial.
    assert slots_for_nodes([{"CPU": 11.0}, {"CPU": 11.0}], study) == 2


def test_gpu_slots_count_per_node(tmp_path):
    study = load_study(write_study(tmp_path, name="gpus", resources={"cpu": 2, "gpu": 0.25}))
    # A node with GPUs but too few CPUs for them, and a CPU-only node.
    assert slots_for_nodes([{"CPU": 4.0, "GPU": 2.0}, {"CPU": 64.0}], study) == 2
    with pytest.raises(ConfigError, match=r"gpu 0.25 on one node"):
        slots_for_nodes([{"CPU": 64.0}, {"CPU": 64.0}], study)


@pytest.mark.parametrize(
    "resources, fragment",
    [
        ({"cpu": 1, "gpu": 2}, "a trial trains on one device"),
        ({"cpu": 1, "gpu": 1.5}, "gpu must be at most 1"),
    ],
)
def test_more_than_one_gpu_per_trial_is_refused(tmp_path, capsys, resources, fragment):
    path = write_study(tmp_path, name="multi", resources=resources)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "resources.gpu" in err


def test_a_gpu_share_with_a_cpu_device_is_refused(tmp_path, capsys):
    path = write_study(
        tmp_path,
        name="cpuonly",
        resources={"cpu": 1, "gpu": 0.5},
        base={"data": {"name": "digits"}, "optim": {"epochs": 1}, "device": "cpu"},
    )
    assert main(["validate", str(path)]) == 2
    assert "reserves a GPU share" in capsys.readouterr().err


@pytest.mark.own_ray
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_share_without_cuda_fails_the_trial_instead_of_training_on_the_cpu(tmp_path):
    """Ray is told there is a GPU (a real local Ray started with num_gpus=1); the trials get their
    share but no usable CUDA: each fails saying so, none trains on the CPU."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from rich.console import Console

    from pal_study.study.runner import RAY_ENV, run_study

    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    path = write_study(
        tmp_path,
        name="nocuda",
        factors={"method": ["ce"]},
        search=[],
        budget={"trials_per_cell": 1},
        finals={"seeds": [0]},
        base={"data": {"name": "digits"}, "optim": {"epochs": 1}},
        resources={"cpu": 1, "gpu": 0.5},
    )
    study = load_study(path)
    ray.init(
        address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    try:
        outcome = run_study(study, runs_dir=tmp_path / "runs", console=Console(quiet=True), track=False)
        # The readable trial directory names (cell, stage, Optuna trial number).
        names = [p.name for p in (tmp_path / "runs" / "nocuda" / "tune").glob("*/*") if p.is_dir()]
    finally:
        ray.shutdown()
    assert outcome.all_failed
    ((reason, n),) = outcome.failure_causes()
    assert n == 1 and "no CUDA GPU is visible" in reason and "device 'cuda'" in reason
    trials = studies_by_name(journal(tmp_path / "runs", "nocuda"))["nocuda/cell000"].trials
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert "epochs_run" not in trials[0].user_attrs or trials[0].user_attrs["epochs_run"] == 0
    assert any(n.startswith("cell000-tune-0000_") for n in names), names
