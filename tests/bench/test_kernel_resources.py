"""The Triton kernels compile for sm_90 without a GPU, as Inductor's generated code compiles them.

Under ``torch.compile`` a ``triton_op``'s kernels are compiled by Inductor, which types a float
scalar argument (the attention's ``scale``) as fp64 where a direct launch types it fp32. A
kernel that mixes it into a loop-carried fp32 value then fails to compile, on the GPU only, and
only under ``torch.compile`` (seen on an H200 with torch 2.11). Compiling for a GPU target needs
the compiled (not interpreted) kernels, so each check runs in a fresh interpreter.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = """
import sys
from bench import kernel_resources as kr
seen, failed = set(), []
for name, kernel, args, meta, labels in kr.variants(90):
    if name in seen:
        continue
    seen.add(name)
    try:
        kr.compile_launch(kernel, args, meta, 90, float_type=sys.argv[1])
    except Exception as err:
        failed.append(f"{name}: {str(err).strip().splitlines()[-1]}")
print(len(seen), "kernels")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _compiled_env() -> dict:
    """This environment without the interpreter switch, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _backend_missing(env: dict) -> str | None:
    probe = subprocess.run([sys.executable, "-c", "from triton.backends.nvidia.compiler import CUDABackend"],
                           env=env, capture_output=True, text=True)
    return None if probe.returncode == 0 else f"triton's CUDA backend is not importable: {probe.stderr[-300:]}"


@pytest.mark.parametrize("float_type", ["fp32", "fp64"], ids=["as-launched", "as-inductor-types-floats"])
def test_every_kernel_compiles_for_sm90(float_type):
    env = _compiled_env()
    missing = _backend_missing(env)
    if missing:
        pytest.skip(missing)
    run = subprocess.run([sys.executable, "-c", SCRIPT, float_type], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"kernels that do not compile with float arguments as {float_type}:\n" \
                                f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "8 kernels" in run.stdout, run.stdout  # every kernel the launchers have was reached
