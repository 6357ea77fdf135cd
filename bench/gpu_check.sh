#!/usr/bin/env bash
# The one command for a GPU machine that already has torch, triton, nvcc and ninja and may
# have no network:
#
#     bench/gpu_check.sh [OUT_DIR]          # default bench/results/gpu-check-<date>/
#
# In this order, each step with its own time limit, all within TOTAL_S (480 s = 8 minutes on
# an H100, machine start not included):
#   1. environment   versions, the GPU
#   2. build         iteach_fast._C with its CUDA kernels, in place, for this GPU's arch
#   3. install       editable, no build isolation, no dependencies (maps kernels/ to iteach_fast.kernels)
#   4. imports       the extension and the Triton kernels import; the backends available
#   5. gpu-tests     pytest -m gpu (the GPU-only tests)
#   6. headline      the issue's headline rows: K1 fp32/bf16 fwd+bwd vs FlexAttention and the
#                    eager reference at L=2048, Dh=64; K2 at 64M elements; the training step at
#                    the paper's size for every provider (with its host syncs and launches)
#   7. syncs         host synchronisations of one training step, by op (python -m bench.syncs)
#   8. kernel-resources  bench/kernel_resources.py (registers, spills, shared memory), if present
#   9. bench-rest    every other case, compiled peers last, within what is left
#  10. tests-rest    the rest of the test suite, within what is left (REST_TESTS_S reserved;
#                    stopped by its limit is "stopped", not a failure: CI runs it on the CPU)
#  11. report        the Markdown and plots of the result file
# then a one-screen summary: the headline table and pass/fail per step. Everything lands in
# OUT_DIR (logs/, environment.txt, JUnit XML, the benchmark JSON / Markdown / PNG). A failing
# step does not stop the next; the exit status is non-zero if any step failed.
#
# Without a CUDA device (a dry run: PYTHON=.venv/bin/python bench/gpu_check.sh /tmp/dry) every
# step runs or says why not: no build or install, the benchmark steps at smoke sizes without
# compilation, so nothing takes minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${1:-bench/results/gpu-check-$(date -u +%Y-%m-%d)}
TOTAL_S=${TOTAL_S:-480}        # the whole script's limit
BUILD_S=${BUILD_S:-240}        # a cold build for one arch: ~1-2 minutes on 16 cores
REST_TESTS_S=${REST_TESTS_S:-100}  # kept for the rest of the test suite after the benchmarks
SUMMARY_S=40                   # kept for the report and the summary
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
START=$SECONDS
export ITEACH_FAST_EXPECT_CUDA=1  # the tests then insist that the extension has its CUDA kernels
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the bench package; the package itself once installed

HAS_CUDA=$($PYTHON -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$HAS_CUDA" = 1 ]; then
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PYTHON -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
    ARCH=$($PYTHON -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())')
    BENCH_SIZE=()
    SYNC_ARGS=(--sizes 32x110)
    KR_ARGS=()
else
    ARCH=90
    BENCH_SIZE=(--smoke --no-compile --threads 1)  # the flow, not the numbers
    SYNC_ARGS=(--sizes 2x16 --threads 1)
    KR_ARGS=(--only "bfloat16 64" --no-cuda-mixture)  # a few variants: the step's flow
fi
STEPS=()  # "name|status|seconds|note"

left() { echo $((TOTAL_S - (SECONDS - START))); }

record() { STEPS+=("$1|$2|$3|$4"); echo "== $1: $2${4:+ ($4)} after $3 s"; }

step() {  # step NAME LIMIT_S MIN_S COMMAND...: run within min(LIMIT_S, what is left), log, record
    local name=$1 limit=$2 min=$3; shift 3
    local avail=$(( $(left) - SUMMARY_S ))
    [ "$limit" -le "$avail" ] || limit=$avail
    if [ "$limit" -lt "$min" ]; then
        record "$name" skipped 0 "time budget: ${avail}s left, needs ${min}s"
        return
    fi
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    local rc=$? took=$((SECONDS - start))
    tail -n 12 "$OUT/logs/$name.log"
    case $rc in
        0) record "$name" passed "$took" "" ;;
        124|137) record "$name" "${TIMEOUT_STATUS:-FAILED}" "$took" "time limit ${limit}s" ;;
        *) record "$name" FAILED "$took" "exit $rc" ;;
    esac
}

skip() { record "$1" skipped 0 "$2"; }

step environment 60 5 $PYTHON - <<'EOF'
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

if [ "$HAS_CUDA" = 1 ]; then
    # no network: build against the installed torch, install nothing else
    step build "$BUILD_S" 60 $PYTHON setup.py build_ext --inplace
    # editable install without a second build: it maps kernels/ to iteach_fast.kernels
    ITEACH_FAST_NO_EXT=1 step install 90 20 $PYTHON -m pip install --no-build-isolation --no-deps -e .
else
    skip build "no CUDA device: nothing to build for a GPU (the CPU build is make build's)"
    skip install "no CUDA device: the environment's own install is used"
fi
step imports 60 10 $PYTHON -c "
import torch, iteach_fast._C, iteach_fast.kernels.ecce
from iteach_fast.ops import backends
device = 'cuda' if torch.cuda.is_available() else 'cpu'
print('iteach_fast._C and iteach_fast.kernels import; on', device + ':')
for op, per in backends.available_backends(device).items():
    print(' ', op, {b: why or 'ok' for b, why in per.items()})"

step gpu-tests 120 30 $PYTHON -m pytest -q -rs -m gpu -p no:cacheprovider --junitxml="$OUT/tests-gpu.xml" tests

run_bench() {  # run_bench NAME LIMIT MIN ARGS...: python -m bench.run into the one result file of $OUT
    local name=$1 limit=$2 min=$3; shift 3
    local avail=$(( $(left) - SUMMARY_S ))
    [ "$limit" -le "$avail" ] || limit=$avail
    # the runner stops starting cases well before the step's limit (its imports and one case
    # must fit after that), so it ends by itself with its JSON complete; a step stopped by the
    # limit anyway keeps every case measured before (the JSON is rewritten after each one)
    local budget=$((limit - (limit / 4 > 30 ? limit / 4 : 30)))
    TIMEOUT_STATUS=stopped step "$name" "$limit" "$min" $PYTHON -m bench.run --append --no-report --out "$OUT" \
        --budget-s $((budget > 10 ? budget : 10)) "${BENCH_SIZE[@]}" "$@"
}
run_bench headline 150 45 --preset headline
step syncs 45 20 $PYTHON -m bench.syncs "${SYNC_ARGS[@]}"
if [ -f bench/kernel_resources.py ]; then
    TIMEOUT_STATUS=stopped step kernel-resources 90 20 $PYTHON -m bench.kernel_resources --arch "$ARCH" --out "$OUT" \
        --name kernel-resources "${KR_ARGS[@]}"
else
    skip kernel-resources "bench/kernel_resources.py is not in this checkout"
fi
run_bench bench-rest $(( $(left) - SUMMARY_S - REST_TESTS_S )) 30 --compiled-last
# the rest of the suite runs on the CPU in CI as well: here it gets what is left, and being
# stopped by the time limit is not a failure
TIMEOUT_STATUS=stopped step tests-rest "$(left)" 30 $PYTHON -m pytest -q -rs -m "not gpu" -p no:cacheprovider \
    --junitxml="$OUT/tests-rest.xml" tests
SUMMARY_S=0
step report 40 5 $PYTHON -m bench.report "$OUT"/*.json

echo
echo "================ summary: $((SECONDS - START)) s ================"
head -n 4 "$OUT/environment.txt" 2>/dev/null
$PYTHON -m bench.report --summary "$OUT"/*.json 2>/dev/null || echo "(no benchmark results)"
echo
failed=0
for s in "${STEPS[@]}"; do
    IFS='|' read -r name status took note <<<"$s"
    printf '  %-17s %-8s %4ss  %s\n' "$name" "$status" "$took" "$note"
    [ "$status" = FAILED ] && failed=1
done
echo "report folder: $OUT"
exit $failed
