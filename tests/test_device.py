"""Device selection from Ray's allocation (CUDA_VISIBLE_DEVICES), tested without a GPU."""

from __future__ import annotations

import pytest
import torch

from pal_study.device import allotted_cpus, select_device, visible_gpu_ids


def test_visible_ids():
    assert visible_gpu_ids({}) is None
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]


def test_auto_picks_first_visible_gpu_or_cpu():
    gpu = dict(cuda_available=True)
    assert select_device("auto", environ={"CUDA_VISIBLE_DEVICES": "3"}, **gpu) == torch.device("cuda:0")
    assert select_device("auto", environ={"CUDA_VISIBLE_DEVICES": ""}, **gpu) == torch.device("cpu")
    assert select_device("auto", environ={}, cuda_available=False) == torch.device("cpu")
    assert select_device("cpu", environ={"CUDA_VISIBLE_DEVICES": "0"}, **gpu) == torch.device("cpu")
    assert select_device("cuda:1", environ={"CUDA_VISIBLE_DEVICES": "4,5"}, **gpu) == torch.device("cuda:1")


def test_cuda_without_gpu_is_an_error_not_a_fallback():
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        select_device("cuda", environ={}, cuda_available=False)
    with pytest.raises(ValueError, match="only 1 GPU"):
        select_device("cuda:1", environ={"CUDA_VISIBLE_DEVICES": "7"}, cuda_available=True)


def test_allotted_cpus_prefers_explicit_counts():
    assert allotted_cpus({"PAL_STUDY_CPUS": "3", "OMP_NUM_THREADS": "1"}) == 3
    assert allotted_cpus({"OMP_NUM_THREADS": "2"}) == 2
    assert allotted_cpus({}) >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_real_gpu_selected():
    assert select_device("auto").type == "cuda"
