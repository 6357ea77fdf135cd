"""Every registered implementation (iteach_fast.ops.backends.REGISTRY) against the float64
reference: every dtype it declares x ragged lengths (0 and 1 included) x garbage in the
padding x causal (where it declares the feature), the forward and the gradient of every
tensor input; and every backend's prefix table read by every backend's attention. A new
backend registered there is tested here with no edit.

The tolerances are the registry's (iteach_fast.ops.testing.assert_close); the padding holds
large values (or NaN), so equal valid outputs also prove that padding is never read.
"""
import pytest
import torch

from iteach_fast import ops
from iteach_fast.ops import backends, testing
from iteach_fast.ops.padding import valid_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (name, make_inputs keywords): ragged, an empty conversation with dist > L, L = 1,
# L = 0, and a length that spans several kernel tiles with the narrowest band
SHAPES = [
    ("ragged", dict(B=3, L=13, lengths=[13, 5, 1], dist=5)),
    ("empty-wide-band", dict(B=3, L=11, lengths=[11, 0, 7], dist=30)),
    ("L1", dict(B=2, L=1, lengths=[1, 0], dist=1)),
    ("L0", dict(B=2, L=0, lengths=[0, 0], dist=5)),
    ("tiles-dist1", dict(B=2, L=37, lengths=[37, 20], dist=1)),
]


def _cases():
    for op in backends.OPS:
        for impl in backends.implementations(op):
            for causal in (False, True) if "causal" in impl.features else (False,):
                for dtype in impl.dtypes:
                    for name, shape in SHAPES:
                        if (name == "tiles-dist1" or causal) and dtype not in (torch.float32, torch.float64):
                            continue  # tiles and masks are dtype-independent; keep the interpreter's time down
                        shape = dict(shape, causal=True) if causal else shape
                        yield pytest.param(impl, dtype, shape, id=f"{op}-{impl.backend}-{str(dtype)[6:]}-{name}"
                                           + ("-causal" if causal else ""))


def _runnable(impl, dtype):
    why = impl.unavailable_reason(DEVICE) or impl.spec.refuses(torch.device(DEVICE).type, dtype)
    if why is not None:
        pytest.skip(why)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("impl, dtype, shape", list(_cases()))
def test_matches_reference_forward_and_every_gradient(impl, dtype, shape):
    _runnable(impl, dtype)
    case = testing.make_inputs(impl.op, dtype=dtype, device=DEVICE, requires_grad=True, **shape)
    ref_case = case.cast(torch.float64, device="cpu")
    out, ref = _as_tuple(case.call(impl.backend)), _as_tuple(ref_case.call("reference"))
    for i, (o, r, mask) in enumerate(zip(out, ref, testing.output_masks(case, out))):
        assert torch.isfinite(o).all(), f"output {i} is not finite"
        if mask is not None:
            assert torch.count_nonzero(o[~mask]) == 0, f"output {i} is not exactly 0 at invalid positions"
        testing.assert_close(o, r, op=impl.op, backend=impl.backend, dtype=dtype, what=f"output {i}")
    if not any(o.requires_grad for o in out):
        return
    grads_out = [torch.randn(o.shape, dtype=torch.float64) for o in out]
    torch.autograd.backward(out, [g.to(device=o.device, dtype=o.dtype) for g, o in zip(grads_out, out)])
    torch.autograd.backward(ref, grads_out)
    for name, t in case.tensors.items():
        g, g_ref = t.grad, ref_case.tensors[name].grad
        assert g is not None and torch.isfinite(g).all(), f"d{name} is missing or not finite"
        testing.assert_close(g, g_ref, op=impl.op, backend=impl.backend, dtype=dtype, what=f"d{name}")
        _, seq_dim = testing.OP_SPECS[impl.op].tensors[name]
        if seq_dim is not None:  # the padding gets exactly no gradient
            pad = _padding(case, t.shape, seq_dim)
            assert torch.count_nonzero(g[pad]) == 0, f"d{name} is not 0 in the padding"


def _padding(case, shape, seq_dim):
    L = shape[seq_dim]
    view = [shape[0]] + [1] * (len(shape) - 1)
    view[seq_dim] = L
    pad = (torch.arange(L, device=case.lengths.device) >= case.lengths[:, None]).view(view)
    return pad.expand(shape)


def _impls():
    return [pytest.param(impl, id=f"{impl.op}-{impl.backend}") for op in backends.OPS
            for impl in backends.implementations(op)]


@pytest.mark.parametrize("impl", _impls())
def test_nan_in_the_padding_changes_nothing(impl):
    """NaN beyond the lengths (what a careless collate might leave) reaches no output and no gradient."""
    _runnable(impl, torch.float32)
    shape = dict(B=3, L=13, lengths=[13, 5, 0], dist=5)
    clean = testing.make_inputs(impl.op, device=DEVICE, garbage=None, requires_grad=True, **shape)
    dirty = clean.cast(torch.float32)
    for name, t in dirty.tensors.items():
        seq_dim = testing.OP_SPECS[impl.op].tensors[name][1]
        if seq_dim is not None:
            with torch.no_grad():
                t[_padding(dirty, t.shape, seq_dim)] = float("nan")
    outs = [_as_tuple(c.call(impl.backend)) for c in (clean, dirty)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    for _c, out in zip((clean, dirty), outs):
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])
    for name in clean.tensors:
        assert torch.equal(clean.tensors[name].grad, dirty.tensors[name].grad), name


def _pairs():
    for prefix_impl in backends.implementations("ecce_prefix"):
        for attn_impl in backends.implementations("ecce_attention"):
            for causal in (False, True) if "causal" in attn_impl.features else (False,):
                yield pytest.param(prefix_impl, attn_impl, causal,
                                   id=f"{prefix_impl.backend}-{attn_impl.backend}" + ("-causal" if causal else ""))


@pytest.mark.parametrize("shape", [dict(B=3, L=13, lengths=[13, 6, 0], dist=4), dict(B=2, L=0, lengths=[0, 0])],
                         ids=["ragged", "L0"])
@pytest.mark.parametrize("prefix_impl, attn_impl, causal", list(_pairs()))
def test_prefix_table_of_any_backend_feeds_any_attention(prefix_impl, attn_impl, causal, shape):
    """ecce_attention(prefix=ecce_prefix(z, w)[1]) == ecce_attention(zp=z @ w), across backends:
    the table's layout is defined, so every backend reads every other's; gradients reach z and w."""
    _runnable(prefix_impl, torch.float32)
    _runnable(attn_impl, torch.float32)
    dist = shape.get("dist", 5)
    z_case = testing.make_inputs("ecce_prefix", device=DEVICE, requires_grad=True, **shape)
    a_case = testing.make_inputs("ecce_attention", device=DEVICE, requires_grad=True, **shape)
    q, k, v, _ = a_case.tensors.values()
    z, w = z_case.tensors.values()
    lengths = z_case.lengths
    _, prefix = ops.ecce_prefix(z, w, lengths, dist, backend=prefix_impl.backend)
    out = ops.ecce_attention(q, k, v, None, lengths, dist, causal=causal, backend=attn_impl.backend, prefix=prefix)

    ref = {n: t.detach().cpu().double().requires_grad_() for n, t in dict(q=q, k=k, v=v, z=z, w=w).items()}
    zp_ref = torch.where(valid_mask(lengths.cpu(), z.shape[1])[..., None], ref["z"], 0.0) @ ref["w"]
    expected = ops.ecce_attention(ref["q"], ref["k"], ref["v"], zp_ref, lengths.cpu(), dist, causal=causal,
                                  backend="reference")
    testing.assert_close(out, expected, op="ecce_attention", backend=attn_impl.backend, dtype=torch.float32)
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.to(out))
    expected.backward(grad)
    for name, t in dict(q=q, k=k, v=v, z=z, w=w).items():
        assert t.grad is not None and torch.isfinite(t.grad).all(), f"d{name} is missing or not finite"
        testing.assert_close(t.grad, ref[name].grad, op="ecce_attention", backend=attn_impl.backend,
                             dtype=torch.float32, what=f"d{name}")


@pytest.mark.parametrize("impl", [pytest.param(i, id=i.backend) for i in backends.implementations("ecce_attention")])
def test_attention_reads_strided_views_and_writes_qs_layout(impl):
    """q, k, v as a model holds them, ``t.view(B, L, H, Dh).transpose(1, 2)`` of (B, L, D)
    activations: the answer of contiguous copies, and out in q's layout (so that
    ``out.transpose(1, 2).reshape(B, L, D)`` is a view, not a copy)."""
    _runnable(impl, torch.float32)
    B, L, H, Dh = 2, 9, 2, 8
    case = testing.make_inputs("ecce_attention", B=B, L=L, H=H, Dh=Dh, lengths=[9, 4], device=DEVICE)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in list(case.tensors.values())[:3])
    zp = case.tensors["zp"]
    out = ops.ecce_attention(q, k, v, zp, case.lengths, 4, backend=impl.backend)
    expected = ops.ecce_attention(q.contiguous(), k.contiguous(), v.contiguous(), zp, case.lengths, 4,
                                  backend=impl.backend)
    torch.testing.assert_close(out, expected)
    assert out.stride() == q.stride(), f"out strides {out.stride()}, q's {q.stride()}"


def test_every_op_has_a_reference_and_auto_always_resolves():
    for op in backends.OPS:
        assert "reference" in backends.REGISTRY[op]
        for dtype in (torch.float32, torch.float64):
            assert backends.select(op, "auto", torch.device("cpu"), dtype).unavailable_reason("cpu") is None
