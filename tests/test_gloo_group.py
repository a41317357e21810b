"""Two real processes in a gloo group against one process on the concatenated batch.

A global batch of 8 is split 4 + 4 over two processes (ranks 0 and 1, a FileStore in
tmp_path for the rendezvous). :class:`CPUSyncBatchNorm` must then give each process the
rows of the single-process BatchNorm: same outputs, running statistics and input
gradients, and per-process weight gradients that sum to the single-process ones (DDP would
then average them). ``ConfusionMatrix.all_reduce`` must give both processes the matrix of
the whole batch. The workers run once per module (about 5 s: two Python start-ups).
"""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from encnet_lite.metrics import ConfusionMatrix

WORLD, PER_RANK, CHANNELS, CLASSES, IGNORE = 2, 4, 3, 5, 255

WORKER = r"""
import sys
import torch
import torch.distributed as dist
from encnet_lite.distributed import CPUSyncBatchNorm
from encnet_lite.metrics import ConfusionMatrix

rank, world, store, data, out = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
torch.set_num_threads(1)
d = torch.load(data, weights_only=True)
rows = slice(rank * d["per_rank"], (rank + 1) * d["per_rank"])
result = {}
for shape in ("4d", "3d"):
    bn = CPUSyncBatchNorm(d["weight"].numel(), momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(d["weight"])
        bn.bias.copy_(d["bias"])
    outs = []
    for step in range(2):  # two steps: the running statistics are updated twice
        x = d[f"x{shape}"][step][rows].clone().requires_grad_()
        y = bn(x)
        (y * d[f"g{shape}"][step][rows]).sum().backward()
        outs.append({"y": y.detach(), "x_grad": x.grad})
    result[shape] = {"steps": outs, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
                     "running_mean": bn.running_mean, "running_var": bn.running_var,
                     "tracked": bn.num_batches_tracked}
cm = ConfusionMatrix(d["classes"], ignore_index=d["ignore"])
cm.update(d["pred"][rows], d["target"][rows])
result["local_matrix"] = cm.matrix.clone()
result["matrix"] = cm.all_reduce().matrix
torch.save(result, out)
# Both ranks reach the end before either tears the group down: gloo could otherwise abort
# one process at exit ("terminate called without an active exception", seen once here).
dist.barrier()
dist.destroy_process_group()
"""


def _inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    n = WORLD * PER_RANK
    target = torch.randint(0, CLASSES, (n, 6, 7), generator=g)
    target[torch.rand(n, 6, 7, generator=g) < 0.2] = IGNORE
    return {
        "per_rank": PER_RANK, "classes": CLASSES, "ignore": IGNORE,
        "weight": torch.rand(CHANNELS, generator=g) + 0.5,
        "bias": torch.randn(CHANNELS, generator=g),
        # the two ranks see different means, so local statistics differ from global ones
        "x4d": [torch.randn(n, CHANNELS, 5, 6, generator=g)
                + torch.arange(n).float().reshape(n, 1, 1, 1) for _ in range(2)],
        "g4d": [torch.randn(n, CHANNELS, 5, 6, generator=g) for _ in range(2)],
        "x3d": [torch.randn(n, CHANNELS, 9, generator=g) * 2 + 1 for _ in range(2)],
        "g3d": [torch.randn(n, CHANNELS, 9, generator=g) for _ in range(2)],
        "pred": torch.randint(0, CLASSES, (n, 6, 7), generator=g),
        "target": target,
    }


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    data = _inputs()
    torch.save(data, tmp / "data.pt")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(WORLD),
                               str(tmp / "store"), str(tmp / "data.pt"), str(tmp / f"r{r}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(WORLD)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the gloo workers did not finish within 120 s")
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    ranks = [torch.load(tmp / f"r{r}.pt", weights_only=True) for r in range(WORLD)]
    return data, ranks


def _single_process_batchnorm(data: dict, shape: str) -> dict:
    """``nn.BatchNorm`` in one process on the whole batch of 8: the reference."""
    bn = (nn.BatchNorm2d if shape == "4d" else nn.BatchNorm1d)(CHANNELS, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(data["weight"])
        bn.bias.copy_(data["bias"])
    steps = []
    for step in range(2):
        x = data[f"x{shape}"][step].clone().requires_grad_()
        y = bn(x)
        (y * data[f"g{shape}"][step]).sum().backward()
        steps.append({"y": y.detach(), "x_grad": x.grad})
    return {"steps": steps, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var,
            "tracked": bn.num_batches_tracked}


@pytest.mark.parametrize("shape", ["4d", "3d"])
@pytest.mark.numerics
def test_cpu_sync_batchnorm_in_two_processes_is_batchnorm_on_the_whole_batch(gloo_run, shape):
    data, ranks = gloo_run
    ref = _single_process_batchnorm(data, shape)
    for r, got in enumerate(ranks):
        rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
        for step in range(2):
            for key in ("y", "x_grad"):
                torch.testing.assert_close(got[shape]["steps"][step][key],
                                           ref["steps"][step][key][rows], rtol=1e-4, atol=1e-5,
                                           msg=lambda m, k=key, s=step, i=r: f"rank {i} {k} {s}: {m}")
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(got[shape][key], ref[key], rtol=1e-4, atol=1e-5)
        assert int(got[shape]["tracked"]) == 2
    # Each process holds the gradient of its own rows' loss; together, the whole batch's.
    for key in ("w_grad", "b_grad"):
        torch.testing.assert_close(ranks[0][shape][key] + ranks[1][shape][key], ref[key],
                                   rtol=1e-4, atol=1e-4)


def test_the_split_batches_have_different_local_statistics(gloo_run):
    # Without this the BN comparison above could not tell local from global statistics.
    data, _ = gloo_run
    x = data["x4d"][0]
    local = [x[r * PER_RANK:(r + 1) * PER_RANK].mean((0, 2, 3)) for r in range(WORLD)]
    assert float((local[0] - x.mean((0, 2, 3))).abs().min()) > 0.5
    assert float((local[1] - local[0]).abs().min()) > 1.0


def test_confusion_matrix_all_reduce_sums_both_processes(gloo_run):
    data, ranks = gloo_run
    pred, target = data["pred"].flatten(), data["target"].flatten()
    keep = target != IGNORE
    expected = torch.zeros(CLASSES, CLASSES, dtype=torch.int64)
    for t, p in zip(target[keep].tolist(), pred[keep].tolist()):  # counted one pixel at a time
        expected[t, p] += 1
    assert int(expected.sum()) == int(keep.sum()) > 0
    for got in ranks:
        assert torch.equal(got["matrix"], expected)
    # Each process counted only its own shard before the reduction.
    assert torch.equal(ranks[0]["local_matrix"] + ranks[1]["local_matrix"], expected)
    assert not torch.equal(ranks[0]["local_matrix"], expected)
    whole = ConfusionMatrix(CLASSES, ignore_index=IGNORE).update(data["pred"], data["target"])
    assert torch.equal(whole.matrix, expected)
