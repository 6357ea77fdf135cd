"""K1, the Triton ECCE kernels, against the pure-PyTorch reference.

Without a GPU these run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
where the kernels use 16 x 16 tiles, so the small sizes here still span several blocks, end
in a partial block, and have tiles off the band; there the ops are opaque custom ops (see
kernels/_compat.py), so opcheck and torch.compile run on the CPU too. bfloat16 (whose tl.dot the
interpreter gets wrong), large sizes, peak GPU memory and CUDA graphs run on a GPU only
(marked ``gpu``).

    python tests/test_triton_ecce.py   # max relative errors vs float64, per dtype, and at L = 4096
"""
import math
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if __name__ == "__main__" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py does, before triton loads

from iteach_fast import backends, ops, reference

pytest.importorskip("triton", reason="triton is not installed")
# not skipped: without it the package is not installed (kernels/ becomes iteach_fast.kernels
# only through setup.py's package_dir), and every Triton test would vanish silently
from iteach_fast.kernels import attention as k_attention  # noqa: E402
from iteach_fast.kernels import bias as k_bias
from iteach_fast.kernels import ecce  # noqa: E402
from iteach_fast.kernels import scan as k_scan

_why = backends.REGISTRY["ecce_attention"]["triton"].unavailable_reason()
if _why is not None:
    pytest.skip(f"the Triton backend cannot run here: {_why}", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = (torch.float32, torch.float16)  # bfloat16 on a GPU only


def tol(op, dtype):
    atol, rtol = backends.REGISTRY[op]["triton"].tolerances[dtype]
    return dict(atol=atol, rtol=rtol)


def randn(*shape, dtype=torch.float32, grad=False):
    return torch.randn(*shape, dtype=dtype, device=DEVICE).requires_grad_(grad)


def attention_inputs(B, H, L, Dh, dtype, grad=True):
    return [randn(B, H, L, Dh, dtype=dtype, grad=grad) for _ in range(3)] + [randn(B, L, H, dtype=dtype, grad=grad)]


def valid(lengths, L):
    return reference.valid_mask(lengths, L)


def check_attention(B, H, L, Dh, dist, lengths, dtype, with_grad=True):
    """Forward and every gradient (q, k, v, zp) of the kernel vs the reference, same inputs."""
    lengths = torch.tensor(lengths, device=DEVICE)
    inputs = attention_inputs(B, H, L, Dh, dtype)
    scale = 1 / math.sqrt(Dh)
    out = ecce.ecce_attention(*inputs, lengths, dist, scale)
    expected = reference.ecce_attention(*inputs, lengths, dist, scale)
    assert out.dtype == dtype and out.shape == (B, H, L, Dh)
    torch.testing.assert_close(out, expected, **tol("ecce_attention", dtype))
    assert not out[~valid(lengths, L)[:, None].expand(B, H, L)].any(), "rows beyond the length must be 0"
    if with_grad:
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, inputs, g)
        expected_grads = torch.autograd.grad(expected, inputs, g)
        for name, got, exp in zip(("q", "k", "v", "zp"), grads, expected_grads):
            assert got.dtype == dtype
            torch.testing.assert_close(got, exp, **tol("ecce_attention", dtype),
                                       msg=lambda m, name=name: f"d{name}: {m}")


# ----------------------------------------------------------------------------- attention

ATTENTION_CASES = [  # (B, H, L, Dh, dist, lengths)
    (2, 2, 37, 16, 5, [37, 20]),  # L not a multiple of 16, band narrower than a tile, tiles skipped
    (2, 1, 24, 32, 40, [24, 7]),  # dist > L: every pair in the band
    (1, 2, 1, 64, 30, [1]),  # L = 1
    (3, 2, 21, 16, 1, [21, 0, 9]),  # dist = 1 (diagonal only), a length-0 conversation
    (1, 2, 50, 64, 20, [43]),  # Dh = 64, four blocks, band spanning two
    (1, 2, 19, 24, 3, [19]),  # Dh not a power of two: padded lanes
]


@pytest.mark.parametrize("B,H,L,Dh,dist,lengths", ATTENTION_CASES)
def test_attention_matches_reference_float32(B, H, L, Dh, dist, lengths):
    check_attention(B, H, L, Dh, dist, lengths, torch.float32)


@pytest.mark.parametrize("B,H,L,Dh,dist,lengths", ATTENTION_CASES)
def test_attention_matches_reference_float16(B, H, L, Dh, dist, lengths):
    check_attention(B, H, L, Dh, dist, lengths, torch.float16)


def test_attention_all_empty_gives_zeros_not_nan():
    lengths = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    inputs = attention_inputs(2, 2, 18, 16, torch.float32)
    out = ecce.ecce_attention(*inputs, lengths, 30, 0.25)
    assert torch.equal(out, torch.zeros_like(out))
    for g in torch.autograd.grad(out, inputs, torch.randn_like(out)):
        assert torch.equal(g, torch.zeros_like(g))


def test_attention_padding_never_leaks():
    """inf / nan beyond the lengths changes nothing, forward or backward."""
    B, H, L, Dh = 2, 2, 20, 16
    lengths = torch.tensor([13, 5], device=DEVICE)
    clean = attention_inputs(B, H, L, Dh, torch.float32, grad=False)
    pad = ~valid(lengths, L)
    dirty = [torch.where(pad[:, None, :, None], float("inf"), t) for t in clean[:3]]
    dirty.append(torch.where(pad[..., None], float("nan"), clean[3]))
    outs, grads = [], []
    for inputs in (clean, dirty):
        inputs = [t.clone().requires_grad_() for t in inputs]
        out = ecce.ecce_attention(*inputs, lengths, 4, 0.25)
        outs.append(out)
        grads.append(torch.autograd.grad(out, inputs, torch.ones_like(out)))
    assert torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for g_clean, g_dirty in zip(*grads):
        torch.testing.assert_close(g_dirty, g_clean, rtol=0, atol=0)


def test_attention_non_contiguous_inputs():
    B, H, L, Dh = 2, 2, 17, 16
    lengths = torch.tensor([17, 11], device=DEVICE)
    q, k, v = (randn(B, L, H, Dh).transpose(1, 2) for _ in range(3))  # as a head split leaves them
    zp = randn(B, H, L).transpose(1, 2)
    out = ecce.ecce_attention(q, k, v, zp, lengths, 6, 0.25)
    torch.testing.assert_close(out, reference.ecce_attention(q, k, v, zp, lengths, 6, 0.25),
                               **tol("ecce_attention", torch.float32))


def test_attention_through_public_op():
    B, H, L, Dh = 2, 2, 9, 16
    inputs = attention_inputs(B, H, L, Dh, torch.float32, grad=False)
    out = ops.ecce_attention(*inputs, lengths=[9, 4], dist=3, backend="triton")
    expected = ops.ecce_attention(*inputs, lengths=[9, 4], dist=3, backend="reference")
    torch.testing.assert_close(out, expected, **tol("ecce_attention", torch.float32))


def test_attention_rejects_oversized_head_dim():
    with pytest.raises(ValueError, match="head dims"):
        ecce.ecce_attention(*attention_inputs(1, 1, 2, k_attention.MAX_HEAD_DIM + 1, torch.float32, grad=False),
                            torch.tensor([2], device=DEVICE), 3, 0.1)


# ----------------------------------------------------------------------------- materialised bias

BIAS_CASES = [  # (B, L, H, dist, lengths)
    (2, 37, 3, 5, [37, 20]),
    (3, 21, 2, 1, [21, 0, 9]),
    (1, 1, 4, 30, [1]),
    (2, 12, 2, 40, [12, 7]),  # dist > L
]


@pytest.mark.parametrize("dtype", HALF + (torch.bfloat16,))  # no tl.dot here: bfloat16 runs in the interpreter
@pytest.mark.parametrize("B,L,H,dist,lengths", BIAS_CASES)
def test_bias_matches_reference(B, L, H, dist, lengths, dtype):
    lengths = torch.tensor(lengths, device=DEVICE)
    zp = randn(B, L, H, dtype=dtype, grad=True)
    E = ecce.ecce_bias(zp, lengths, dist)
    expected = reference.ecce_bias(zp, lengths, dist)
    assert E.dtype == dtype
    torch.testing.assert_close(E, expected, **tol("ecce_bias", dtype))
    dE = torch.randn_like(E)
    torch.testing.assert_close(torch.autograd.grad(E, zp, dE)[0], torch.autograd.grad(expected, zp, dE)[0],
                               **tol("ecce_bias", dtype))


def test_an_off_by_one_band_would_be_caught():
    """The comparisons above can fail: a band one wider or narrower than ``dist`` (the likeliest
    kernel bug) moves entries by far more than the tolerance, in E and in attention's output."""
    B, H, L, Dh, dist = 1, 2, 37, 16, 5
    lengths = torch.tensor([L], device=DEVICE)
    q, k, v, zp = attention_inputs(B, H, L, Dh, torch.float32, grad=False)
    E = ecce.ecce_bias(zp, lengths, dist)
    out = ecce.ecce_attention(q, k, v, zp, lengths, dist, 0.25)
    for wrong in (dist - 1, dist + 1):
        assert not torch.allclose(E, reference.ecce_bias(zp, lengths, wrong), **tol("ecce_bias", torch.float32))
        assert not torch.allclose(out, reference.ecce_attention(q, k, v, zp, lengths, wrong, 0.25),
                                  **tol("ecce_attention", torch.float32))


# ----------------------------------------------------------------------------- prefix sums

def prefix_reference(z, w, lengths):
    zp = torch.where(valid(lengths, z.shape[1])[..., None], z @ w, 0)
    return zp, reference.band_prefix(zp, lengths)


@pytest.mark.parametrize("dtype", HALF)
def test_prefix_matches_reference(dtype):
    B, L, D, H = 3, 70, 40, 3  # L and D not multiples of the blocks, H padded to 16 lanes
    lengths = torch.tensor([70, 0, 33], device=DEVICE)
    z, w = randn(B, L, D, dtype=dtype, grad=True), randn(D, H, dtype=dtype, grad=True)
    zp, P = ecce.ecce_prefix(z, w, lengths)
    # reference in float64 from the same (rounded) inputs: the kernel accumulates in float32
    z64, w64 = z.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    zp_ref, P_ref = prefix_reference(z64, w64, lengths)
    assert zp.dtype == P.dtype == torch.float32 and P.shape == (B, L + 1, H)
    f32 = tol("ecce_attention", torch.float32)
    torch.testing.assert_close(zp, zp_ref.float(), **f32)
    torch.testing.assert_close(P, P_ref.float(), atol=f32["atol"] * L, rtol=f32["rtol"])
    g_zp, g_P = torch.randn_like(zp), torch.randn_like(P)
    dz, dw = torch.autograd.grad((zp * g_zp).sum() + (P * g_P).sum(), (z, w))
    dz_ref, dw_ref = torch.autograd.grad((zp_ref * g_zp).sum() + (P_ref * g_P).sum(), (z64, w64))
    assert dz.dtype == dw.dtype == dtype
    scale = dict(atol=f32["atol"] * L, rtol=f32["rtol"]) if dtype == torch.float32 else tol("ecce_attention", dtype)
    torch.testing.assert_close(dz, dz_ref.to(dtype), **scale)
    torch.testing.assert_close(dw, dw_ref.to(dtype), atol=scale["atol"] * L, rtol=scale["rtol"])


@pytest.mark.parametrize("dtype", HALF)
def test_gradients_through_prefix_to_z_and_w(dtype):
    """Z, W -> ecce_prefix -> zp -> attention: the output and the gradients of q, k, v, Z and W
    match the reference chain (masked Z @ W, reference attention) computed in float64."""
    B, H, L, D, Dh, dist = 2, 2, 26, 24, 16, 6
    lengths = torch.tensor([26, 11], device=DEVICE)
    z, w = randn(B, L, D, dtype=dtype, grad=True), randn(D, H, dtype=dtype, grad=True) / D ** 0.5
    w = w.detach().requires_grad_()
    q, k, v = (randn(B, H, L, Dh, dtype=dtype, grad=True) for _ in range(3))
    leaves = (q, k, v, z, w)
    zp, _ = ecce.ecce_prefix(z, w, lengths)
    out = ecce.ecce_attention(q, k, v, zp.to(dtype), lengths, dist, Dh ** -0.5)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    q64, k64, v64, z64, w64 = ref_leaves
    zp64 = torch.where(valid(lengths, L)[..., None], z64 @ w64, 0)
    expected = reference.ecce_attention(q64, k64, v64, zp64, lengths, dist, Dh ** -0.5)
    t = tol("ecce_attention", dtype)
    torch.testing.assert_close(out, expected.to(dtype), **t)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, g)
    expected_grads = torch.autograd.grad(expected, ref_leaves, g.double())
    for name, got, exp in zip(("q", "k", "v", "z", "w"), grads, expected_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got, exp.to(dtype), **t, msg=lambda m, name=name: f"d{name}: {m}")


def prefix_error_at_4096(seed=0):
    """The error of P (kernel, float32) vs the float64 scan of the kernel's own zp at L = 4096,
    and that of a plain float32 running sum, as ``(kernel, naive)`` dicts of
    ``normwise``: max over (b, h) of ``max_t |P - P64| / max_t |P64|``, and
    ``pointwise``: max over (b, t, h) of ``|P - P64| / max(|P64|, 1)``, both in units of float32 eps.
    Every head drifts (w >= 0, z has mean 0.5), so |P| grows like t: the regime where a plain
    running sum loses accuracy like sqrt(t) eps and the compensated scan does not."""
    import numpy as np
    gen = torch.Generator().manual_seed(seed)
    B, L, D, H = 2, 4096, 32, 8
    z = (torch.randn(B, L, D, generator=gen) + 0.5).to(DEVICE)
    w = (torch.randn(D, H, generator=gen).abs() / D ** 0.5).to(DEVICE)
    lengths = torch.tensor([L, 3001], device=DEVICE)
    zp, P = ecce.ecce_prefix(z, w, lengths)
    zp = zp.cpu()
    exact = torch.nn.functional.pad(torch.cumsum(zp.double(), 1), (0, 0, 1, 0))
    naive = torch.nn.functional.pad(torch.from_numpy(np.cumsum(zp.numpy(), axis=1)), (0, 0, 1, 0))
    eps = torch.finfo(torch.float32).eps

    def err(x):
        e = (x.double().cpu() - exact).abs()
        return {"normwise": (e.amax(1) / exact.abs().amax(1).clamp_min(1)).max().item() / eps,
                "pointwise": (e / exact.abs().clamp_min(1)).max().item() / eps}

    return err(P), err(naive)


def test_prefix_accurate_at_4096():
    """The blocked, compensated scan stays within 2 eps of the exact sums (normwise) at L = 4096;
    a plain float32 running sum does not (so the bound would catch an uncompensated scan)."""
    kernel, naive = prefix_error_at_4096()
    assert kernel["normwise"] <= 2.0, kernel
    assert kernel["pointwise"] <= 8.0, kernel
    assert naive["normwise"] > 4.0, naive


# ----------------------------------------------------------------------------- torch.library

def _opcheck_cases():
    B, H, L, Dh = 2, 2, 18, 16
    lengths = torch.tensor([18, 5], device=DEVICE)
    q, k, v, zp = attention_inputs(B, H, L, Dh, torch.float32)
    out, lse2, P = torch.ops.iteach_fast.ecce_attention_fwd(q, k, v, zp, lengths, 4, 0.25)
    z, w = randn(B, L, 20, grad=True), randn(20, H, grad=True)
    return [
        (torch.ops.iteach_fast.ecce_attention_fwd.default, (q, k, v, zp, lengths, 4, 0.25)),
        (torch.ops.iteach_fast.ecce_attention_bwd.default,
         (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse2, P, lengths, 4, 0.25)),
        (torch.ops.iteach_fast.ecce_bias_fwd.default, (zp, lengths, 4)),
        (torch.ops.iteach_fast.ecce_bias_bwd.default, (randn(B, H, L, L), lengths, 4)),
        (torch.ops.iteach_fast.ecce_prefix.default, (z, w, lengths)),
        (torch.ops.iteach_fast.ecce_suffix_sum.default, (randn(B, L + 1, H), lengths)),
    ]


def test_opcheck():
    """Schema, autograd registration, fake tensors and AOT dispatch (dynamic shapes) of every op.
    Under the interpreter the ops are opaque custom ops (see kernels/_compat.py), on a GPU triton_ops."""
    for op, args in _opcheck_cases():
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("public", [False, True], ids=["kernel", "public-op"])
def test_torch_compile_fullgraph(public):
    """torch.compile (Inductor) traces the op, and the public op's dispatch, without a graph break;
    forward and gradients match eager."""
    B, H, L, Dh = 2, 2, 20, 16
    lengths = torch.tensor([20, 9], device=DEVICE)
    inputs = attention_inputs(B, H, L, Dh, torch.float32)

    def f(q, k, v, zp):
        if public:
            return ops.ecce_attention(q, k, v, zp, lengths, dist=5, scale=0.25, backend="triton") * 2
        return ecce.ecce_attention(q, k, v, zp, lengths, 5, 0.25) * 2

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True)(*inputs)
    expected = f(*inputs)
    torch.testing.assert_close(out, expected, **tol("ecce_attention", torch.float32))
    g = torch.randn_like(out)
    for got, exp in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(expected, inputs, g)):
        torch.testing.assert_close(got, exp, **tol("ecce_attention", torch.float32))


# ----------------------------------------------------------------------------- no L x L tensor

class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) any op returns. This package's custom ops are run
    through their Python bodies under the mode, so what they allocate inside is seen too (the
    interpreter's own copies of kernel arguments as well: byte tensors of their storages)."""

    def __init__(self):
        super().__init__()
        self.largest, self.seen = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _CUSTOM_OPS:
            self.seen.add(name)
            with self:
                out = _CUSTOM_OPS[name]._init_fn(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


_CUSTOM_OPS = {op._qualname: op for op in (k_attention._attention_fwd, k_attention._attention_bwd,
                                            k_scan._suffix_sum, k_scan._prefix_op, k_bias._bias_fwd, k_bias._bias_bwd)}


def test_attention_never_allocates_an_l_by_l_tensor():
    """Forward and backward allocate nothing larger than q (B*H*L*Dh elements, here a quarter of
    B*H*L*L); the same recorder sees the reference's L x L bias, so it is not blind. (On a GPU the
    large test below also bounds the peak of CUDA memory.)"""
    B, H, L, Dh = 1, 2, 64, 16
    lengths = torch.tensor([61], device=DEVICE)
    inputs = attention_inputs(B, H, L, Dh, torch.float32)
    for backend in ("triton", "reference"):
        with _LargestTensor() as mode:
            out = ops.ecce_attention(*inputs, lengths, dist=30, backend=backend)
            torch.autograd.grad(out, inputs, torch.randn_like(out))
        if backend == "triton":
            assert {"iteach_fast::ecce_attention_fwd", "iteach_fast::ecce_attention_bwd"} <= mode.seen
            assert mode.largest <= B * H * L * Dh * 4, mode.largest
        else:
            assert mode.largest >= B * H * L * L * 4, mode.largest


# ----------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("B,H,L,Dh,dist,lengths", ATTENTION_CASES)
def test_attention_matches_reference_bfloat16(B, H, L, Dh, dist, lengths):
    check_attention(B, H, L, Dh, dist, lengths, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("Dh", (16, 32, 64))
def test_attention_large_on_gpu(dtype, Dh):
    check_attention(3, 8, 700, Dh, 30, [700, 513, 1], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
@pytest.mark.parametrize("Dh", (128, 256))
def test_attention_wide_heads_on_gpu(dtype, Dh):
    """Wide heads take smaller tiles (shared memory); float32 at Dh = 256 the smallest."""
    check_attention(2, 2, 300, Dh, 30, [300, 77], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_bias_large_on_gpu(dtype):
    lengths = torch.tensor([300, 129], device=DEVICE)
    zp = randn(2, 300, 8, dtype=dtype, grad=True)
    E, expected = ecce.ecce_bias(zp, lengths, 30), reference.ecce_bias(zp, lengths, 30)
    torch.testing.assert_close(E, expected, **tol("ecce_bias", dtype))
    dE = torch.randn_like(E)
    torch.testing.assert_close(torch.autograd.grad(E, zp, dE)[0], torch.autograd.grad(expected, zp, dE)[0],
                               **tol("ecce_bias", dtype))


@pytest.mark.gpu
def test_attention_peak_memory_linear_in_l_on_gpu():
    """At L = 4096 forward + backward need a few MiB per tensor; one (B, H, L, L) half tensor
    would be 256 MiB."""
    B, H, L, Dh = 1, 8, 4096, 64
    lengths = torch.tensor([L - 5], device=DEVICE)
    inputs = attention_inputs(B, H, L, Dh, torch.float16)
    g = torch.randn(B, H, L, Dh, dtype=torch.float16, device=DEVICE)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = ops.ecce_attention(*inputs, lengths, dist=30, backend="triton")
    torch.autograd.grad(out, inputs, g)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 64 * 2 ** 20, peak


@pytest.mark.gpu
def test_attention_in_a_cuda_graph():
    """Forward and backward capture and replay: no host synchronisation inside the ops."""
    B, H, L, Dh = 2, 4, 100, 32
    lengths = torch.tensor([100, 61], device=DEVICE)
    inputs = attention_inputs(B, H, L, Dh, torch.float16)
    g = torch.randn(B, H, L, Dh, dtype=torch.float16, device=DEVICE)

    def step():
        out = ecce.ecce_attention(*inputs, lengths, 30, 0.2)
        return (out,) + torch.autograd.grad(out, inputs, g)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    with torch.no_grad():
        for t in inputs:
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    for got, exp in zip(static, step()):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)


# ----------------------------------------------------------------------------- report

def max_relative_errors():
    """``{dtype: {quantity: max over ATTENTION_CASES of max|kernel - ref64| / max|ref64|}}`` for the
    attention output and its gradients (q, k, v, zp), every input rounded to the dtype first
    (quantities that are exactly 0 in a case are left out of it)."""
    result = {}
    dtypes = HALF + ((torch.bfloat16,) if torch.cuda.is_available() else ())
    names = ("out", "dq", "dk", "dv", "dzp")
    for dtype in dtypes:
        worst = dict.fromkeys(names, 0.0)
        for B, H, L, Dh, dist, lengths in ATTENTION_CASES:
            lengths = torch.tensor(lengths, device=DEVICE)
            inputs = attention_inputs(B, H, L, Dh, dtype)
            ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
            out = ecce.ecce_attention(*inputs, lengths, dist, Dh ** -0.5)
            ref = reference.ecce_attention(*ref_inputs, lengths, dist, Dh ** -0.5)
            g = torch.randn_like(out)
            got = (out,) + torch.autograd.grad(out, inputs, g)
            exp = (ref,) + torch.autograd.grad(ref, ref_inputs, g.double())
            for name, a, b in zip(names, got, exp):
                if b.abs().max() < 1e-12:  # e.g. dq, dk, dzp at L = 1 (one key): exactly 0, no scale
                    continue
                err = ((a.double() - b).abs().max() / b.abs().max()).item()
                worst[name] = max(worst[name], err)
        result[str(dtype)] = worst
    return result


if __name__ == "__main__":
    torch.manual_seed(0)
    for name, errs in max_relative_errors().items():
        print(f"ecce_attention max relative error vs float64, {name}: "
              + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    kernel, naive = prefix_error_at_4096()
    print(f"ecce_prefix at L=4096, error of P in float32 eps: kernel {kernel}, plain float32 running sum {naive}")
