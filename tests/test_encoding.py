"""Checks of encnet_lite.encoding: exactness, gradients, invariances, limits, precision, shapes."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from encnet_lite.encoding import (
    Encoding,
    hard_assignment,
    residual_encoding,
    residual_encoding_reference,
    soft_assignment,
    vlad,
)

# Implementations against references, layouts and orders: rerun under other kernels.
pytestmark = pytest.mark.numerics

# (B, N, K, D), including the degenerate N=1, K=1 and D=1.
SHAPES = [(2, 17, 5, 8), (1, 1, 3, 4), (3, 10, 1, 6), (2, 9, 4, 1), (1, 1, 1, 1), (2, 33, 7, 3)]


def make(b: int, n: int, k: int, d: int, dtype=torch.float64, seed: int = 0):
    """Random x, codewords and negative scales, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=gen, dtype=dtype)
    codewords = torch.randn(k, d, generator=gen, dtype=dtype)
    scale = -torch.rand(k, generator=gen, dtype=dtype) - 0.1
    return [t.requires_grad_() for t in (x, codewords, scale)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape):
    x, c, s = make(*shape)
    torch.testing.assert_close(
        residual_encoding(x, c, s), residual_encoding_reference(x, c, s), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_reference(shape):
    x, c, s = make(*shape)
    grad_out = torch.randn(shape[0], shape[2], shape[3], dtype=torch.float64)
    grads = torch.autograd.grad(residual_encoding(x, c, s), (x, c, s), grad_out)
    grads_ref = torch.autograd.grad(residual_encoding_reference(x, c, s), (x, c, s), grad_out)
    for name, g, g_ref in zip(("x", "codewords", "scale"), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10, msg=f"d/d{name} differs")


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (1, 1, 1, 1), (2, 5, 1, 3), (1, 4, 3, 1)])
def test_gradcheck(shape):
    x, c, s = make(*shape)
    assert torch.autograd.gradcheck(residual_encoding, (x, c, s))
    assert torch.autograd.gradcheck(soft_assignment, (x, c, s))


def test_assignments_are_a_distribution():
    x, c, s = make(2, 20, 6, 5)
    a = soft_assignment(x, c, s)
    assert a.shape == (2, 20, 6)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 20, dtype=a.dtype))


def test_permutation_invariance():
    x, c, s = make(3, 25, 6, 7)
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        residual_encoding(x[:, perm], c, s), residual_encoding(x, c, s), rtol=0, atol=1e-12
    )


def test_hard_assignment_limit_is_vlad():
    """scale_k = -t for every k, t -> infinity: soft assignment -> nearest codeword."""
    x, c, _ = make(2, 40, 5, 3)
    hard = hard_assignment(x, c)
    assert hard.sum(-1).eq(1).all()
    for t in (1e4, 1e6):
        scale = torch.full((5,), -t, dtype=torch.float64)
        torch.testing.assert_close(soft_assignment(x, c, scale), hard, rtol=0, atol=1e-8)
        torch.testing.assert_close(residual_encoding(x, c, scale), vlad(x, c), rtol=0, atol=1e-8)
    # and for a gentle scale the two differ clearly
    gentle = torch.full((5,), -0.1, dtype=torch.float64)
    assert (residual_encoding(x, c, gentle) - vlad(x, c)).abs().max() > 0.1


def test_vlad_by_hand():
    """VLAD on a toy example: two codewords on a line."""
    x = torch.tensor([[[0.0], [0.5], [2.5], [3.0]]])
    c = torch.tensor([[0.0], [3.0]])
    torch.testing.assert_close(vlad(x, c), torch.tensor([[[0.5], [-0.5]]]))


@pytest.mark.parametrize("magnitude", [1e3, 1e4])
def test_stable_for_large_features(magnitude):
    x, c, s = make(2, 50, 8, 64, dtype=torch.float32)
    with torch.no_grad():
        x *= magnitude
        s *= 10.0
    e = residual_encoding(x, c, s)
    a = soft_assignment(x, c, s)
    assert torch.isfinite(e).all() and torch.isfinite(a).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 50))
    e.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, c, s))


# bf16 keeps 8 bits of mantissa, fp16 11: rounding x to them costs a relative error of
# about 2^-9 / 2^-12 at most (measured 6e-4 / 8e-5 here); the layer computes in float32.
AUTOCAST_TOL = {torch.bfloat16: 5e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_finite_and_close(dtype):
    torch.manual_seed(0)
    layer = Encoding(32, 8)
    feat = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        layer.scale.mul_(4.0)  # sharper assignments than the initialisation
        layer.codewords.copy_(torch.randn(8, 32) * 0.5)
        expected = layer(feat)
    with torch.autocast("cpu", dtype=dtype):
        low = feat.to(dtype)  # what an autocast convolution would hand over
        out = layer(low)
    assert out.dtype == torch.float32  # the layer computes in float32 under autocast
    assert torch.isfinite(out).all()
    rel = (out - expected).abs().max() / expected.abs().max()
    assert rel < AUTOCAST_TOL[dtype], f"relative error {rel:.2e}"


def test_autocast_float32_input_is_exact():
    torch.manual_seed(0)
    layer = Encoding(16, 4)
    feat = torch.randn(2, 16, 5, 5)
    expected = layer(feat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(feat)
    torch.testing.assert_close(out, expected)


def test_module_init_and_shapes():
    d, k = 64, 16
    layer = Encoding(d, k)
    assert dict(layer.named_parameters()).keys() == {"codewords", "scale"}
    assert layer.codewords.shape == (k, d) and layer.scale.shape == (k,)
    bound = 1 / math.sqrt(k * d)
    assert layer.codewords.abs().max() <= bound
    assert (layer.scale < 0).all() and (layer.scale >= -1).all()
    feat = torch.randn(2, d, 5, 7)
    e4 = layer(feat)
    e3 = layer(feat.flatten(2).transpose(1, 2).contiguous())
    assert e4.shape == (2, k, d)
    torch.testing.assert_close(e4, e3)


@pytest.mark.parametrize("shape", [(2, 8, 4, 4), (2, 4, 9), (16, 16), (1, 16, 2, 2, 2), (16,)])
def test_module_bad_shapes_raise(shape):
    layer = Encoding(16, 4)
    with pytest.raises(ValueError) as err:
        layer(torch.randn(*shape))
    assert str(tuple(shape)) in str(err.value)  # names the received shape
    assert "(B, 16, H, W)" in str(err.value) and "(B, N, 16)" in str(err.value)  # the expected


@pytest.mark.parametrize("fn", [residual_encoding, residual_encoding_reference, soft_assignment])
def test_functional_bad_shapes_raise(fn):
    x, c, s = make(2, 5, 3, 4)
    with pytest.raises(ValueError, match=r"D=4; got shape \(2, 5, 3\)"):
        fn(x[..., :3], c, s)
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        fn(x, c[0], s)
    with pytest.raises(ValueError, match=r"K=3; got shape \(2,\)"):
        fn(x, c, s[:2])


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_default_never_materialises_bnkd():
    b, n, k, d = 2, 64, 8, 16
    x, c, s = make(b, n, k, d, dtype=torch.float32)
    for fn, creates_bnkd in ((residual_encoding, False), (residual_encoding_reference, True)):
        with _LargestTensor() as mode:
            fn(x, c, s).sum().backward()
        assert (mode.largest >= b * n * k * d) == creates_bnkd, fn.__name__
        if not creates_bnkd:
            assert mode.largest <= max(b * n * d, b * n * k, b * k * d)


def _layouts(b: int, n: int, d: int, seed: int = 0):
    """x: (B, N, D) float64 in three memory layouts: contiguous, a transposed view of
    (B, D, N) memory (a flattened feature map, as Encoding.forward passes it) and neither."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    cols = torch.randn(b, d, n, generator=gen, dtype=torch.float64).transpose(1, 2)
    other = torch.randn(n, b, d, generator=gen, dtype=torch.float64).transpose(0, 1)
    return {"rows": rows, "channels_first": cols, "other": other}


@pytest.mark.parametrize("layout", ["rows", "channels_first", "other"])
@pytest.mark.parametrize("shape", [(2, 17, 5, 8), (3, 10, 1, 6), (2, 33, 7, 3), (1, 1, 3, 4)])
def test_hand_written_backward_matches_the_literal_form_in_every_layout(layout, shape):
    """The custom backward against autograd through the literal (B, N, K, D) form."""
    b, n, k, d = shape
    x = _layouts(b, n, d)[layout].requires_grad_()
    _, c, s = make(b, n, k, d)
    grad_out = torch.randn(b, k, d, dtype=torch.float64)
    e = residual_encoding(x, c, s)
    torch.testing.assert_close(e, residual_encoding_reference(x, c, s), rtol=0, atol=1e-10)
    grads = torch.autograd.grad(e, (x, c, s), grad_out)
    grads_ref = torch.autograd.grad(residual_encoding_reference(x, c, s), (x, c, s), grad_out)
    for name, g, g_ref in zip(("x", "codewords", "scale"), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10, msg=f"d/d{name} differs")


@pytest.mark.parametrize("layout", ["rows", "channels_first"])
def test_custom_function_gradcheck_and_gradient_layout(layout):
    """Finite differences in float64 for x, codewords and scale; dL/dx comes back in x's
    own memory layout, so autograd keeps it as x.grad without a transposed copy."""
    x = _layouts(2, 7, 4)[layout].requires_grad_()
    _, c, s = make(2, 7, 3, 4)
    assert torch.autograd.gradcheck(residual_encoding, (x, c, s))
    residual_encoding(x, c, s).sum().backward()
    assert x.grad.stride() == x.stride()


def test_shared_factor_gradient_flows_through_the_expanded_scale():
    """The shared variants pass one factor expanded to K: its gradient is the sum over k."""
    x, c, s = make(2, 9, 4, 3)
    shared = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c, t: residual_encoding(x, c, t.expand(4)),
                                    (x, c, shared))


def test_double_backward_is_refused():
    """The backward is written by hand and has no derivative itself: create_graph=True is
    refused with an error naming the fix, never silently treated as a constant."""
    x, c, s = make(1, 5, 2, 3)
    with pytest.raises(RuntimeError, match="differentiable once.*residual_encoding_reference"):
        torch.autograd.grad(residual_encoding(x, c, s).sum(), x, create_graph=True)


def _subnormal(t: torch.Tensor) -> int:
    """How many entries of a floating tensor are subnormal (0 < |v| < smallest normal)."""
    if not t.is_floating_point():
        return 0
    mag = t.detach().abs()
    return int(((mag > 0) & (mag < torch.finfo(t.dtype).tiny)).sum())


class _Subnormals(TorchDispatchMode):
    """Counts subnormal entries in every operand and result of every op (and separately of
    the matrix products, where they cost most)."""

    def __init__(self):
        super().__init__()
        self.anywhere, self.in_products, self.products = 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        found = sum(_subnormal(t) for t in (*args, *(out if isinstance(out, (tuple, list))
                                                     else (out,)))
                    if isinstance(t, torch.Tensor))
        self.anywhere += found
        if func.__name__.split(".")[0] in ("mm", "bmm", "addmm", "baddbmm", "baddbmm_"):
            self.products += 1
            self.in_products += found
        return out


def test_no_subnormal_number_in_the_layer():
    """Logit gaps of 87-103 give float32 weights in the subnormal range, which cost a
    microcode assist in every multiply on x86 (the product A^T X ran up to 9x slower,
    depending on the draw): no op of the layer's forward or backward produces or consumes a
    subnormal number, so its speed does not depend on the values, and the result stays
    that of the literal form."""
    gen = torch.Generator().manual_seed(0)
    b, n, k, d = 2, 300, 8, 16
    x = (3.0 * torch.randn(b, d, n, generator=gen)).transpose(1, 2).requires_grad_()
    c = (0.1 * torch.randn(k, d, generator=gen)).requires_grad_()
    s = (-torch.linspace(0.05, 1.2, k)).requires_grad_()
    assert _subnormal(soft_assignment(x, c, s)) > 100  # the literal softmax makes many
    grad_out = torch.randn(b, k, d, generator=gen)
    with _Subnormals() as mode:
        e = residual_encoding(x, c, s)
        grads = torch.autograd.grad(e, (x, c, s), grad_out)
    assert mode.products >= 5 and mode.in_products == 0 and mode.anywhere == 0
    x64, c64, s64 = (t.detach().double().requires_grad_() for t in (x, c, s))
    e64 = residual_encoding_reference(x64, c64, s64)
    grads64 = torch.autograd.grad(e64, (x64, c64, s64), grad_out.double())
    torch.testing.assert_close(e.double(), e64, rtol=1e-4, atol=1e-3)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=1e-3, atol=1e-2 * g64.abs().max().item())


def test_tiny_upstream_gradients_bring_no_subnormal_into_a_product():
    """With dL/de of order 1e-20, the softmax gradients of small weights fall below 1.2e-38:
    they are zeroed before they enter the backward's products (there alone, where they
    would cost most), and the gradients stay those of the literal form."""
    gen = torch.Generator().manual_seed(1)
    b, n, k, d = 2, 300, 8, 16
    x = (3.0 * torch.randn(b, d, n, generator=gen)).transpose(1, 2).requires_grad_()
    c = (0.1 * torch.randn(k, d, generator=gen)).requires_grad_()
    s = (-torch.linspace(0.05, 0.6, k)).requires_grad_()
    grad_out = 1e-20 * torch.randn(b, k, d, generator=gen)
    with _Subnormals() as mode:
        grads = torch.autograd.grad(residual_encoding(x, c, s), (x, c, s), grad_out)
    assert mode.anywhere > 0  # the softmax backward does make some ...
    assert mode.in_products == 0  # ... and none reaches a matrix product
    x64, c64, s64 = (t.detach().double().requires_grad_() for t in (x, c, s))
    grads64 = torch.autograd.grad(residual_encoding_reference(x64, c64, s64),
                                  (x64, c64, s64), grad_out.double())
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=1e-3, atol=1e-2 * g64.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guarded_softmax_zeroes_exactly_the_weights_below_the_guard(dtype):
    """Weights below sqrt(smallest normal) are 0, every other weight is the softmax's."""
    from encnet_lite.encoding import _guarded_softmax

    guard = torch.finfo(dtype).tiny ** 0.5
    gaps = torch.linspace(0.0, 2.5 * math.log(1 / guard), 40, dtype=dtype)  # 0 to deep
    logits = torch.stack([-gaps, -gaps.flip(0)])  # (2, 40): rows with the best at either end
    expected = torch.softmax(logits, -1)
    got = _guarded_softmax(logits.clone(), kdim=-1)
    below = expected < guard
    assert below.any() and (~below).sum() > 10
    assert (got[below] == 0).all()
    torch.testing.assert_close(got[~below], expected[~below], rtol=1e-12 if dtype ==
                               torch.float64 else 1e-6, atol=0)
    assert _subnormal(got) == 0


def test_backward_under_autocast_is_float32():
    """The hand-written backward runs with autocast off, as the forward does: under bf16
    autocast the gradients equal the float32 ones for a float32 input."""
    torch.manual_seed(0)
    layer = Encoding(16, 4)
    feat = torch.randn(2, 16, 5, 5, requires_grad=True)
    layer(feat).square().sum().backward()
    expected = [t.grad.clone() for t in (feat, layer.codewords, layer.scale)]
    for t in (feat, layer.codewords, layer.scale):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = layer(feat).square().sum()
    loss.backward()
    for t, g in zip((feat, layer.codewords, layer.scale), expected):
        assert t.grad.dtype == torch.float32
        torch.testing.assert_close(t.grad, g)


# ------------------------------------------------------------------ variants of the layer


def _initialised(variant: str, d: int = 4, k: int = 3, seed: int = 0) -> Encoding:
    """A float64 layer of ``variant``, data-initialised (where it is) on random descriptors."""
    torch.manual_seed(seed)
    layer = Encoding(d, k, variant=variant).double()
    layer.train()(torch.randn(2, 12, d, dtype=torch.float64) + 2.0)
    return layer


def test_unknown_variant_names_are_refused():
    from encnet_lite.encoding import VARIANTS
    from encnet_lite.presets import TrainConfig

    assert VARIANTS[0] == "official"  # the configs read this tuple itself (no copy to sync)
    with pytest.raises(ValueError, match="choose one of"):
        Encoding(4, 3, variant="nope")
    with pytest.raises(ValueError, match="encoder='nope'"):
        TrainConfig().replace(encoder="nope")


def test_official_variant_is_the_official_layer():
    """Same parameters, same draws from the generator and same output as before variants
    existed: c ~ U(+-1/sqrt(KD)) then scale ~ U(-1, 0), e = residual_encoding(x, c, scale)."""
    d, k = 6, 4
    torch.manual_seed(3)
    layer = Encoding(d, k)
    torch.manual_seed(3)
    bound = 1 / math.sqrt(k * d)
    c = torch.empty(k, d).uniform_(-bound, bound)
    s = torch.empty(k).uniform_(-1.0, 0.0)
    assert layer.variant == "official" and not hasattr(layer, "initialised")
    assert list(layer.state_dict()) == ["codewords", "scale"]
    torch.testing.assert_close(layer.codewords.data, c, rtol=0, atol=0)
    torch.testing.assert_close(layer.scale.data, s, rtol=0, atol=0)
    torch.testing.assert_close(layer.smoothing(), s, rtol=0, atol=0)
    x = torch.randn(2, 9, d)
    torch.testing.assert_close(layer(x), residual_encoding(x, c, s), rtol=0, atol=0)
    torch.testing.assert_close(layer.assign(x), soft_assignment(x, c, s), rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["official", "shared", "softplus", "normscale", "kmeans",
                                     "l2", "shared_kmeans"])
def test_variant_gradcheck(variant):
    """Forward and backward of every variant (w.r.t. input, codewords and scale) in float64."""
    layer = _initialised(variant).eval()
    x = (torch.randn(2, 5, 4, dtype=torch.float64) + 1.0).requires_grad_()
    c = layer.codewords.detach().clone().requires_grad_()
    s = layer.scale.detach().clone().requires_grad_()

    def encode(x, c, s):
        return torch.func.functional_call(layer, {"codewords": c, "scale": s}, (x,))

    assert torch.autograd.gradcheck(encode, (x, c, s))


def test_shared_variant_has_one_factor_and_assigns_to_the_nearest_codeword():
    layer = _initialised("shared", d=3, k=5)
    assert layer.scale.shape == (1,) and len(set(layer.smoothing().tolist())) == 1
    x = torch.randn(2, 40, 3, dtype=torch.float64) * 5
    nearest = torch.cdist(x, layer.codewords.detach().expand(2, 5, 3)).argmin(-1)
    assert torch.equal(layer.assign(x).argmax(-1), nearest)


def test_softplus_variant_keeps_factors_negative():
    layer = _initialised("softplus", k=6)
    s = layer.smoothing()
    assert (s < -0.05 + 1e-12).all() and (s >= -1 - 1e-12).all()  # init in (-1, -0.05)
    with torch.no_grad():
        layer.scale.fill_(50.0)  # a large raw parameter still gives a negative factor
    assert (layer.smoothing() < 0).all() and (layer.smoothing() > -60).all()


def test_normscale_matches_the_descriptor_norm():
    torch.manual_seed(0)
    layer = Encoding(8, 5, variant="normscale")
    x = torch.randn(3, 50, 8) * 4.0
    layer.train()(x)
    mean_sq = x.pow(2).sum(-1).mean()
    scaled = layer.smoothing().detach() * mean_sq
    assert bool(layer.initialised) and (scaled <= 0).all() and (scaled >= -1).all()


def test_kmeans_finds_separated_clusters():
    from encnet_lite.encoding import kmeans

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres[:, None] + 0.1 * torch.randn(3, 30, 2, generator=gen)).reshape(-1, 2)
    found = kmeans(points, 3, generator=torch.Generator().manual_seed(1))
    order = torch.cdist(centres, found).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(found[order], centres, rtol=0, atol=0.1)


@pytest.mark.parametrize("variant", ["kmeans", "shared_kmeans"])
def test_kmeans_variant_initialises_once_and_reloads_from_a_checkpoint(variant):
    torch.manual_seed(0)
    layer = Encoding(2, 3, variant=variant)
    assert layer.scale.shape == ((1,) if variant == "shared_kmeans" else (3,))
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    x = (centres[:, None] + 0.2 * torch.randn(3, 20, 2)).reshape(1, -1, 2)
    layer.eval()(x)
    assert not bool(layer.initialised)  # eval mode never initialises
    layer.train()(x)
    assert bool(layer.initialised)
    assert torch.cdist(centres, layer.codewords.detach()).min(1).values.max() < 0.3
    # one common factor: -1 / mean squared distance to the nearest centre (about 2 * 0.2^2)
    assert len(set(layer.smoothing().tolist())) == 1
    assert -1 / 0.04 < float(layer.scale.detach()[0]) < -1 / 0.2
    assert layer.assign(x).argmax(-1).unique().numel() == 3  # every codeword wins
    saved = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.train()(x + 100.0)  # a later batch does not re-initialise
    torch.testing.assert_close(layer.codewords.detach(), saved["codewords"])
    fresh = Encoding(2, 3, variant=variant)
    fresh.load_state_dict(saved)
    fresh.train()(x + 100.0)
    torch.testing.assert_close(fresh.codewords.detach(), saved["codewords"])


def test_l2_variant_assigns_unit_descriptors():
    layer = _initialised("l2")
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    torch.testing.assert_close(layer.assign(x * 30.0), layer.assign(x))
    unit = x / x.norm(dim=-1, keepdim=True)
    expected = residual_encoding(unit, layer.codewords, layer.smoothing())
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("variant", ["kmeans", "shared_kmeans", "normscale"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_first_batch_does_not_initialise(variant, bad):
    """A first batch holding one NaN (or Inf) is skipped with a warning; the next finite
    batch initialises the layer exactly as if it had been the first."""
    torch.manual_seed(0)
    layer = Encoding(2, 3, variant=variant)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    x = (centres[:, None] + 0.2 * torch.randn(3, 20, 2)).reshape(1, -1, 2)
    broken = x.clone()
    broken[0, 7, 1] = bad
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        layer.train()(broken)
    assert not bool(layer.initialised)
    for name, value in layer.state_dict().items():  # nothing changed, nothing is NaN
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    torch.manual_seed(1)
    layer.train()(x)
    assert bool(layer.initialised)
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    twin = Encoding(2, 3, variant=variant)
    twin.load_state_dict(before)
    torch.manual_seed(1)
    twin.train()(x)  # the finite batch first
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[name], value, rtol=0, atol=0)


_INIT_WORKER = r"""
import sys, warnings
import torch
import torch.distributed as dist
from encnet_lite.encoding import Encoding

rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
torch.set_num_threads(1)
result = {}
for case, bad_rank in (("rank0_broken", 0), ("rank1_broken", 1)):
    torch.manual_seed(rank)  # each process its own data and its own initial layer
    layer = Encoding(2, 3, variant="kmeans")
    x = torch.randn(1, 40, 2) * 5
    if rank == bad_rank:
        x[0, 3, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.train()(x)
    result[case] = {"initialised": bool(layer.initialised), "codewords": layer.codewords.data,
                    "warned": any("NaN or Inf" in str(w.message) for w in caught)}
torch.save(result, out)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_non_finite_batch_under_torch_distributed_follows_rank_0(tmp_path):
    """Two gloo processes: rank 0's batch decides for both (no process waits on a broadcast
    that the other skipped); a broken batch on rank 1 alone still initialises both from
    rank 0's values."""
    script = tmp_path / "worker.py"
    script.write_text(_INIT_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"),
                               str(tmp_path / f"r{r}.pt")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for p in procs:
        try:
            log = p.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the gloo workers did not finish within 120 s (a broadcast waited)")
        assert p.returncode == 0, log[-3000:]
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2))
    for got in (r0, r1):
        assert got["rank0_broken"]["initialised"] is False and got["rank0_broken"]["warned"]
        assert got["rank1_broken"]["initialised"] is True and not got["rank1_broken"]["warned"]
    assert not torch.equal(r0["rank0_broken"]["codewords"], r1["rank0_broken"]["codewords"])
    torch.testing.assert_close(r0["rank1_broken"]["codewords"], r1["rank1_broken"]["codewords"],
                               rtol=0, atol=0)
    assert torch.isfinite(r1["rank1_broken"]["codewords"]).all()
