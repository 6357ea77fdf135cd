"""The public ops with the reference backend: the paper's Algorithm 1, padding, gradients, errors.

These tests pin the oracle itself; the kernels' tests compare against it.
"""
import math

import pytest
import torch

from iteach_fast import ops


def algorithm1(Z, fc_weight, fc_bias=None, dist=30):
    """The paper's Algorithm 1, literally: a double loop filling E[i][j] = mean(Z[i..j]) for
    j in [i, min(N, dist + i)), mirrored, then FC applied to the whole N x N x D tensor.
    ``Z[i:j]`` is read inclusively (``Z[i..j]``), as DESIGN §2 resolves it."""
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


def algorithm1_batch(Z, W, lengths, dist, fc_bias=None):
    """Algorithm 1 per conversation (on its valid part), zero-padded to ``(B, H, L, L)``."""
    B, L, _ = Z.shape
    out = torch.zeros(B, W.shape[1], L, L, dtype=Z.dtype)
    for b, n in enumerate(lengths.tolist()):
        out[b, :, :n, :n] = algorithm1(Z[b, :n], W, fc_bias, dist)
    return out


def eager_attention(q, k, v, E, lengths, scale):
    """softmax(q k^T * scale + E) v with keys masked, rows beyond lengths 0 (per conversation)."""
    out = torch.zeros_like(q)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        S = q[b, :, :n] @ k[b, :, :n].transpose(-1, -2) * scale + E[b, :, :n, :n]
        out[b, :, :n] = torch.softmax(S, dim=-1) @ v[b, :, :n]
    return out


CASES = [  # (B, L, H, dist, lengths)
    (2, 7, 3, 30, [7, 4]),    # dist > L
    (3, 12, 2, 4, [12, 0, 5]),  # ragged, one empty conversation, narrow band
    (1, 1, 4, 30, [1]),        # L = 1
    (2, 9, 2, 1, [9, 3]),      # dist = 1: only the diagonal
]


@pytest.mark.parametrize("B,L,H,dist,lengths", CASES)
def test_ecce_bias_matches_algorithm1(B, L, H, dist, lengths):
    D = 5
    Z = torch.randn(B, L, D, dtype=torch.float64)
    W = torch.randn(D, H, dtype=torch.float64)
    lengths = torch.tensor(lengths)
    E = ops.ecce_bias(Z @ W, lengths, dist=dist, backend="reference")
    expected = algorithm1_batch(Z, W, lengths, dist)
    torch.testing.assert_close(E, expected, rtol=1e-12, atol=1e-12)


def test_ecce_bias_catches_an_exclusive_window():
    """The inclusive reading matters: an exclusive window (Z[i:j]) differs, so the test above can fail."""
    Z, W = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    E = ops.ecce_bias((Z @ W)[None], dist=30, backend="reference")[0]
    assert not torch.allclose(E[:, 0, 3], (Z[0:3].mean(0) @ W))
    torch.testing.assert_close(E[:, 0, 3], Z[0:4].mean(0) @ W)


@pytest.mark.parametrize("B,L,H,dist,lengths", CASES)
def test_fc_bias_does_not_change_attention(B, L, H, dist, lengths):
    """Algorithm 1 applies FC's bias to all L x L entries: a per-head constant on every logit,
    which softmax ignores. So the op (bias dropped) equals attention with Algorithm 1's E."""
    D, Dh = 6, 4
    Z = torch.randn(B, L, D, dtype=torch.float64)
    W, fc_bias = torch.randn(D, H, dtype=torch.float64), 3 * torch.randn(H, dtype=torch.float64)
    q, k, v = (torch.randn(B, H, L, Dh, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor(lengths)
    scale = 1 / math.sqrt(Dh)
    with_bias = eager_attention(q, k, v, algorithm1_batch(Z, W, lengths, dist, fc_bias), lengths, scale)
    out = ops.ecce_attention(q, k, v, Z @ W, lengths, dist=dist, backend="reference")
    torch.testing.assert_close(out, with_bias, rtol=1e-10, atol=1e-10)
    # and the bias is not a no-op on E itself (so the check above is not vacuous)
    assert not torch.allclose(algorithm1_batch(Z, W, lengths, dist, fc_bias), algorithm1_batch(Z, W, lengths, dist))


def _random_inputs(op, B, L, dtype=torch.float64, H=3, Dh=4, D=6):
    if op == "ecce_bias":
        return {"zp": torch.randn(B, L, H, dtype=dtype)}
    if op == "ecce_attention":
        return {n: torch.randn(B, H, L, Dh, dtype=dtype) for n in "qkv"} | {"zp": torch.randn(B, L, H, dtype=dtype)}
    return {"logits": torch.randn(B, L, 4, dtype=dtype), "x": torch.randn(B, L, D, dtype=dtype),
            "y_attn": torch.randn(B, L, D, dtype=dtype), "y_mlp": torch.randn(B, L, D, dtype=dtype)}


def _call(op, inputs, lengths, **kw):
    return getattr(ops, op)(*inputs.values(), lengths=lengths, backend="reference", **kw)


def _seq_dim(op, name):
    return 2 if (op == "ecce_attention" and name in "qkv") else 1


def _valid_positions(op, out, lengths):
    """(B, L) mask broadcast to the output's layout."""
    valid = torch.arange(out.shape[-2] if op != "ecce_bias" else out.shape[-1]) < lengths[:, None]
    if op == "ecce_attention":
        return valid[:, None, :, None].expand_as(out)
    if op == "routed_mixture":
        return valid[:, :, None].expand_as(out)
    return (valid[:, None, :, None] & valid[:, None, None, :]).expand_as(out)


@pytest.mark.parametrize("op", ["ecce_bias", "ecce_attention", "routed_mixture"])
def test_padding_is_invisible(op):
    """Garbage beyond lengths (large random values) changes no valid output; invalid outputs are exactly 0."""
    B, L = 3, 11
    lengths = torch.tensor([11, 6, 0])
    inputs = _random_inputs(op, B, L)
    base = _call(op, inputs, lengths)
    dirty = {}
    for name, t in inputs.items():
        t = t.clone()
        pad = (torch.arange(L) >= lengths[:, None])  # (B, L)
        shape = [B, 1, L, 1] if _seq_dim(op, name) == 2 else [B, L, 1]
        t = torch.where(pad.view(shape), 1e3 * torch.randn_like(t), t)
        dirty[name] = t
    out = _call(op, dirty, lengths)
    valid = _valid_positions(op, out, lengths)
    assert torch.equal(out[valid], base[valid])
    assert torch.count_nonzero(out[~valid]) == 0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("L", [5, 0])  # L = 0: a batch padded to no utterances at all
@pytest.mark.parametrize("op", ["ecce_bias", "ecce_attention", "routed_mixture"])
def test_empty_conversation_gives_zeros_and_finite_gradients(op, L):
    inputs = {n: t.requires_grad_() for n, t in _random_inputs(op, 2, L).items()}
    out = _call(op, inputs, torch.tensor([0, 0]))
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    for name, t in inputs.items():
        assert torch.isfinite(t.grad).all(), name
        assert torch.count_nonzero(t.grad) == 0, name


@pytest.mark.parametrize("op,kwargs", [("ecce_bias", {"dist": 3}), ("ecce_attention", {"dist": 3}),
                                       ("routed_mixture", {"pool_size": 3}), ("routed_mixture", {"pool_size": 5})])
def test_gradcheck_float64(op, kwargs):
    inputs = {n: t.requires_grad_() for n, t in _random_inputs(op, 2, 6, H=2, Dh=3, D=3).items()}
    lengths = torch.tensor([6, 4])
    names = list(inputs)
    fn = lambda *ts: _call(op, dict(zip(names, ts)), lengths, **kwargs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["ecce_bias", "ecce_attention", "routed_mixture"])
def test_low_precision_matches_float64(op, dtype):
    inputs = _random_inputs(op, 2, 13)
    lengths = torch.tensor([13, 7])
    expected = _call(op, inputs, lengths)
    out = _call(op, {n: t.to(dtype) for n, t in inputs.items()}, lengths)
    assert out.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_non_contiguous_inputs_are_accepted():
    q, k, v = (torch.randn(2, 7, 3, 4).transpose(1, 2) for _ in range(3))  # (B, H, L, Dh), strided
    zp = torch.randn(2, 3, 7).transpose(1, 2)
    out = ops.ecce_attention(q, k, v, zp, torch.tensor([7, 2]), backend="reference")
    ref = ops.ecce_attention(q.contiguous(), k.contiguous(), v.contiguous(), zp.contiguous(),
                             torch.tensor([7, 2]), backend="reference")
    torch.testing.assert_close(out, ref)


def test_maxpool_ties_route_gradient_to_the_first_index():
    x = torch.tensor([[[1.0], [2.0], [2.0], [0.0]]], dtype=torch.float64, requires_grad=True)
    logits = torch.tensor([[[-1e9, -1e9, -1e9, 0.0]] * 4], dtype=torch.float64)  # w = max-pool only
    y = torch.zeros_like(x)
    ops.routed_mixture(logits, x, y, y, backend="reference").sum().backward()
    # windows: {0,1}->1, {0,1,2}->1 (tie 1,2 -> first), {1,2,3}->1, {2,3}->2
    assert x.grad.flatten().tolist() == [0.0, 3.0, 1.0, 0.0]


# --- validation: every error names the argument -------------------------------------------

def _attn_args(B=2, H=3, L=5, Dh=4):
    return [torch.randn(B, H, L, Dh) for _ in range(3)] + [torch.randn(B, L, H)]


def _mix_args(B=2, L=5, D=6):
    return [torch.randn(B, L, 4), torch.randn(B, L, D), torch.randn(B, L, D), torch.randn(B, L, D)]


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.ecce_bias(torch.randn(2, 5)), ValueError, "zp must have 3 dimensions"),
    (lambda: ops.ecce_bias(torch.randint(0, 3, (2, 5, 3))), TypeError, "zp must have a floating-point"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), dist=0), ValueError, "dist must be >= 1"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), dist=2.5), TypeError, "dist must be an int"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([6, 1])), ValueError, r"lengths must lie in \[0, L=5\]"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([-1, 1])), ValueError, "lengths must lie"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([5])), ValueError, r"lengths must have shape \(2,\)"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), torch.tensor([5.0, 1.0])), TypeError, "lengths must be an integer"),
    (lambda: ops.ecce_bias(torch.randn(2, 5, 3), backend="fast"), ValueError, "backend must be one of"),
    (lambda: ops.ecce_attention(*_attn_args()[:3], torch.randn(2, 5, 4)), ValueError, "zp has number of heads = 4"),
    (lambda: ops.ecce_attention(*_attn_args()[:3], torch.randn(2, 6, 3)), ValueError, "zp has length = 6"),
    (lambda: ops.ecce_attention(_attn_args()[0], torch.randn(2, 3, 6, 4), *_attn_args()[2:]), ValueError, "k has length = 6"),
    (lambda: ops.ecce_attention(_attn_args()[0], _attn_args()[1], torch.randn(3, 3, 5, 4), _attn_args()[3]),
     ValueError, "v has batch size = 3"),
    (lambda: ops.ecce_attention(_attn_args()[0], torch.randn(2, 3, 5, 8), *_attn_args()[2:]), ValueError, "k has head dim = 8"),
    (lambda: ops.ecce_attention(*_attn_args()[:3], torch.randn(2, 5, 3).double()), TypeError, "zp has dtype"),
    (lambda: ops.ecce_attention(torch.randn(2, 3, 5), *_attn_args()[1:]), ValueError, "q must have 4 dimensions"),
    (lambda: ops.ecce_attention(*_attn_args(), scale=float("nan")), TypeError, "scale must be"),
    (lambda: ops.routed_mixture(torch.randn(2, 5, 3), *_mix_args()[1:]), ValueError, "logits has number of token mixers = 3"),
    (lambda: ops.routed_mixture(*_mix_args()[:2], torch.randn(2, 5, 7), _mix_args()[3]), ValueError, "y_attn has feature dim = 7"),
    (lambda: ops.routed_mixture(*_mix_args()[:3], torch.randn(2, 4, 6)), ValueError, "y_mlp has length = 4"),
    (lambda: ops.routed_mixture(*_mix_args(), pool_size=2), ValueError, "pool_size must be odd"),
    (lambda: ops.routed_mixture(*_mix_args(), pool_size=-1), ValueError, "pool_size must be >= 1"),
    (lambda: ops.routed_mixture(*_mix_args()[:3], _mix_args()[3].half()), TypeError, "y_mlp has dtype"),
    (lambda: ops.routed_mixture("x", *_mix_args()[1:]), TypeError, "logits must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_mixed_devices_are_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device (CUDA) to mix devices")
    args = _attn_args()
    args[3] = args[3].cuda()
    with pytest.raises(ValueError, match="zp is on"):
        ops.ecce_attention(*args)


@pytest.mark.parametrize("op", ["ecce_bias", "ecce_attention", "routed_mixture"])
def test_reference_is_vectorised(op):
    """No Python loop over positions: the number of torch calls does not grow with L."""
    def count(L):
        with torch.autograd.profiler.profile() as prof:
            _call(op, _random_inputs(op, 2, L), torch.tensor([L, L // 2]))
        return len(prof.function_events)
    assert count(470) == count(47)  # both span several dist-chunks, the last one partial
