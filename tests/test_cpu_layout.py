"""channels_last on the CPU (``train.use_channels_last``; benchmarks/README.md (i)).

On the CPU the layout changes which convolution kernels run, hence the summation order: results
move in the last bits. What must hold: each setting is bit-for-bit repeatable (same seed, same
threads), the two settings agree within a stated tolerance, and a checkpointed trial resumes
exactly, with its model still channels_last after the checkpoint is loaded.
"""

from __future__ import annotations

import pytest
import torch

import pal_study.train as train_mod
from pal_study.checkpoint import CheckpointPolicy, checkpoint_config_hash, load_checkpoint
from pal_study.config import TrainConfig, resolve
from pal_study.train import CPU_CHANNELS_LAST, build_classifier, train, use_channels_last

# A backbone that runs channels_last on the CPU, on the real digits (1 thread: the same kernels
# every run). 2 epochs at the digits recipe; well under a second per run.
ARCH = "digits_cnn"
DATA = {"name": "digits"}
EPOCHS = 2
# channels_last vs contiguous: test accuracy within 1 point, training loss within 1e-3 relative,
# at every epoch (measured over seeds 0-4: test accuracy identical, loss at most 1.4e-4 relative).
ACC_TOL, LOSS_RTOL = 0.01, 1e-3


def _cfg(channels_last: bool, arch: str = ARCH) -> TrainConfig:
    return TrainConfig(
        method="ce+fnpal",
        device="cpu",
        threads=1,
        model={"arch": arch},
        data=DATA,
        optim={"epochs": EPOCHS},
        channels_last=channels_last,
    )


def _strip(history):
    return [{k: v for k, v in e.items() if not k.endswith("time_s")} for e in history]


def _is_channels_last(w: torch.Tensor) -> bool:
    """A conv weight (out, in > 1, kh, kw) laid out channels_last (with in = 1 both layouts coincide)."""
    assert w.dim() == 4 and w.shape[1] > 1
    return w.is_contiguous(memory_format=torch.channels_last) and w.stride(1) == 1


def _conv_weight(model: torch.nn.Module) -> torch.Tensor:
    """The weight of the first conv with more than one input channel."""
    return next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)


@pytest.fixture(scope="module")
def runs():
    """Two runs of each setting, same seed."""
    assert ARCH in CPU_CHANNELS_LAST
    return {cl: [train(_cfg(cl)), train(_cfg(cl))] for cl in (False, True)}


def test_which_runs_use_channels_last():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    images, seqs = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 40)
    for arch in CPU_CHANNELS_LAST:
        cfg = resolve(_cfg(True, arch))
        assert use_channels_last(cfg, cpu, images)
    assert not use_channels_last(resolve(_cfg(False)), cpu, images)  # the flag turns it off
    mlp = resolve(TrainConfig(data={"name": "digits"}))  # digits_mlp: not in the CPU list
    assert mlp.model.arch not in CPU_CHANNELS_LAST
    assert not use_channels_last(mlp, cpu, torch.zeros(2, 1, 8, 8))
    assert use_channels_last(mlp, cuda, torch.zeros(2, 1, 8, 8))  # CUDA: every image batch
    one_d = resolve(TrainConfig(data={"name": "mnist1d"}))  # mnist1d_cnn: (N, C, L), no such layout
    assert not use_channels_last(one_d, cpu, seqs) and not use_channels_last(one_d, cuda, seqs)


def test_each_setting_is_bit_for_bit_repeatable(runs):
    for cl, (a, b) in runs.items():
        assert a.status == b.status == "completed", cl
        assert _strip(a.history) == _strip(b.history), cl
        assert a.per_class_acc == b.per_class_acc and a.prototype_geometry == b.prototype_geometry, cl
        assert a.feature_norm == b.feature_norm and a.reliability == b.reliability, cl


def test_channels_last_agrees_with_contiguous_within_tolerance(runs):
    off, on = runs[False][0], runs[True][0]
    for h_off, h_on in zip(off.history, on.history, strict=True):
        assert abs(h_on["test_acc"] - h_off["test_acc"]) <= ACC_TOL, (h_on, h_off)
        assert h_on["train_loss"] == pytest.approx(h_off["train_loss"], rel=LOSS_RTOL), (h_on, h_off)


def test_resume_is_exact_and_keeps_the_layout(tmp_path, runs, monkeypatch):
    """Stopped after epoch 2 (epoch 1 checkpointed), resumed: the uninterrupted run's results,
    and the model the resumed epochs train is channels_last."""
    layouts = []
    real = train_mod.train_epoch

    def spy(model, *args, **kw):
        layouts.append((kw.get("channels_last"), _is_channels_last(_conv_weight(model))))
        return real(model, *args, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", spy)
    path = tmp_path / "trial.pt"
    first = train(_cfg(True), lambda m: m.epoch == 2, checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert first.status == "stopped"
    state = load_checkpoint(path, checkpoint_config_hash(_cfg(True)))
    assert state["epoch"] == 1
    conv_keys = [k for k, t in state["model"].items() if t.dim() == 4 and t.shape[1] > 1]
    assert conv_keys and all(_is_channels_last(state["model"][k]) for k in conv_keys)  # saved as trained
    layouts.clear()
    resumed = train(_cfg(True), checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert resumed.resumed_from_epoch == 1 and resumed.status == "completed"
    assert layouts == [(True, True)] * (EPOCHS - 1)
    assert _strip(resumed.history) == _strip(runs[True][0].history)
    assert resumed.per_class_acc == runs[True][0].per_class_acc


def test_checkpoint_weights_load_into_either_layout():
    """A channels_last state dict loads into a channels_last model (layout kept: what a resumed
    trial trains) and into a contiguous one (build_model_from_checkpoint), with equal values."""
    cfg = resolve(_cfg(True))
    model = build_classifier(cfg, (1, 8, 8), 10).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    saved = model.state_dict()
    into_cl = build_classifier(cfg, (1, 8, 8), 10).to(memory_format=torch.channels_last)
    into_cl.load_state_dict(saved)
    assert _is_channels_last(_conv_weight(into_cl))
    into_plain = build_classifier(cfg, (1, 8, 8), 10)
    into_plain.load_state_dict(saved)
    assert not _is_channels_last(_conv_weight(into_plain))
    for (name, a), b in zip(into_cl.state_dict().items(), into_plain.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
