"""Mixed precision fits the GPU: bf16 only with native support (sm80+), else fp16 + scaler."""

import pytest
import torch

from encnet_lite import engine, models
from encnet_lite.losses import SegmentationLoss

CUDA = torch.device("cuda", 0)


def _fake_gpu(monkeypatch, capability):
    # A T4 reports bf16 "supported" (emulated); the choice must not trust that answer.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # GradScaler asks


@pytest.mark.parametrize("capability, expected", [
    ((7, 5), torch.float16),   # T4 (Colab's free GPU)
    ((7, 0), torch.float16),   # V100
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100
])
def test_auto_and_on_pick_bf16_only_with_native_support(monkeypatch, capability, expected):
    _fake_gpu(monkeypatch, capability)
    assert engine.resolve_amp("auto", CUDA) == expected
    assert engine.resolve_amp("on", CUDA) == expected
    assert engine.resolve_amp("off", CUDA) is None
    assert engine.resolve_amp("fp16", CUDA) == torch.float16
    # The grad scaler is on exactly when the choice is fp16.
    assert engine.make_scaler(expected, CUDA).is_enabled() == (expected == torch.float16)


def test_forced_bf16_on_sm75_is_refused_with_the_fix(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5))
    with pytest.raises(ValueError, match=r"7\.5.*amp='fp16'"):
        engine.resolve_amp("bf16", CUDA)
    _fake_gpu(monkeypatch, (9, 0))
    assert engine.resolve_amp("bf16", CUDA) == torch.bfloat16


def test_cpu_choices():
    cpu = torch.device("cpu")
    assert engine.resolve_amp("auto", cpu) is None  # fp32: bf16 autocast is slow on most CPUs
    assert engine.resolve_amp("on", cpu) == torch.bfloat16
    assert engine.resolve_amp("fp16", cpu) == torch.float16
    with pytest.raises(ValueError, match="choose one of"):
        engine.resolve_amp("half", cpu)


def _step_inputs():
    torch.manual_seed(0)
    model = models.encnet_tiny(num_classes=5).train()
    images = torch.randn(2, 3, 32, 32)
    masks = torch.randint(0, 5, (2, 32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, images, masks, opt


def test_fp16_with_grad_scaler_trains_on_cpu():
    cpu = torch.device("cpu")
    model, images, masks, opt = _step_inputs()
    scaler = engine.make_scaler(torch.float16, cpu)
    assert scaler.is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    terms = engine.train_step(model, images, masks, SegmentationLoss(), opt, scaler,
                              torch.float16)
    assert torch.isfinite(terms).all() and terms[0] > 0
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert changed > 0.9 * len(before)  # a real step was taken
    assert scaler.get_scale() == 2.0 ** 16  # no overflow: the scale is kept


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    cpu = torch.device("cpu")
    model, images, masks, opt = _step_inputs()
    scaler = engine.make_scaler(torch.float16, cpu)

    class Overflow(SegmentationLoss):  # an fp16 overflow in the backward pass
        def forward(self, outputs, masks):
            terms = super().forward(outputs, masks)
            return terms._replace(total=terms.total * torch.tensor(float("inf")))

    before = [p.detach().clone() for p in model.parameters()]
    engine.train_step(model, images, masks, Overflow(), opt, scaler, torch.float16)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0 ** 15
