"""The encoding layer of EncNet (Zhang et al., CVPR 2018; Deep TEN, CVPR 2017).

N descriptors ``x_i`` in R^D are softly assigned to K learnable codewords ``c_k``
and the residuals ``x_i - c_k`` are summed per codeword:

    a_ik = softmax_k(scale_k * ||x_i - c_k||^2),    e_k = sum_i a_ik (x_i - c_k).

``scale`` follows the official code's sign convention: it is the *negative* of the
paper's smoothing factor s_k (scale = -s), initialised uniform in (-1, 0).

Shapes: ``x: (B, N, D)``, ``codewords: (K, D)``, ``scale: (K,)``, ``e: (B, K, D)``.
Descriptors are always the *last* axis of a 3-D input: a channels-first ``(B, D, N)``
tensor (``feature_map.flatten(2)``) must be transposed first (``.transpose(1, 2)``), or
given as the 4-D map ``(B, D, H, W)``. A wrong layout is refused where the shape shows it
(``N != D``); when ``N == D`` the two layouts cannot be told apart, so pass 4-D maps.

:func:`residual_encoding` (the default) never builds the (B, N, K, D) residual
tensor; :func:`residual_encoding_reference` writes the equations literally and is
kept for teaching and tests.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VARIANTS",
    "Encoding",
    "kmeans",
    "hard_assignment",
    "pairwise_sq_distances",
    "residual_encoding",
    "residual_encoding_reference",
    "soft_assignment",
    "vlad",
]


def _check_shapes(x: Tensor, codewords: Tensor, scale: Tensor) -> None:
    """Raise ValueError unless x: (B, N, D), codewords: (K, D), scale: (K,)."""
    if codewords.dim() != 2:
        raise ValueError(f"codewords must be (K, D); got shape {tuple(codewords.shape)}")
    k, d = codewords.shape
    if x.dim() != 3 or x.shape[2] != d:
        raise ValueError(f"x must be (B, N, D) with D={d}; got shape {tuple(x.shape)}")
    if scale.shape != (k,):
        raise ValueError(f"scale must be (K,) with K={k}; got shape {tuple(scale.shape)}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64: never half precision."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def pairwise_sq_distances(x: Tensor, codewords: Tensor) -> Tensor:
    """||x_i - c_k||^2 as ||x_i||^2 - 2 x_i.c_k + ||c_k||^2, clamped at 0.

    x: (B, N, D), codewords: (K, D) -> (B, N, K). Costs O(N(K+D)) memory, not
    O(NKD). Rounding can make the expansion slightly negative when x_i ~ c_k,
    hence the clamp. Callers pass float32/float64 tensors (see ``_compute_dtype``).
    """
    x_sq = x.pow(2).sum(-1, keepdim=True)  # (B, N, 1)
    c_sq = codewords.pow(2).sum(-1)  # (K,)
    dots = x @ codewords.t()  # (B, N, K)
    return (x_sq - 2.0 * dots + c_sq).clamp_min(0.0)


def soft_assignment(x: Tensor, codewords: Tensor, scale: Tensor) -> Tensor:
    """a_ik = softmax over k of scale_k * ||x_i - c_k||^2.

    x: (B, N, D), codewords: (K, D), scale: (K,) -> (B, N, K), rows sum to 1.
    Computed in float32 (float64 for float64 inputs), also under autocast: the
    distance expansion cancels badly in half precision. ``torch.softmax``
    subtracts the row maximum first, so huge distances cannot overflow.
    """
    _check_shapes(x, codewords, scale)
    dtype = _compute_dtype(x, codewords, scale)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, codewords, scale = x.to(dtype), codewords.to(dtype), scale.to(dtype)
        return torch.softmax(scale * pairwise_sq_distances(x, codewords), dim=-1)


def residual_encoding(x: Tensor, codewords: Tensor, scale: Tensor) -> Tensor:
    """e_k = sum_i a_ik (x_i - c_k), without materialising the residuals.

    x: (B, N, D), codewords: (K, D), scale: (K,) -> (B, K, D).
    Uses sum_i a_ik (x_i - c_k) = (A^T X)_k - (sum_i a_ik) c_k: two matrix
    products and O(N(K+D)) memory instead of O(NKD). Computed in float32 (or
    float64) even under autocast; the output has that dtype.
    """
    assign = soft_assignment(x, codewords, scale)  # (B, N, K), checks shapes
    dtype = assign.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, codewords = x.to(dtype), codewords.to(dtype)
        weighted_sum = assign.transpose(1, 2) @ x  # (B, K, D) = A^T X
        mass = assign.sum(1).unsqueeze(-1)  # (B, K, 1) = sum_i a_ik
        return weighted_sum - mass * codewords


def residual_encoding_reference(x: Tensor, codewords: Tensor, scale: Tensor) -> Tensor:
    """The paper's equations written literally, with a (B, N, K, D) residual tensor.

    For teaching and tests only: memory grows as B*N*K*D (3.8 GB per tensor in
    float32 at B=16, N=60*60, K=32, D=512).
    """
    _check_shapes(x, codewords, scale)
    residuals = x.unsqueeze(2) - codewords  # r_ik = x_i - c_k: (B, N, K, D)
    assign = torch.softmax(scale * residuals.pow(2).sum(-1), dim=2)  # a_ik: (B, N, K)
    return (assign.unsqueeze(-1) * residuals).sum(1)  # e_k: (B, K, D)


def hard_assignment(x: Tensor, codewords: Tensor) -> Tensor:
    """One-hot assignment of each x_i to its nearest codeword (bag of words).

    x: (B, N, D), codewords: (K, D) -> (B, N, K) with a single 1 per row.
    """
    dtype = _compute_dtype(x, codewords)
    dist = pairwise_sq_distances(x.to(dtype), codewords.to(dtype))
    nearest = dist.argmin(-1)  # (B, N)
    return nn.functional.one_hot(nearest, codewords.shape[0]).to(x.dtype)


def vlad(x: Tensor, codewords: Tensor) -> Tensor:
    """VLAD: residuals to the nearest codeword, summed per codeword (no normalisation).

    x: (B, N, D), codewords: (K, D) -> (B, K, D). The limit of
    :func:`residual_encoding` when every scale_k -> -infinity.
    """
    assign = hard_assignment(x, codewords)  # (B, N, K)
    return assign.transpose(1, 2) @ x - assign.sum(1).unsqueeze(-1) * codewords


# Encoding variants, by name (``Encoding(D, K, variant=...)``). "official" is the official
# code; the others answer its collapse (see the module docstring of ``Encoding``):
#   shared     one smoothing factor for all codewords (the assignment is nearest-codeword);
#   softplus   scale_k = -softplus(p_k): always negative, as the paper's s_k > 0 means;
#   normscale  scale_k ~ U(-1, 0) / mean ||x||^2 at the first training batch (O(1) logits);
#   kmeans     codewords = k-means of the first training batch's descriptors, one common
#              scale -1 / (mean squared distance to the nearest centre), as NetVLAD does;
#   l2         descriptors L2-normalised before the encoding (||x|| = 1);
#   shared_kmeans  k-means codewords and one shared factor (both of the above).
VARIANTS = ("official", "shared", "softplus", "normscale", "kmeans", "l2", "shared_kmeans")
_DATA_INIT = ("normscale", "kmeans", "shared_kmeans")  # initialised from the first batch
_SHARED = ("shared", "shared_kmeans")  # one smoothing factor for all K codewords


def kmeans(points: Tensor, k: int, iterations: int = 20,
           generator: Optional[torch.Generator] = None) -> Tensor:
    """Lloyd's k-means with k-means++ seeding: ``points: (N, D) -> centres (k, D)``.

    An empty cluster keeps its centre. Deterministic for a given ``generator``.
    """
    n = points.shape[0]
    centres = points[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: next centre drawn proportionally to squared distance
        d2 = torch.cdist(points, centres).pow(2).min(1).values
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        centres = torch.cat([centres, points[torch.multinomial(probs, 1, generator=generator)]])
    for _ in range(iterations):
        labels = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k).to(points.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


class Encoding(nn.Module):
    """Residual encoding layer with K learnable codewords and smoothing factors.

    ``Encoding(channels=D, num_codes=K, variant="official")``; ``forward(x)`` takes a
    feature map (B, D, H, W) or descriptors (B, N, D) and returns (B, K, D).
    Parameters: ``codewords`` (K, D), ``scale`` (K,) (scale = -s of the paper; (1,) for
    the shared variants, and the pre-softplus parameter for ``"softplus"``).

    Why the official initialisation collapses: ``scale_k ||x_i - c_k||^2 = scale_k (||x_i||^2
    - 2 x_i.c_k + ||c_k||^2)`` and codewords start within ``1/sqrt(KD)`` of the origin, so
    when ``||x_i|| >> ||c_k||`` the logits are ``~ scale_k ||x_i||^2``: the codeword with the
    largest scale wins every position. The variants in :data:`VARIANTS` change only the
    factors, the initialisation or the descriptors; the assignment math is
    :func:`soft_assignment` for all of them. The data-initialised ones (``normscale``,
    ``kmeans``, ``shared_kmeans``) initialise at their first training-mode forward and
    record it in the ``initialised`` buffer, so a checkpoint reloads the initialised values.
    """

    def __init__(self, channels: int, num_codes: int, variant: str = "official") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown encoding variant {variant!r}; choose one of {VARIANTS}")
        for name, value in (("channels", channels), ("num_codes", num_codes)):
            if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:
                raise ValueError(f"Encoding: {name} must be a count >= 1, got {value!r}")
        self.channels, self.num_codes, self.variant = channels, num_codes, variant
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))
        self.scale = nn.Parameter(torch.empty(1 if variant in _SHARED else num_codes))
        if variant in _DATA_INIT:
            self.register_buffer("initialised", torch.tensor(False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: c ~ U(+-1/sqrt(K*D)), scale ~ U(-1, 0) (for
        ``softplus``: the parameter whose -softplus is U(-1, -0.05))."""
        bound = 1.0 / math.sqrt(self.num_codes * self.channels)
        nn.init.uniform_(self.codewords, -bound, bound)
        nn.init.uniform_(self.scale, -1.0, 0.0)
        if self.variant == "softplus":  # inverse softplus of s ~ U(0.05, 1)
            with torch.no_grad():
                s = 0.05 - 0.95 * self.scale
                self.scale.copy_(torch.log(torch.expm1(s)))
        if hasattr(self, "initialised"):
            self.initialised.fill_(False)

    def smoothing(self) -> Tensor:
        """The per-codeword factors ``scale: (K,)`` the assignment uses (scale = -s)."""
        if self.variant in _SHARED:
            return self.scale.expand(self.num_codes)
        if self.variant == "softplus":
            return -F.softplus(self.scale)
        return self.scale

    def descriptors(self, x: Tensor) -> Tensor:
        """x: (B, D, H, W) or (B, N, D) -> the descriptors the codewords see, (B, N, D)."""
        d = self.channels
        if x.dim() == 4 and x.shape[1] == d:
            x = x.flatten(2).transpose(1, 2)  # (B, D, H, W) -> (B, H*W, D), a view
        elif not (x.dim() == 3 and x.shape[2] == d):
            hint = ""
            if x.dim() == 3 and x.shape[1] == d:
                hint = ": it looks channels-first (B, D, N); pass x.transpose(1, 2)"
            elif x.dim() == 4 and x.shape[3] == d:
                hint = ": it looks channels-last (B, H, W, D); pass x.permute(0, 3, 1, 2)"
            raise ValueError(f"Encoding expected x of shape (B, {d}, H, W) or (B, N, {d}); "
                             f"got {tuple(x.shape)}{hint}")
        return F.normalize(x, dim=-1) if self.variant == "l2" else x

    def assign(self, x: Tensor) -> Tensor:
        """Soft assignments ``(B, N, K)`` of ``x: (B, D, H, W) or (B, N, D)``."""
        return soft_assignment(self.descriptors(x), self.codewords, self.smoothing())

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, D, H, W) or (B, N, D) -> e: (B, K, D)."""
        x = self.descriptors(x)
        if self.training and hasattr(self, "initialised") and not bool(self.initialised):
            self.init_from_data(x)
        return residual_encoding(x, self.codewords, self.smoothing())

    @torch.no_grad()
    def init_from_data(self, x: Tensor, max_points: int = 4096) -> None:
        """Initialise from descriptors ``x: (B, N, D)`` (the data-initialised variants); under
        torch.distributed, rank 0's values are broadcast so every process agrees."""
        points = x.detach().reshape(-1, self.channels).float()
        gen = torch.Generator(device=points.device).manual_seed(0)
        if len(points) > max_points:  # a deterministic subsample keeps k-means cheap
            points = points[torch.randperm(len(points), generator=gen,
                                           device=points.device)[:max_points]]
        if self.variant == "normscale":
            mean_sq = points.pow(2).sum(1).mean().clamp_min(1e-6)
            self.scale.copy_(torch.empty_like(self.scale).uniform_(-1.0, 0.0) / mean_sq)
        else:
            centres = kmeans(points, self.num_codes, generator=gen)
            nearest = torch.cdist(points, centres).pow(2).min(1).values.mean().clamp_min(1e-6)
            self.codewords.copy_(centres)
            self.scale.fill_(-1.0 / float(nearest))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.codewords.data, 0)
            torch.distributed.broadcast(self.scale.data, 0)
        self.initialised.fill_(True)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_codes={self.num_codes}, variant={self.variant!r}"
