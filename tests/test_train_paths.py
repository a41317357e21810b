"""train() on paths test_train.py leaves out: fp16 with its grad scaler (on CPU), and an
interrupted run resumed with DataLoader worker processes."""

import pytest
import torch
from helpers import crash_during
from helpers import tiny as tiny_run

from encnet_lite import checkpoint as ckpt_io
from encnet_lite.train import load_history, train


def tiny(out, **kw):
    """6 iterations per epoch of 4 images of 48 px, 1 epoch."""
    return tiny_run(out, **{"image_size": 48, "num_val_images": 4, "epochs": 1, **kw})


def _steps(out):
    return [(s["iteration"], s["loss"], s["main"], s["aux"], s["se"])
            for s in load_history(out, "iterations.jsonl")]


def _crash_then_resume(cfg, monkeypatch, at: int):
    """Run ``cfg`` until a crash inside iteration ``at``, then resume it to the end."""
    crash_during(cfg, monkeypatch, at)
    return train(cfg, resume=True)


def _fp16_supported_on_cpu() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1))
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _fp16_supported_on_cpu(),
                    reason="this torch build has no float16 autocast on CPU")
def test_fp16_run_uses_the_grad_scaler_and_resumes_its_state(tmp_path, monkeypatch):
    fp32 = train(tiny(tmp_path / "fp32"))
    fp16 = train(tiny(tmp_path / "fp16", amp="fp16"))
    scaler = ckpt_io.load(tmp_path / "fp16" / "last.pt")["scaler"]
    # Enabled, no overflow in 6 steps: the scale is kept and each step counts toward growth.
    assert scaler["scale"] == 2.0 ** 16 and scaler["_growth_tracker"] == 6
    assert ckpt_io.load(tmp_path / "fp32" / "last.pt")["scaler"] == {}  # disabled in fp32
    # Same initial weights and batches: fp16 differs from fp32 by rounding only at step 1.
    first16, first32 = _steps(tmp_path / "fp16")[0], _steps(tmp_path / "fp32")[0]
    assert first16[1] == pytest.approx(first32[1], rel=1e-2) and first16[1] != first32[1]
    assert fp16.history[0]["loss"] == pytest.approx(fp32.history[0]["loss"], rel=0.1)
    # Crash in step 5 (checkpoint after 3): the resumed run continues the scaler's count.
    _crash_then_resume(tiny(tmp_path / "crash", amp="fp16", checkpoint_every=3), monkeypatch, 5)
    assert _steps(tmp_path / "crash") == _steps(tmp_path / "fp16")
    assert ckpt_io.load(tmp_path / "crash" / "last.pt")["scaler"] == scaler


@pytest.mark.slow
@pytest.mark.numerics
def test_resume_with_loader_workers_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    # Two worker processes build the batches (augmentation included): a resumed run must
    # draw the same batches from the same place in the epoch.
    full = train(tiny(tmp_path / "full", workers=2, epochs=2))
    cfg = tiny(tmp_path / "crash", workers=2, epochs=2, checkpoint_every=4)
    resumed = _crash_then_resume(cfg, monkeypatch, 10)
    assert ckpt_io.load(tmp_path / "crash" / "last.pt")["iteration"] == 12
    assert _steps(tmp_path / "crash") == _steps(tmp_path / "full")
    for (name, a), b in zip(resumed.model.state_dict().items(), full.model.state_dict().values()):
        assert torch.equal(a, b), name
    # workers=0 draws the same batches as workers=2
    serial = train(tiny(tmp_path / "serial", workers=0, epochs=2))
    assert _steps(tmp_path / "serial") == _steps(tmp_path / "full")
    assert serial.history[-1]["mIoU"] == full.history[-1]["mIoU"]
