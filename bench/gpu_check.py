"""What ``bench/gpu_check.sh`` runs in Python: the preflight, the build's check, the key GPU tests.

    python -m bench.gpu_check preflight        # versions, the GPU, what is missing and what that costs
    python -m bench.gpu_check verify-build     # iteach_fast._C loads, has CUDA, its CUDA mixture runs
    python -m bench.gpu_check key-tests        # the GPU tests that matter most, by node id, in order

Nothing here fails because an optional module is missing: the preflight names it and says
which stages lose what, and the check carries on.
"""
from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys

#: the GPU tests that matter most, in the order they run: what only a GPU shows (the launch
#: limits, 64-bit offsets, the device guard, host syncs), the CUDA-graph and sync-debug training
#: steps, peak memory, the Triton attention against the reference at head dims 16 and 64 (both
#: dtypes, both masks), the CUDA mixture's grid split, reproduce on CUDA. Autotuning is left out
#: (minutes of compiles; marked ``autotune``).
KEY_TESTS = (
    "tests/ops/test_routed_mixture_cpp.py::test_extension_has_cuda_where_expected",
    "tests/ops/test_device_limits.py::test_more_than_65535_heads_on_gpu",
    "tests/ops/test_device_limits.py::test_row_offsets_past_2_31_elements_on_gpu",
    "tests/ops/test_device_limits.py::test_bias_of_more_than_2_31_elements_on_gpu",
    "tests/ops/test_device_limits.py::test_the_mixture_reference_neither_synchronises_nor_copies_from_the_host_on_gpu",
    "tests/ops/test_device_limits.py::test_a_new_length_in_the_same_bucket_is_not_tuned_again",
    "tests/ops/test_device_limits.py::test_kernels_run_on_their_tensors_device_not_the_current_one",
    "tests/ops/test_triton_kernels.py::test_attention_in_a_cuda_graph",
    "tests/ops/test_triton_kernels.py::test_attention_peak_memory_linear_in_l_on_gpu",
    "tests/system/test_compile_step.py::test_the_graph_captured_step_follows_the_eager_step",
    "tests/system/test_compile_step.py::test_a_step_on_the_gpu_makes_no_host_synchronisation",
    "tests/nn/test_model.py::test_cuda_step_never_waits_for_the_device",
    "tests/ops/test_triton_kernels.py::test_attention_large_on_gpu[16-torch.float32-full]",
    "tests/ops/test_triton_kernels.py::test_attention_large_on_gpu[16-torch.bfloat16-causal]",
    "tests/ops/test_triton_kernels.py::test_attention_large_on_gpu[64-torch.float32-causal]",
    "tests/ops/test_triton_kernels.py::test_attention_large_on_gpu[64-torch.bfloat16-full]",
    "tests/ops/test_routed_mixture_cpp.py::test_cuda_many_conversations_and_misaligned_rows",
    "tests/nn/test_streaming.py::test_stream_on_cuda_equals_the_triton_forward",
    "tests/system/test_reproduce.py::test_reproduce_spreads_runs_over_the_gpus",
)

#: module -> what the check loses without it (None: the check cannot do without it)
MODULES = {
    "torch": None,
    "triton": "no Triton kernels: the triton rows are skipped and the Triton tests skip",
    "numpy": None,
    "pytest": "the test stages cannot run (they are skipped; the benchmarks still run)",
    "pytest_benchmark": "CPU timings use time.perf_counter (no effect on a GPU)",
    "pytest_timeout": "no per-test time limit, only each stage's",
    "sklearn": "evaluation metrics, the gap probes and reproduce's t-SNE fail where used; kernels, benchmarks "
               "and the key GPU tests do not need it",
    "tqdm": "training shows no progress bars",
    "matplotlib": "no plots: the benchmark report is Markdown only",
    "yaml": "YAML configs cannot be read (JSON ones can)",
}


def _version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - missing or broken: either way not usable
        return None
    return str(getattr(module, "__version__", "installed"))


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def preflight() -> int:
    """Print the environment and what is missing (and what that costs). Always exits 0."""
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} cores")
    versions = {name: _version(name) for name in MODULES}
    try:
        import torch

        cuda = torch.cuda.is_available()
        print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {versions['triton']}")
        if cuda:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, "
                      f"{p.multi_processor_count} SMs")
        else:
            print("GPU: none visible to torch (a dry run)")
    except Exception as err:  # noqa: BLE001 - the check goes on and says so
        print(f"torch: cannot be imported ({type(err).__name__}: {err})")
    nvcc = _run(["nvcc", "--version"]).splitlines()
    print(f"nvcc: {nvcc[-1] if nvcc else 'not found'}; ninja: {'yes' if shutil.which('ninja') else 'no'}; "
          f"free disk here: {shutil.disk_usage('.').free / 2**30:.0f} GiB")
    print("modules: " + ", ".join(f"{n} {v}" for n, v in versions.items() if v))
    missing = [n for n, v in versions.items() if v is None]
    for name in missing:
        cost = MODULES[name]
        print(f"MISSING {name}: {cost or 'required: the stages that need it fail'}")
    if not missing:
        print("missing: none")
    return 0


def verify_build() -> int:
    """``iteach_fast._C`` loads and has CUDA, and its CUDA mixture matches the reference on a
    small input (on the CPU without a GPU: the CPU kernel). Exit 1 if not."""
    import torch

    from iteach_fast.ops import cpp, reference

    module, why = cpp.STATUS
    if module is None:
        print(f"iteach_fast._C does not load: {why}")
        return 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"iteach_fast._C loads; CUDA kernels: {'yes' if cpp.has_cuda() else 'no'}")
    if device == "cuda" and not cpp.has_cuda():
        print("FAILED: a GPU is here but the extension has no CUDA kernels")
        return 1
    g = torch.Generator().manual_seed(0)
    B, L, D = 3, 17, 64
    args = [torch.randn(B, L, 4, generator=g)] + [torch.randn(B, L, D, generator=g) for _ in range(3)]
    lengths = torch.tensor([17, 9, 0])
    got = cpp.routed_mixture(*(a.to(device) for a in args), lengths.to(device), 3, False).cpu()
    torch.testing.assert_close(got, reference.routed_mixture(*args, lengths, 3, False), rtol=1e-5, atol=1e-5)
    print(f"the cpp routed_mixture on {device} matches the reference")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["preflight"]:
        return preflight()
    if argv == ["verify-build"]:
        return verify_build()
    if argv == ["key-tests"]:
        print("\n".join(KEY_TESTS))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
