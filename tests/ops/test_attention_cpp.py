"""K1 on the CPU: the fused C++ ecce_attention (csrc/attention.cpp) beyond what the registry's
conformance suite checks for every implementation (every dtype, ragged lengths 0 and 1,
causal, garbage in the padding, forward and every gradient).

Here: conversations longer than one band and in the model's (B, L, H, Dh) layout, the BLAS-free
loops (``ITEACH_FAST_NO_BLAS=1``) against the reference, gradcheck in float64, opcheck of both
ops, memory (the backward keeps O(B H L), not the L x L probabilities), determinism, and
torch.compile with fullgraph=True.
"""
import os
import subprocess
import sys

import pytest
import torch

from iteach_fast import ops
from iteach_fast.ops import backends, cpp, reference

IMPL = backends.REGISTRY["ecce_attention"]["cpp"]
pytestmark = pytest.mark.skipif(IMPL.unavailable_reason(torch.device("cpu")) is not None,
                                reason=f"cpp attention unavailable: {IMPL.unavailable_reason(torch.device('cpu'))}")


def _case(B=3, H=2, L=13, Dh=8, lengths=(13, 5, 0), dist=5, dtype=torch.float32, seed=0):
    """q, k, v as (B, H, L, Dh) views of one (B, L, 3, H, Dh) activation (the model's layout),
    a prefix table from random z, lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, 3, H, Dh, generator=g, dtype=torch.float64).to(dtype)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    lens = torch.tensor(lengths)
    z = torch.randn(B, L, 4 * H, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(4 * H, H, generator=g, dtype=torch.float64).to(dtype) / 4
    _, prefix = ops.ecce_prefix(z, w, lens, dist, backend="reference")
    return q, k, v, prefix.detach(), lens


def _grads(fn, q, k, v, prefix, lens, dist, causal, seed=1):
    leaves = [t.detach().requires_grad_() for t in (q, k, v, prefix) if t is not None]
    out = fn(*leaves[:3], leaves[3] if prefix is not None else None, lens, dist, 0.35, causal)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return (out, *torch.autograd.grad(out, leaves, weight))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dist", [1, 7, 200, None], ids=["dist1", "dist7", "dist200", "no-bias"])
def test_long_ragged_conversations_in_the_models_layout(causal, dist):
    """L = 150 over several bands (and a band wider than L, and no bias: the cross-attention),
    lengths 150 / 77 / 1 / 0."""
    q, k, v, prefix, lens = _case(B=4, H=3, L=150, Dh=16, lengths=(150, 77, 1, 0), dist=dist or 5)
    case = (q, k, v, prefix if dist else None, lens)
    got = _grads(cpp.ecce_attention, *case, dist or 5, causal)
    want = _grads(reference.ecce_attention, *[t.double() if t is not None and t.is_floating_point() else t
                                              for t in case], dist or 5, causal)
    atol, rtol = IMPL.tolerances[torch.float32]
    assert len(got) == len(want) == (5 if dist else 4)
    for name, g, w in zip(("out", "dq", "dk", "dv", "d_prefix"), got, want):
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    assert got[0].stride() == case[0].stride() or got[0].transpose(1, 2).is_contiguous()  # written in place
    assert not got[0][1, :, 77:].any() and not got[0][3].any()


def test_the_loops_without_blas_match_the_reference():
    """ITEACH_FAST_NO_BLAS=1 (read once per process): the products by plain loops."""
    code = (
        "import torch\n"
        "from iteach_fast import ops\n"
        "from iteach_fast.ops import cpp, reference\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(2, 9, 3, 2, 4, dtype=torch.float64)\n"
        "q, k, v = (x[:, :, i].transpose(1, 2).requires_grad_() for i in range(3))\n"
        "lens = torch.tensor([9, 4])\n"
        "prefix = ops.ecce_prefix(torch.randn(2, 9, 6, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64),"
        " lens, 3, backend='reference')[1].detach().requires_grad_()\n"
        "for causal in (False, True):\n"
        "    a = cpp.ecce_attention(q, k, v, prefix, lens, 3, 0.5, causal)\n"
        "    b = reference.ecce_attention(q, k, v, prefix, lens, 3, 0.5, causal)\n"
        "    ga = torch.autograd.grad(a.sum(), (q, k, v, prefix))\n"
        "    gb = torch.autograd.grad(b.sum(), (q, k, v, prefix))\n"
        "    torch.testing.assert_close(a, b)\n"
        "    for x, y in zip(ga, gb):\n"
        "        torch.testing.assert_close(x, y)\n"
        "print('ok')\n")
    env = dict(os.environ, ITEACH_FAST_NO_BLAS="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradcheck_float64(causal):
    q, k, v, prefix, lens = _case(B=2, H=2, L=6, Dh=3, lengths=(6, 4), dist=3, dtype=torch.float64)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, prefix)]
    assert torch.autograd.gradcheck(lambda *t: cpp.ecce_attention(*t, lens, 3, 0.7, causal), leaves)
    assert torch.autograd.gradcheck(lambda *t: cpp.ecce_attention(*t, None, lens, 3, 0.7, causal), leaves[:3])


def test_opcheck():
    for dtype, causal, with_prefix in ((torch.float32, False, True), (torch.float64, True, False)):
        q, k, v, prefix, lens = _case(dtype=dtype)
        prefix = prefix if with_prefix else None
        torch.library.opcheck(torch.ops.iteach_fast.ecce_attention.default, (q, k, v, prefix, lens, 5, 0.3, causal))
        out, lse = torch.ops.iteach_fast.ecce_attention(q, k, v, prefix, lens, 5, 0.3, causal)
        torch.library.opcheck(torch.ops.iteach_fast.ecce_attention_backward.default,
                              (torch.randn_like(out), q, k, v, prefix, lens, out, lse, 5, 0.3, causal))


def test_the_backward_keeps_no_l_by_l_tensor():
    """FlashAttention's trade: the probabilities are recomputed from the saved log-sum-exp, so
    what autograd keeps grows as B H L, not as B H L^2."""
    q, k, v, prefix, lens = _case(B=2, H=2, L=64, Dh=4, lengths=(64, 30), dist=8)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        cpp.ecce_attention(*(t.requires_grad_() for t in (q, k, v, prefix)), lens, 8, 0.5, False)
    assert saved and max(saved) <= q.numel()


def test_deterministic():
    case = _case(B=4, H=3, L=40, Dh=8, lengths=(40, 21, 3, 0), dist=6)
    a = _grads(cpp.ecce_attention, *case, 6, False)
    b = _grads(cpp.ecce_attention, *case, 6, False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_torch_compile_fullgraph_matches_eager():
    q, k, v, prefix, lens = _case()

    def f(q, k, v, prefix):
        return ops.ecce_attention(q, k, v, prefix=prefix, lengths=lens, dist=5, causal=True, backend="cpp")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager = _grads(lambda q, k, v, p, *_: f(q, k, v, p), q, k, v, prefix, lens, 5, True)
    got = _grads(lambda q, k, v, p, *_: compiled(q, k, v, p), q, k, v, prefix, lens, 5, True)
    for x, y in zip(got, eager):
        torch.testing.assert_close(x, y)


def test_auto_picks_the_cpp_attention_on_cpu():
    assert backends.select("ecce_attention", "auto", torch.device("cpu"), torch.float32).backend == "cpp"


def test_a_nan_in_a_valid_row_is_not_silently_dropped():
    """A NaN score must reach the output as in the reference (the vectorised exp must not map it
    to 0); a NaN in the padding must not reach anything."""
    q, k, v, prefix, lens = _case(B=2, H=1, L=9, Dh=4, lengths=(9, 5), dist=3)
    q, k = q.clone(), k.clone()
    k[0, 0, 4] = float("nan")  # a valid key of conversation 0: every query of it sees NaN
    k[1, 0, 7] = float("nan")  # padding of conversation 1: nothing may see it
    out = cpp.ecce_attention(q, k, v, prefix, lens, 3, 0.5, False)
    ref = reference.ecce_attention(q, k, v, prefix, lens, 3, 0.5, False)
    assert torch.isnan(out[0]).all() and torch.isnan(ref[0]).all()
    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1], ref[1])
