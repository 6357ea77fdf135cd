"""K2: the compiled routed_mixture (iteach_fast._C, CPU and CUDA kernels) against the reference.

Forward and all four gradients on random inputs with ragged lengths (0 and 1 included),
pool sizes 1 / 3 / 5, centred and causal pools, feature dims that are and are not
multiples of the vector width, every dtype; max-pool ties built on purpose (first index
takes the gradient, as in torch.max_pool1d, which the reference uses); garbage in the
padding, and (causal) in the future; gradcheck in float64; opcheck; torch.compile with
fullgraph=True; torch.func (grad, vjp, jacrev, vmap). The CUDA kernel's tests are marked
``gpu`` (skipped without a device).
"""
import os
import warnings

import pytest
import torch

from iteach_fast import ops
from iteach_fast.ops import backends, cpp

pytestmark = pytest.mark.skipif(
    backends.REGISTRY["routed_mixture"]["cpp"].unavailable_reason() is not None,
    reason=f"cpp backend unavailable: {backends.REGISTRY['routed_mixture']['cpp'].unavailable_reason()}")

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _tol(dtype):
    return backends.REGISTRY["routed_mixture"]["cpp"].tolerances[dtype]


def _inputs(B, L, D, lengths, dtype=torch.float32, device="cpu", garbage=False):
    """Fresh random inputs (never zeros); with ``garbage``, inf / nan in every padding row."""
    t = [torch.randn(B, L, 4, dtype=torch.float64) * 2] + [torch.randn(B, L, D, dtype=torch.float64)
                                                        for _ in range(3)]
    lens = torch.as_tensor(lengths, dtype=torch.int64)
    if garbage:
        pad = torch.arange(L)[None, :] >= lens[:, None]
        for k, v in enumerate(t):
            v[pad] = float("inf") if k % 2 else float("nan")
    return [v.to(device=device, dtype=dtype) for v in t], lens.to(device)


def _run(backend, args, lens, pool_size, grad_out, causal=False):
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = ops.routed_mixture(*leaves, lens, pool_size, causal=causal, backend=backend)
    out.backward(grad_out)
    return out.detach(), [a.grad for a in leaves]


def _compare(args, lens, pool_size, dtype, backend="cpp", scale=1.0, causal=False):
    grad_out = torch.randn(args[1].shape, dtype=torch.float64).to(args[1])
    ref_out, ref_grads = _run("reference", args, lens, pool_size, grad_out, causal)
    out, grads = _run(backend, args, lens, pool_size, grad_out, causal)
    atol, rtol = (scale * t for t in _tol(dtype))
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    for name, g, rg in zip(("logits", "x", "y_attn", "y_mlp"), grads, ref_grads):
        torch.testing.assert_close(g, rg, atol=atol, rtol=rtol, msg=lambda m, n=name: f"d_{n}: {m}")
    return out, grads


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pool_size", [1, 3, 5])
@pytest.mark.parametrize("D", [13, 64])
def test_matches_reference(dtype, pool_size, D, causal):
    # ragged lengths with 0, 1 and a full row; D=13 is no multiple of any vector width
    (args), lens = _inputs(4, 11, D, [11, 0, 1, 6], dtype)
    out, grads = _compare(args, lens, pool_size, dtype, causal=causal)
    pad = (torch.arange(11)[None, :] >= lens[:, None])
    assert (out[pad] == 0).all() and all((g[pad] == 0).all() for g in grads)


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
def test_garbage_in_padding_never_leaks(causal):
    args, lens = _inputs(3, 9, 7, [9, 4, 0], torch.float32, garbage=True)
    out, grads = _compare(args, lens, 3, torch.float32, causal=causal)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("pool_size", [3, 5])
def test_causal_future_never_reaches_the_past(pool_size):
    """Causal pools: outputs at i <= t are bit-identical whatever the valid rows after t hold
    (inf, NaN), and so are the gradients at rows <= t of a loss on outputs <= t (finite future:
    a NaN there would reach them through 0 * NaN, in the reference too)."""
    B, L, D, t = 2, 12, 9, 5
    args, lens = _inputs(B, L, D, [12, 9], torch.float64)
    grad_out = torch.randn(B, L, D, dtype=torch.float64)
    grad_out[:, t + 1:] = 0
    for fill in (float("nan"), float("inf"), 1e4):
        spoiled = [a.clone() for a in args]
        for k, a in enumerate(spoiled):
            a[:, t + 1:] = fill if fill != 1e4 else fill * torch.randn_like(a[:, t + 1:])
            if k == 0 and fill == float("inf"):
                a[:, t + 1:, 1] = -fill  # an inf - inf in the router's softmax
        out, grads = _run("cpp", args, lens, pool_size, grad_out, causal=True)
        out2, grads2 = _run("cpp", spoiled, lens, pool_size, grad_out, causal=True)
        assert torch.equal(out[:, :t + 1], out2[:, :t + 1]), f"future {fill} changed a past output"
        if fill == 1e4:
            for g, g2 in zip(grads, grads2):
                assert torch.equal(g[:, :t + 1], g2[:, :t + 1]), "the future changed a past gradient"
    # and the centred pool does look ahead (the test can fail)
    spoiled = [a.clone() for a in args]
    spoiled[1][:, t + 1:] = 1e4
    assert not torch.equal(_run("cpp", args, lens, pool_size, grad_out)[0][:, t],
                           _run("cpp", spoiled, lens, pool_size, grad_out)[0][:, t])


def _first_index_oracle(logits, x, y_attn, y_mlp, lens, pool_size, grad_out, causal=False):
    """dx by hand, with the max-pool gradient routed to the first arg-max of each window."""
    B, L, D = x.shape
    r = pool_size // 2
    w = torch.softmax(logits, -1)
    dx = torch.zeros_like(x)
    for b in range(B):
        n = int(lens[b])
        for i in range(n):
            lo, hi = (max(0, i - 2 * r), i) if causal else (max(0, i - r), min(n - 1, i + r))
            for d in range(D):
                win = x[b, lo:hi + 1, d].tolist()
                j = lo + win.index(max(win))  # list.index: the first occurrence
                dx[b, j, d] += w[b, i, 3] * grad_out[b, i, d]
                dx[b, lo:hi + 1, d] += w[b, i, 2] * grad_out[b, i, d] / (hi - lo + 1)
    return dx


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
@pytest.mark.parametrize("pool_size", [3, 5])
def test_max_pool_ties_route_to_first_index(pool_size, causal):
    """Windows full of equal maxima: the gradient goes to the first (lowest) index, in the
    kernel and in the reference alike, and both match a hand-written first-index oracle."""
    B, L, D = 2, 10, 6
    (logits, _, y_attn, y_mlp), lens = _inputs(B, L, D, [10, 7], torch.float64)
    x = torch.randint(-1, 2, (B, L, D)).to(torch.float64) + 0.5  # three values: ties everywhere, no zeros
    x[0, 2:7, 0] = 3.0  # a plateau wider than the window
    grad_out = torch.randn(B, L, D, dtype=torch.float64)
    expected = _first_index_oracle(logits, x, y_attn, y_mlp, lens, pool_size, grad_out, causal)
    for backend in ("reference", "cpp"):
        xl = x.clone().requires_grad_()
        ops.routed_mixture(logits, xl, y_attn, y_mlp, lens, pool_size, causal=causal,
                           backend=backend).backward(grad_out)
        torch.testing.assert_close(xl.grad, expected, atol=1e-12, rtol=1e-12, msg=lambda m, b=backend: f"{b}: {m}")


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_ties_low_precision(dtype, causal):
    """bfloat16 / float16 round many values to equal ones: the tie rule must still agree."""
    (logits, _, y_attn, y_mlp), lens = _inputs(2, 12, 19, [12, 5], dtype)
    x = (torch.randint(-2, 3, (2, 12, 19)) + 0.25).to(dtype)
    _compare([logits, x, y_attn, y_mlp], lens, 3, dtype, causal=causal)


def test_noncontiguous_inputs():
    B, L, D = 3, 8, 10
    base = [torch.randn(B, D, L).transpose(1, 2) for _ in range(3)]  # (B, L, D) views, not contiguous
    logits = torch.randn(B, 4, L).transpose(1, 2)
    assert not base[0].is_contiguous()
    _compare([logits] + base, torch.tensor([8, 3, 1]), 3, torch.float32)


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
def test_empty_batch_and_all_empty_conversations(causal):
    for B, L, lens in ((0, 5, []), (2, 4, [0, 0]), (2, 1, [1, 0])):
        args, lens = _inputs(B, L, 3, lens)
        out, grads = _compare(args, lens, 3, torch.float32, causal=causal)
        assert out.shape == (B, L, 3) and not out[lens == 0].any()
    # L = 0: empty output and gradients of the right shapes
    args, lens = _inputs(2, 0, 3, [0, 0])
    out, grads = _run("cpp", args, lens, 3, torch.randn(2, 0, 3), causal)
    assert out.shape == (2, 0, 3) and [g.shape for g in grads] == [a.shape for a in args]


def test_gradient_of_some_inputs_only():
    args, lens = _inputs(2, 6, 5, [6, 2])
    x = args[1].clone().requires_grad_()
    ops.routed_mixture(args[0], x, args[2], args[3], lens, 3, backend="cpp").sum().backward()
    xr = args[1].clone().requires_grad_()
    ops.routed_mixture(args[0], xr, args[2], args[3], lens, 3, backend="reference").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_deterministic():
    args, lens = _inputs(4, 33, 40, [33, 20, 1, 7])
    g = torch.randn(4, 33, 40)
    a = _run("cpp", args, lens, 3, g)
    b = _run("cpp", args, lens, 3, g)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
def test_gradcheck_float64(causal):
    (args), lens = _inputs(2, 6, 3, [6, 4], torch.float64)
    leaves = [a.requires_grad_() for a in args]
    for p in (1, 3, 5):
        assert torch.autograd.gradcheck(
            lambda *t, p=p: ops.routed_mixture(*t, lens, p, causal=causal, backend="cpp"), leaves)


def test_opcheck():
    for dtype, req, causal in ((torch.float32, True, False), (torch.float64, False, True),
                               (torch.bfloat16, True, True)):
        args, lens = _inputs(2, 7, 9, [7, 3], dtype)
        args = [a.requires_grad_(req) for a in args]
        torch.library.opcheck(torch.ops.iteach_fast.routed_mixture.default, (*args, lens, 3, causal))
        grad = torch.randn(2, 7, 9, dtype=dtype)
        torch.library.opcheck(torch.ops.iteach_fast.routed_mixture_backward.default,
                              (grad, *[a.detach() for a in args], lens, 5, causal))


# --------------------------------------------------------------------------- torch.func


def _mixture(backend, causal, lens, pool_size=3):
    return lambda logits, x, y_attn, y_mlp: ops.routed_mixture(logits, x, y_attn, y_mlp, lens, pool_size,
                                                               causal=causal, backend=backend)


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
def test_torch_func_grad_vjp_jacrev(causal):
    """torch.func.grad / vjp / jacrev through the default backend (the cpp kernel on the CPU)
    equal the reference's, for every input."""
    assert backends.select("routed_mixture", "auto", torch.device("cpu"), torch.float64, causal=causal).backend == "cpp"
    args, lens = _inputs(2, 6, 5, [6, 3], torch.float64)
    weight = torch.randn(2, 6, 5, dtype=torch.float64)
    got, want = ({name: fn(backend) for name, fn in (
        ("grad", lambda b: torch.func.grad(lambda *a: (_mixture(b, causal, lens)(*a) * weight).sum(),
                                           argnums=(0, 1, 2, 3))(*args)),
        ("vjp", lambda b: torch.func.vjp(_mixture(b, causal, lens), *args)[1](weight)),
        ("jacrev", lambda b: torch.func.jacrev(_mixture(b, causal, lens), argnums=(0, 1))(*args)),
    )} for backend in ("auto", "reference"))
    for name in want:
        for g, w in zip(got[name], want[name]):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


def test_torch_func_vmap_uses_the_batch():
    """torch.vmap folds the mapped dimension into the batch (no per-sample fallback, which
    warns), forward and backward, mapped at any dimension, with unmapped inputs broadcast."""
    N, B, L, D = 3, 2, 5, 4
    args = [torch.randn(N, B, L, 4, dtype=torch.float64)] + [torch.randn(N, B, L, D, dtype=torch.float64)
                                                             for _ in range(3)]
    lens = torch.tensor([5, 2])
    f = _mixture("auto", True, lens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback's "There is a performance drop" warning
        out = torch.func.vmap(f, in_dims=(0, 2, 0, None))(args[0], args[1].movedim(0, 2), args[2], args[3][0])
        grads = torch.func.vmap(torch.func.grad(lambda *a: f(*a).square().sum(), argnums=(0, 1)))(*args)
    for n in range(N):
        torch.testing.assert_close(out[n], _mixture("reference", True, lens)(args[0][n], args[1][n], args[2][n],
                                                                             args[3][0]))
        ref = torch.func.grad(lambda *a: _mixture("reference", True, lens)(*a).square().sum(),
                              argnums=(0, 1))(*(a[n] for a in args))
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g[n], r)


@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
def test_torch_compile_fullgraph(causal):
    """Traces through the fake impls and the registered autograd: no graph break."""
    torch._dynamo.reset()
    args, lens = _inputs(3, 9, 16, [9, 5, 0])

    def f(logits, x, y_attn, y_mlp, lengths):
        return ops.routed_mixture(logits, x, y_attn, y_mlp, lengths, 3, causal=causal, backend="cpp").square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    la = [a.clone().requires_grad_() for a in args]
    lb = [a.clone().requires_grad_() for a in args]
    ya, yb = f(*la, lens), compiled(*lb, lens)
    ya.backward()
    yb.backward()
    torch.testing.assert_close(yb, ya)
    for a, b in zip(la, lb):
        torch.testing.assert_close(b.grad, a.grad)


def test_auto_picks_cpp_on_cpu():
    assert backends.select("routed_mixture", "auto", torch.device("cpu"), torch.float32).backend == "cpp"


def test_extension_has_cuda_where_expected():
    """CI sets ITEACH_FAST_EXPECT_CUDA=1 where nvcc exists: the build must then contain the CUDA kernels."""
    if os.environ.get("ITEACH_FAST_EXPECT_CUDA", "0") != "1":
        pytest.skip("ITEACH_FAST_EXPECT_CUDA is not set")
    assert cpp.has_cuda(), "iteach_fast._C was built without CUDA"
    if torch.cuda.is_available():  # and on a GPU machine every implementation that runs on CUDA can run
        missing = {(impl.op, impl.backend): impl.unavailable_reason("cuda")
                   for op in backends.OPS for impl in backends.implementations(op) if impl.runs_on("cuda")}
        assert all(why is None for why in missing.values()), {k: v for k, v in missing.items() if v}
        assert ("routed_mixture", "cpp") in missing  # the CUDA mixture is among them


# --------------------------------------------------------------------------- CUDA kernel


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pool_size", [1, 3, 5])
# lanes per token: D = 1 one (128 tokens a block), 13 scalar loads on 16 lanes, 64 / 128 16-byte
# vectors on 4-32 lanes (two tokens a warp for 16-bit types at 128), 200 / 520 several vectors a lane
@pytest.mark.parametrize("D", [1, 13, 64, 128, 200, 520])
def test_cuda_matches_reference(dtype, pool_size, D, causal):
    if not cpp.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    args, lens = _inputs(5, 37, D, [37, 0, 1, 20, 36], dtype, device="cuda", garbage=True)
    out, grads = _compare(args, lens, pool_size, dtype, causal=causal)
    # and against the CPU kernel
    cpu_args = [a.cpu() for a in args]
    out_cpu, _ = _compare(cpu_args, lens.cpu(), pool_size, dtype, causal=causal)
    atol, rtol = _tol(dtype)
    torch.testing.assert_close(out.cpu(), out_cpu, atol=atol, rtol=rtol)


@pytest.mark.gpu
def test_cuda_many_conversations_and_misaligned_rows():
    """A grid split over 65535-conversation launches; rows that are not 16-byte aligned (a
    storage offset of one element) take the scalar path."""
    if not cpp.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    args, lens = _inputs(70000, 2, 2, torch.randint(0, 3, (70000,)), torch.float32, device="cuda")
    _compare(args, lens, 3, torch.float32, causal=True)
    args, lens = _inputs(3, 9, 64, [9, 4, 1], torch.bfloat16, device="cuda")
    # contiguous, but one element past a 16-byte boundary
    args = [torch.empty(a.numel() + 1, dtype=a.dtype, device="cuda")[1:].view(a.shape).copy_(a) for a in args]
    assert args[1].is_contiguous() and args[1].data_ptr() % 16 != 0
    _compare(args, lens, 3, torch.bfloat16, causal=False)


@pytest.mark.gpu
def test_cuda_torch_func_grad():
    if not cpp.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    args, lens = _inputs(2, 6, 8, [6, 3], torch.float64, device="cuda")
    grads = [torch.func.grad(lambda *a, b=b: _mixture(b, True, lens)(*a).square().sum(), argnums=(0, 1, 2, 3))(*args)
             for b in ("cpp", "reference")]
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_cuda_ties_and_determinism(dtype):
    if not cpp.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    (logits, _, y_attn, y_mlp), lens = _inputs(3, 50, 64, [50, 17, 1], dtype, device="cuda")
    x = (torch.randint(-1, 2, (3, 50, 64)) + 0.5).to(device="cuda", dtype=dtype)
    args = [logits, x, y_attn, y_mlp]
    _compare(args, lens, 3, dtype)
    _compare(args, lens, 5, dtype, causal=True)
    g = torch.randn(3, 50, 64, device="cuda", dtype=dtype)
    a, b = _run("cpp", args, lens, 5, g), _run("cpp", args, lens, 5, g)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.gpu
def test_cuda_opcheck_and_compile():
    if not cpp.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    args, lens = _inputs(2, 9, 16, [9, 4], torch.float32, device="cuda")
    args = [a.requires_grad_() for a in args]
    for causal in (False, True):
        torch.library.opcheck(torch.ops.iteach_fast.routed_mixture.default, (*args, lens, 3, causal))
    torch._dynamo.reset()
    f = torch.compile(lambda *a: ops.routed_mixture(*a, lens, 3, causal=True, backend="cpp"), fullgraph=True)
    torch.testing.assert_close(f(*args), ops.routed_mixture(*args, lens, 3, causal=True, backend="reference"))
