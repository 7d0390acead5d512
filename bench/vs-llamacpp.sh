#!/usr/bin/env bash
# tandem against llama.cpp on the CPU, on the same GGUF files and the same threads: prefill of a
# 512-token prompt, and 128 decoded tokens at contexts 64 and 1024 (tokens/s). Runs alternate
# (tandem, llama.cpp, tandem, ...), --repeat times each; the table gives each median.
#
#     bench/vs-llamacpp.sh [--quick] [--repeat N] [--threads N] [--models LIST] [--out FILE]
#
#   --quick      one repeat, a 128-token prompt, 32 decoded tokens (a check that all runs)
#   --repeat N   runs per engine and model (default 3)
#   --threads N  CPU threads of both engines (default 2)
#   --models L   comma-separated subset of (default: all three; or $MODELS):
#                  smollm-q4_1  SmolLM2-135M-Instruct Q4_1, tandem's default model
#                  smollm-q8_0  the same requantized to Q8_0 by llama-quantize
#                  smollm-q4_k_m, smollm-q5_k_m, smollm-q6_k, smollm-q3_k_m, smollm-q2_k:
#                               the same requantized by llama-quantize to llama.cpp's K-quant
#                               mixes (not in the default set)
#                  llama1b-q4_1 synthetic weights shaped like Llama-3.2-1B (bench/configs),
#                               Q4_1, written by `tandem bench --synthetic --write-gguf`
#                  qwen3-0.6b-q4_1, qwen3-1.7b-q4_1, gemma3-1b-q4_1, phi4mini-q4_1,
#                               olmoe-q4_1: the same for those shapes (not in the default set)
#   --kv TYPE    both engines' KV cache in TYPE (f16, q8_0, q4_0): tandem --kv-dtype TYPE,
#                llama.cpp -ctk TYPE -ctv TYPE -fa 1 (its quantized V cache needs flash
#                attention; it then also rotates K and V, as tandem does)
#   --contexts L decode contexts, comma-separated (default 64,1024)
#   --out FILE   also append every run and the medians to FILE as JSON lines
#
# llama.cpp comes from bench/build-llamacpp.sh (built on first use, ~15 min); made models go to
# $TANDEM_CACHE_DIR/bench-models. $TANDEM is the tandem binary (default: a release build,
# made here under $CARGO_TARGET_DIR). $TANDEM_ARGS and $LLAMA_BENCH_ARGS add flags to either
# side (e.g. TANDEM_ARGS="--kv-dtype f16": llama.cpp keeps its KV cache in f16, tandem in f32
# unless told). Each tandem run measures best of 2 (the first one warms up); each llama-bench run
# makes one warm-up pass and one measured one (-r 1).
#
# Measure on an otherwise idle machine: the load average is printed and a busy machine is
# warned about. llama.cpp's OpenMP threads spin-wait between ops, which on oversubscribed
# cores costs it several times its speed (tandem much less); OMP_WAIT_POLICY=passive in the
# environment (passed on to llama.cpp) trades that for a small cost on an idle machine.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TANDEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
REPEAT=3 THREADS=2 PROMPT=512 DECODE=128 CONTEXTS=(64 1024) OUT="" KV=""
MODELS="${MODELS:-smollm-q4_1,smollm-q8_0,llama1b-q4_1}"
while (($#)); do
    case "$1" in
        --quick) REPEAT=1 PROMPT=128 DECODE=32 ;;
        --repeat) REPEAT="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --models) MODELS="$2"; shift ;;
        --kv) KV="$2"; shift ;;
        --contexts) IFS=, read -ra CONTEXTS <<<"$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "vs-llamacpp: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "vs-llamacpp: $*" >&2; }
if [[ -n "$KV" ]]; then
    TANDEM_ARGS="${TANDEM_ARGS:-} --kv-dtype $KV"
    LLAMA_BENCH_ARGS="${LLAMA_BENCH_ARGS:-} -ctk $KV -ctv $KV -fa 1"
fi
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

# The models, made once into the cache.
MADE="$CACHE/bench-models"
mkdir -p "$MADE"
model_path() {
    case "$1" in
        smollm-q4_1)
            local p="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
            [[ -f "$p" ]] || TANDEM_CACHE_DIR="$CACHE" "$TANDEM" inspect >/dev/null
            echo "$p" ;;
        smollm-q8_0 | smollm-q4_k_m | smollm-q5_k_m | smollm-q6_k | smollm-q3_k_m | smollm-q2_k)
            local ftype="${1#smollm-}"
            ftype="${ftype^^}"
            local p="$MADE/SmolLM2-135M-Instruct.$ftype.gguf"
            if [[ ! -f "$p" ]]; then
                "$LLAMA_BIN/llama-quantize" --allow-requantize "$(model_path smollm-q4_1)" "$p.partial" "$ftype" >&2
                mv "$p.partial" "$p"
            fi
            echo "$p" ;;
        llama1b-q4_1 | qwen3-0.6b-q4_1 | qwen3-1.7b-q4_1 | gemma3-1b-q4_1 | phi4mini-q4_1 | olmoe-q4_1)
            local shape="${1%-q4_1}"
            case "$shape" in
                llama1b) shape=llama-3.2-1b ;;
                gemma3-1b) shape=gemma-3-1b ;;
                phi4mini) shape=phi-4-mini ;;
                olmoe) shape=olmoe-1b-7b ;;
            esac
            local p="$MADE/$shape-synthetic.Q4_1.gguf"
            [[ -f "$p" ]] || "$TANDEM" bench --synthetic "$REPO/bench/configs/$shape.json" --dtype q4 --seed 0 --write-gguf "$p"
            echo "$p" ;;
        *) log "unknown model $1 (smollm-q4_1, smollm-q8_0, smollm-q4_k_m, smollm-q5_k_m, smollm-q6_k, smollm-q3_k_m, smollm-q2_k, llama1b-q4_1, qwen3-0.6b-q4_1, qwen3-1.7b-q4_1, gemma3-1b-q4_1, phi4mini-q4_1, olmoe-q4_1)"; return 1 ;;
    esac
}

RAW="$(mktemp)" ERR="$(mktemp)"
trap 'rm -f "$RAW" "$ERR"' EXIT
# Engines' stderr goes to $ERR, shown when a run fails.
failed() { log "$1 failed; its stderr ends:"; tail -20 "$ERR" >&2; exit 1; }
ctx_list="$(IFS=,; echo "${CONTEXTS[*]}")"
# llama-bench's depth d puts the decoded tokens at d..d+n, so around d + n/2, as tandem's
# --contexts centres them.
depths="$(for c in "${CONTEXTS[@]}"; do echo $((c > DECODE / 2 ? c - DECODE / 2 : 0)); done | paste -sd,)"

run_tandem() { # model name, path, rep
    "$TANDEM" bench --model "$2" --json --backend cpu --threads "$THREADS" \
        --prompt-tokens "$PROMPT" --decode-tokens "$DECODE" --contexts "$ctx_list" --repeat 2 \
        ${TANDEM_ARGS:-} 2>>"$ERR" |
        python3 -c '
import json, sys
name, rep, ctxs = sys.argv[1], int(sys.argv[2]), [int(c) for c in sys.argv[3].split(",")]
r = json.loads(sys.stdin.read())
out = [("pp%d" % r["prefill"]["tokens"], r["prefill"]["tok_s"])]
out += [("tg%d @ ctx %d" % (d["tokens"], c), d["tok_s"]) for c, d in zip(ctxs, r["decode"])]
for test, tok_s in out:
    print(json.dumps({"engine": "tandem", "model": name, "test": test, "rep": rep, "tok_s": tok_s}))
' "$1" "$3" "$ctx_list"
}

run_llama() { # model name, path, rep
    {
        "$LLAMA_BIN/llama-bench" -m "$2" -t "$THREADS" -p "$PROMPT" -n 0 -r 1 -o jsonl ${LLAMA_BENCH_ARGS:-}
        "$LLAMA_BIN/llama-bench" -m "$2" -t "$THREADS" -p 0 -n "$DECODE" -d "$depths" -r 1 -o jsonl ${LLAMA_BENCH_ARGS:-}
    } 2>>"$ERR" | python3 -c '
import json, sys
name, rep, ctxs, depths = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4].split(",")
ctx_of = dict(zip(depths, ctxs))
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if r["n_gen"] == 0:
        test = "pp%d" % r["n_prompt"]
    else:
        test = "tg%d @ ctx %s" % (r["n_gen"], ctx_of[str(r["n_depth"])])
    print(json.dumps({"engine": "llama.cpp", "model": name, "test": test, "rep": rep, "tok_s": r["avg_ts"],
                      "build": r.get("build_commit"), "flash_attn": r.get("flash_attn"), "type_k": r.get("type_k")}))
' "$1" "$3" "$ctx_list" "$depths"
}

IFS=, read -ra model_list <<<"$MODELS"
for m in "${model_list[@]}"; do model_path "$m" >/dev/null; done # made before measuring
NOTE="$(load_note)"
for m in "${model_list[@]}"; do
    path="$(model_path "$m")"
    log "$m: $path"
    for ((rep = 1; rep <= REPEAT; rep++)); do
        log "$m: run $rep/$REPEAT: tandem"
        : >"$ERR"
        run_tandem "$m" "$path" "$rep" >>"$RAW" || failed "tandem on $m"
        log "$m: run $rep/$REPEAT: llama.cpp"
        : >"$ERR"
        run_llama "$m" "$path" "$rep" >>"$RAW" || failed "llama-bench on $m"
    done
done

echo "$NOTE"
echo "threads $THREADS; prompt $PROMPT tokens; $DECODE decoded tokens at contexts $ctx_list; median of $REPEAT runs;" \
    "llama.cpp $("$LLAMA_BIN/llama-bench" --version 2>&1 | head -1)"
echo "tandem: $TANDEM bench --json --backend cpu --threads $THREADS --prompt-tokens $PROMPT --decode-tokens $DECODE --contexts $ctx_list --repeat 2 ${TANDEM_ARGS:-}"
echo "llama.cpp: llama-bench -t $THREADS -p $PROMPT -n 0 -r 1; llama-bench -t $THREADS -p 0 -n $DECODE -d $depths -r 1 ${LLAMA_BENCH_ARGS:-}"
echo
python3 - "$RAW" "${OUT:-}" <<'EOF'
import json, statistics, sys
raw, out = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in open(raw) if l.strip()]
keys = []
for r in runs:
    if (r["model"], r["test"]) not in keys:
        keys.append((r["model"], r["test"]))
med = lambda eng, k: statistics.median([r["tok_s"] for r in runs if r["engine"] == eng and (r["model"], r["test"]) == k] or [float("nan")])
rows = []
print("| model | test | tandem tok/s | llama.cpp tok/s | ratio |")
print("|---|---|---:|---:|---:|")
for k in keys:
    t, l = med("tandem", k), med("llama.cpp", k)
    rows.append({"summary": True, "model": k[0], "test": k[1], "tandem_tok_s": t, "llamacpp_tok_s": l, "ratio": t / l})
    print(f"| {k[0]} | {k[1]} | {t:.1f} | {l:.1f} | {t / l:.2f} |")
if out:
    with open(out, "a") as f:
        for r in runs + rows:
            f.write(json.dumps(r) + "\n")
EOF
