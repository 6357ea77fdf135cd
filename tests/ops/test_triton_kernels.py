"""K1, the Triton ECCE kernels: what the conformance tests do not reach.

tests/ops/test_conformance.py already holds every registered Triton op to the float64 reference
(forward and every gradient, float32 / float16, ragged lengths, L = 0 and 1, dist 1 and > L, an
empty conversation, NaN in the padding, causal, any backend's prefix table). Here: shapes that
span several tiles (head dims 16..64, padded lanes, bands across tiles, causal diagonals), the
layouts the kernels read in place, the chunk scans (chunks of several blocks, accuracy at
L = 4096, their adjoint), local numerics (a NaN or a spike stays in its band), the work causal
skips, the torch.library registration, memory. Without a GPU these run in the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), where the kernels use 16 x 16 tiles; bfloat16 (whose
tl.dot the interpreter gets wrong), large sizes, peak GPU memory and CUDA graphs run on a GPU only
(marked ``gpu``).

    python tests/ops/test_triton_kernels.py   # max relative errors vs float64, per dtype, and at L = 4096
"""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if __name__ == "__main__" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py does, before triton loads

from iteach_fast import ops
from iteach_fast.ops import backends, padding, testing
from iteach_fast.ops.padding import valid_mask

pytest.importorskip("triton", reason="triton is not installed")
# not skipped: without it the package is not installed (kernels/ becomes iteach_fast.kernels
# only through setup.py's package_dir), and every Triton test would vanish silently
from iteach_fast.kernels import attention as k_attention  # noqa: E402
from iteach_fast.kernels import bias as k_bias  # noqa: E402
from iteach_fast.kernels import ecce  # noqa: E402
from iteach_fast.kernels import scan as k_scan  # noqa: E402
from iteach_fast.kernels import tiles as k_tiles  # noqa: E402

_why = backends.REGISTRY["ecce_attention"]["triton"].unavailable_reason()
if _why is not None:
    pytest.skip(f"the Triton backend cannot run here: {_why}", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = k_tiles.launch_tiles("fwd", torch.float32, 16, False, torch.device(DEVICE)) == k_tiles.INTERPRETER
HALF = (torch.float32, torch.float16)  # bfloat16 on a GPU only


def check_case(case: testing.OpCase, **params):
    """The Triton op vs the float64 reference on ``case``: the output and every gradient, within the
    registry's tolerances; outputs beyond the lengths exactly 0."""
    dtype = next(iter(case.tensors.values())).dtype
    ref_case = case.cast(torch.float64, device="cpu")
    out, ref = case.call("triton", **params), ref_case.call("reference", **params)
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for i, (o, r, mask) in enumerate(zip(outs, refs, testing.output_masks(case, outs))):
        assert o.dtype == dtype or case.op == "ecce_prefix"
        if mask is not None:
            assert torch.count_nonzero(o[~mask]) == 0, f"output {i} is not 0 beyond the lengths"
        testing.assert_close(o, r, op=case.op, backend="triton", dtype=dtype, what=f"output {i}")
    grads = [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    torch.autograd.backward(outs, [g.to(o.device, o.dtype) for g, o in zip(grads, outs)])
    torch.autograd.backward(refs, grads)
    for name, t in case.tensors.items():
        assert t.grad.dtype == dtype
        testing.assert_close(t.grad, ref_case.tensors[name].grad, op=case.op, backend="triton", dtype=dtype,
                             what=f"d{name}")


# ----------------------------------------------------------------------------- attention across tiles

ATTENTION_CASES = [  # (B, H, L, Dh, dist, lengths)
    (2, 2, 37, 16, 5, [37, 20]),  # L not a multiple of 16, band narrower than a tile, tiles skipped
    (1, 2, 50, 64, 20, [43]),  # Dh = 64, four blocks, band and chunks across tiles
    (1, 2, 19, 24, 3, [19]),  # Dh not a power of two: padded lanes
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("B,H,L,Dh,dist,lengths", ATTENTION_CASES)
def test_attention_across_tiles(B, H, L, Dh, dist, lengths, dtype, causal):
    check_case(testing.make_inputs("ecce_attention", B=B, H=H, L=L, Dh=Dh, dist=dist, lengths=lengths,
                                   causal=causal, dtype=dtype, device=DEVICE, requires_grad=True))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_without_bias_across_tiles(causal):
    """``prefix=None``: plain masked attention, every gradient, over several tiles."""
    case = testing.make_inputs("ecce_attention", B=2, H=2, L=37, Dh=16, lengths=[37, 20], causal=causal,
                               device=DEVICE, requires_grad=True)
    q, k, v, _ = case.tensors.values()
    ref = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    out = ops.ecce_attention(q, k, v, lengths=case.lengths, causal=causal, backend="triton")
    expected = ops.ecce_attention(*ref, lengths=case.lengths.cpu(), causal=causal, backend="reference")
    testing.assert_close(out, expected, op="ecce_attention", backend="triton", dtype=torch.float32)
    g = torch.randn_like(expected)
    for got, exp in zip(torch.autograd.grad(out, (q, k, v), g.to(out)), torch.autograd.grad(expected, ref, g)):
        testing.assert_close(got, exp, op="ecce_attention", backend="triton", dtype=torch.float32, what="grad")


def test_all_conversations_empty_gives_zeros_not_nan():
    """Every length 0 at L > 0: the output and every gradient exactly 0 (no 0/0 in the softmax)."""
    case = testing.make_inputs("ecce_attention", B=2, H=2, L=18, Dh=16, lengths=[0, 0], device=DEVICE,
                               requires_grad=True)
    out = case.call("triton", causal=True)
    assert torch.equal(out, torch.zeros_like(out))
    for g in torch.autograd.grad(out, list(case.tensors.values()), torch.randn_like(out)):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_prefix_then_attention_float16_across_tiles(causal):
    """Z, W_fc -> ecce_prefix -> attention (prefix=) in float16 over several tiles and chunks: the
    output and the gradients of q, k, v, z and w vs the float64 reference chain (the conformance
    tests run this chain in float32 at one tile)."""
    dtype, dist = torch.float16, 6
    a_case = testing.make_inputs("ecce_attention", B=2, H=2, L=26, Dh=16, lengths=[26, 11], dtype=dtype,
                                 device=DEVICE, requires_grad=True)
    z_case = testing.make_inputs("ecce_prefix", B=2, L=26, D=24, H=2, lengths=[26, 11], dtype=dtype, device=DEVICE,
                                 requires_grad=True)
    leaves = dict(zip("qkv", list(a_case.tensors.values())[:3]), **z_case.tensors)
    lengths = a_case.lengths
    _, prefix = ops.ecce_prefix(leaves["z"], leaves["w_fc"], lengths, dist, backend="triton")
    out = ops.ecce_attention(leaves["q"], leaves["k"], leaves["v"], lengths=lengths, dist=dist, causal=causal,
                             backend="triton", prefix=prefix)
    ref = {n: t.detach().double().cpu().requires_grad_() for n, t in leaves.items()}
    zp = torch.where(valid_mask(lengths.cpu(), 26)[..., None], ref["z"], 0.0) @ ref["w_fc"]
    expected = ops.ecce_attention(ref["q"], ref["k"], ref["v"], zp, lengths.cpu(), dist, causal=causal,
                                  backend="reference")
    testing.assert_close(out, expected, op="ecce_attention", backend="triton", dtype=dtype)
    g = torch.randn(out.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, list(leaves.values()), g.to(out))
    exp = torch.autograd.grad(expected, list(ref.values()), g)
    for name, a, b in zip(leaves, got, exp):
        testing.assert_close(a, b, op="ecce_attention", backend="triton", dtype=dtype, what=f"d{name}")


def test_an_off_by_one_band_would_be_caught():
    """The comparisons can fail: a band one wider or narrower than ``dist`` (the likeliest kernel
    bug) moves entries by far more than the tolerance, in E and in attention's output."""
    case = testing.make_inputs("ecce_attention", B=1, H=2, L=37, Dh=16, dist=5, lengths=[37], device=DEVICE)
    q, k, v, zp = case.tensors.values()
    E = ops.ecce_bias(zp, dist=5, backend="triton")
    out = ops.ecce_attention(q, k, v, zp, dist=5, backend="triton")
    tol = dict(zip(("atol", "rtol"), testing.tolerance("ecce_attention", "triton", torch.float32)))
    for wrong in (4, 6):
        assert not torch.allclose(E, ops.ecce_bias(zp, dist=wrong, backend="reference"), **tol)
        assert not torch.allclose(out, ops.ecce_attention(q, k, v, zp, dist=wrong, backend="reference"), **tol)


def test_attention_rejects_oversized_head_dim():
    q = torch.zeros(1, 1, 2, k_tiles.MAX_HEAD_DIM + 1, device=DEVICE)
    with pytest.raises(ValueError, match="head dims"):
        ecce.ecce_attention(q, q, q, None, torch.tensor([2], device=DEVICE), 3, 0.1)


# ----------------------------------------------------------------------------- layouts

def _head_views(B, L, H, Dh, dtype=torch.float32):
    """q, k, v as a model holds them: (B, L, H * Dh) activations viewed as (B, H, L, Dh)."""
    xs = [torch.randn(B, L, H * Dh, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3)]
    return xs, [x.view(B, L, H, Dh).transpose(1, 2) for x in xs]


def test_head_views_are_read_in_place_and_out_has_qs_layout():
    B, L, H, Dh = 2, 21, 2, 16
    lengths = torch.tensor([21, 12], device=DEVICE)
    xs, (q, k, v) = _head_views(B, L, H, Dh)
    z, w = torch.randn(B, L, 24, device=DEVICE), torch.randn(H, 24, device=DEVICE).t()  # w_fc a transposed view
    _, prefix = ops.ecce_prefix(z, w, lengths, dist=4, backend="triton")
    out = ops.ecce_attention(q, k, v, lengths=lengths, dist=4, backend="triton", prefix=prefix)
    assert out.stride() == q.stride()
    flat = out.transpose(1, 2).reshape(B, L, H * Dh)
    assert flat.data_ptr() == out.data_ptr() and flat.is_contiguous(), "out's (B, L, D) view must not copy"
    dense = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    expected = ops.ecce_attention(*dense, lengths=lengths, dist=4, backend="triton", prefix=prefix)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    g = torch.randn_like(flat)
    got = torch.autograd.grad(flat, xs, g)
    exp = torch.autograd.grad(expected, dense, g.view(B, L, H, Dh).transpose(1, 2))
    for gx, gd in zip(got, exp):
        torch.testing.assert_close(gx, gd.transpose(1, 2).reshape(B, L, H * Dh), rtol=0, atol=0)


_COPIES = {torch.ops.aten.copy_.default, torch.ops.aten.clone.default, torch.ops.aten._to_copy.default}


class _OpRecorder(TorchDispatchMode):
    """Records every aten op, running this package's custom ops through their Python bodies under
    the mode, so that what they do inside is seen too (the interpreter's own copies of kernel
    arguments included: byte tensors of their storages)."""

    def __init__(self):
        super().__init__()
        self.calls, self.seen, self.largest = [], set(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _CUSTOM_OPS:
            self.seen.add(name)
            with self:
                out = _CUSTOM_OPS[name]._init_fn(*args, **kwargs)
        else:
            self.calls.append((func, [t for t in torch.utils._pytree.tree_leaves((args, kwargs))
                                      if isinstance(t, torch.Tensor)]))
            out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


_CUSTOM_OPS = {op._qualname: op for op in (
    k_attention._attention_fwd, k_attention._attention_bwd, k_scan._prefix_op, k_scan._tables_op,
    k_scan._adjoint_op, k_bias._bias_fwd, k_bias._bias_bwd)}


@pytest.mark.skipif(not INTERPRETED, reason="the recorder runs the ops' bodies, which only the interpreter allows")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_no_copy_of_q_k_v_out_forward_and_backward(causal):
    """ECCE as the model runs it (ecce_prefix once, attention on head views of (B, L, D)
    activations, the output read back as (B, L, D)), forward and backward: no copy_ / clone /
    _to_copy of anything the size of q (the recorder sees a copy of q if the views are made
    contiguous first, so it is not blind)."""
    B, L, H, Dh = 2, 20, 2, 16
    lengths = torch.tensor([20, 9], device=DEVICE)
    xs, (q, k, v) = _head_views(B, L, H, Dh)
    z = torch.randn(B, L, 24, device=DEVICE, requires_grad=True)
    w = torch.randn(H, 24, device=DEVICE, requires_grad=True)

    def step(contiguous=False):
        _, prefix = ops.ecce_prefix(z, w.t(), lengths, dist=4, backend="triton")
        qkv = [t.contiguous() for t in (q, k, v)] if contiguous else (q, k, v)
        out = ops.ecce_attention(*qkv, lengths=lengths, dist=4, causal=causal, backend="triton", prefix=prefix)
        flat = out.transpose(1, 2).reshape(B, L, H * Dh)
        torch.autograd.grad(flat, xs + [z, w], torch.ones_like(flat))

    def copies(mode):
        return [func for func, tensors in mode.calls if func in _COPIES
                and any(t.is_floating_point() and t.numel() >= q.numel() for t in tensors)]

    with _OpRecorder() as mode:
        step()
    assert {"iteach_fast::ecce_attention_fwd", "iteach_fast::ecce_attention_bwd",
            "iteach_fast::ecce_prefix"} <= mode.seen
    assert copies(mode) == []
    with _OpRecorder() as mode:
        step(contiguous=True)
    assert copies(mode), "the recorder must see the copies of .contiguous()"


def test_attention_never_allocates_an_l_by_l_tensor():
    """Forward and backward allocate nothing larger than q (B*H*L*Dh elements, here a quarter of
    B*H*L*L); the same recorder sees the reference's L x L bias, so it is not blind. (On a GPU the
    large test below also bounds the peak of CUDA memory.)"""
    if not INTERPRETED:
        pytest.skip("the recorder runs the ops' bodies, which only the interpreter allows")
    case = testing.make_inputs("ecce_attention", B=1, H=2, L=64, Dh=16, lengths=[61], dist=30, device=DEVICE,
                               requires_grad=True)
    B, H, L, Dh = case.tensors["q"].shape
    for backend in ("triton", "reference"):
        with _OpRecorder() as mode:
            out = case.call(backend)
            torch.autograd.grad(out, list(case.tensors.values()), torch.randn_like(out))
        if backend == "triton":
            assert {"iteach_fast::ecce_attention_fwd", "iteach_fast::ecce_attention_bwd"} <= mode.seen
            assert mode.largest <= B * H * L * Dh * 4, mode.largest
        else:
            assert mode.largest >= B * H * L * L * 4, mode.largest


# ----------------------------------------------------------------------------- causal skips work

@pytest.mark.skipif(not INTERPRETED, reason="counts the interpreter's matmuls")
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_causal_visits_no_tile_above_the_diagonal(monkeypatch, with_bias):
    """At L = 64 (4 x 4 tiles of 16), causal attention visits the 10 tiles on and below the diagonal,
    full attention all 16, in every kernel: 2 block matmuls per tile forward, 3 in the dQ kernel,
    4 in the dK/dV kernel."""
    from triton.runtime import interpreter

    dots = []
    create_dot = interpreter.InterpreterBuilder.create_dot
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot",
                        lambda self, *a: dots.append(1) or create_dot(self, *a))
    case = testing.make_inputs("ecce_attention", B=1, H=1, L=64, Dh=16, lengths=[64], device=DEVICE,
                               requires_grad=True)
    q, k, v, zp = case.tensors.values()
    prefix = padding.prefix_table(zp.detach(), 5) if with_bias else None
    for causal, tiles in ((False, 16), (True, 10)):
        dots.clear()
        out = ops.ecce_attention(q, k, v, dist=5, causal=causal, backend="triton", prefix=prefix)
        assert len(dots) == 2 * tiles
        dots.clear()
        torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        assert len(dots) == (3 + 4) * tiles


# ----------------------------------------------------------------------------- launch parameters

def test_every_table_entry_is_an_autotune_candidate_and_pruning_keeps_one():
    for (kernel, _, _), tiles in k_tiles.TABLE.items():
        candidates = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in k_tiles.autotune_configs(kernel)}
        assert (tiles.block_m, tiles.block_n) in candidates, (kernel, tiles)
    configs = k_tiles.autotune_configs("fwd")
    short, long = k_tiles._pruner(k_tiles.length_bucket(20)), k_tiles._pruner(k_tiles.length_bucket(4096))
    assert all(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= 32 for c in short(configs, {}))
    assert len(long(configs, {})) == len(configs)
    for key, tiles in k_tiles.AMPERE.items():
        assert key in k_tiles.TABLE and tiles != k_tiles.TABLE[key], key


# ----------------------------------------------------------------------------- chunk tables

@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("dist", [7, 40, 100])  # chunks shorter than a block, of several blocks, one chunk
def test_prefix_with_chunks_of_several_blocks(dist, dtype):
    """zp, the table and the gradients of z and w (through both outputs) vs float64, at a length
    and D that are not multiples of the blocks and H padded to 16 lanes."""
    check_case(testing.make_inputs("ecce_prefix", B=3, L=70, D=40, H=3, lengths=[70, 0, 33], dist=dist,
                                   dtype=dtype, device=DEVICE, requires_grad=True))


def test_table_adjoint_is_the_transpose_of_the_table():
    """<T(zp), dT> = <zp, adjoint(dT)> for the valid zp: the adjoint kernel is the scans' transpose."""
    B, L, H, dist = 2, 45, 3, 20
    lengths = torch.tensor([45, 31], device=DEVICE)
    zp = torch.where(valid_mask(lengths, L)[..., None], torch.randn(B, L, H, device=DEVICE), 0.0)
    dT = torch.randn(B, H, 3, L, device=DEVICE)
    lhs = (ecce.band_tables(zp, lengths, dist).double() * dT.double()).sum()
    rhs = (zp.double() * k_scan.tables_adjoint(dT, lengths, dist).double()).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-4)


def table_error_at_4096(seed=0):
    """The error of the table's S and R (kernel, float32, one chunk of 4096) vs float64 scans of the
    kernel's own zp, and that of a plain float32 running sum, as ``(kernel, naive)`` dicts of
    ``normwise``: max over (b, h) of ``max_t |X - X64| / max_t |X64|`` in float32 eps. Every head
    drifts (w >= 0, z has mean 0.5), so the sums grow like t: the regime where a plain running sum
    loses accuracy like sqrt(t) eps and the compensated scans do not."""
    import numpy as np

    gen = torch.Generator().manual_seed(seed)
    B, L, D, H = 2, 4096, 32, 8
    z = (torch.randn(B, L, D, generator=gen) + 0.5).to(DEVICE)
    w = (torch.randn(D, H, generator=gen).abs() / D ** 0.5).to(DEVICE)
    lengths = torch.tensor([L, 3001], device=DEVICE)
    zp, T = ecce.ecce_prefix(z, w, lengths, L)
    zp64 = zp.cpu().double()
    exact = {"S": zp64.cumsum(1), "R": zp64.flip(1).cumsum(1).flip(1)}
    naive = torch.from_numpy(np.cumsum(zp.cpu().numpy(), axis=1))
    eps = torch.finfo(torch.float32).eps

    def err(x, ref):
        e = (x.double().cpu() - ref).abs()
        return (e.amax(1) / ref.abs().amax(1).clamp_min(1)).max().item() / eps

    kernel = {"S": err(T[:, :, 0].transpose(1, 2), exact["S"]), "R": err(T[:, :, 1].transpose(1, 2), exact["R"])}
    return kernel, {"S": err(naive, exact["S"])}


def test_table_accurate_at_4096():
    """The blocked, compensated scans stay within 2 eps of the exact sums (normwise) over one chunk
    of 4096; a plain float32 running sum does not (so the bound would catch an uncompensated scan)."""
    kernel, naive = table_error_at_4096()
    assert max(kernel.values()) <= 2.0, kernel
    assert naive["S"] > 4.0, naive


# ----------------------------------------------------------------------------- local numerics

def _ecce_inputs(L, k, value, dist):
    """float32 ECCE inputs (z, w_fc, q, k, v) whose zp is ``value`` at position ``k`` (every head)."""
    case = testing.make_inputs("ecce_attention", B=1, H=2, L=L, Dh=16, lengths=[L], dist=dist, device=DEVICE)
    q, kk, v, _ = case.tensors.values()
    z = torch.randn(1, L, 8, device=DEVICE)
    z[0, k] = value
    return z, torch.ones(8, 2, device=DEVICE) / 8, q, kk, v


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_nan_reaches_only_rows_whose_band_holds_it(causal):
    """A NaN in zp at k: attention rows whose band does not hold k, and bias entries whose window
    neither holds k nor lies in k's chunk, stay finite and bit-identical to the clean result (with
    prefix sums over the whole conversation every row after k would be NaN)."""
    L, k, dist = 48, 21, 5
    z, w, q, kk, v = _ecce_inputs(L, k, 0.5, dist)
    dirty = z.clone()
    dirty[0, k] = float("nan")
    outs, biases = [], []
    for x in (z, dirty):
        zp, prefix = ops.ecce_prefix(x, w, dist=dist, backend="triton")
        outs.append(ops.ecce_attention(q, kk, v, dist=dist, causal=causal, backend="triton", prefix=prefix))
        biases.append(ops.ecce_bias(zp, dist=dist, causal=causal, backend="triton"))
    pos = torch.arange(L, device=DEVICE)
    reach = (pos >= k) & (pos < k + dist) if causal else (pos - k).abs() < dist
    assert torch.isnan(outs[1][0, :, k]).all(), "the NaN must reach the rows whose band holds it"
    assert torch.equal(outs[1][:, :, ~reach], outs[0][:, :, ~reach])
    # bias entries: those whose window holds k, and (through S[i] - S[j]) the windows within k's chunk
    chunk = pos // dist == k // dist
    touched = ((pos[:, None] - k) * (pos[None, :] - k) <= 0) | (chunk[:, None] & chunk[None, :])
    assert torch.isnan(biases[1][0, :, k, k]).all()
    assert torch.equal(biases[1][:, :, ~touched], biases[0][:, :, ~touched])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_a_spike_spoils_no_distant_window(causal):
    """zp = 1e8 at one position (float32): band means whose window lies in other chunks than the
    spike's stay within float32 tolerance of float64 (prefix sums over the whole conversation
    lose ~1e8 * eps = 7.45 there), and so do the attention rows that read only such windows."""
    L, k, dist = 64, 9, 6
    z, w, q, kk, v = _ecce_inputs(L, k, 8e8, dist)
    zp, prefix = ops.ecce_prefix(z, w, dist=dist, backend="triton")
    assert zp[0, k].min() > 9e7
    E = ops.ecce_bias(zp, dist=dist, causal=causal, backend="triton")
    E64 = ops.ecce_bias(zp.double(), dist=dist, causal=causal, backend="reference")
    chunk = torch.arange(L, device=DEVICE) // dist
    far = chunk != k // dist  # rows and columns outside the spike's chunk
    far_pairs = far[:, None] & far[None, :]
    testing.assert_close(E[:, :, far_pairs], E64[:, :, far_pairs], op="ecce_bias", backend="triton",
                         dtype=torch.float32)
    out = ops.ecce_attention(q, kk, v, dist=dist, causal=causal, backend="triton", prefix=prefix)
    expected = ops.ecce_attention(q.double(), kk.double(), v.double(), zp.double(), dist=dist, causal=causal,
                                  backend="reference")
    rows = torch.arange(L, device=DEVICE) >= (k // dist + 2) * dist  # whose band misses the spike's chunk
    testing.assert_close(out[:, :, rows], expected[:, :, rows], op="ecce_attention", backend="triton",
                         dtype=torch.float32)


# ----------------------------------------------------------------------------- torch.library

def _opcheck_cases():
    B, H, L, Dh, dist = 2, 2, 10, 16, 4
    case = testing.make_inputs("ecce_attention", B=B, H=H, L=L, Dh=Dh, lengths=[10, 5], device=DEVICE,
                               requires_grad=True)
    q, k, v, zp = case.tensors.values()
    lengths = case.lengths
    T = ecce.band_tables(zp, lengths, dist).detach().requires_grad_()
    out, lse2 = torch.ops.iteach_fast.ecce_attention_fwd(q, k, v, T, lengths, dist, 0.25, False)
    z, w = torch.randn(B, L, 20, device=DEVICE, requires_grad=True), torch.randn(20, H, device=DEVICE)
    return [
        (torch.ops.iteach_fast.ecce_attention_fwd.default, (q, k, v, T, lengths, dist, 0.25, True)),
        (torch.ops.iteach_fast.ecce_attention_fwd.default, (q, k, v, None, lengths, dist, 0.25, False)),
        (torch.ops.iteach_fast.ecce_attention_bwd.default,
         (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse2, T.detach(), lengths,
          dist, 0.25, False)),
        (torch.ops.iteach_fast.ecce_bias_fwd.default, (T, lengths, dist, True, torch.float32)),
        (torch.ops.iteach_fast.ecce_bias_bwd.default, (torch.randn(B, H, L, L, device=DEVICE), lengths, dist, False)),
        (torch.ops.iteach_fast.ecce_prefix.default, (z, w.requires_grad_(), lengths, dist)),
        (torch.ops.iteach_fast.ecce_band_tables.default, (zp, lengths, dist)),
        (torch.ops.iteach_fast.ecce_tables_adjoint.default, (torch.randn(B, H, 3, L, device=DEVICE), None, lengths,
                                                             dist)),
    ]


def test_opcheck():
    """Schema, autograd registration, fake tensors and AOT dispatch (dynamic shapes) of every op.
    Under the interpreter the ops are opaque custom ops (see kernels/_compat.py), on a GPU triton_ops."""
    for op, args in _opcheck_cases():
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("public", [False, True], ids=["kernel", "public-op"])
def test_torch_compile_fullgraph(public):
    """torch.compile (Inductor) traces ecce_prefix + attention, and the public ops' dispatch,
    without a graph break; forward and gradients match eager."""
    case = testing.make_inputs("ecce_attention", B=2, H=2, L=20, Dh=16, lengths=[20, 9], device=DEVICE,
                               causal=True, requires_grad=True)
    q, k, v, _ = case.tensors.values()
    z = torch.randn(2, 20, 12, device=DEVICE, requires_grad=True)
    w = torch.randn(12, 2, device=DEVICE, requires_grad=True)
    lengths = case.lengths
    inputs = (q, k, v, z, w)

    def f(q, k, v, z, w):
        if public:
            _, prefix = ops.ecce_prefix(z, w, lengths, dist=5, backend="triton")
            return ops.ecce_attention(q, k, v, lengths=lengths, dist=5, scale=0.25, causal=True, backend="triton",
                                      prefix=prefix) * 2
        return ecce.ecce_attention(q, k, v, ecce.ecce_prefix(z, w, lengths, 5)[1], lengths, 5, 0.25, True) * 2

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True)(*inputs)
    expected = f(*inputs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    for got, exp in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(expected, inputs, g)):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("B,H,L,Dh,dist,lengths", ATTENTION_CASES)
def test_attention_across_tiles_bfloat16(B, H, L, Dh, dist, lengths, causal):
    check_case(testing.make_inputs("ecce_attention", B=B, H=H, L=L, Dh=Dh, dist=dist, lengths=lengths,
                                   causal=causal, dtype=torch.bfloat16, device=DEVICE, requires_grad=True))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("Dh", (16, 32, 64, 128))
def test_attention_large_on_gpu(dtype, Dh, causal):
    """Every tile configuration the launchers pick on a GPU (float32 on tensor cores through
    3xTF32, held to the float32 tolerances)."""
    check_case(testing.make_inputs("ecce_attention", B=3, H=4, L=700, Dh=Dh, dist=30, lengths=[700, 513, 1],
                                   causal=causal, dtype=dtype, device=DEVICE, requires_grad=True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
def test_attention_widest_heads_on_gpu(dtype):
    check_case(testing.make_inputs("ecce_attention", B=2, H=2, L=300, Dh=256, dist=30, lengths=[300, 77],
                                   dtype=dtype, device=DEVICE, requires_grad=True))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_bias_and_prefix_large_on_gpu(dtype, causal):
    check_case(testing.make_inputs("ecce_bias", B=2, L=300, H=8, dist=30, lengths=[300, 129], causal=causal,
                                   dtype=dtype, device=DEVICE, requires_grad=True))
    check_case(testing.make_inputs("ecce_prefix", B=2, L=300, D=128, H=8, dist=30, lengths=[300, 129],
                                   dtype=dtype, device=DEVICE, requires_grad=True))


@pytest.mark.gpu
@pytest.mark.autotune
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_autotuned_launches_on_gpu(monkeypatch, causal):
    """The opt-in autotuned launch path (ITEACH_FAST_AUTOTUNE=1) gives the reference's answer
    (every configuration of the search space compiled and timed: minutes)."""
    monkeypatch.setattr(k_attention, "_AUTOTUNE", True)
    check_case(testing.make_inputs("ecce_attention", B=2, H=4, L=300, Dh=64, dist=30, lengths=[300, 77],
                                   causal=causal, dtype=torch.bfloat16, device=DEVICE, requires_grad=True))


@pytest.mark.gpu
def test_attention_peak_memory_linear_in_l_on_gpu():
    """At L = 4096 forward + backward need a few MiB per tensor; one (B, H, L, L) half tensor
    would be 256 MiB."""
    case = testing.make_inputs("ecce_attention", B=1, H=8, L=4096, Dh=64, lengths=[4091], dist=30,
                               dtype=torch.float16, device=DEVICE, requires_grad=True)
    g = torch.randn_like(case.tensors["q"])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = case.call("triton")
    torch.autograd.grad(out, list(case.tensors.values()), g)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 64 * 2 ** 20, peak


@pytest.mark.gpu
def test_attention_in_a_cuda_graph():
    """ecce_prefix + attention, forward and backward, capture and replay: no host synchronisation."""
    B, H, L, Dh = 2, 4, 100, 32
    lengths = torch.tensor([100, 61], device=DEVICE)
    xs, _ = _head_views(B, L, H, Dh, torch.float16)
    z = torch.randn(B, L, 64, device=DEVICE, dtype=torch.float16, requires_grad=True)
    w = torch.randn(64, H, device=DEVICE, dtype=torch.float16, requires_grad=True)
    g = torch.randn(B, H, L, Dh, dtype=torch.float16, device=DEVICE)

    def step():
        # the head views inside the step: a view made outside the capture has its backward
        # recorded on the legacy stream, which a capture forbids (the model makes them in forward)
        q, k, v = (x.view(B, L, H, Dh).transpose(1, 2) for x in xs)
        prefix = ecce.ecce_prefix(z, w, lengths, 30)[1]
        out = ecce.ecce_attention(q, k, v, prefix, lengths, 30, 0.2, True)
        return (out,) + torch.autograd.grad(out, xs + [z, w], g)

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
        for t in xs + [z, w]:
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    for got, exp in zip(static, step()):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)


# ----------------------------------------------------------------------------- report

def max_relative_errors(causal=False):
    """``{dtype: {quantity: max over ATTENTION_CASES of max|kernel - ref64| / max|ref64|}}`` for the
    attention output and its gradients (q, k, v, zp), every input rounded to the dtype first."""
    result = {}
    dtypes = HALF + ((torch.bfloat16,) if torch.cuda.is_available() else ())
    names = ("out", "dq", "dk", "dv", "dzp")
    for dtype in dtypes:
        worst = dict.fromkeys(names, 0.0)
        for B, H, L, Dh, dist, lengths in ATTENTION_CASES:
            case = testing.make_inputs("ecce_attention", B=B, H=H, L=L, Dh=Dh, dist=dist, lengths=lengths,
                                       causal=causal, dtype=dtype, device=DEVICE, requires_grad=True)
            ref_case = case.cast(torch.float64)
            out, ref = case.call("triton"), ref_case.call("reference")
            g = torch.randn_like(out)
            got = (out,) + torch.autograd.grad(out, list(case.tensors.values()), g)
            exp = (ref,) + torch.autograd.grad(ref, list(ref_case.tensors.values()), g.double())
            for name, a, b in zip(names, got, exp):
                if b.abs().max() > 1e-12:
                    worst[name] = max(worst[name], ((a.double() - b).abs().max() / b.abs().max()).item())
        result[str(dtype)] = worst
    return result


if __name__ == "__main__":
    torch.manual_seed(0)
    for causal in (False, True):
        for name, errs in max_relative_errors(causal).items():
            print(f"ecce_attention{' causal' if causal else ''} max relative error vs float64, {name}: "
                  + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    kernel, naive = table_error_at_4096()
    print(f"ecce_prefix table at L=4096 (one chunk), normwise error in float32 eps: kernel {kernel}, "
          f"plain float32 running sum {naive}")
