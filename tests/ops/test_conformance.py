"""Every registered implementation (iteach_fast.backends.REGISTRY) against the float64
reference: every dtype it declares x ragged lengths (0 and 1 included) x garbage in the
padding, the forward and the gradient of every tensor input. A new backend registered
there is tested here with no edit.

The tolerances are the registry's (iteach_fast.testing.assert_close); the padding holds
large values (or NaN), so equal valid outputs also prove that padding is never read.
"""
import pytest
import torch

from iteach_fast import backends, testing

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
            for dtype in impl.dtypes:
                for name, shape in SHAPES:
                    if name == "tiles-dist1" and dtype not in (torch.float32, torch.float64):
                        continue  # the tile logic is dtype-independent; keep the interpreter's time down
                    yield pytest.param(impl, dtype, shape, id=f"{op}-{impl.backend}-{str(dtype)[6:]}-{name}")


def _runnable(impl, dtype):
    why = impl.unavailable_reason(DEVICE)
    if why is not None:
        pytest.skip(why)
    if impl.backend == "triton" and DEVICE == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bfloat16 tl.dot is wrong in the Triton interpreter: tested on a GPU")


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


def test_every_op_has_a_reference_and_auto_always_resolves():
    for op in backends.OPS:
        assert "reference" in backends.REGISTRY[op]
        for dtype in (torch.float32, torch.float64):
            assert backends.select(op, "auto", torch.device("cpu"), dtype).unavailable_reason("cpu") is None
