"""The reference backend itself: the paper's Algorithm 1, the prefix table's definition and
accuracy, causal mode, gradients, the strided layouts, errors.

These tests pin the oracle; tests/ops/test_conformance.py holds every other implementation
to it (padding, empty conversations, low precision, every gradient). Inputs come from
``iteach_fast.ops.testing.make_inputs``; the oracles here are literal loops.
"""
import dataclasses
import math

import pytest
import torch

from iteach_fast import ops
from iteach_fast.ops import padding, testing
from iteach_fast.ops.padding import valid_mask


def algorithm1(Z, fc_weight, fc_bias=None, dist=30):
    """The paper's Algorithm 1, literally: a double loop filling E[i][j] = mean(Z[i..j]) for
    j in [i, min(N, dist + i)), mirrored, then FC applied to the whole N x N x D tensor.
    ``Z[i:j]`` is read inclusively (``Z[i..j]``), as docs/maths.md resolves it."""
    N, D = Z.shape
    E = torch.zeros(N, N, D, dtype=Z.dtype)
    for i in range(N):
        for j in range(i, min(N, dist + i)):
            E[i][j] = Z[i:j + 1].mean(dim=0)
            E[j][i] = E[i][j]
    E = E @ fc_weight
    if fc_bias is not None:
        E = E + fc_bias
    return E.permute(2, 0, 1)  # (H, N, N)


def algorithm1_batch(Z, W, lengths, dist, fc_bias=None, causal=False):
    """Algorithm 1 per conversation (on its valid part), zero-padded to ``(B, H, L, L)``;
    ``causal`` keeps its lower triangle (the band ``i - dist < j <= i``)."""
    B, L, _ = Z.shape
    out = torch.zeros(B, W.shape[1], L, L, dtype=Z.dtype)
    for b, n in enumerate(lengths.tolist()):
        out[b, :, :n, :n] = algorithm1(Z[b, :n], W, fc_bias, dist)
    return out.tril() if causal else out


def eager_attention(q, k, v, E, lengths, scale, causal=False):
    """softmax(q k^T * scale + E) v with keys masked (and j > i if causal), rows beyond lengths 0."""
    out = torch.zeros_like(q)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        S = q[b, :, :n] @ k[b, :, :n].transpose(-1, -2) * scale + E[b, :, :n, :n]
        if causal:
            S = S.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        out[b, :, :n] = torch.softmax(S, dim=-1) @ v[b, :, :n]
    return out


def z_and_w(B, L, lengths, H=3, D=5, dtype=torch.float64):
    """Z (B, L, D) with zeros in the padding (Algorithm 1 sees no padding), W (D, H)."""
    case = testing.make_inputs("ecce_prefix", B=B, L=L, H=H, D=D, lengths=lengths, dtype=dtype, garbage=None)
    return case.tensors["z"], case.tensors["w_fc"], case.lengths


CASES = [  # (B, L, H, dist, lengths)
    (2, 7, 3, 30, [7, 4]),    # dist > L
    (3, 12, 2, 4, [12, 0, 5]),  # ragged, one empty conversation, narrow band
    (1, 1, 4, 30, [1]),        # L = 1
    (2, 9, 2, 1, [9, 3]),      # dist = 1: only the diagonal
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,L,H,dist,lengths", CASES)
def test_ecce_bias_matches_algorithm1(B, L, H, dist, lengths, causal):
    Z, W, lengths = z_and_w(B, L, lengths, H)
    E = ops.ecce_bias(Z @ W, lengths, dist=dist, causal=causal, backend="reference")
    expected = algorithm1_batch(Z, W, lengths, dist, causal=causal)
    torch.testing.assert_close(E, expected, rtol=1e-12, atol=1e-12)


def test_ecce_bias_catches_an_exclusive_window():
    """The inclusive reading matters: an exclusive window (Z[i:j]) differs, so the test above can fail."""
    Z, W, _ = z_and_w(1, 6, [6], H=2, D=4)
    Z, E = Z[0], ops.ecce_bias(Z @ W, dist=30, backend="reference")[0]
    assert not torch.allclose(E[:, 0, 3], (Z[0:3].mean(0) @ W))
    torch.testing.assert_close(E[:, 0, 3], Z[0:4].mean(0) @ W)


def _qkv(B, L, H, Dh, lengths, dtype=torch.float64, requires_grad=False):
    case = testing.make_inputs("ecce_attention", B=B, L=L, H=H, Dh=Dh, lengths=lengths, dtype=dtype,
                               garbage=None, requires_grad=requires_grad)
    return case.tensors["q"], case.tensors["k"], case.tensors["v"]


@pytest.mark.parametrize("B,L,H,dist,lengths", CASES)
def test_fc_bias_does_not_change_attention(B, L, H, dist, lengths):
    """Algorithm 1 applies FC's bias to all L x L entries: a per-head constant on every logit,
    which softmax ignores. So the op (bias dropped) equals attention with Algorithm 1's E."""
    Z, W, lengths = z_and_w(B, L, lengths, H, D=6)
    fc_bias = 3 * torch.randn(H, dtype=torch.float64)
    q, k, v = _qkv(B, L, H, 4, lengths)
    scale = 1 / math.sqrt(4)
    with_bias = eager_attention(q, k, v, algorithm1_batch(Z, W, lengths, dist, fc_bias), lengths, scale)
    out = ops.ecce_attention(q, k, v, Z @ W, lengths, dist=dist, backend="reference")
    torch.testing.assert_close(out, with_bias, rtol=1e-10, atol=1e-10)
    # and the bias is not a no-op on E itself (so the check above is not vacuous)
    assert not torch.allclose(algorithm1_batch(Z, W, lengths, dist, fc_bias), algorithm1_batch(Z, W, lengths, dist))


# --- causal mode --------------------------------------------------------------------------

@pytest.mark.parametrize("B,L,H,dist,lengths", CASES)
def test_causal_attention_is_full_attention_with_a_causal_mask(B, L, H, dist, lengths):
    """causal=True == softmax over keys j <= i with Algorithm 1's bias restricted to its lower band."""
    Z, W, lengths = z_and_w(B, L, lengths, H)
    q, k, v = _qkv(B, L, H, 4, lengths)
    expected = eager_attention(q, k, v, algorithm1_batch(Z, W, lengths, dist, causal=True), lengths, 0.5,
                               causal=True)
    out = ops.ecce_attention(q, k, v, Z @ W, lengths, dist, scale=0.5, causal=True, backend="reference")
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    if L > 1:  # and causal differs from full attention (the check above can fail)
        full = ops.ecce_attention(q, k, v, Z @ W, lengths, dist, scale=0.5, backend="reference")
        assert not torch.allclose(out[0], full[0])


def _future_garbage(case, t):
    """``case`` with every sequence input replaced by large random values at positions > t."""
    tensors = {}
    for name, x in case.tensors.items():
        seq_dim = testing.OP_SPECS[case.op].tensors[name][1]
        x = x.detach().clone()
        if seq_dim is not None:
            future = x.narrow(seq_dim, t + 1, x.shape[seq_dim] - t - 1)
            future.copy_(1e3 * torch.randn_like(future))
        tensors[name] = x
    return dataclasses.replace(case, tensors=tensors)


@pytest.mark.parametrize("op,out_seq_dim", [("ecce_bias", 2), ("ecce_attention", 2), ("routed_mixture", 1)])
def test_causal_outputs_ignore_the_future(op, out_seq_dim):
    """Inputs at positions > t (garbage) change no causal output at positions <= t, bit for bit,
    for t at the start, inside and at a chunk boundary of the band's prefix table."""
    case = testing.make_inputs(op, B=2, L=17, lengths=[17, 12], dist=5, pool_size=5, causal=True,
                               dtype=torch.float32)
    clean = case.call("reference")
    for t in (0, 4, 5, 9, 13):
        out = _future_garbage(case, t).call("reference")
        assert torch.equal(out.narrow(out_seq_dim, 0, t + 1), clean.narrow(out_seq_dim, 0, t + 1)), t
        assert not torch.equal(out, clean)  # the garbage did reach the future outputs


def naive_mixture(logits, x, y_attn, y_mlp, lengths, pool_size, causal):
    """routed_mixture by loops: pools over [i - p//2, i + p//2] (or [i - p + 1, i]) ∩ valid."""
    out = torch.zeros_like(x)
    for b, n in enumerate(lengths.tolist()):
        for i in range(n):
            lo, hi = (i - pool_size + 1, i) if causal else (i - pool_size // 2, i + pool_size // 2)
            window = x[b, max(lo, 0):min(hi, n - 1) + 1]
            w = torch.softmax(logits[b, i], -1)
            out[b, i] = w[0] * y_attn[b, i] + w[1] * y_mlp[b, i] + w[2] * window.mean(0) + w[3] * window.amax(0)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pool_size", [1, 3, 5, 31])
def test_routed_mixture_matches_loops(pool_size, causal):
    case = testing.make_inputs("routed_mixture", B=3, L=9, lengths=[9, 4, 0], pool_size=pool_size, causal=causal,
                               dtype=torch.float64)
    expected = naive_mixture(*case.tensors.values(), case.lengths, pool_size, causal)
    torch.testing.assert_close(case.call("reference"), expected, rtol=1e-12, atol=1e-12)


# --- the prefix table ---------------------------------------------------------------------

@pytest.mark.parametrize("L,dist", [(11, 4), (12, 4), (7, 30), (5, 1), (0, 3), (1, 1)])
def test_prefix_table_is_the_contracts_layout(L, dist):
    """S[t] = sum zp[c*dist .. t], R[t] = sum zp[t .. min(c*dist + dist, L) - 1], zp[t], c = t // dist."""
    zp, table = testing.make_inputs("ecce_prefix", B=2, L=L, lengths=[L, L // 2], dist=dist,
                                    dtype=torch.float64).call("reference")
    assert table.shape == (2, zp.shape[2], 3, L) and table.dtype == torch.float64
    for t in range(L):
        start = t // dist * dist
        end = min(start + dist, L)
        torch.testing.assert_close(table[:, :, 0, t], zp[:, start:t + 1].sum(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(table[:, :, 1, t], zp[:, t:end].sum(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(table[:, :, 2, t], zp[:, t], rtol=0, atol=0)


def _band_sums_on_diagonals(table, dist):
    """sum zp[j..i] for every i and i - j = d < dist, from the table's two formulas: (L, d) -> value."""
    S, R, zp = table.unbind(2)
    L = S.shape[-1]
    out = {}
    for d in range(min(dist, L)):
        i = torch.arange(d, L)
        j = i - d
        same = (i // dist) == (j // dist)
        out[d] = torch.where(same, S[..., i] - S[..., j] + zp[..., j], R[..., j] + S[..., i])
    return out


def test_band_sums_at_4096_are_float32_accurate_despite_a_large_offset():
    """At L = 4096, zp = 100 + noise: global prefix sums reach ~4e5 and their differences lose
    ~4e5 * eps ~ 0.05 absolute; the chunk-local table keeps each band sum within a few ulps of the
    float64 sums of its window (the bound scales with two chunks, not the conversation)."""
    L, dist = 4096, 30
    zp = 100 + torch.randn(1, L, 2, dtype=torch.float64)
    exact = _band_sums_on_diagonals(padding.prefix_table(zp, dist), dist)
    approx = _band_sums_on_diagonals(padding.prefix_table(zp.float(), dist), dist)
    for d, e in exact.items():
        bound = 4 * torch.finfo(torch.float32).eps * 2 * dist * 101  # two chunks' magnitude, a few ulps
        assert (approx[d].double() - e).abs().max() <= bound, d


def test_band_means_of_the_table_equal_float64_band_means():
    """ecce_bias in float32 (chunk-local sums) against Algorithm 1's float64 window means, over
    many chunks, with an offset of 50 on zp (a constant feature of Z) so that rounding shows:
    within a few ulps of two chunks' magnitude."""
    Z, W, lengths = z_and_w(2, 97, [97, 60], H=2, D=4)
    Z = torch.cat([Z, valid_mask(lengths, 97)[..., None].double()], -1)
    W = torch.cat([W, torch.full((1, 2), 50.0, dtype=torch.float64)])
    dist = 7
    E = ops.ecce_bias((Z @ W).float(), lengths, dist=dist, backend="reference")
    bound = 4 * torch.finfo(torch.float32).eps * 2 * dist * float((Z @ W).abs().max())
    torch.testing.assert_close(E.double(), algorithm1_batch(Z, W, lengths, dist), rtol=0, atol=bound)


# --- gradients, layouts -------------------------------------------------------------------

@pytest.mark.parametrize("op,kwargs", [
    ("ecce_prefix", {"dist": 3}), ("ecce_bias", {"dist": 3}), ("ecce_bias", {"dist": 3, "causal": True}),
    ("ecce_attention", {"dist": 3}), ("ecce_attention", {"dist": 3, "causal": True}),
    ("routed_mixture", {"pool_size": 3}), ("routed_mixture", {"pool_size": 5}),
    ("routed_mixture", {"pool_size": 3, "causal": True})])
def test_gradcheck_float64(op, kwargs):
    case = testing.make_inputs(op, B=2, L=6, H=2, Dh=3, D=3, lengths=[6, 4], dtype=torch.float64,
                               requires_grad=True, garbage=None, **kwargs)
    names = list(case.tensors)
    fn = lambda *ts: getattr(ops, op)(*ts, lengths=case.lengths, backend="reference", **kwargs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(case.tensors[n] for n in names), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_through_the_prefix_table(causal):
    """ecce_attention(prefix=ecce_prefix(z, w)[1]): the table's gradient reaches z and w."""
    z_case = testing.make_inputs("ecce_prefix", B=2, L=7, H=2, D=3, lengths=[7, 5], dtype=torch.float64,
                                 requires_grad=True, garbage=None)
    q, k, v = _qkv(2, 7, 2, 3, z_case.lengths, requires_grad=True)

    def fn(q, k, v, z, w):
        _, prefix = ops.ecce_prefix(z, w, z_case.lengths, dist=3, backend="reference")
        return ops.ecce_attention(q, k, v, None, z_case.lengths, 3, causal=causal, backend="reference", prefix=prefix)
    assert torch.autograd.gradcheck(fn, (q, k, v, *z_case.tensors.values()), eps=1e-6, atol=1e-6)


def test_no_bias_is_plain_masked_attention():
    """zp=None and prefix=None: ECCE off, i.e. the bias is 0 (equal to a zero zp, up to float64
    rounding: without a bias the reference runs PyTorch's scaled_dot_product_attention)."""
    q, k, v = _qkv(2, 8, 2, 4, torch.tensor([8, 3]))
    lengths = torch.tensor([8, 3])
    zeros = torch.zeros(2, 8, 2, dtype=torch.float64)
    torch.testing.assert_close(ops.ecce_attention(q, k, v, None, lengths, backend="reference"),
                               ops.ecce_attention(q, k, v, zeros, lengths, backend="reference"))


def test_strided_views_are_read_in_place_and_out_has_qs_layout():
    """q, k, v as the model holds them — (B, L, D) activations viewed (B, H, L, Dh) — give the
    contiguous inputs' answer, and out has q's layout: out.transpose(1, 2) is (B, L, H, Dh) contiguous."""
    B, L, H, Dh = 2, 7, 3, 4
    q, k, v = (torch.randn(B, L, H * Dh).view(B, L, H, Dh).transpose(1, 2) for _ in range(3))
    zp = torch.randn(B, H, L).transpose(1, 2)  # (B, L, H), strided
    lengths = torch.tensor([7, 2])
    out = ops.ecce_attention(q, k, v, zp, lengths, backend="reference")
    ref = ops.ecce_attention(q.contiguous(), k.contiguous(), v.contiguous(), zp.contiguous(), lengths,
                             backend="reference")
    torch.testing.assert_close(out, ref)
    assert out.stride() == q.stride() and out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("op", ["ecce_bias", "ecce_attention"])
def test_autocast_does_not_reach_inside_the_reference(op):
    """Under a caller's bfloat16 autocast the reference still computes in float32 (same answer, no overflow)."""
    case = testing.make_inputs(op, B=2, L=9, lengths=[9, 0], dist=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = case.call("reference")
    assert torch.equal(out, case.call("reference"))


def test_maxpool_ties_route_gradient_to_the_first_index():
    x = torch.tensor([[[1.0], [2.0], [2.0], [0.0]]], dtype=torch.float64, requires_grad=True)
    logits = torch.tensor([[[-1e9, -1e9, -1e9, 0.0]] * 4], dtype=torch.float64)  # w = max-pool only
    y = torch.zeros_like(x)
    ops.routed_mixture(logits, x, y, y, backend="reference").sum().backward()
    # windows: {0,1}->1, {0,1,2}->1 (tie 1,2 -> first), {1,2,3}->1, {2,3}->2
    assert x.grad.flatten().tolist() == [0.0, 3.0, 1.0, 0.0]
    x.grad = None
    ops.routed_mixture(logits, x, y, y, causal=True, backend="reference").sum().backward()
    # causal windows: {0}->0, {0,1}->1, {0,1,2}->1 (tie), {1,2,3}->1 (tie)
    assert x.grad.flatten().tolist() == [1.0, 3.0, 0.0, 0.0]


# --- validation: every error names the argument -------------------------------------------

def _args(op, **kw):
    return list(testing.make_inputs(op, B=2, L=5, H=3, Dh=4, D=6, lengths=[5, 5], **kw).tensors.values())


def _attn(**kw):
    return _args("ecce_attention", **kw)


def _mix(**kw):
    return _args("routed_mixture", **kw)


def _table(dtype=torch.float32, shape=(2, 3, 3, 5)):
    return torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.ecce_bias(torch.randn(2, 5)), ValueError, "zp must have 3 dimensions"),
    (lambda: ops.ecce_bias(torch.randint(0, 3, (2, 5, 3))), TypeError, "zp must have a floating-point"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), dist=0), ValueError, "dist must be >= 1"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), dist=2.5), TypeError, "dist must be an int"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), dist=2**40), ValueError, r"dist must be <= 2\*\*31 - 1"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), causal=1), TypeError, "causal must be a bool"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([6, 1])), ValueError, r"lengths must lie in \[0, L=5\]"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([-1, 1])), ValueError, "lengths must lie"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([5])), ValueError, r"lengths must have shape \(2,\)"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([5.0, 1.0])), TypeError, "lengths must be an integer"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), "5"), TypeError, r"lengths must be an integer tensor of shape \(2,\) or None, got str"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), [object(), 1]), TypeError, "lengths must be an integer tensor"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), backend="fast"), ValueError, "backend must be one of"),
    (lambda: ops.ecce_prefix(torch.randn(2, 5, 4), torch.randn(3, 2)), ValueError, "w_fc has input dim = 3"),
    (lambda: ops.ecce_prefix(torch.randn(2, 5, 4), torch.randn(4, 2), dist=-3), ValueError, "dist must be >= 1"),
    (lambda: ops.ecce_attention(*_attn()[:3], torch.randn(2, 5, 4)), ValueError, "zp has number of heads = 4"),
    (lambda: ops.ecce_attention(*_attn()[:3], torch.randn(2, 6, 3)), ValueError, "zp has length = 6"),
    (lambda: ops.ecce_attention(_attn()[0], torch.randn(2, 3, 6, 4), *_attn()[2:]), ValueError, "k has length = 6"),
    (lambda: ops.ecce_attention(*_attn()[:2], torch.randn(3, 3, 5, 4), _attn()[3]), ValueError, "v has batch size = 3"),
    (lambda: ops.ecce_attention(_attn()[0], torch.randn(2, 3, 5, 8), *_attn()[2:]), ValueError, "k has head dim = 8"),
    (lambda: ops.ecce_attention(*_attn()[:3], torch.randn(2, 5, 3).double()), TypeError, "zp has dtype"),
    (lambda: ops.ecce_attention(torch.randn(2, 3, 5), *_attn()[1:]), ValueError, "q must have 4 dimensions"),
    (lambda: ops.ecce_attention(*_attn(), scale=float("nan")), TypeError, "scale must be"),
    (lambda: ops.ecce_attention(*_attn(), causal="yes"), TypeError, "causal must be a bool"),
    (lambda: ops.ecce_attention(*_attn(), prefix=_table()), ValueError, "pass zp or prefix"),
    (lambda: ops.ecce_attention(*_attn()[:3], prefix=_table(shape=(2, 3, 2, 5))), ValueError, "prefix has table rows = 2"),
    (lambda: ops.ecce_attention(*_attn()[:3], prefix=_table(shape=(2, 3, 3, 4))), ValueError, "prefix has length = 4"),
    (lambda: ops.ecce_attention(*_attn()[:3], prefix=_table(shape=(3, 5))), ValueError, "prefix must have 4 dimensions"),
    (lambda: ops.ecce_attention(*_attn(dtype=torch.float16)[:3], prefix=_table(torch.float16)), TypeError,
     r"prefix has dtype torch.float16; with q of dtype torch.float16 it must be one of \('torch.float32',\)"),
    (lambda: ops.ecce_attention(*_attn()[:3], prefix=_table(torch.float64)), TypeError, "prefix has dtype torch.float64"),
    (lambda: ops.routed_mixture(torch.randn(2, 5, 3), *_mix()[1:]), ValueError, "logits has number of token mixers = 3"),
    (lambda: ops.routed_mixture(*_mix()[:2], torch.randn(2, 5, 7), _mix()[3]), ValueError, "y_attn has feature dim = 7"),
    (lambda: ops.routed_mixture(*_mix()[:3], torch.randn(2, 4, 6)), ValueError, "y_mlp has length = 4"),
    (lambda: ops.routed_mixture(*_mix(), pool_size=2), ValueError, "pool_size must be odd"),
    (lambda: ops.routed_mixture(*_mix(), pool_size=-1), ValueError, "pool_size must be >= 1"),
    (lambda: ops.routed_mixture(*_mix(), pool_size=2**40 + 1), ValueError, r"pool_size must be <= 2\*\*31 - 1"),
    (lambda: ops.routed_mixture(*_mix(), causal=None), TypeError, "causal must be a bool"),
    (lambda: ops.routed_mixture(*_mix()[:3], _mix()[3].half()), TypeError, "y_mlp has dtype"),
    (lambda: ops.routed_mixture("x", *_mix()[1:]), TypeError, "logits must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_half_inputs_take_a_float32_zp_or_table():
    """ecce_prefix returns float32 for half inputs: the attention of half q takes it as zp or prefix."""
    q, k, v, zp = _attn(dtype=torch.float16)
    lengths = torch.tensor([5, 3])
    by_half = ops.ecce_attention(q, k, v, zp, lengths, backend="reference")
    by_float = ops.ecce_attention(q, k, v, zp.float(), lengths, backend="reference")
    table = padding.prefix_table(torch.where(valid_mask(lengths, 5)[..., None], zp.float(), 0.0), 30)
    by_table = ops.ecce_attention(q, k, v, lengths=lengths, backend="reference", prefix=table)
    assert by_half.dtype == by_float.dtype == by_table.dtype == torch.float16
    torch.testing.assert_close(by_float, by_half)
    torch.testing.assert_close(by_table, by_half)


def test_mixed_devices_are_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device (CUDA) to mix devices")
    args = _attn()
    args[3] = args[3].cuda()
    with pytest.raises(ValueError, match="zp is on"):
        ops.ecce_attention(*args)


@pytest.mark.parametrize("op", ["ecce_bias", "ecce_attention", "routed_mixture"])
def test_reference_is_vectorised(op):
    """No Python loop over positions: the number of torch calls does not grow with L."""
    def count(L):
        case = testing.make_inputs(op, B=2, L=L, lengths=[L, L // 2], dist=30)
        with torch.autograd.profiler.profile() as prof:
            case.call("reference")
        return len(prof.function_events)
    assert count(470) == count(47)  # both span several dist-chunks, the last one partial
