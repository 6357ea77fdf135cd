"""The backend registry: what it resolves at import, what it says when a backend cannot run,
and that the package imports (and warns once) without its compiled parts."""
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import iteach_fast
from iteach_fast import ops
from iteach_fast.ops import backends, cpp, padding, testing
from iteach_fast.ops.backends import BackendUnavailable


def _import_with(env_extra):
    env = dict(os.environ, **env_extra)
    code = "import warnings; warnings.simplefilter('always'); import iteach_fast, iteach_fast.ops; import iteach_fast"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_imports_without_extension_and_warns_once():
    proc = _import_with({"ITEACH_FAST_NO_EXT": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("backends unavailable") == 1, proc.stderr
    assert "cpp (ITEACH_FAST_NO_EXT=1)" in proc.stderr


def test_available_backends_lists_every_op_and_reason():
    table = backends.available_backends("cpu")
    assert set(table) == set(backends.OPS)
    for _op, per_backend in table.items():
        assert per_backend["reference"] is None
        for _name, reason in per_backend.items():
            assert reason is None or isinstance(reason, str) and reason


def test_extension_reports_its_build():
    module, why = cpp.STATUS
    if module is None:
        pytest.skip(f"extension not built: {why}")
    assert torch.ops.iteach_fast.version() == iteach_fast.__version__
    assert isinstance(torch.ops.iteach_fast.has_cuda(), bool)


@pytest.fixture
def re_resolved(monkeypatch):
    """The registry resolved again after the test changed the environment, and restored after it."""
    yield monkeypatch
    monkeypatch.undo()
    backends.refresh()


def test_unavailable_backend_says_why(re_resolved):
    if torch.cuda.is_available():
        pytest.skip("Triton runs here")
    re_resolved.delenv("TRITON_INTERPRET", raising=False)
    backends.refresh()
    with pytest.raises(BackendUnavailable, match="backend 'triton' is unavailable: no CUDA device"):
        ops.ecce_bias(torch.randn(1, 3, 2), backend="triton")


def test_missing_kernels_subpackage_says_install(re_resolved):
    """A bare checkout on PYTHONPATH has no iteach_fast.kernels (setup.py maps kernels/ there)."""
    if backends.probe_triton() is not None:
        pytest.skip("Triton cannot run here at all")
    for name in [m for m in sys.modules if m.startswith("iteach_fast.kernels")] + ["iteach_fast.kernels"]:
        re_resolved.setitem(sys.modules, name, None)  # import of it now fails
    backends.refresh()
    why = backends.REGISTRY["ecce_attention"]["triton"].unavailable_reason()
    assert why is not None and "pip install -e ." in why, why


@pytest.mark.parametrize("triton_version, numpy_version, runs", [
    ("3.6.0", "2.4.6", False), ("3.6.1", "2.5.0", False), ("3.7.0", "2.4.6", True), ("3.6.0", "2.3.5", True),
    ("3.10.0+git1", "2.4.0rc1", True)])
def test_triton_interpreter_guard_against_new_numpy(monkeypatch, triton_version, numpy_version, runs):
    """triton <= 3.6's interpreter fails with numpy >= 2.4: that pair is reported, not run."""
    triton = pytest.importorskip("triton")
    import numpy

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    why = backends.probe_triton()
    assert (why is None) is runs, why
    if not runs:
        assert triton_version in why and numpy_version in why


def test_auto_on_cpu_never_picks_the_triton_interpreter():
    chosen = backends.select("ecce_attention", "auto", torch.device("cpu"), torch.float32).backend
    assert chosen == ("cpp" if backends.probe_cpp("ecce_attention") is None else "reference")


def test_cpu_only_implementations_are_never_picked_for_cuda():
    """The C++ band means have no CUDA kernel: on CUDA, auto skips them and naming them says why."""
    impl = backends.REGISTRY["ecce_attention"]["cpp"]
    assert impl.runs_on("cpu") and not impl.runs_on("cuda")
    assert "runs on cpu only" in impl.unavailable_reason("cuda") or backends.probe_cpp("ecce_attention")


def test_select_is_decided_once_per_op_backend_device_and_dtype():
    first = backends.select("routed_mixture", "auto", torch.device("cpu"), torch.float32)
    assert backends._STATE.selected[("routed_mixture", "auto", "cpu", torch.float32, False)] is first
    assert backends.select("routed_mixture", "auto", torch.device("cpu"), torch.float32) is first


def test_unknown_backend_and_dtype_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.ecce_bias(torch.randn(1, 3, 2), backend="cuda")
    with pytest.raises(TypeError, match="supports dtypes"):
        ops.ecce_bias(torch.randn(1, 3, 2, dtype=torch.float64), backend="triton") if \
            backends.REGISTRY["ecce_bias"]["triton"].unavailable_reason("cpu") is None else \
            (_ for _ in ()).throw(TypeError("supports dtypes (skipped: triton unavailable)"))


class _Syncs(TorchDispatchMode):
    """Records every op that reads device values on the host (a synchronisation on CUDA)."""
    READS = {"_local_scalar_dense", "nonzero", "item", "is_nonzero", "masked_select", "equal"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if name in self.READS or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("impl", [pytest.param(i, id=f"{i.op}-{i.backend}") for op in backends.OPS
                                  for i in backends.implementations(op)])
def test_dispatch_never_reads_device_values_on_the_host(impl):
    """The unchecked twins (iteach_fast.ops.backends) and every implementation behind them, forward and
    backward: no host synchronisation (the public ops' eager lengths check is the only one)."""
    if impl.unavailable_reason("cpu") is not None:
        pytest.skip(impl.unavailable_reason("cpu"))
    case = testing.make_inputs(impl.op, B=2, L=9, lengths=[9, 4], requires_grad=True)
    t = list(case.tensors.values())
    with _Syncs() as syncs:
        if impl.op == "ecce_prefix":
            out = backends.call("ecce_prefix", impl.backend, *t, case.lengths, 4)
        elif impl.op == "ecce_bias":
            out = backends.call("ecce_bias", impl.backend, *t, case.lengths, 4, False)
        elif impl.op == "ecce_attention":
            prefix = padding.prefix_table(t[3], 4)
            out = backends.call("ecce_attention", impl.backend, *t[:3], prefix, case.lengths, 4, 0.5, False)
        else:
            out = backends.call("routed_mixture", impl.backend, *t, case.lengths, 3, False)
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])
    assert syncs.seen == [], syncs.seen
