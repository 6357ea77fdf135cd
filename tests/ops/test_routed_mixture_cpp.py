"""K2: the compiled routed_mixture (iteach_fast._C, CPU and CUDA kernels) against the reference.

Forward and all four gradients on random inputs with ragged lengths (0 and 1 included),
pool sizes 1 / 3 / 5, feature dims that are and are not multiples of the vector width,
every dtype; max-pool ties built on purpose (first index takes the gradient, as in
torch.max_pool1d, which the reference uses); garbage in the padding; gradcheck in
float64; opcheck; torch.compile with fullgraph=True. The CUDA kernel's tests are marked
``gpu`` (skipped without a device).
"""
import os

import pytest
import torch

from iteach_fast import backends, extension, ops

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


def _run(backend, args, lens, pool_size, grad_out):
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = ops.routed_mixture(*leaves, lens, pool_size, backend=backend)
    out.backward(grad_out)
    return out.detach(), [a.grad for a in leaves]


def _compare(args, lens, pool_size, dtype, backend="cpp", scale=1.0):
    grad_out = torch.randn(args[1].shape, dtype=torch.float64).to(args[1])
    ref_out, ref_grads = _run("reference", args, lens, pool_size, grad_out)
    out, grads = _run(backend, args, lens, pool_size, grad_out)
    atol, rtol = (scale * t for t in _tol(dtype))
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    for name, g, rg in zip(("logits", "x", "y_attn", "y_mlp"), grads, ref_grads):
        torch.testing.assert_close(g, rg, atol=atol, rtol=rtol, msg=lambda m, n=name: f"d_{n}: {m}")
    return out, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pool_size", [1, 3, 5])
@pytest.mark.parametrize("D", [13, 64])
def test_matches_reference(dtype, pool_size, D):
    # ragged lengths with 0, 1 and a full row; D=13 is no multiple of any vector width
    (args), lens = _inputs(4, 11, D, [11, 0, 1, 6], dtype)
    out, grads = _compare(args, lens, pool_size, dtype)
    pad = (torch.arange(11)[None, :] >= lens[:, None])
    assert (out[pad] == 0).all() and all((g[pad] == 0).all() for g in grads)


def test_garbage_in_padding_never_leaks():
    args, lens = _inputs(3, 9, 7, [9, 4, 0], torch.float32, garbage=True)
    out, grads = _compare(args, lens, 3, torch.float32)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


def _first_index_oracle(logits, x, y_attn, y_mlp, lens, pool_size, grad_out):
    """dx by hand, with the max-pool gradient routed to the first arg-max of each window."""
    B, L, D = x.shape
    r = pool_size // 2
    w = torch.softmax(logits, -1)
    dx = torch.zeros_like(x)
    for b in range(B):
        n = int(lens[b])
        for i in range(n):
            lo, hi = max(0, i - r), min(n - 1, i + r)
            for d in range(D):
                win = x[b, lo:hi + 1, d].tolist()
                j = lo + win.index(max(win))  # list.index: the first occurrence
                dx[b, j, d] += w[b, i, 3] * grad_out[b, i, d]
                dx[b, lo:hi + 1, d] += w[b, i, 2] * grad_out[b, i, d] / (hi - lo + 1)
    return dx


@pytest.mark.parametrize("pool_size", [3, 5])
def test_max_pool_ties_route_to_first_index(pool_size):
    """Windows full of equal maxima: the gradient goes to the first (lowest) index, in the
    kernel and in the reference alike, and both match a hand-written first-index oracle."""
    B, L, D = 2, 10, 6
    (logits, _, y_attn, y_mlp), lens = _inputs(B, L, D, [10, 7], torch.float64)
    x = torch.randint(-1, 2, (B, L, D)).to(torch.float64) + 0.5  # three values: ties everywhere, no zeros
    x[0, 2:7, 0] = 3.0  # a plateau wider than the window
    grad_out = torch.randn(B, L, D, dtype=torch.float64)
    expected = _first_index_oracle(logits, x, y_attn, y_mlp, lens, pool_size, grad_out)
    for backend in ("reference", "cpp"):
        xl = x.clone().requires_grad_()
        ops.routed_mixture(logits, xl, y_attn, y_mlp, lens, pool_size, backend=backend).backward(grad_out)
        torch.testing.assert_close(xl.grad, expected, atol=1e-12, rtol=1e-12, msg=lambda m, b=backend: f"{b}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_ties_low_precision(dtype):
    """bfloat16 / float16 round many values to equal ones: the tie rule must still agree."""
    (logits, _, y_attn, y_mlp), lens = _inputs(2, 12, 19, [12, 5], dtype)
    x = (torch.randint(-2, 3, (2, 12, 19)) + 0.25).to(dtype)
    _compare([logits, x, y_attn, y_mlp], lens, 3, dtype)


def test_noncontiguous_inputs():
    B, L, D = 3, 8, 10
    base = [torch.randn(B, D, L).transpose(1, 2) for _ in range(3)]  # (B, L, D) views, not contiguous
    logits = torch.randn(B, 4, L).transpose(1, 2)
    assert not base[0].is_contiguous()
    _compare([logits] + base, torch.tensor([8, 3, 1]), 3, torch.float32)


def test_empty_batch_and_all_empty_conversations():
    for B, L, lens in ((0, 5, []), (2, 4, [0, 0])):
        args, lens = _inputs(B, L, 3, lens)
        out, grads = _compare(args, lens, 3, torch.float32)
        assert out.shape == (B, L, 3) and not out.any()
    # L = 0 (the reference's pools reject it): empty output and gradients of the right shapes
    args, lens = _inputs(2, 0, 3, [0, 0])
    out, grads = _run("cpp", args, lens, 3, torch.randn(2, 0, 3))
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


def test_gradcheck_float64():
    (args), lens = _inputs(2, 6, 3, [6, 4], torch.float64)
    leaves = [a.requires_grad_() for a in args]
    for p in (1, 3, 5):
        assert torch.autograd.gradcheck(lambda *t, p=p: ops.routed_mixture(*t, lens, p, backend="cpp"), leaves)


def test_opcheck():
    for dtype, req in ((torch.float32, True), (torch.float64, False), (torch.bfloat16, True)):
        args, lens = _inputs(2, 7, 9, [7, 3], dtype)
        args = [a.requires_grad_(req) for a in args]
        torch.library.opcheck(torch.ops.iteach_fast.routed_mixture.default, (*args, lens, 3))
        grad = torch.randn(2, 7, 9, dtype=dtype)
        torch.library.opcheck(torch.ops.iteach_fast.routed_mixture_backward.default,
                              (grad, *[a.detach() for a in args], lens, 5))


def test_torch_compile_fullgraph():
    """Traces through the fake impls and the registered autograd: no graph break."""
    torch._dynamo.reset()
    args, lens = _inputs(3, 9, 16, [9, 5, 0])

    def f(logits, x, y_attn, y_mlp, lengths):
        return ops.routed_mixture(logits, x, y_attn, y_mlp, lengths, 3, backend="cpp").square().sum()

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
    assert extension.has_cuda(), "iteach_fast._C was built without CUDA"
    if torch.cuda.is_available():  # and on a GPU machine every backend must be able to run
        for op, reasons in backends.available_backends("cuda").items():
            assert all(why is None for why in reasons.values()), f"{op}: {reasons}"


# --------------------------------------------------------------------------- CUDA kernel


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pool_size", [1, 3, 5])
@pytest.mark.parametrize("D", [13, 128, 200])  # scalar path; 16-byte vectors (one and several per lane)
def test_cuda_matches_reference(dtype, pool_size, D):
    if not extension.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    args, lens = _inputs(5, 37, D, [37, 0, 1, 20, 36], dtype, device="cuda", garbage=True)
    out, grads = _compare(args, lens, pool_size, dtype)
    # and against the CPU kernel
    cpu_args = [a.cpu() for a in args]
    out_cpu, _ = _compare(cpu_args, lens.cpu(), pool_size, dtype)
    atol, rtol = _tol(dtype)
    torch.testing.assert_close(out.cpu(), out_cpu, atol=atol, rtol=rtol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_cuda_ties_and_determinism(dtype):
    if not extension.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    (logits, _, y_attn, y_mlp), lens = _inputs(3, 50, 64, [50, 17, 1], dtype, device="cuda")
    x = (torch.randint(-1, 2, (3, 50, 64)) + 0.5).to(device="cuda", dtype=dtype)
    args = [logits, x, y_attn, y_mlp]
    _compare(args, lens, 3, dtype)
    g = torch.randn(3, 50, 64, device="cuda", dtype=dtype)
    a, b = _run("cpp", args, lens, 5, g), _run("cpp", args, lens, 5, g)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.gpu
def test_cuda_opcheck_and_compile():
    if not extension.has_cuda():
        pytest.skip("iteach_fast._C was built without CUDA")
    args, lens = _inputs(2, 9, 16, [9, 4], torch.float32, device="cuda")
    args = [a.requires_grad_() for a in args]
    torch.library.opcheck(torch.ops.iteach_fast.routed_mixture.default, (*args, lens, 3))
    torch._dynamo.reset()
    f = torch.compile(lambda *a: ops.routed_mixture(*a, lens, 3, backend="cpp"), fullgraph=True)
    torch.testing.assert_close(f(*args), ops.routed_mixture(*args, lens, 3, backend="reference"))
