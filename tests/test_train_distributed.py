"""torchrun on CPU: 2 processes (gloo) train like 1 process on the same global batch.

Both processes hold identical weights after every step (DDP averages the gradients), and
the run matches single-process training: each global batch of 8 is split 4 + 4 over the
processes, BatchNorm statistics are synchronized (CPUSyncBatchNorm, since
nn.SyncBatchNorm is GPU-only) and ContextScenes has no ignored pixels, so every
per-process mean loss has the same weight. What remains is float rounding (sums in another
order, E[x^2] - E[x]^2 for the synchronized variance), about 1e-7 at the first step; SGD
amplifies it step after step (at the scenes preset's lr 0.02, with the head at 10x, to 1e-3
after 8 steps), so this test trains at lr 0.002, where losses agree to 1e-4 relative and
weights to 1e-3 after 8 steps. Dropout is switched off in both runs (its masks are drawn
per process), and the encoding layer is the official one: a data-initialised variant
(k-means of the first batch) would start from rank 0's half of that batch under torchrun.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = r"""
import json, os, sys
import torch
from torch import nn
from encnet_lite import presets
from encnet_lite.engine import build_model
from encnet_lite.train import load_history, train

out, tag = sys.argv[1], sys.argv[2]
cfg = presets.scenes_encnet_tiny(num_train_images=32, num_val_images=8, image_size=64,
                                 batch_size=8, epochs=2, workers=0, progress=False, lr=0.002,
                                 encoder="official", out=os.path.join(out, tag))
torch.manual_seed(cfg.seed)
model = build_model(cfg, 7)
for m in model.modules():
    if isinstance(m, nn.modules.dropout._DropoutNd):
        m.p = 0.0
result = train(cfg, model=model)
rank = int(os.environ.get("RANK", "0"))
torch.save({"history": result.history, "state": result.model.state_dict(),
            "sync_bn": sum("SyncBatchNorm" in type(m).__name__ for m in result.model.modules())},
           os.path.join(out, f"{tag}_rank{rank}.pt"))
"""


@pytest.mark.slow
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
    # The two processes agree exactly: same weights, same (reduced) history.
    for name, a in r0["state"].items():
        assert torch.equal(a, r1["state"][name]), name
    assert r0["history"] == r1["history"]
    # Only rank 0 wrote the run folder.
    assert not list(tmp_path.glob("ddp/.*.tmp-*")) and (tmp_path / "ddp" / "last.pt").is_file()
    assert not (tmp_path / "ddp" / "train.lock").exists()  # released by rank 0

    def steps(tag):
        lines = (tmp_path / tag / "iterations.jsonl").read_text().splitlines()
        return torch.tensor([[json.loads(s)[k] for k in ("loss", "main", "aux", "se")]
                             for s in lines])

    a, b = steps("single"), steps("ddp")
    assert a.shape == b.shape == (8, 4)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for name, x in single["state"].items():
        if x.is_floating_point():
            # Running statistics average the synchronized batch moments of every step, whose
            # rounding differs most (E[x^2] - E[x]^2): measured up to 3.4e-4 on a mean of 0.08.
            atol = 1e-3 if "running_" in name else 1e-4
            torch.testing.assert_close(r0["state"][name], x, rtol=1e-3, atol=atol,
                                       msg=lambda m, n=name: f"{n}: {m}")
    for h1, h2 in zip(single["history"], r0["history"]):
        assert h2["pixAcc"] == pytest.approx(h1["pixAcc"], abs=2e-3)


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
