"""What only a GPU used to show: the device a kernel launches on, the grid's limits, 64-bit
offsets, the autotuner's key, host tensors inside a step, and where each implementation runs.

Each bug has a test marked ``gpu`` that shows it on a device and, where the CPU can show it, one
that runs here (the Triton interpreter, ``TRITON_INTERPRET=1``, set by tests/conftest.py):

* device guard: a launch runs on its tensors' device (``torch.cuda.device``), not the current one;
* grid: CUDA's axes 1 and 2 hold 65,535 programs, which ``B * H`` passes at 8,192 conversations
  of 8 heads: the launchers split such a batch into several launches;
* 64-bit offsets: a row offset ``i * stride`` past ``2**31`` (``L * L`` of the bias at
  L = 46,341, a strided view of a huge buffer) is computed in 64 bits. On the CPU the views are
  carved out of a sparse file mapped into memory (gigabytes of address space, a few pages
  touched), in a subprocess: with 32-bit offsets the interpreter reads wild addresses and dies;
* autotuning: keyed on the length's bucket (next power of two), not the exact length;
* padding: no ``torch.tensor`` (a host-to-device copy) inside the ops.
"""
import contextlib
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from iteach_fast import ops
from iteach_fast.ops import backends, padding, reference, testing

pytest.importorskip("triton", reason="triton is not installed")
from iteach_fast.kernels import _compat as k_compat  # noqa: E402
from iteach_fast.kernels import attention as k_attention  # noqa: E402
from iteach_fast.kernels import bias as k_bias  # noqa: E402
from iteach_fast.kernels import scan as k_scan  # noqa: E402
from iteach_fast.kernels import tiles as k_tiles  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HERE = os.path.dirname(os.path.abspath(__file__))
GRID_LIMIT_YZ = 65_535
_why = backends.REGISTRY["ecce_attention"]["triton"].unavailable_reason()
needs_triton = pytest.mark.skipif(_why is not None, reason=f"the Triton backend cannot run here: {_why}")


# ----------------------------------------------------------------------------- device guard

def test_the_device_guard_makes_the_tensors_cuda_device_current():
    assert isinstance(k_compat.device_guard(torch.device("cpu")), contextlib.nullcontext)
    guard = k_compat.device_guard(torch.device("cuda", 1))  # built without entering: no CUDA needed
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


@needs_triton
def test_every_launch_goes_through_the_device_guard(monkeypatch):
    """Forward and backward of the prefix, the attention and the bias: each launch enters the
    guard of its first tensor argument's device."""
    seen = []

    def recording_guard(device):
        seen.append(device)
        return contextlib.nullcontext()

    monkeypatch.setattr(k_compat, "device_guard", recording_guard)
    case = testing.make_inputs("ecce_attention", B=2, H=2, L=20, Dh=16, lengths=[20, 7], device=DEVICE,
                               requires_grad=True)
    out = case.call("triton")
    torch.autograd.grad(out, list(case.tensors.values()), torch.randn_like(out))
    E = ops.ecce_bias(case.tensors["zp"], case.lengths, dist=5, backend="triton")
    torch.autograd.grad(E, case.tensors["zp"], torch.randn_like(E))
    # attention (the public op builds its table in PyTorch): fwd, dq, dkv; bias: tables, fwd, bwd, adjoint
    assert len(seen) == 7 and all(d == torch.device(DEVICE) or d.type == DEVICE for d in seen), seen


@pytest.mark.gpu
def test_kernels_run_on_their_tensors_device_not_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices (the tensors on cuda:1 while cuda:0 is current)")
    case = testing.make_inputs("ecce_attention", B=2, H=2, L=70, Dh=32, lengths=[70, 33], device="cuda:1",
                               requires_grad=True)
    torch.cuda.set_device(0)
    out = case.call("triton")
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, list(case.tensors.values()), g)
    torch.cuda.synchronize(1)
    on0 = case.cast(case.tensors["q"].dtype, device="cuda:0")
    out0 = on0.call("triton")
    grads0 = torch.autograd.grad(out0, list(on0.tensors.values()), g.to("cuda:0"))
    torch.testing.assert_close(out.cpu(), out0.cpu(), rtol=0, atol=0)
    for a, b in zip(grads, grads0):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0)


# ----------------------------------------------------------------------------- grid limits

class _Recorder:
    """Stands in for ``launcher``: records each launch's kernel, grid and first tensor (the
    slice of the batch it covers), runs nothing."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        recorder = self

        class Launch:
            def __getitem__(self, grid):
                def launch(*args, **meta):
                    g = grid(meta) if callable(grid) else grid
                    recorder.launches.append((getattr(kernel, "fn", kernel).__name__, tuple(g), args[0]))
                return launch
        return Launch()


def test_a_batch_beyond_the_grids_axis_limit_is_launched_in_slices(monkeypatch):
    """B * H = 70,000 (more than axes 1 and 2 hold): each kernel is launched on slices of the
    batch whose grids fit, and the slices cover every conversation once. The launches are
    recorded, not run (the interpreter would take minutes); slicing only narrows the batch
    dimension of each argument (a view: same strides), which every small test runs."""
    recorder = _Recorder()
    for module in (k_attention, k_bias, k_scan):
        monkeypatch.setattr(module, "launcher", recorder)
    B, H, L, Dh = 35_000, 2, 3, 16
    q = torch.randn(B, H, L, Dh)
    lengths = torch.full((B,), L)
    tables = torch.randn(B, H, 3, L)
    out, lse2 = k_attention._attention_fwd(q, q, q, tables, lengths, 2, 0.25, False)
    k_attention._attention_bwd(q, q, q, q, out, lse2, tables, lengths, 2, 0.25, True)
    k_bias._bias_fwd(tables, lengths, 2, False, torch.float32)
    k_bias._bias_bwd(torch.randn(B, H, L, L), lengths, 2, False)
    k_scan._launch_tables(torch.randn(70_000, L, H), None, torch.full((70_000,), L), 1)
    k_scan._launch_adjoint(torch.randn(70_000, H, 3, L), None, torch.full((70_000,), L), 1)
    covered = {}
    for name, grid, first in recorder.launches:
        assert all(n <= GRID_LIMIT_YZ for n in grid[1:]), (name, grid)
        covered.setdefault(name, []).append(first)
    assert set(covered) == {"_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkv_kernel", "_bias_fwd_kernel",
                            "_bias_bwd_kernel", "_tables_kernel", "_tables_adjoint_kernel"}
    for name, firsts in covered.items():
        assert len(firsts) == 2, name  # 70,000 programs: two slices
        whole = {"_tables_kernel": 70_000, "_tables_adjoint_kernel": 70_000}.get(name, B)
        assert sum(t.shape[0] for t in firsts) == whole, name
        assert firsts[1].data_ptr() - firsts[0].data_ptr() == firsts[0].shape[0] * firsts[0].stride(0) * 4, name


def test_slices_cover_the_batch_and_fit_the_axis():
    assert k_compat.batch_slices(10, 8) == [(0, 10)]
    assert k_compat.batch_slices(8193, 8) == [(0, 8191), (8191, 8193)]
    assert k_compat.batch_slices(0, 8) == []
    with pytest.raises(ValueError, match="programs per conversation"):
        k_compat.batch_slices(2, GRID_LIMIT_YZ + 1)


@pytest.mark.gpu
def test_more_than_65535_heads_on_gpu():
    """B * H = 65,544 on the GPU: attention (forward and backward), the bias and the prefix
    against the reference."""
    case = testing.make_inputs("ecce_attention", B=8193, H=8, L=3, Dh=16, dist=2, device="cuda",
                               dtype=torch.float16, requires_grad=True)
    out = case.call("triton")
    ref_case = case.cast(torch.float64, device="cpu")
    ref = ref_case.call("reference")
    testing.assert_close(out, ref, op="ecce_attention", backend="triton", dtype=torch.float16)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, list(case.tensors.values()), g.to(out))
    exp = torch.autograd.grad(ref, list(ref_case.tensors.values()), g)
    for name, a, b in zip(case.tensors, got, exp):
        testing.assert_close(a, b, op="ecce_attention", backend="triton", dtype=torch.float16, what=f"d{name}")
    E = ops.ecce_bias(case.tensors["zp"].detach().float(), case.lengths, dist=2, backend="triton")
    testing.assert_close(E, ops.ecce_bias(ref_case.tensors["zp"].detach(), ref_case.lengths, dist=2,
                                          backend="reference"), op="ecce_bias", backend="triton", dtype=torch.float32)
    z = testing.make_inputs("ecce_prefix", B=70_000, L=3, D=16, H=2, dist=1, device="cuda")
    zp, _ = z.call("triton")
    zp_ref, _ = z.cast(torch.float64, device="cpu").call("reference")
    testing.assert_close(zp, zp_ref, op="ecce_prefix", backend="triton", dtype=torch.float32)


# ----------------------------------------------------------------------------- 64-bit offsets

def test_wide_offsets_counts_every_dimension_but_the_batch():
    meta = dict(device="meta")  # shapes and strides without memory
    assert not k_compat.wide_offsets(torch.empty(32, 8, 2048, 64, **meta), None)  # the headline's q
    assert not k_compat.wide_offsets(torch.empty(4, 8, 2048, 2048, **meta))  # its bias: each head's L * L is small
    assert k_compat.wide_offsets(torch.empty(0), torch.empty(1, 1, 46_341, 46_341, **meta))  # L * L > 2**31
    assert k_compat.wide_offsets(torch.empty_strided((1, 40, 16), (0, 2**26, 1), **meta))  # a huge row stride
    assert not k_compat.wide_offsets(torch.empty_strided((70_000, 40, 16), (2**26, 16, 1), **meta))  # the batch


#: run in a subprocess on the CPU (32-bit offsets read wild addresses: a crash, not a failure)
_WIDE_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
import test_device_limits as t
t.wide_checks("cpu", t.sparse_buffer({path!r}))
print("wide checks passed")
"""


def sparse_buffer(path: str):
    """``make(numel, dtype)``: a CPU tensor backed by a sparse file (address space, not memory)."""
    def make(numel: int, dtype: torch.dtype) -> torch.Tensor:
        with open(path, "wb") as f:
            f.truncate(numel * dtype.itemsize)
        return torch.from_file(path, shared=True, size=numel, dtype=dtype)
    return make


def wide_checks(device: str, make_buffer) -> None:
    """Strided views whose row offsets pass 2**31 elements (q, k, v, z and dE read with a row
    stride of 2**26, 40 rows): the Triton ops on them equal the same ops on contiguous copies,
    forward and backward: bit for bit in the interpreter (the same arithmetic; only the addresses
    differ), within the float32 tolerance on a GPU (the 64-bit variant is another compiled kernel)."""

    def same(a, b, what):
        if device == "cpu":
            assert torch.equal(a, b), what
        else:
            testing.assert_close(a, b, op="ecce_attention", backend="triton", dtype=torch.float32, what=what)

    L, Dh, S, dist = 40, 16, 2**26, 5
    lengths = torch.tensor([37], device=device)
    buf = make_buffer((L - 1) * S + 3 * Dh + L, torch.float32)
    rows = buf.as_strided((L, 3 * Dh + L), (S, 1))
    rows.copy_(torch.randn(L, 3 * Dh + L))  # touches one page per row

    def view(offset, shape, strides):
        return buf.as_strided(shape, strides, offset)

    q, k, v = (view(i * Dh, (1, 1, L, Dh), (0, 0, S, 1)).requires_grad_() for i in range(3))
    zp = torch.randn(1, L, 1, device=device, requires_grad=True)
    dense = [t.detach().contiguous().requires_grad_() for t in (q, k, v, zp)]
    assert k_compat.wide_offsets(q) and not k_compat.wide_offsets(dense[0])
    for causal in (False, True):
        out = ops.ecce_attention(q, k, v, zp, lengths, dist=dist, causal=causal, backend="triton")
        expected = ops.ecce_attention(*dense, lengths=lengths, dist=dist, causal=causal, backend="triton")
        same(out, expected, "attention output")
        g = torch.randn_like(out)
        for name, a, b in zip("q k v zp".split(), torch.autograd.grad(out, (q, k, v, zp), g),
                              torch.autograd.grad(expected, dense, g)):
            same(a, b, f"attention d{name}")
    dE = view(3 * Dh, (1, 1, L, L), (0, 0, S, 1))
    for causal in (False, True):
        got = torch.ops.iteach_fast.ecce_bias_bwd(dE, lengths, dist, causal)
        same(got, torch.ops.iteach_fast.ecce_bias_bwd(dE.contiguous(), lengths, dist, causal), "the bias's dT")
    z = view(0, (1, L, Dh), (0, S, 1)).requires_grad_()
    z_dense = z.detach().contiguous().requires_grad_()
    w = torch.randn(Dh, 2, device=device, requires_grad=True)
    zp_w, table_w = ops.ecce_prefix(z, w, lengths, dist, backend="triton")
    zp_d, table_d = ops.ecce_prefix(z_dense, w, lengths, dist, backend="triton")
    same(zp_w, zp_d, "prefix zp")
    same(table_w, table_d, "prefix table")
    gz, gt = torch.randn_like(zp_w), torch.randn_like(table_w)
    for name, a, b in zip(("dz", "dw"), torch.autograd.grad((zp_w, table_w), (z, w), (gz, gt)),
                          torch.autograd.grad((zp_d, table_d), (z_dense, w), (gz, gt))):
        same(a, b, f"prefix {name}")


@needs_triton
def test_row_offsets_past_2_31_elements_in_the_interpreter(tmp_path):
    if DEVICE != "cpu":
        pytest.skip("the GPU test below runs the same checks on the device")
    script = _WIDE_SCRIPT.format(here=HERE, path=str(tmp_path / "sparse.bin"))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and "wide checks passed" in run.stdout, \
        f"exit {run.returncode}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"


@pytest.mark.gpu
def test_row_offsets_past_2_31_elements_on_gpu():
    wide_checks("cuda", lambda numel, dtype: torch.empty(numel, dtype=dtype, device="cuda"))


@pytest.mark.gpu
def test_bias_of_more_than_2_31_elements_on_gpu():
    """E (1, 1, L, L) at L = 46,400 (2.15e9 elements, float16): its last rows against the
    reference on the last 100 positions (a band mean reads only its window), and dzp there
    from a random dE (the window of a gradient entry likewise)."""
    L, dist, tail = 46_400, 30, 100
    zp = torch.randn(1, L, 1, device="cuda", dtype=torch.float16, requires_grad=True)
    E = ops.ecce_bias(zp, dist=dist, backend="triton")
    part = zp.detach()[:, -tail:].double().cpu().requires_grad_()
    ref = ops.ecce_bias(part, dist=dist, backend="reference")
    testing.assert_close(E[..., -40:, -40:], ref[..., -40:, -40:], op="ecce_bias", backend="triton",
                         dtype=torch.float16)
    assert torch.count_nonzero(E[0, 0, -1, : L - dist]) == 0 and E[0, 0, -1, -1] != 0
    dE = torch.randn_like(E)
    (dzp,) = torch.autograd.grad(E, zp, dE)
    (dref,) = torch.autograd.grad(ref, part, dE[..., -tail:, -tail:].double().cpu())
    testing.assert_close(dzp[:, -(tail - dist):], dref[:, dist:], op="ecce_bias", backend="triton",
                         dtype=torch.float16, what="dzp")


# ----------------------------------------------------------------------------- autotuning

def test_autotuning_is_keyed_on_the_length_bucket(monkeypatch):
    assert [k_tiles.length_bucket(n) for n in (1, 16, 17, 100, 128, 129, 2048)] == [16, 16, 32, 128, 128, 256, 2048]
    kernel = k_attention.KERNELS["fwd"]
    monkeypatch.setattr(k_tiles, "_TUNERS", {})
    tuner = k_tiles.autotuned(kernel, "fwd", 128)
    assert k_tiles.autotuned(kernel, "fwd", 128) is tuner and k_tiles.autotuned(kernel, "fwd", 256) is not tuner
    assert "L" not in tuner.keys, tuner.keys
    # the launcher asks for the tuner of the length's bucket: 100 and 120 share one
    asked = []

    def fake_autotuned(kernel, name, bucket):
        asked.append((name, bucket))
        raise StopIteration

    monkeypatch.setattr(k_attention, "_AUTOTUNE", True)
    monkeypatch.setattr(k_attention, "interpreted", lambda device: False)
    monkeypatch.setattr(k_attention, "autotuned", fake_autotuned)
    for L in (100, 120, 200):
        q = torch.empty(1, 1, L, 16)
        with pytest.raises(StopIteration):
            k_attention._launch("fwd", q, False, True, (q,))
    assert asked == [("fwd", 128), ("fwd", 128), ("fwd", 256)]


@pytest.mark.gpu
def test_a_new_length_in_the_same_bucket_is_not_tuned_again(monkeypatch):
    monkeypatch.setattr(k_tiles, "_TUNERS", {})
    monkeypatch.setattr(k_tiles, "autotune_configs", lambda kernel: [
        k_tiles.triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2),
        k_tiles.triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2)])
    monkeypatch.setattr(k_attention, "_AUTOTUNE", True)
    for L in (100, 120):
        case = testing.make_inputs("ecce_attention", B=2, H=2, L=L, Dh=32, device="cuda", dtype=torch.float16)
        out = case.call("triton")
        ref = case.cast(torch.float64, device="cpu").call("reference")
        testing.assert_close(out, ref, op="ecce_attention", backend="triton", dtype=torch.float16)
    tuner = k_tiles._TUNERS[("fwd", k_attention.KERNELS["fwd"], 128)]
    assert len(tuner.cache) == 1, tuner.cache


# ----------------------------------------------------------------------------- host tensors

class _HostData(TorchDispatchMode):
    """Counts tensors made from host data (``torch.tensor``: ``lift_fresh``) and host-to-device copies."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if "lift_fresh" in name:
            self.found.append(name)
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device", src.device)
            if src.device.type == "cpu" and torch.device(dst).type != "cpu":
                self.found.append(f"{name} (host to device)")
        return func(*args, **kwargs)


def test_the_masked_pools_and_the_reference_ops_make_no_host_tensor():
    """The ops' own code (reference and every backend that runs here), forward and backward,
    given lengths on the device: no tensor from host data. The counter is not blind: it sees
    ``torch.tensor``."""
    with _HostData() as mode:
        torch.tensor(1.0)
    assert mode.found
    x = torch.randn(2, 9, 4, requires_grad=True)
    valid = padding.valid_mask(torch.tensor([9, 4]), 9)[..., None]
    with _HostData() as mode:
        for causal in (False, True):
            y = padding.masked_max_pool(x, valid, 3, causal) + padding.masked_avg_pool(x, valid, 3, causal)
            torch.autograd.grad(torch.where(valid, y, 0.0).sum(), x)
    assert mode.found == []
    for op in backends.OPS:
        for impl in backends.implementations(op):
            if impl.unavailable_reason("cpu") or impl.spec.refuses("cpu", torch.float32):
                continue
            case = testing.make_inputs(op, B=2, L=9, device="cpu", requires_grad=True)
            with _HostData() as mode:
                outs = case.call(impl.backend)
                outs = outs if isinstance(outs, tuple) else (outs,)
                torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
            assert mode.found == [], (op, impl.backend, mode.found)


@pytest.mark.gpu
def test_the_mixture_reference_neither_synchronises_nor_copies_from_the_host_on_gpu():
    """The reference mixture (both masked pools) forward and backward under sync-debug "error",
    then captured in a CUDA graph and replayed."""
    case = testing.make_inputs("routed_mixture", B=3, L=17, D=32, device="cuda", requires_grad=True)
    args = list(case.tensors.values())

    def step():
        out = reference.routed_mixture(*args, case.lengths, 3, True)
        return torch.autograd.grad(out, args, torch.ones_like(out))

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, exp in zip(static, step()):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)


# ----------------------------------------------------------------------------- where each implementation runs

def test_the_cpu_only_implementations_do_not_claim_cuda():
    """The cpp ECCE ops run on the CPU only (CUDA has Triton for them): the registry says so,
    which is what the CUDA-availability test asks (test_routed_mixture_cpp)."""
    for op in ("ecce_bias", "ecce_attention"):
        impl = backends.REGISTRY[op]["cpp"]
        assert not impl.runs_on("cuda") and impl.runs_on("cpu")
        if impl.unavailable_reason() is None:  # built: the reason on CUDA names the device, not the build
            assert "runs on cpu only" in impl.unavailable_reason("cuda")
    assert backends.REGISTRY["ecce_attention"]["triton"].runs_on("cuda")
