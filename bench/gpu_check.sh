#!/usr/bin/env bash
# The one command for a GPU machine that already has torch, triton, nvcc and ninja and may
# have no network:
#
#     bench/gpu_check.sh [OUT_DIR]
#
# 1. builds iteach_fast._C in place (with CUDA), 2. runs the whole test suite including the
# GPU-only tests, 3. runs the benchmarks, and leaves everything — environment, build log,
# test log + JUnit XML, benchmark JSON / Markdown / PNG — in one folder (default
# bench/results/gpu-check-<date>/). Meant to end within about 8 minutes on an H100: every
# step has its own time limit, a failing step does not stop the next, and the exit status
# is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${1:-bench/results/gpu-check-$(date -u +%Y-%m-%d)}
mkdir -p "$OUT/logs"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PYTHON -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")' 2>/dev/null || echo "8.0;9.0")}
export MAX_JOBS=${MAX_JOBS:-8}
# the package from this checkout, whether or not the editable install below happens
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TOTAL_S=${TOTAL_S:-450}  # the whole script's target (under 8 minutes); the benchmarks get what is left
# BUILD_S: the build's limit (a cold build takes 2-4 minutes on 2 cores, for sm_80 + sm_90)
export ITEACH_FAST_EXPECT_CUDA=1  # the tests then insist that the extension has its CUDA kernels
failed=()

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log, remember failures
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$OUT/logs/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ $rc -eq 0 ] || failed+=("$name (exit $rc)")
}

step environment 60 $PYTHON - <<'EOF'
import platform, subprocess, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except ImportError as err:
    print("triton: not installed", err)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
for mod in ("pytest", "pytest_benchmark", "numpy", "sklearn", "tqdm", "matplotlib", "yaml"):
    try:
        m = __import__(mod); print(mod, getattr(m, "__version__", "?"))
    except ImportError:
        print(mod, "missing (the tests that need it are skipped)")
try:
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                         capture_output=True, text=True).stdout)
except FileNotFoundError:
    print("nvidia-smi: not found")
EOF
cp "$OUT/logs/environment.log" "$OUT/environment.txt" 2>/dev/null

# no network: build against the installed torch, install nothing else
step build "${BUILD_S:-300}" $PYTHON setup.py build_ext --inplace
# editable install without a second build: it is what maps kernels/ to iteach_fast.kernels
# (PYTHONPATH alone finds iteach_fast and its _C, but not the Triton kernels)
ITEACH_FAST_NO_EXT=1 step install 120 $PYTHON -m pip install --no-build-isolation --no-deps -e .
step imports 60 $PYTHON -c "import iteach_fast._C, iteach_fast.kernels.ecce; print('iteach_fast._C and iteach_fast.kernels import')"

# the whole suite, GPU tests included; -p no:cacheprovider keeps the tree clean
step tests 240 $PYTHON -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml" tests

# the benchmarks: the full GPU case list, with a budget so the report is always written
left=$((TOTAL_S - SECONDS)); [ $left -ge 90 ] || left=90
step bench $((left + 45)) $PYTHON -m bench.run --budget-s $((left - 30)) --out "$OUT"
# a run stopped by its time limit has its JSON (written after every case) but no report yet
if ! ls "$OUT"/*.md >/dev/null 2>&1 && ls "$OUT"/*.json >/dev/null 2>&1; then
    step report 60 $PYTHON -m bench.report "$OUT"/*.json
fi

echo
echo "report folder: $OUT"
ls "$OUT"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all steps passed"
