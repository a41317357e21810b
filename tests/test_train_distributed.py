"""torchrun on CPU: 2 processes (gloo) train like 1 process on the same global batch.

Both processes hold identical weights after every step (DDP averages the gradients), and
the run matches single-process training: each global batch of 8 is split 4 + 4 over the
processes, BatchNorm statistics are synchronized (CPUSyncBatchNorm, since
nn.SyncBatchNorm is GPU-only) and ContextScenes has no ignored pixels, so every
per-process mean loss has the same weight. What remains is rounding: sums taken in another
order and E[x^2] - E[x]^2 for the synchronized variance. In float32 that rounding is
amplified by SGD (at the preset's lr 0.02) until, after 8 steps, losses differ by up to 1e-2
and weights by up to 0.34 of a tensor's largest value, by an amount that depends on which
kernels oneDNN picks for the CPU. So both runs train in float64 (images are float32 values,
exact in float64), where the same comparison is tight on every CPU. Dropout is switched off
in both runs (its masks are drawn per process), and the encoding layer is the official one:
a data-initialised variant (k-means of the first batch) would start from rank 0's half of
that batch under torchrun.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = r"""
import os, sys
import torch
from torch import nn
from encnet_lite import presets
from encnet_lite.engine import build_model
from encnet_lite.train import train


class Float64(nn.Module):
    # The library's images are float32; their values are exact in float64.
    def __init__(self, net):
        super().__init__()
        self.net = net.double()

    def forward(self, x):
        return self.net(x.double())


out, tag = sys.argv[1], sys.argv[2]
cfg = presets.scenes_encnet_tiny(num_train_images=32, num_val_images=8, image_size=64,
                                 batch_size=8, epochs=2, workers=0, progress=False,
                                 encoder="official", out=os.path.join(out, tag))
torch.manual_seed(cfg.optim.seed)
model = build_model(cfg, 7)
for m in model.modules():
    if isinstance(m, nn.modules.dropout._DropoutNd):
        m.p = 0.0
result = train(cfg, model=Float64(model))
rank = int(os.environ.get("RANK", "0"))
torch.save({"history": result.history, "state": result.model.state_dict(),
            "sync_bn": sum("SyncBatchNorm" in type(m).__name__ for m in result.model.modules())},
           os.path.join(out, f"{tag}_rank{rank}.pt"))
"""

EPS32, EPS64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
# Weights (and running statistics), as a fraction of each tensor's largest value: the float32
# runs of this comparison ended up to 0.34 apart (SSE4.1, AVX2, AVX-512 and scalar kernels);
# float64's rounding unit is 2**-29 of float32's, so the same growth ends below
# 0.5 * EPS64 / EPS32 = 9.3e-10. Measured: 9e-14 (BatchNorm statistics left per process
# make the losses differ by 190%).
WEIGHT_TOL = 0.5 * EPS64 / EPS32
# The logged losses are float32 (train_step returns its terms so): DDP logs the mean of the
# two processes' rounded losses, summed in float32 (3 roundings of half a float32 ulp at most,
# all terms positive), the single process one rounding of its float64 loss, and the float64
# losses themselves differ by the drift above.
LOSS_RTOL = 3 * EPS32 / 2 + WEIGHT_TOL
LOSS_KEYS = ("loss", "main", "aux", "se")


@pytest.mark.slow
@pytest.mark.numerics
def test_torchrun_two_cpu_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    runs = {
        "single": [sys.executable, str(script), str(tmp_path), "single"],
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", str(script), str(tmp_path), "ddp"],
    }
    for cmd in runs.values():
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]

    def load(name):
        return torch.load(tmp_path / name, weights_only=True)

    single, r0, r1 = load("single_rank0.pt"), load("ddp_rank0.pt"), load("ddp_rank1.pt")
    assert single["sync_bn"] == 0 and r0["sync_bn"] > 0
    # Synchronized BatchNorm kept the model's dtype: every weight is float64 in both runs.
    for run in (single, r0):
        assert {x.dtype for x in run["state"].values() if x.is_floating_point()} == {
            torch.float64}
    # The two processes agree exactly: same weights, same (reduced) history.
    for name, a in r0["state"].items():
        assert torch.equal(a, r1["state"][name]), name
    assert r0["history"] == r1["history"]
    # Only rank 0 wrote the run folder.
    assert not list(tmp_path.glob("ddp/.*.tmp-*")) and (tmp_path / "ddp" / "last.pt").is_file()
    assert not (tmp_path / "ddp" / "train.lock").exists()  # released by rank 0

    def steps(tag):
        lines = (tmp_path / tag / "iterations.jsonl").read_text().splitlines()
        return torch.tensor([[json.loads(s)[k] for k in LOSS_KEYS] for s in lines],
                            dtype=torch.float64)

    a, b = steps("single"), steps("ddp")
    assert a.shape == b.shape == (8, 4) and bool((a > 0).all())
    torch.testing.assert_close(b, a, rtol=LOSS_RTOL, atol=0)
    for name, x in single["state"].items():
        if not x.is_floating_point():  # num_batches_tracked: the same count of steps
            assert torch.equal(r0["state"][name], x), name
            continue
        scale = float(x.abs().max())
        torch.testing.assert_close(r0["state"][name], x, rtol=0, atol=WEIGHT_TOL * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert len(single["history"]) == len(r0["history"]) == 2
    for h1, h2 in zip(single["history"], r0["history"]):
        assert h1.keys() == h2.keys()
        for key in h1.keys() - {"seconds", "images_per_s"}:
            if key in LOSS_KEYS:  # epoch means of the logged float32 losses
                assert h2[key] == pytest.approx(h1[key], rel=LOSS_RTOL, abs=0), key
            elif key in ("assignment_perplexity", "largest_scale_share"):
                assert h2[key] == pytest.approx(h1[key], rel=WEIGHT_TOL, abs=0), key
            else:
                # Scores are counts of argmax pixels: one would change only where two logits
                # tie to within the drift above (1e-13 measured), so they are equal.
                assert h2[key] == h1[key], key
    # The model learnt something, so that the equal scores say more than "all background".
    assert single["history"][-1]["pixAcc"] > single["history"][0]["pixAcc"]


def test_single_process_never_needs_a_process_group(monkeypatch):
    import torch.distributed as dist

    from encnet_lite import distributed as d

    for world in (None, "1"):  # a plain `python` run, or torchrun with one process
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        assert not d.launched_by_torchrun()
        info = d.setup("cpu")
        assert info == d.DistInfo() and not info.enabled and info.is_main
        assert not dist.is_initialized()
    # Every helper is the single-process identity.
    t = torch.tensor([1.0, 2.0])
    assert d.all_reduce_sum(t, info) is t and t.tolist() == [1.0, 2.0]
    assert d.all_reduce_mean(t, info).tolist() == [1.0, 2.0]
    assert d.all_gather_object({"a": 1}, info) == [{"a": 1}]
    assert d.broadcast_object("x", info) == "x"
    d.barrier(info)
    d.teardown()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert d.launched_by_torchrun()  # what setup() would then join
    assert d.DistInfo(1, 2).enabled and not d.DistInfo(1, 2).is_main
