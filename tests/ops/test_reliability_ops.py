"""The operator-level failures of a hostile but realistic user, one test each (they fail on the
code before the fixes): compiling from a cold process, errors that stay local, and bad input
answered by one clear error.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from iteach_fast import ops
from iteach_fast.ops import backends, testing

# --- torch.compile from a cold process ----------------------------------------------------

_COLD_COMPILE = textwrap.dedent("""
    import torch
    from iteach_fast import ops
    from iteach_fast.ops import testing

    failures = []
    for op in ("ecce_prefix", "ecce_bias", "ecce_attention", "routed_mixture"):
        for backend in ("auto", "reference"):
            case = testing.make_inputs(op, B=2, L=7, lengths=[7, 3])
            # aot_eager: Dynamo's full graph and AOTAutograd's fake-tensor trace, without Inductor's codegen time
            fn = torch.compile(getattr(ops, op), fullgraph=True, backend="aot_eager")
            args = (*case.tensors.values(),)
            try:
                fn(*args, lengths=case.lengths, backend=backend, **case.params)
            except Exception as err:
                failures.append(f"{op}[{backend}] does not compile: {type(err).__name__}: {str(err)[:300]}")
                continue
            try:
                fn(*args, lengths=torch.tensor([8, 3]), backend=backend, **case.params)
                failures.append(f"{op}[{backend}] compiled accepts lengths beyond L")
            except RuntimeError as err:
                if "lengths must lie in [0, L=7]" not in str(err):
                    failures.append(f"{op}[{backend}] compiled: wrong error for bad lengths: {str(err)[:300]}")
    print("\\n".join(failures) or "ok")
""")


def test_every_public_op_compiles_fullgraph_from_a_cold_process_and_checks_lengths():
    """Issue 12 item 5: ``torch.compile(fullgraph=True)`` of each public op as the first call in a
    fresh interpreter (no import on the traced path), and out-of-range lengths raise when compiled."""
    proc = subprocess.run([sys.executable, "-c", _COLD_COMPILE], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok", proc.stdout


# --- local numerics -----------------------------------------------------------------------

DIST = 5


@pytest.mark.parametrize("k", [0, 7, 10, 23])  # the first position, mid-chunk, a chunk start, the last valid
def test_a_nan_reaches_only_the_rows_whose_band_contains_it(k):
    """Issue 12 item 6: one NaN in zp at a valid position k leaves every row outside
    [k - dist + 1, k + dist - 1] finite and equal to the clean result (bias and attention)."""
    case = testing.make_inputs("ecce_attention", B=2, L=26, lengths=[24, 26], dist=DIST, garbage=None)
    q, k_, v, zp = case.tensors.values()
    dirty = zp.clone()
    dirty[0, k, 1] = float("nan")
    rows = torch.arange(26)
    far = (rows < k - DIST + 1) | (rows > k + DIST - 1)
    for call in (lambda z: ops.ecce_attention(q, k_, v, z, case.lengths, DIST, backend="reference"),
                 lambda z: ops.ecce_bias(z, case.lengths, DIST, backend="reference")):
        clean, out = call(zp), call(dirty)
        assert torch.isfinite(out[0][:, far]).all()
        assert torch.equal(out[0][:, far], clean[0][:, far])
        assert torch.equal(out[1], clean[1])  # another conversation is untouched
        assert out[0][1, ~far].isnan().any()  # the NaN does reach its own band (the test can fail)


def test_a_huge_value_leaves_distant_windows_float32_accurate():
    """Issue 12 item 6: zp = 1e8 at one early position; band means of the windows of distant rows
    (beyond ``spike + dist - 1``) stay within float32 rounding of the float64 means (global prefix
    sums lost ~7 there). Windows after the spike in its own chunk still carry its rounding: the
    bound is two chunks' magnitude (docs/maths.md, "Local numerics")."""
    L, spike = 200, 3
    case = testing.make_inputs("ecce_bias", B=1, L=L, H=2, lengths=[L], dist=30, garbage=None)
    zp = case.tensors["zp"].double()
    zp[0, spike] = 1e8
    E32 = ops.ecce_bias(zp.float(), dist=30, backend="reference").double()
    E64 = ops.ecce_bias(zp, dist=30, backend="reference")
    distant = torch.arange(L) > spike + 30 - 1
    err = (E32 - E64)[:, :, distant].abs().max()
    assert err < 1e-5, f"max error {err:.3g} in the windows of rows distant from the spike"


# --- one clear error ----------------------------------------------------------------------

def _bias_args():
    return testing.make_inputs("ecce_bias", B=2, L=5, lengths=[5, 5]).tensors["zp"]


def test_lengths_given_as_a_string_is_one_clear_error():
    with pytest.raises(TypeError, match=r"lengths must be an integer tensor of shape \(2,\) or None, got str"):
        ops.ecce_bias(_bias_args(), "5")


@pytest.mark.parametrize("name", ["dist", "pool_size"])
def test_dist_and_pool_size_beyond_int_range_are_one_clear_error(name):
    op = "ecce_attention" if name == "dist" else "routed_mixture"
    case = testing.make_inputs(op, B=2, L=5)
    with pytest.raises(ValueError, match=rf"{name} must be <= 2\*\*31 - 1 .* got {2**40 + 1}"):
        case.call("auto", **{name: 2**40 + 1})


def test_triton_interpreter_refuses_bfloat16_pointing_to_a_gpu():
    """The interpreter's bfloat16 tl.dot is wrong (values off by up to 8e8): refused, not computed."""
    impl = backends.REGISTRY["ecce_attention"]["triton"]
    if torch.cuda.is_available() or impl.unavailable_reason("cpu") is not None:
        pytest.skip("needs the Triton interpreter on the CPU")
    case = testing.make_inputs("ecce_attention", B=2, L=5, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16.*CUDA GPU"):
        case.call("triton")


def test_reference_out_of_memory_names_the_l_by_l_bias_and_the_fused_backend():
    """L = 2**23: the reference's B x H x L x L scores (256 TiB) cannot be allocated anywhere;
    the error says why and what avoids it (inputs here are 32 MiB each)."""
    L = 2**23
    q = torch.zeros(1, 1, L, 1)
    with pytest.raises(torch.OutOfMemoryError, match=r"B x H x L x L = 1 x 1 x 8388608 x 8388608.*backend='triton'"):
        ops.ecce_attention(q, q, q, torch.zeros(1, L, 1), backend="reference")

