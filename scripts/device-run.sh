#!/usr/bin/env bash
# Runs on the device machine (NVIDIA H100/H200, CUDA 13, no Rust, no network) from the
# repository root, over what scripts/device-stage.sh staged in .device/. One call does it all:
#   run(command="bash scripts/device-run.sh", carry=[".device", ".gl"], timeout_s=...)
# Writes under $OUT: log.txt (every step's output), bench.jsonl (tandem bench --json and the
# ceilings), summary.txt (one line per step), and prints the summary last.
# PHASES (default "env ceil test profile bench san wgpu"; also matvec, batch, attn) picks the phases and their order;
# VERIFY_TOKENS (speculative verify step sizes timed against a one-token step, default 2,5,8; "" skips),
# TEST_LIMIT (seconds per test executable), NO_GRAPHS=0 (skip the graphs-off e2e run), BENCH_MODELS, WGPU_MODELS, BENCH_DTYPES, PROFILE_DTYPES, BENCH_LIMIT WGPU_TEST_LIMIT, MATVEC_LIMIT (seconds), BATCH_N, BATCH_DTYPES and WGPU_CONFORMANCE=0 (benchmarks only) narrow the benchmarks.
set -u
OUT="${OUT:-/tmp/tandem-device}"
mkdir -p "$OUT"
D=.device
LOG="$OUT/log.txt"
SUMMARY="$OUT/summary.txt"
JSONL="$OUT/bench.jsonl"
: >"$LOG"
: >"$SUMMARY"
: >"$JSONL"
PHASES="${PHASES:-env ceil test profile bench san wgpu}"
BENCH_MODELS="${BENCH_MODELS:-llama-3.2-1b llama-3.1-8b}"
BENCH_DTYPES="${BENCH_DTYPES:-q4 q8 bf16}"
VERIFY_TOKENS="${VERIFY_TOKENS-2,5,8}"
VERIFY_ARGS=${VERIFY_TOKENS:+--verify-tokens $VERIFY_TOKENS}

# step NAME SECONDS CMD...: runs CMD with a time limit, its output into the log, one summary line.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "===== $name: $*" >>"$LOG"
    timeout -k 5 "$limit" "$@" >"$OUT/step.tmp" 2>&1
    local rc=$?
    cat "$OUT/step.tmp" >>"$LOG"
    local what=ok
    grep -q '^SKIP' "$OUT/step.tmp" && what="ok but SKIPPED some"
    [ $rc -eq 124 ] && what="TIMEOUT after ${limit}s"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && what="FAILED rc=$rc"
    printf '%-44s %-22s %4ss\n' "$name" "$what" $((SECONDS - t0)) | tee -a "$SUMMARY" >>"$LOG"
    rm -f "$OUT/step.tmp"
    return $rc
}

# NVRTC 13 (and cuBLAS 13) from the image, under the CUDA 12 names cudarc also asks for: a
# folder of links, ahead on the loader's path.
lib_dir() {
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null); do
        [ -e "$d/$1" ] && { echo "$d"; return; }
    done
}
links=/tmp/tandem-cudalib
mkdir -p "$links"
for lib in libnvrtc libcublas libcublasLt; do
    d=$(lib_dir "$lib.so.13")
    [ -n "$d" ] || continue
    for f in "$d"/$lib*; do ln -sf "$f" "$links/"; done
    ln -sf "$d/$lib.so.13" "$links/$lib.so.12"
    LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH="$links:${LD_LIBRARY_PATH:-}"
export TANDEM_SHARED_MODELS="$PWD/$D/models"
export XDG_RUNTIME_DIR=/tmp
export RUST_BACKTRACE=1

phase_env() {
    step nvidia-smi 20 nvidia-smi
    step libraries 10 bash -c "ls -l $links; echo LD_LIBRARY_PATH=\$LD_LIBRARY_PATH; nvcc --version | tail -2"
}
phase_ceil() {
    step ceilings 90 bash -c "python3 bench/device_ceilings.py | tee -a $JSONL"
}
phase_test() {
    local limit=${TEST_LIMIT:-240}
    step conformance_cuda "$limit" "$D/conformance_cuda" --nocapture
    step e2e_cuda "$limit" "$D/e2e_cuda" --skip smollm2_chat --nocapture
    [ "${NO_GRAPHS:-1}" = 1 ] && TANDEM_CUDA_GRAPHS=0 step e2e_cuda_no_graphs "$limit" "$D/e2e_cuda" --skip smollm2_chat --nocapture
}
phase_san() {
    step memcheck_conformance 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$D/conformance_cuda" --test-threads=1
    step racecheck_conformance 240 compute-sanitizer --tool racecheck --error-exitcode 9 "$D/conformance_cuda" --test-threads=1
    step memcheck_e2e 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$D/e2e_cuda" --test-threads=1 stories260k_greedy
}
phase_profile() {
    # Where a step's time goes, kernel by kernel (no graphs; see crates/tandem-cuda/src/profile.rs).
    for dtype in ${PROFILE_DTYPES:-q4 bf16}; do
        TANDEM_CUDA_PROFILE=1 step "profile llama-3.1-8b $dtype" 120 "$D/tandem" bench --backend cuda --synthetic bench/configs/llama-3.1-8b.json --dtype "$dtype" --prompt-tokens 512 --decode-tokens 16 --contexts 128 --repeat 1
    done
}
bench() {
    local backend=$1 model=$2 dtype=$3
    shift 3
    step "bench $backend $model $dtype" "${BENCH_LIMIT:-300}" bash -c "set -o pipefail; $D/tandem bench --backend $backend --synthetic bench/configs/$model.json --dtype $dtype --json $* | tee -a $JSONL"
}
phase_bench() {
    for model in $BENCH_MODELS; do
        for dtype in $BENCH_DTYPES; do
            bench cuda "$model" "$dtype" --prompt-tokens 512 --decode-tokens 64 --contexts 128,4096 --repeat 2 $VERIFY_ARGS
        done
    done
}
phase_matvec() {
    # The decode matvec alone, swept over rows per group and grid (bench/cuda/matvec_bench.cu).
    step "matvec build" 120 nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v bench/cuda/matvec_bench.cu -o /tmp/matvec_bench
    step "matvec sweep" "${MATVEC_LIMIT:-120}" bash -c "set -o pipefail; /tmp/matvec_bench | tee $OUT/matvec.jsonl"
}
phase_batch() {
    # Batched decode: BATCH_N sequences at once on the 8B shape against one at a time (the
    # same workload; see `tandem bench --concurrency`).
    local n=${BATCH_N:-64}
    for dtype in ${BATCH_DTYPES:-q4}; do
        step "batch llama-3.1-8b $dtype x$n" "${BENCH_LIMIT:-300}" bash -c "set -o pipefail; $D/tandem bench --backend cuda --synthetic bench/configs/llama-3.1-8b.json --dtype $dtype --concurrency $n --requests $n --prompt-tokens 128 --gen-tokens 32 --json | tee -a $JSONL"
    done
}
phase_attn() {
    # Decode attention at long contexts with each KV head loaded once per query group (the
    # default) against a block per query head (TANDEM_CUDA_DECODE_GROUP=0), alternating.
    for r in 1 2; do
        for g in 0 1; do
            step "attn group=$g round $r" "${BENCH_LIMIT:-300}" env TANDEM_CUDA_DECODE_GROUP=$g bash -c "set -o pipefail; $D/tandem bench --backend cuda --synthetic bench/configs/llama-3.1-8b.json --dtype q4 --prompt-tokens 16 --decode-tokens 64 --contexts 4096,16384 --repeat 2 --json | sed 's/^{/{\"decode_group\":$g,/' | tee -a $JSONL"
        done
    done
}
phase_wgpu() {
    if ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -f "$VK_DRIVER_FILES" ] || unset VK_DRIVER_FILES
    [ "${WGPU_CONFORMANCE:-1}" = 1 ] && step conformance_wgpu "${WGPU_TEST_LIMIT:-240}" "$D/conformance_wgpu" --nocapture --test-threads=1
    for model in ${WGPU_MODELS:-$BENCH_MODELS}; do
        bench wgpu "$model" q4 --prompt-tokens 512 --decode-tokens 64 --contexts 128,4096 --repeat 2 $VERIFY_ARGS
    done
}
for p in $PHASES; do
    "phase_$p"
done
echo "----- summary"
cat "$SUMMARY"
