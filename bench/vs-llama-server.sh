#!/usr/bin/env bash
# tandem serve against llama-server: both on the same GGUF, the same CPU threads, on loopback,
# loaded in turn by bench/serve_load.py with the same workload (seed), 16 streamed completions
# at a time, outputs running to their length (ignore_eos). Runs alternate (tandem, llama-server,
# tandem, ...), --repeat times each; the table gives each median: output tok/s, TTFT and ITL
# p50/p99, errors, and tandem's ratio to llama-server.
#
#     bench/vs-llama-server.sh [--quick] [--repeat N] [--requests N] [--concurrency N]
#                              [--threads N] [--model PATH] [--out FILE]
#
#   --quick          one repeat of 48 requests
#   --repeat N       runs per server (default 3)
#   --requests N     requests per run (default 200)
#   --concurrency N  requests in flight (default 16); llama-server gets as many slots (-np)
#   --threads N      CPU threads of both servers (default 2)
#   --model PATH     the GGUF both serve (default: SmolLM2-135M-Instruct Q4_1, tandem's default
#                    model, fetched by `tandem inspect` if absent)
#   --out FILE       also append every run and the medians to FILE as JSON lines
#
# Servers: `tandem serve --backend cpu --threads N` on port $TANDEM_PORT (default 18180) and
# llama-server (from bench/build-llamacpp.sh) with continuous batching, -np N slots and a
# context of N x $SLOT_CTX (default 512) tokens, on port $LLAMA_PORT (18181). Both are stopped on
# exit. $TANDEM is the tandem binary (default: a release build made here); $TANDEM_ARGS and
# $LLAMA_SERVER_ARGS add flags. serve_load.py's other defaults (prompts of 8-80 words, outputs
# of 8-80 tokens) hold; $LOAD_ARGS adds flags to it. Each request opens its own connection
# (--no-keepalive): llama-server's closing of kept-alive connections races their reuse and
# failed about one request in 50 here. The `openai` package is taken from
# $TANDEM_CACHE_DIR/py-openai (where .ci/run installs it) or the Python path.
#
# Measure on an otherwise idle machine: the load average is printed and a busy machine is
# warned about. llama.cpp's OpenMP threads spin-wait between ops, which on oversubscribed
# cores costs it several times its speed (tandem much less); OMP_WAIT_POLICY=passive in the
# environment (passed on to llama.cpp) trades that for a small cost on an idle machine.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TANDEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
REPEAT=3 REQUESTS=200 CONCURRENCY=16 THREADS=2 MODEL="" OUT=""
TANDEM_PORT="${TANDEM_PORT:-18180}" LLAMA_PORT="${LLAMA_PORT:-18181}" SLOT_CTX="${SLOT_CTX:-512}"
while (($#)); do
    case "$1" in
        --quick) REPEAT=1 REQUESTS=48 ;;
        --repeat) REPEAT="$2"; shift ;;
        --requests) REQUESTS="$2"; shift ;;
        --concurrency) CONCURRENCY="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --model) MODEL="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "vs-llama-server: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "vs-llama-server: $*" >&2; }
load_note() {
    local load cores
    load="$(cut -d' ' -f1 /proc/loadavg)" cores="$(nproc)"
    if python3 -c "import sys; sys.exit(not float(sys.argv[1]) > 0.5)" "$load"; then
        log "warning: load average $load on $cores cores before the runs: other work competes for the CPU"
    fi
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg) before the runs ($(nproc) cores); OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}"
}

if [[ -z "${TANDEM:-}" ]]; then
    log "building tandem (release)"
    (cd "$REPO" && nice -n 19 cargo build --release -q -p tandem-cli)
    TANDEM="${CARGO_TARGET_DIR:-$REPO/target}/release/tandem"
fi
LLAMA_BIN="$(nice -n 19 "$REPO/bench/build-llamacpp.sh" | tail -1)"
if [[ -z "$MODEL" ]]; then
    MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    [[ -f "$MODEL" ]] || TANDEM_CACHE_DIR="$CACHE" "$TANDEM" inspect >/dev/null
fi
export PYTHONPATH="$CACHE/py-openai${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import openai' || { log "no openai package (pip install --target $CACHE/py-openai openai)"; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
stop_servers() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # A server still up 30 s after SIGTERM is killed.
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap 'stop_servers; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# Waits until `url` answers 200, or the server `pid` died, or 300 s passed.
wait_ready() { # name, pid, url, log
    for _ in $(seq 600); do
        if ! kill -0 "$2" 2>/dev/null; then
            log "$1 exited; its log ends:"; tail -20 "$4" >&2; return 1
        fi
        curl -sf -o /dev/null "$3" && return 0
        sleep 0.5
    done
    log "$1 not ready after 300 s; its log ends:"; tail -20 "$4" >&2; return 1
}

for port in "$TANDEM_PORT" "$LLAMA_PORT"; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        log "port $port is taken (set TANDEM_PORT / LLAMA_PORT)"; exit 1
    fi
done

NOTE="$(load_note)"
# tandem's KV pool gets what llama-server's slots hold, N x $SLOT_CTX tokens (in f32, tandem's
# default KV type; a quarter more for the rounding of each request to whole blocks).
KV_BYTES=$("$TANDEM" inspect "$MODEL" | python3 -c '
import re, sys
t = sys.stdin.read()
layers = int(re.search(r"^layers:\s+(\d+)", t, re.M).group(1))
kv_heads, head_dim = map(int, re.search(r"kv heads (\d+), head_dim (\d+)", t).groups())
print(int(1.25 * int(sys.argv[1]) * layers * kv_heads * head_dim * 2 * 4))' $((CONCURRENCY * SLOT_CTX)))
log "starting tandem serve on 127.0.0.1:$TANDEM_PORT"
"$TANDEM" serve --model "$MODEL" --backend cpu --threads "$THREADS" --host 127.0.0.1 --port "$TANDEM_PORT" \
    --ctx "$SLOT_CTX" --kv-cache-memory "$KV_BYTES" ${TANDEM_ARGS:-} >"$WORK/tandem.log" 2>&1 &
PIDS+=($!)
wait_ready "tandem serve" "${PIDS[-1]}" "http://127.0.0.1:$TANDEM_PORT/v1/models" "$WORK/tandem.log"

log "starting llama-server on 127.0.0.1:$LLAMA_PORT"
"$LLAMA_BIN/llama-server" -m "$MODEL" -t "$THREADS" -tb "$THREADS" --host 127.0.0.1 --port "$LLAMA_PORT" \
    -np "$CONCURRENCY" -c $((CONCURRENCY * SLOT_CTX)) -cb ${LLAMA_SERVER_ARGS:-} >"$WORK/llama.log" 2>&1 &
PIDS+=($!)
wait_ready "llama-server" "${PIDS[-1]}" "http://127.0.0.1:$LLAMA_PORT/health" "$WORK/llama.log"

load() { # engine, port, requests, rep (the workload's seed)
    python3 "$REPO/bench/serve_load.py" --base-url "http://127.0.0.1:$2/v1" --requests "$3" \
        --concurrency "$CONCURRENCY" --seed "$4" --no-keepalive --json ${LOAD_ARGS:-} |
        python3 -c 'import json, sys; r = json.load(sys.stdin); r.update(engine=sys.argv[1], rep=int(sys.argv[2])); print(json.dumps(r))' "$1" "$4"
}

# A short warm-up each (page faults, first allocations), not counted. Every run has prompts of
# its own (seed = run, the warm-up 1000): both servers keep finished prompts for reuse
# (tandem's prefix cache in its KV pool, llama-server's slots and its --cache-ram store, 8 GiB
# by default), so a replayed workload would measure cache hits instead of serving.
for e in tandem:"$TANDEM_PORT" llama-server:"$LLAMA_PORT"; do
    log "warming up ${e%%:*}"
    load "${e%%:*}" "${e##*:}" "$CONCURRENCY" 1000 >/dev/null
done
for ((rep = 1; rep <= REPEAT; rep++)); do
    for e in tandem:"$TANDEM_PORT" llama-server:"$LLAMA_PORT"; do
        log "run $rep/$REPEAT: ${e%%:*}, $REQUESTS requests, $CONCURRENCY at a time"
        load "${e%%:*}" "${e##*:}" "$REQUESTS" "$rep" >>"$WORK/runs.jsonl"
    done
done
stop_servers

echo "$NOTE"
echo "model $MODEL; threads $THREADS; $REQUESTS requests, $CONCURRENCY at a time (serve_load.py --seed RUN --no-keepalive ${LOAD_ARGS:-}: run r has seed r, both servers); median of $REPEAT runs"
echo "tandem: tandem serve --backend cpu --threads $THREADS --ctx $SLOT_CTX --kv-cache-memory $KV_BYTES ${TANDEM_ARGS:-}"
echo "llama.cpp: llama-server -t $THREADS -tb $THREADS -np $CONCURRENCY -c $((CONCURRENCY * SLOT_CTX)) -cb ${LLAMA_SERVER_ARGS:-} ($("$LLAMA_BIN/llama-server" --version 2>&1 | grep -m1 version || true))"
echo
python3 - "$WORK/runs.jsonl" "${OUT:-}" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = sys.argv[2]
cols = [("output tok/s", lambda r: r["output_tok_s"], "{:.1f}"),
        ("TTFT p50 ms", lambda r: r["ttft_ms"]["p50"], "{:.0f}"),
        ("TTFT p99 ms", lambda r: r["ttft_ms"]["p99"], "{:.0f}"),
        ("ITL p50 ms", lambda r: r["itl_ms"]["p50"], "{:.1f}"),
        ("ITL p99 ms", lambda r: r["itl_ms"]["p99"], "{:.1f}"),
        ("output tokens", lambda r: r["output_tokens"], "{:.0f}"),
        ("errors", lambda r: r["errors"], "{:.0f}")]
med = {e: {name: statistics.median([f(r) for r in runs if r["engine"] == e]) for name, f, _ in cols}
       for e in ("tandem", "llama-server")}
print("| | tandem | llama-server | tandem / llama-server |")
print("|---|---:|---:|---:|")
for name, _, fmt in cols:
    t, l = med["tandem"][name], med["llama-server"][name]
    ratio = f"{t / l:.2f}" if l else "-"
    print(f"| {name} | {fmt.format(t)} | {fmt.format(l)} | {ratio} |")
for r in runs:
    if r["errors"]:
        print(f"{r['engine']} run {r['rep']}: {r['errors']} errors, first: {r['first_errors'][:1]}")
if out:
    with open(out, "a") as f:
        for r in runs:
            f.write(json.dumps(r) + "\n")
        f.write(json.dumps({"summary": True, **{e: med[e] for e in med}}) + "\n")
EOF
