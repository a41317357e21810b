"""Checks of encnet_lite.encoding: exactness, gradients, invariances, limits, precision, shapes."""

from __future__ import annotations

import math

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
