"""The GPU path, on a GPU: precision, channels_last, training steps, checkpoint/resume,
evaluation and the budget. Skipped without CUDA (the CPU suite fakes the device queries:
tests/test_precision.py).

``ENCNET_CUDA_FIGURES=1`` also times EncNet-ResNet50 and FCN-ResNet50 training steps at
480x480, batch 16, fp32 against mixed precision, and prints images/s and peak memory.
"""

import math
import os

import pytest
import torch

from encnet_lite import engine, models, presets
from encnet_lite import train as train_mod
from encnet_lite.data import ContextScenes
from encnet_lite.evaluate import evaluate, load_model
from encnet_lite.losses import SegmentationLoss
from encnet_lite.train import load_history, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda", 0)


def _batch(n=8, size=64):
    data = ContextScenes(n, size=size, split="train")
    images, masks = zip(*(data[i] for i in range(n)))
    return torch.stack(images), torch.stack(masks)


def test_precision_follows_the_gpus_compute_capability():
    major, _ = torch.cuda.get_device_capability(CUDA)
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert engine.resolve_amp("auto", CUDA) == expected
    assert engine.make_scaler(expected, CUDA).is_enabled() == (expected == torch.float16)
    assert engine.resolve_channels_last("auto", CUDA) is True


@pytest.mark.parametrize("amp", ["auto", "fp16", "off"])
def test_training_steps_with_amp_and_channels_last(amp):
    torch.manual_seed(0)
    model = models.encnet_tiny(num_classes=7).to(CUDA)
    model = model.to(memory_format=torch.channels_last).train()
    amp_dtype = engine.resolve_amp(amp, CUDA)
    scaler = engine.make_scaler(amp_dtype, CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    images, masks = engine.to_device(*_batch(), CUDA, channels_last=True)
    assert images.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), engine.forward_context(CUDA, amp_dtype):
        c4 = model.backbone(images)["c4"]
    assert c4.dtype == (amp_dtype or torch.float32)  # convolutions run in the AMP dtype
    losses = [float(engine.train_step(model, images, masks, SegmentationLoss(), optimizer,
                                      scaler, amp_dtype)[0]) for _ in range(8)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]  # the same batch eight times: the loss falls
    assert scaler.is_enabled() == (amp_dtype == torch.float16)


def test_label_check_waits_for_the_gpu_at_the_first_call_only():
    from encnet_lite.losses import check_labels

    torch.manual_seed(0)
    loss_fn = SegmentationLoss()
    outputs = {"main": torch.randn(2, 5, 8, 8, device=CUDA)}
    good = torch.randint(0, 5, (2, 8, 8), device=CUDA)
    with pytest.raises(ValueError, match=r"\[7\]"):  # the first call: the clear error
        loss_fn(outputs, good.masked_fill(good == 0, 7))
    loss_fn(outputs, good)
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")  # a host sync now raises
        with pytest.raises(RuntimeError, match="synchroniz"):
            check_labels(good, 5)  # the waiting check does sync: the mode sees it
        terms = [loss_fn(outputs, good) for _ in range(3)]  # later steps: no sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(math.isfinite(float(t.total)) for t in terms)


def _tiny_run(out, **kw):
    return presets.scenes_encnet_tiny(epochs=2, num_train_images=64, num_val_images=16,
                                      image_size=64, out=str(out), progress=False,
                                      device="cuda", **kw)


def test_checkpoint_resume_and_evaluation_on_the_gpu(tmp_path, monkeypatch):
    full = train(_tiny_run(tmp_path / "full"))
    real, epochs = train_mod.train_one_epoch, []

    def stop_in_epoch_2(run, state, epoch):
        epochs.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt  # a disconnect after the first epoch's checkpoint
        return real(run, state, epoch)

    monkeypatch.setattr(train_mod, "train_one_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_run(tmp_path / "cut"))
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    resumed = train(_tiny_run(tmp_path / "cut"), resume=True)
    steps = [load_history(tmp_path / d, "iterations.jsonl") for d in ("full", "cut")]
    assert [s["iteration"] for s in steps[1]] == [s["iteration"] for s in steps[0]]
    # The second epoch continues the first (GPU kernels are not bit-deterministic, so the
    # losses agree closely, not exactly).
    for a, b in zip(steps[0], steps[1]):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05, abs=0.05)
    assert len(resumed.history) == len(full.history) == 2

    model, cfg, saved = load_model(str(tmp_path / "cut" / "best.pt"), CUDA)
    assert next(model.parameters()).is_cuda
    data = ContextScenes(4, size=64, split="val")
    gpu = evaluate(model, data, 7, multi_scale=True, device=CUDA, amp="auto", progress=False,
                   state=tmp_path / "eval.partial.json")
    cpu = evaluate(model.cpu(), data, 7, multi_scale=True, device=torch.device("cpu"),
                   amp="off", progress=False)
    assert abs(gpu["pixAcc"] - cpu["pixAcc"]) < 0.02  # AMP moves only a few argmaxes
    assert not (tmp_path / "eval.partial.json").exists()


def test_budget_reports_cuda_memory(tmp_path, monkeypatch):
    from encnet_lite.budget import measure_budget

    monkeypatch.chdir(tmp_path)
    b = measure_budget(_tiny_run(tmp_path / "never-written"), iterations=3, eval_images=1)
    assert b["memory_kind"] == "CUDA peak allocated" and b["peak_memory"] > 0
    assert b["memory_limit"] == torch.cuda.get_device_properties(CUDA).total_memory
    assert b["suggestion"] is None and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.environ.get("ENCNET_CUDA_FIGURES") != "1",
                    reason="set ENCNET_CUDA_FIGURES=1 for the ResNet-50 timing figures")
def test_resnet50_step_figures():
    """EncNet-R50 / FCN-R50, 480x480, batch 16: images/s fp32 vs AMP, peak memory."""
    images = torch.randn(16, 3, 480, 480, device=CUDA).contiguous(
        memory_format=torch.channels_last)
    masks = torch.randint(0, 59, (16, 480, 480), device=CUDA)
    figures = {}
    for name, builder in (("EncNet", models.encnet_resnet50), ("FCN", models.fcn_resnet50)):
        for amp in ("off", "auto"):
            model = builder(num_classes=59).to(CUDA)
            model = model.to(memory_format=torch.channels_last).train()
            amp_dtype = engine.resolve_amp(amp, CUDA)
            scaler = engine.make_scaler(amp_dtype, CUDA)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            torch.cuda.reset_peak_memory_stats(CUDA)
            for step in range(13):  # 3 warm-up steps
                if step == 3:
                    torch.cuda.synchronize(CUDA)
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                engine.train_step(model, images, masks, SegmentationLoss(), opt, scaler,
                                  amp_dtype)
            end.record()
            torch.cuda.synchronize(CUDA)
            seconds = start.elapsed_time(end) / 1000 / 10
            figures[name, amp] = (16 / seconds, torch.cuda.max_memory_allocated(CUDA) / 2**30)
            del model, opt
            torch.cuda.empty_cache()
    for (name, amp), (ips, gib) in figures.items():
        print(f"{name:6s} amp={amp:4s} {ips:6.1f} images/s, peak {gib:.1f} GiB")
    ratio = figures["FCN", "auto"][0] / figures["EncNet", "auto"][0]
    print(f"EncNet / FCN step time (AMP): {ratio:.3f}")
    assert figures["EncNet", "auto"][0] > figures["EncNet", "off"][0]  # AMP pays off
    assert ratio < 1.3
