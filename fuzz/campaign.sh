#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, one after another, and prints per
# target: executions, libFuzzer's final cov: and ft:, crashes (and hangs), peak RSS, and the
# exact command. Exits non-zero if any target crashed, hung or ran out of memory.
#
#   fuzz/campaign.sh [SECONDS] [TARGET...]          # default 600 s per target
#
# Needs a nightly toolchain and cargo-fuzz (.ci/run installs both). The working corpus is
# fuzz/corpus/TARGET (kept between runs; fuzz/seeds/TARGET is read as well), crashes go to
# fuzz/artifacts/TARGET/. Environment:
#   FUZZ_SANITIZER=address|none   (default address; none runs ~2x faster, memory-safe Rust only)
#   FUZZ_SHARED_SEEDS=0           skip the bigger seeds from ../shared/models (CI's smoke does)
#   FUZZ_TIMEOUT=SECONDS          one input taking longer is a hang (default 20)
#   FUZZ_RSS_MB=MB                RSS (and single allocation) limit (default 2048)
#   FUZZ_TARGET_DIR=DIR           where the targets are built (default fuzz/target)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tandem-fuzz$')
fi
sanitizer="${FUZZ_SANITIZER:-address}"
# A smaller quarantine than ASan's 256 MB keeps the RSS limit about the inputs, not the allocator.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=64}"
timeout="${FUZZ_TIMEOUT:-20}"
rss="${FUZZ_RSS_MB:-2048}"

if [ "${FUZZ_SHARED_SEEDS:-1}" != 0 ]; then
    python3 fuzz/seeds.py shared || echo "warning: no seeds from ../shared"
fi

# One build for every target: release, debug assertions and overflow checks on.
target_dir="${FUZZ_TARGET_DIR:-fuzz/target}"
build=(cargo +nightly fuzz build -O -a -s "$sanitizer" --target-dir "$target_dir")
echo "+ ${build[*]}"
"${build[@]}"
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin="$target_dir/$triple/release"

dict_for() {
    case "$1" in
        gguf_*) echo fuzz/dicts/gguf.dict ;;
        safetensors_*) echo fuzz/dicts/safetensors.dict ;;
        hf_config) echo fuzz/dicts/hf_config.dict ;;
        chat_template) echo fuzz/dicts/jinja.dict ;;
        server_request) echo fuzz/dicts/json.dict ;;
    esac
}

summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/seeds/$t"
    log="fuzz/artifacts/$t/last-run.log"
    cmd=("$bin/$t" -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss" -print_final_stats=1
         -artifact_prefix="fuzz/artifacts/$t/")
    dict="$(dict_for "$t")"
    [ -n "$dict" ] && cmd+=(-dict="$dict")
    cmd+=("fuzz/corpus/$t" "fuzz/seeds/$t")
    echo "+ ${cmd[*]}"
    status=0
    "${cmd[@]}" >"$log" 2>&1 || status=$?
    final="$(grep -aE '^#[0-9]+' "$log" | tail -n 1 || true)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    peak="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$final")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$final")"
    crashes="$(grep -acE '^==[0-9]+== ERROR|^(SUMMARY|ERROR): libFuzzer|panicked at|deadly signal' "$log" || true)"
    result=ok
    if [ "$status" != 0 ]; then
        result="FAILED (exit $status; see $log)"
        failed=1
        grep -E 'panicked at|ERROR|Test unit written|SUMMARY' "$log" | head -n 8 | sed 's/^/    /'
    fi
    summary+=("$(printf '%-20s %12s %8s %8s %8s %9s  %s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes" "${peak:-?}MB" "$result")")
done

echo
echo "fuzz campaign: ${seconds}s per target, sanitizer $sanitizer, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-20s %12s %8s %8s %8s %9s  %s\n' target execs cov ft crashes peak-rss result
printf '%s\n' "${summary[@]}"
exit "$failed"
