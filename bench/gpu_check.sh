#!/usr/bin/env bash
# The one command for a GPU machine (torch, triton, nvcc and ninja installed; no network needed):
#
#     bench/gpu_check.sh "$OUT/gpu-check"         # everything lands in that folder, nowhere else
#     bench/gpu_check.sh --dry [DIR]              # no GPU: every stage in order at smoke sizes
#     bench/gpu_check.sh --dry --hide sklearn,tqdm DIR   # ... as on a machine without those modules
#
# The stages, by value, each with a predicted time on an H100 / H200 (16 cores) and a limit; the
# whole within TOTAL_S (480 s), machine start not included (bench/README.md, "The GPU check"):
#   preflight        5 s   versions, the GPU, what is missing and what that costs (never fails)
#   build           90 s   iteach_fast._C for this GPU's arch only, skipped when up to date; then checked
#   install         15 s   editable, no build isolation, no index (maps kernels/ to iteach_fast.kernels)
#   imports          5 s   the extension, the Triton kernels, the benchmark modules; the backends on the GPU
#   headline       150 s   K1 fp32/bf16 fwd+bwd vs FlexAttention and the eager reference at L 2048, Dh 64;
#                          K2 at 64M elements; the training step at paper size (reference, auto) with
#                          host syncs and launches; compiled peers last, the JSON rewritten after every case
#   gpu-tests-key  100 s   the GPU tests that matter most, by node id (bench/gpu_check.py KEY_TESTS),
#                          while kernel-resources compiles beside them (CPU only: 95 s on the spare cores)
#   syncs           20 s   host syncs and launches of one training step, by op
#   gpu-tests-rest 140 s   the other GPU tests (autotuning deselected: marker autotune)
#   compiled-step  200 s   the headline training step compiled (auto+compile, then in a CUDA graph):
#                          Inductor compiles the whole step, over 150 s on 16 cores, so it comes after
#                          the tests; give the check TOTAL_S=540 to reach it
#   bench-rest      rest   every other benchmark case, compiled peers last
#   tests-rest      rest   the rest of the suite (ops first: on a GPU they run the kernels there)
#   report           5 s   the benchmark report (Markdown) and the summary
# A stage gets min(its limit, what is left); one that no longer fits is skipped with the reason.
# Nothing stops the next stage: a failing one is recorded and the check goes on. After each
# stage summary.txt is rewritten, so a check stopped anywhere leaves what it had. The folder
# holds at most 8 files (what a device session brings back): summary.txt, log.txt (every
# stage's output), the benchmark JSON and Markdown, kernel-resources.json and .md.
#
# Without a CUDA device (or with --dry / GPU_CHECK_DRY=1) it is a dry run: no build or install,
# the benchmarks at smoke sizes on the CPU without compilation, the test stages collect their
# tests (so a missing node id or an import that fails collection shows) without running them,
# and each stage says what it would run on a device. PYTHON picks the interpreter (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
HIDE=${GPU_CHECK_HIDE:-}
OUT=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry) DRY=1 ;;
        --hide) HIDE=$2; shift ;;
        --hide=*) HIDE=${1#--hide=} ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//; /^set -uo/d'; exit 0 ;;
        -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUT=$1 ;;
    esac
    shift
done
OUT=${OUT:-${TMPDIR:-/tmp}/iteach-gpu-check-$(date -u +%Y%m%d-%H%M%S)}
TOTAL_S=${TOTAL_S:-480}
RESERVE_S=${RESERVE_S:-15}  # kept for the report and the summary
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/log.txt
: >"$LOG"
START=$SECONDS
START_DATE=$(date -u +%FT%TZ)

export PYTHONUNBUFFERED=1
export ITEACH_FAST_IN_GPU_CHECK=1  # tests/bench/test_gpu_check.py does not run the check inside the check
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the bench package (the package itself once installed)
if [ -n "$HIDE" ]; then  # as a machine without these modules: bench/hide_modules/sitecustomize.py
    export PYTHONPATH="$ROOT/bench/hide_modules:$PYTHONPATH" ITEACH_FAST_HIDE_MODULES=$HIDE
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}
NPROC=$(nproc 2>/dev/null || echo 4)

read -r HAS_CUDA ARCH_LIST < <(timeout 120 "$PYTHON" -c '
import torch
print(1, "%d.%d" % torch.cuda.get_device_capability()) if torch.cuda.is_available() else print(0, "-")' 2>/dev/null | tail -n 1)
if [ "${HAS_CUDA:-0}" = 1 ]; then
    ARCH=${ARCH_LIST/./}
else
    HAS_CUDA=0
    DRY=1
    ARCH_LIST="9.0" ARCH=90
fi
if [ "$DRY" = 1 ]; then
    MODE="dry run (no GPU work: smoke sizes, tests collected, not run)"
    [ "$HAS_CUDA" = 1 ] || MODE="dry run: no CUDA device (smoke sizes on the CPU, tests collected, not run)"
    BENCH=(--smoke --no-compile --threads 1 --device cpu)
else
    MODE="GPU check on sm_$ARCH"
    export ITEACH_FAST_EXPECT_CUDA=1  # the tests then insist that the extension has its CUDA kernels
    BENCH=(--compiled-last)
fi
HAS_PYTEST=0; "$PYTHON" -c 'import pytest' 2>/dev/null && HAS_PYTEST=1
PYTEST=(-m pytest -p no:cacheprovider --continue-on-collection-errors -q -rfEs --tb=short)
if [ "$DRY" = 1 ]; then
    PYTEST+=(--collect-only)
else
    PYTEST+=(--durations=10)
    "$PYTHON" -c 'import pytest_timeout' 2>/dev/null && PYTEST+=(--timeout=150)
fi
mapfile -t KEY_TESTS < <("$PYTHON" -m bench.gpu_check key-tests 2>/dev/null)
STAGES=()  # "name|status|predicted|limit|took|note"
ENV_TEXT="(no preflight yet)"

left() { echo $((TOTAL_S - (SECONDS - START))); }

bench_results() { ls "$OUT"/*.json 2>/dev/null | grep -v '/kernel-resources'; }

summary() {  # summary.txt, rewritten after every stage
    {
        echo "iteach_fast GPU check: $MODE"
        echo "started $START_DATE, $((SECONDS - START)) s so far, budget ${TOTAL_S} s; folder $OUT"
        echo "$ENV_TEXT"
        echo
        printf '%-16s %-8s %6s %6s %6s  %s\n' stage status "pred s" "limit" "took" note
        for s in "${STAGES[@]}"; do
            IFS='|' read -r name status pred limit took note <<<"$s"
            printf '%-16s %-8s %6s %6s %6s  %s\n' "$name" "$status" "$pred" "$limit" "$took" "$note"
        done
        echo
        results=$(bench_results)
        if [ -n "$results" ]; then timeout 60 "$PYTHON" -m bench.report --summary $results 2>/dev/null; fi
    } >"$OUT/summary.txt.tmp" 2>/dev/null
    mv -f "$OUT/summary.txt.tmp" "$OUT/summary.txt"
}

record() {  # record NAME STATUS PREDICTED LIMIT TOOK NOTE
    STAGES+=("$1|$2|$3|$4|$5|$6")
    echo "== $1: $2 after $5 s${6:+ ($6)}" | tee -a "$LOG"
    summary
}

stage() {  # stage NAME PREDICTED LIMIT MIN "ON A DEVICE" COMMAND...: run within min(LIMIT, what is left)
    local name=$1 pred=$2 limit=$3 min=$4 device=$5; shift 5
    local avail=$(( $(left) - RESERVE_S ))
    [ "$limit" -le "$avail" ] || limit=$avail
    if [ "$limit" -lt "$min" ]; then
        record "$name" skipped "$pred" "$limit" 0 "time budget: ${avail} s left, needs ${min} s"
        return
    fi
    local shown="${pred} s"
    [[ $pred =~ ^[0-9]+$ ]] || shown="what is left"
    {
        echo
        echo "================ $name (predicted $shown, limit ${limit} s) $(date -u +%T)"
        [ "$DRY" = 1 ] && echo "[dry] on a device: $device"
        echo "\$ $*"
    } >>"$LOG"
    echo "== $name (predicted $shown, limit ${limit} s)"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$? took=$((SECONDS - start))
    local note=""
    [ "$DRY" = 1 ] && note="dry; on a device: $device"
    case $rc in
        0) record "$name" passed "$pred" "$limit" "$took" "$note" ;;
        124|137) record "$name" "${TIMEOUT_STATUS:-FAILED}" "$pred" "$limit" "$took" "time limit ${limit} s${note:+; $note}" ;;
        *) record "$name" FAILED "$pred" "$limit" "$took" "exit $rc${note:+; $note}" ;;
    esac
}

skip() { record "$1" skipped "$2" - 0 "$3"; }

pytest_stage() {  # pytest_stage NAME PREDICTED LIMIT MIN "ON A DEVICE" ARGS...
    local name=$1 pred=$2 limit=$3 min=$4 device=$5; shift 5
    if [ "$HAS_PYTEST" != 1 ]; then
        skip "$name" "$pred" "pytest is not installed"
        return
    fi
    # exit 5 (no tests collected, e.g. only skips) is not a failure of the check
    stage "$name" "$pred" "$limit" "$min" "$device" bash -c '"$@"; rc=$?; [ $rc = 5 ] && exit 0; exit $rc' _ \
        "$PYTHON" "${PYTEST[@]}" "$@"
}

bench_stage() {  # bench_stage NAME PREDICTED LIMIT MIN "ON A DEVICE" ARGS...: bench.run into this folder's JSON
    local name=$1 pred=$2 limit=$3 min=$4 device=$5; shift 5
    local avail=$(( $(left) - RESERVE_S ))
    [ "$limit" -le "$avail" ] || limit=$avail
    # the runner stops starting cases a quarter of the limit (at least 30 s) before it, so it
    # ends by itself; stopped anyway, the JSON keeps every case measured (rewritten after each)
    local budget=$(( limit - (limit / 4 > 30 ? limit / 4 : 30) ))
    TIMEOUT_STATUS=stopped stage "$name" "$pred" "$limit" "$min" "$device" "$PYTHON" -m bench.run --append \
        --no-report --out "$OUT" --budget-s $(( budget > 10 ? budget : 10 )) "${BENCH[@]}" "$@"
}

echo "gpu_check: $MODE; output in $OUT (summary.txt, log.txt)"

# ----------------------------------------------------------------------------- the stages
stage preflight 5 60 5 "the same" "$PYTHON" -m bench.gpu_check preflight
ENV_TEXT=$(sed -n '/^================ preflight/,$p' "$LOG" | grep -v '^==\|^\$ \|^\[dry\]' | head -n 14)
grep -q '^MISSING' <<<"$ENV_TEXT" && grep '^MISSING' <<<"$ENV_TEXT"

if [ "$DRY" = 1 ]; then
    skip build 90 "dry; on a device: TORCH_CUDA_ARCH_LIST=<its arch> $PYTHON setup.py build_ext --inplace (skipped when up to date)"
    stage build-check 2 60 5 "bench.gpu_check verify-build on the GPU" "$PYTHON" -m bench.gpu_check verify-build
    skip install 15 "dry; on a device: ITEACH_FAST_NO_EXT=1 pip install --no-build-isolation --no-deps --no-index -e . (unless installed from here)"
else
    # no network: build against the installed torch, for this GPU only; a build already up to
    # date (same sources, torch, and CUDA for this arch: setup.py's fingerprint) is not repeated
    stage build 90 240 60 "" env TORCH_CUDA_ARCH_LIST="$ARCH_LIST" "$PYTHON" setup.py build_ext --inplace
    stage build-check 2 60 5 "" "$PYTHON" -m bench.gpu_check verify-build
    if "$PYTHON" -c "import iteach_fast, iteach_fast.kernels, os, sys; sys.exit(os.path.dirname(iteach_fast.__file__) != os.path.join('$ROOT', 'iteach_fast'))" 2>/dev/null; then
        skip install 15 "iteach_fast (with iteach_fast.kernels) is already installed from this checkout"
    else
        stage install 15 90 20 "" env ITEACH_FAST_NO_EXT=1 "$PYTHON" -m pip install --no-build-isolation --no-deps \
            --no-index -e .
    fi
fi
stage imports 5 60 10 "the same, on the GPU" "$PYTHON" -c "
import torch, iteach_fast._C, iteach_fast.kernels.ecce, bench.run, bench.syncs
from iteach_fast.ops import backends
device = 'cuda' if torch.cuda.is_available() else 'cpu'
print('iteach_fast._C, iteach_fast.kernels and the benchmarks import; on', device + ':')
for op, per in backends.available_backends(device).items():
    print(' ', op, {b: why or 'ok' for b, why in per.items()})"

# the compiled training step has a stage of its own, after the tests (its compile alone takes minutes)
STEP_COMPILED=auto+compile,auto+compile+cuda-graphs
bench_stage headline 150 200 60 "bench.run --preset headline --compiled-last (full sizes, FlexAttention peer)" \
    --preset headline --providers reference,triton,cpp,flex-attention,auto

# the key GPU tests, with the kernel resource report compiling on the spare cores beside them
KR_JOBS=$(( NPROC > 4 ? NPROC - 2 : 2 ))
KR_ARGS=(--arch "$ARCH" --out "$OUT" --name kernel-resources --jobs "$KR_JOBS")
[ "$DRY" = 1 ] && KR_ARGS+=(--only "tables_adjoint" --no-cuda-mixture --jobs 1)  # one small variant: the flow
KR_LIMIT=$(( $(left) - RESERVE_S > 120 ? 120 : $(left) - RESERVE_S ))
KR_START=$SECONDS
if [ "$KR_LIMIT" -ge 20 ]; then
    timeout --signal=INT --kill-after=10 "$KR_LIMIT" "$PYTHON" -m bench.kernel_resources "${KR_ARGS[@]}" \
        >"$OUT/.kernel-resources.log" 2>&1 &
    KR_PID=$!
else
    KR_PID=""
fi
if [ "${#KEY_TESTS[@]}" -gt 0 ]; then
    pytest_stage gpu-tests-key 100 150 30 "pytest the key GPU tests by node id" "${KEY_TESTS[@]}"
else
    skip gpu-tests-key 100 "bench.gpu_check key-tests gave no node ids"
fi
if [ -n "$KR_PID" ]; then
    wait "$KR_PID"; kr_rc=$?
    { echo; echo "================ kernel-resources (beside gpu-tests-key)"; cat "$OUT/.kernel-resources.log"; } >>"$LOG"
    rm -f "$OUT/.kernel-resources.log"
    kr_note=$(grep -h '^Variants missing' "$OUT/kernel-resources.md" 2>/dev/null | head -n 1)
    [ "$DRY" = 1 ] && kr_note="dry (one variant); on a device: every variant for sm_$ARCH. $kr_note"
    case $kr_rc in
        0) record kernel-resources passed 95 "$KR_LIMIT" $((SECONDS - KR_START)) "$kr_note" ;;
        124|137) record kernel-resources stopped 95 "$KR_LIMIT" $((SECONDS - KR_START)) "time limit; $kr_note" ;;
        *) record kernel-resources FAILED 95 "$KR_LIMIT" $((SECONDS - KR_START)) "exit $kr_rc; $kr_note" ;;
    esac
else
    skip kernel-resources 95 "time budget"
fi

if [ "$DRY" = 1 ]; then
    stage syncs 20 60 10 "bench.syncs --sizes 32x110 (reference, auto) on the GPU" "$PYTHON" -m bench.syncs \
        --sizes 2x16 --backends auto --threads 1 --device cpu
else
    stage syncs 20 60 20 "" "$PYTHON" -m bench.syncs --sizes 32x110
fi

DESELECT=()
for t in "${KEY_TESTS[@]}"; do DESELECT+=(--deselect "$t"); done
pytest_stage gpu-tests-rest 140 160 30 "pytest -m 'gpu and not autotune' (the key tests deselected)" \
    -q -m "gpu and not autotune" "${DESELECT[@]}" tests

bench_stage compiled-step 200 240 60 "bench.run --preset headline --ops iteach_net (the compiled step)" \
    --preset headline --ops iteach_net --providers "$STEP_COMPILED"

# the dry run shows the flow only: one small op, the kernel tests' collection (the GPU stages
# above have collected every test module already)
REST_BENCH=(); REST_TESTS=(tests/ops tests/nn tests/bench tests/system)
[ "$DRY" = 1 ] && REST_BENCH=(--ops ecce_bias --modes fwd) && REST_TESTS=(tests/ops)
REST_S=$(( $(left) - RESERVE_S ))
bench_stage bench-rest rest $(( REST_S * 2 / 3 > 30 ? REST_S * 2 / 3 : 30 )) 30 \
    "bench.run (every other case, compiled peers last)" "${REST_BENCH[@]}"
# the rest of the suite runs on the CPU in CI as well: here it gets what is left, and being
# stopped by the time limit is not a failure
TIMEOUT_STATUS=stopped pytest_stage tests-rest rest $(( $(left) - RESERVE_S )) 30 \
    "pytest -m 'not gpu' tests/ops tests/nn tests/bench tests/system (ops first)" -q -m "not gpu" "${REST_TESTS[@]}"

RESERVE_S=0
if [ -n "$(bench_results)" ]; then
    stage report 5 40 2 "the same" "$PYTHON" -m bench.report --no-plots $(bench_results)
else
    skip report 5 "no benchmark result to report"
fi

# ----------------------------------------------------------------------------- the end
echo
echo "================ summary: $((SECONDS - START)) s ================"
summary
cat "$OUT/summary.txt"
# what failed, in the last lines a device session brings back: each failing or stopped stage's
# last lines (pytest's -rfEs names the failing tests there), at most 4,000 characters in all
for s in "${STAGES[@]}"; do
    IFS='|' read -r name status _ <<<"$s"
    case $status in FAILED|stopped) ;; *) continue ;; esac
    echo
    echo "---- $name ($status): the end of its output (log.txt has all of it)"
    awk -v head="================ $name " 'index($0, head) == 1 {on = 1; n = 0; next}
        on && /^================ / {on = 0} on {line[n++ % 20] = $0}
        END {for (i = (n > 20 ? n - 20 : 0); i < n; i++) print substr(line[i % 20], 1, 200)}' "$LOG"
done | head -c 4000
echo
echo "files in $OUT:"
ls -l "$OUT" | tail -n +2
n=$(find "$OUT" -type f | wc -l)
[ "$n" -le 8 ] || echo "NOTE: $n files: a device session brings back 8 at most"
failed=0
for s in "${STAGES[@]}"; do
    IFS='|' read -r name status _ <<<"$s"
    [ "$status" = FAILED ] && failed=1
done
exit $failed
