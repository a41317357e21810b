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
tensor. Its forward is two matrix products (X C^T, A^T X) and its hand-written backward
(an autograd Function reusing the forward's assignment) three (X G^T, [A, P] [G; C],
P^T X): the work of the six products X C^T, A^T X, X G^T, A G, P C, P^T X that any
implementation of this form needs, plus two passes over x and a few over (B, N, K).
:func:`residual_encoding_reference` writes the equations literally and is kept for
teaching and tests.
"""

from __future__ import annotations

import math
import warnings
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


# Assignment weights smaller than this are set to 0: the square root of the smallest normal
# number (about 1e-19 in float32, 1e-154 in float64). The backward sets its subnormal values
# to 0 too (only those: their scale is that of the upstream gradient, not of 1).
#
# Why: a subnormal number (below 1.2e-38 in float32) costs a microcode assist on x86 CPUs
# in every multiply it enters or leaves, and so does exp producing one. A logit 87 to 103
# below its row's best gives such a weight, and at the paper's head shape (||x||^2 ~ 512,
# scale in (-1, 0)) 0.3 % to 8 % of all a_ik fall there, depending on the draw of the scales
# and descriptors. Measured on a 2-core Xeon, one thread, batch 4: A^T X took 6.6 to 48.5 ms
# over eight draws, 5.2 to 5.8 ms with those weights zeroed; with every weight subnormal,
# 530 ms against 4 ms. That is why the layer's speed seemed to depend on what ran before
# it: with identical inputs the order made no difference, but a call that draws random
# numbers first changes the next draw (1.7 % vs 2.7 % subnormal weights, forward 39 vs
# 47 ms), and training moves the scales the same way. A weight above sqrt(tiny) times an
# operand above sqrt(tiny) stays normal, and a weight below it is 12 orders of magnitude
# below float32's resolution of the row's total, 1.
def _subnormal_guard(dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).tiny)


def _channels_first(x: Tensor) -> bool:
    """True when x: (B, N, D) is a transposed view of (B, D, N) memory (a flattened map)."""
    return not x.is_contiguous() and x.transpose(1, 2).is_contiguous()


def _along_k(v: Tensor, cols: bool) -> Tensor:
    """A per-codeword vector (K,) shaped to broadcast over (B, N, K), or (B, K, N) if cols."""
    return v.reshape(1, -1, 1) if cols else v.reshape(1, 1, -1)


def _sq_norms(x: Tensor, cols: bool) -> Tensor:
    """||x_i||^2: (B, N), one read of x and no (B, N, D) temporary."""
    if not cols:
        return torch.linalg.vector_norm(x, dim=-1).square_()
    # (B, D, N) memory: torch.linalg.vector_norm over the middle axis is several times
    # slower than one read of x, and squaring x first writes a (B, D, N) copy; so
    # square-accumulate blocks of 8 rows of D into a (B, 8, N) buffer that stays in cache
    # (1.2 to 2.3 ms against 6 to 8 ms at the paper's head shape, batch 4, one thread).
    xt = x.transpose(1, 2)
    d = xt.shape[1]
    if d % 8:
        blocks = list(xt.split(8, dim=1))
        blocks[-1] = F.pad(blocks[-1], (0, 0, 0, 8 - d % 8))  # zero rows add nothing
    else:
        blocks = xt.view(xt.shape[0], d // 8, 8, xt.shape[2]).unbind(1)
    acc = blocks[0].square()
    for block in blocks[1:]:
        acc.addcmul_(block, block)
    return acc.sum(1)


def _x_dot(x: Tensor, m: Tensor, base: Tensor, cols: bool, alpha: float = 1.0) -> Tensor:
    """base + alpha x_i . m_k for x: (B, N, D), m: (B, K, D): (B, N, K), or (B, K, N) when
    cols, so that the product reads x's memory in its own layout (as a transposed operand
    the same product takes about twice as long)."""
    if cols:
        return torch.baddbmm(base, m, x.transpose(1, 2), alpha=alpha)
    return torch.baddbmm(base, x, m.transpose(1, 2), alpha=alpha)


def _weighted_sum(weights: Tensor, x: Tensor, cols: bool,
                  base: Optional[Tensor] = None) -> Tensor:
    """base + W^T X: (B, K, D), for weights W: (B, N, K) (or (B, K, N) when cols).

    When cols, computed as its transpose X^T W (B, D, K), which reads x's (B, D, N) memory
    row by row: about 25 % faster than the same product with x as the transposed operand.
    """
    if cols:
        x_t, w_t = x.transpose(1, 2), weights.transpose(1, 2)
        if base is None:
            return torch.bmm(x_t, w_t).transpose(1, 2)
        return torch.baddbmm(base.transpose(1, 2), x_t, w_t).transpose(1, 2)
    if base is None:
        return torch.bmm(weights.transpose(1, 2), x)
    return torch.baddbmm(base, weights.transpose(1, 2), x)


def _guarded_softmax(logits: Tensor, kdim: int) -> Tensor:
    """softmax over ``kdim`` with no subnormal weight, computed or returned (see
    ``_subnormal_guard``): logits more than log(1/guard) + 1 below their row's maximum are
    raised to that floor before the exponential (exp would make them subnormal, slowly), and
    weights below the guard are set to 0 after it. ``logits`` is overwritten."""
    guard = _subnormal_guard(logits.dtype)
    floor = logits.amax(kdim, keepdim=True).add_(math.log(guard) - 1.0)
    assign = torch.softmax(logits.clamp_min_(floor), kdim)
    return F.threshold_(assign, guard, 0.0)


class _ResidualEncoding(torch.autograd.Function):
    """e_k = sum_i a_ik (x_i - c_k) with a hand-written backward (see residual_encoding).

    The small tensors (B, N, K) are laid out (B, K, N) when x is a view of (B, D, N) memory
    ("cols"), so that every matrix product reads x in its own layout and dL/dx comes back
    in it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, codewords: Tensor, scale: Tensor) -> Tensor:
        cols = _channels_first(x)
        if not cols:
            x = x.contiguous()
        kdim = 1 if cols else 2
        x_sq = _sq_norms(x, cols)  # (B, N)
        # scale_k ||x_i - c_k||^2 = scale_k (||x_i||^2 + ||c_k||^2) + x_i.(-2 scale_k c_k):
        # one product, with the norms as its beta input. Unlike pairwise_sq_distances, no
        # clamp at 0: a distance that rounds below 0 moves a logit by a rounding error.
        s_k = _along_k(scale, cols)
        base = torch.addcmul(s_k * _along_k(codewords.pow(2).sum(-1), cols),
                             x_sq.unsqueeze(kdim), s_k)
        scaled_c = (-2.0 * scale.unsqueeze(-1) * codewords).expand(x.shape[0], -1, -1)
        assign = _guarded_softmax(_x_dot(x, scaled_c, base, cols), kdim)
        mass = assign.sum(3 - kdim)  # (B, K): sum_i a_ik
        # E = A^T X - diag(mass) C: the second term is the product's beta input
        enc = _weighted_sum(assign, x, cols, -mass.unsqueeze(-1) * codewords)
        ctx.save_for_backward(x, codewords, scale, assign, x_sq, mass)
        ctx.cols = cols
        return enc

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: refuse rather than be silently wrong
            raise RuntimeError("residual_encoding is differentiable once: its hand-written "
                               "backward has no derivative (create_graph=True); use "
                               "residual_encoding_reference for higher derivatives")
        x, codewords, scale, assign, x_sq, mass = ctx.saved_tensors
        cols = ctx.cols
        kdim, ndim = (1, 2) if cols else (2, 1)
        with torch.autocast(device_type=grad.device.type, enabled=False):
            grad = grad.to(assign.dtype).contiguous()  # G: (B, K, D) = dL/de
            # dL/da_ik = G_k . x_i - G_k . c_k: one product, the second term its beta input
            dl_da = _x_dot(x, grad, -(grad * codewords).sum(-1).unsqueeze(ndim), cols)
            # softmax backward: q_ik = a_ik (g_ik - sum_j a_ij g_ij) = dL/dlogit_ik (torch's
            # fused kernel, a third of the time of the three ops)
            q = torch._softmax_backward_data(dl_da, assign, kdim, assign.dtype)
            # subnormal gradients (dL/de of order 1e-20 makes some) set to 0 before they
            # enter a product; only those: their scale is that of dL/de, not of 1
            q = F.hardshrink(q, torch.finfo(q.dtype).tiny)
            # dL/dd_ik = scale_k q_ik. Sums over i of q_ik x_i, q_ik ||x_i||^2 and q_ik:
            q_x = _weighted_sum(q, x, cols).sum(0)  # (K, D), one product
            ones = torch.ones_like(x_sq)
            q_sq, q_sum = (q if cols else q.transpose(1, 2)).bmm(
                torch.stack([x_sq, ones], -1)).sum(0).unbind(-1)  # (K,) each
            # dL/dscale_k = sum_i q_ik ||x_i - c_k||^2, expanded as in the forward
            grad_scale = q_sq + codewords.pow(2).sum(-1) * q_sum - 2.0 * (codewords * q_x).sum(-1)
            grad_x = grad_c = None
            if ctx.needs_input_grad[0]:
                grad_x = _input_gradient(x, codewords, scale, grad, assign, q, cols)
            if ctx.needs_input_grad[1]:
                # dL/dc_k = -sum_b mass_k G_k - 2 scale_k (sum_i q_ik x_i - (sum_i q_ik) c_k)
                grad_c = (-mass.unsqueeze(-1) * grad).sum(0) - 2.0 * scale.unsqueeze(-1) * (
                    q_x - q_sum.unsqueeze(-1) * codewords)
        return grad_x, grad_c, grad_scale


def _input_gradient(x: Tensor, codewords: Tensor, scale: Tensor, grad: Tensor, assign: Tensor,
                    q: Tensor, cols: bool) -> Tensor:
    """dL/dx_i = sum_k a_ik G_k - 2 sum_k q_ik scale_k c_k + 2 (sum_k scale_k q_ik) x_i.

    Two products into one buffer (the second accumulates with beta 1) and the gradient
    through ||x_i||^2 as one pass over x in place. Returned in the memory layout of ``x``,
    so that autograd keeps it as ``x.grad`` without a transposed copy.
    """
    b = x.shape[0]
    scaled_c = -2.0 * scale.unsqueeze(-1) * codewords  # (K, D)
    rho = torch.matmul(2.0 * scale, q) if cols else torch.matmul(q, 2.0 * scale)  # (B, N)
    rho = F.hardshrink(rho, torch.finfo(rho.dtype).tiny)  # no subnormal factor either
    if cols:  # (B, D, N) = G^T A + (-2 scale C)^T Q + X^T diag(rho), as its (B, N, D) view;
        # the left operands made contiguous: transposed, the products take twice as long
        out = torch.bmm(grad.transpose(1, 2).contiguous(), assign)
        out.baddbmm_(scaled_c.t().contiguous().expand(b, -1, -1), q)
        return out.addcmul_(x.transpose(1, 2), rho.unsqueeze(1)).transpose(1, 2)
    out = torch.bmm(assign, grad)
    out.baddbmm_(q, scaled_c.expand(b, -1, -1))
    return out.addcmul_(x, rho.unsqueeze(-1))


def residual_encoding(x: Tensor, codewords: Tensor, scale: Tensor) -> Tensor:
    """e_k = sum_i a_ik (x_i - c_k), without materialising the residuals.

    x: (B, N, D), codewords: (K, D), scale: (K,) -> (B, K, D).
    Uses sum_i a_ik (x_i - c_k) = (A^T X)_k - (sum_i a_ik) c_k: two matrix products and
    O(N(K+D)) memory instead of O(NKD). The backward is written by hand from the saved
    assignment: four matrix products (X G^T; G^T A and C^T Q into one buffer; Q^T X, with Q
    the softmax gradient) and one pass over x.
    Assignment weights below sqrt of the smallest normal float are set to 0 (see
    ``_subnormal_guard``: subnormal numbers would make the speed depend on the values).
    Computed in float32 (or float64) even under autocast; the output has that dtype.
    Differentiable once (no double backward).
    """
    _check_shapes(x, codewords, scale)
    dtype = _compute_dtype(x, codewords, scale)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, codewords = x.to(dtype), codewords.to(dtype)
        return _ResidualEncoding.apply(x, codewords, scale.to(dtype))


def residual_encoding_reference(x: Tensor, codewords: Tensor,
                                scale: Tensor) -> Tensor:
    """The paper's equations written literally, with a (B, N, K, D)
    residual tensor. For teaching and tests only: memory grows as B*N*K*D
    (3.8 GB per tensor in float32 at B=16, N=60*60, K=32, D=512).
    """
    _check_shapes(x, codewords, scale)
    # r_ik = x_i - c_k: (B, N, K, D)
    residuals = x.unsqueeze(2) - codewords
    # a_ik = softmax_k(scale_k ||r_ik||^2): (B, N, K)
    assign = torch.softmax(scale * residuals.pow(2).sum(-1), dim=2)
    # e_k = sum_i a_ik r_ik: (B, K, D)
    return (assign.unsqueeze(-1) * residuals).sum(1)


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
    ``kmeans``, ``shared_kmeans``) initialise at their first training-mode forward on a
    finite batch (one holding NaN or Inf is skipped with a warning) and record it in the
    ``initialised`` buffer, so a checkpoint reloads the initialised values.
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
    def init_from_data(self, x: Tensor, max_points: int = 4096) -> bool:
        """Initialise from descriptors ``x: (B, N, D)`` (the data-initialised variants); under
        torch.distributed, rank 0's values are broadcast so every process agrees.

        A batch holding NaN or Inf never initialises (k-means of it would be NaN for good):
        the layer warns, stays uninitialised and initialises from the next finite training
        batch. Under torch.distributed, rank 0's batch decides for every process. Returns
        whether the layer was initialised.
        """
        points = x.detach().reshape(-1, self.channels).float()
        finite = bool(torch.isfinite(points).all())
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        agreed = finite
        if distributed:  # every process must take the same branch (the broadcasts below)
            flag = torch.tensor([float(finite)], device=self.codewords.device)
            torch.distributed.broadcast(flag, 0)
            agreed = bool(flag.item())
        if not agreed:
            warnings.warn(f"Encoding(variant={self.variant!r}): a training batch holding NaN or "
                          "Inf does not initialise the layer; it stays uninitialised and "
                          "initialises from the next finite batch (check the data and the "
                          "layers before it)", RuntimeWarning, stacklevel=2)
            return False
        if finite:  # a process whose own batch is not finite takes rank 0's values below
            self._init_values(points, max_points)
        if distributed:
            torch.distributed.broadcast(self.codewords.data, 0)
            torch.distributed.broadcast(self.scale.data, 0)
        self.initialised.fill_(True)
        return True

    def _init_values(self, points: Tensor, max_points: int) -> None:
        """The variant's data initialisation from finite ``points: (M, D)``."""
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

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_codes={self.num_codes}, variant={self.variant!r}"
