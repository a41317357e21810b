"""Multi-process training helpers: torchrun detection, reductions, synchronized BatchNorm.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`setup` joins the
process group (NCCL on CUDA, gloo on CPU); launched as a plain ``python`` process it does
nothing and every helper here degrades to the single-process identity, so the
single-process path never needs a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and shows progress bars."""
        return self.rank == 0


SINGLE = DistInfo()  # the single-process default


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_type: str) -> DistInfo:
    """Join the torchrun process group if there is one (idempotent); else single process."""
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """Sum ``t`` over processes (in place, returned); identity in a single process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: Tensor, info: DistInfo) -> Tensor:
    return all_reduce_sum(t, info).div_(info.world_size) if info.enabled else t


def all_gather_object(obj: Any, info: DistInfo) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` in a single process."""
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are computed over all processes' batches.

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this is the same computation for CPU
    tensors (gloo), written with the differentiable ``torch.distributed.nn`` all-reduce so
    autograd sends the statistics' gradients back to every process. Works for
    ``(B, C)``, ``(B, C, L)`` and ``(B, C, H, W)`` inputs. Slow but exact: used for the
    CPU multi-process test and CPU torchrun runs.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count.reshape(1)])
        stats = all_reduce(stats)  # differentiable: backward all-reduces the gradients
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp(min=0)  # biased, as BN normalises
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():  # same update rule as nn.SyncBatchNorm (unbiased var)
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else (
                    1.0 / float(self.num_batches_tracked))
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm by its synchronized form (``nn.SyncBatchNorm`` on GPUs,
    :class:`CPUSyncBatchNorm` on CPU). Parameters and running statistics are kept."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, CPUSyncBatchNorm):
        # The module's dtype is kept (a float64 model stays float64, as with
        # nn.SyncBatchNorm.convert_sync_batchnorm, which reuses the tensors).
        kept = [t for t in (module.weight, module.running_mean) if t is not None]
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum,
                               module.affine, module.track_running_stats,
                               dtype=kept[0].dtype if kept else None)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
