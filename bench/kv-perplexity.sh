#!/usr/bin/env bash
# KV-cache precision against quality: tandem's perplexity with its KV cache in f32, f16, q8_0,
# q4_0 and fp8 beside llama.cpp's `llama-perplexity` with the same -ctk/-ctv, on the same GGUF
# file, text and chunks. Each engine's increase over its own f16 cache is what to compare.
# llama.cpp has no fp8 cache: its column says "-" there.
#
#     bench/kv-perplexity.sh [--model GGUF] [--threads N] [--kv LIST] [--out FILE]
#
# --kv: comma-separated KV types (default f32,f16,q8_0,q4_0,fp8); "K/V" gives keys and values
# their own (f16/q4_0: --k-dtype f16 --v-dtype q4_0, and -ctk f16 -ctv q4_0).
#
# Two texts: tests/fixtures/perplexity.txt at ctx 512 (every chunk), and Jules Verne's "Around
# the World in 80 Days" (Project Gutenberg #103, public domain; the copy the esaxx-rs crate
# ships as test data, in the cargo registry of any tandem build) at ctx 2048, its first
# $LONG_CHUNKS chunks (default 8). llama.cpp: bench/build-llamacpp.sh; its quantized V cache
# needs flash attention (-fa on), which it gets for every type so all rows compare alike.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TANDEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" THREADS=2 OUT="" KVS="f32,f16,q8_0,q4_0,fp8"
LONG_CHUNKS="${LONG_CHUNKS:-8}"
while (($#)); do
    case "$1" in
        --model) MODEL="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --kv) KVS="$2"; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "kv-perplexity: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

TANDEM="${TANDEM:-}"
if [[ -z "$TANDEM" ]]; then
    cargo build -q --release -p tandem-cli --manifest-path "$REPO/Cargo.toml"
    TANDEM="${CARGO_TARGET_DIR:-$REPO/target}/release/tandem"
fi
BIN="$("$REPO/bench/build-llamacpp.sh" --tools llama-perplexity | tail -n1)"
LONG="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/esaxx-rs-*/data/eighty.txt 2>/dev/null | head -n1 || true)"
[[ -f "$MODEL" ]] || { echo "kv-perplexity: no model at $MODEL" >&2; exit 1; }

texts=("$REPO/tests/fixtures/perplexity.txt 512 0")
if [[ -n "$LONG" ]]; then
    texts+=("$LONG 2048 $LONG_CHUNKS")
else
    echo "kv-perplexity: the long text (esaxx-rs's eighty.txt) is not in the cargo registry; skipping ctx 2048" >&2
fi

printf '%-14s %5s %-9s %10s %10s\n' text ctx kv tandem llama.cpp
for entry in "${texts[@]}"; do
    read -r file ctx chunks <<<"$entry"
    tchunks=() lchunks=()
    if ((chunks > 0)); then tchunks=(--chunks "$chunks"); lchunks=(--chunks "$chunks"); fi
    for kv in ${KVS//,/ }; do
        k="${kv%/*}" v="${kv#*/}"
        t="$("$TANDEM" perplexity --model "$MODEL" --file "$file" --ctx "$ctx" "${tchunks[@]}" \
            --backend cpu --threads "$THREADS" --k-dtype "$k" --v-dtype "$v" --json 2>/dev/null |
            python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')"
        l="-"
        if [[ "$k" != fp8 && "$v" != fp8 ]]; then
            l="$("$BIN/llama-perplexity" -m "$MODEL" -f "$file" -c "$ctx" "${lchunks[@]}" -t "$THREADS" \
                -ctk "$k" -ctv "$v" -fa on 2>&1 |
                sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')"
        fi
        printf '%-14s %5s %-9s %10s %10s\n' "$(basename "$file")" "$ctx" "$kv" "$t" "${l:-?}"
        if [[ -n "$OUT" ]]; then
            printf '{"text":"%s","ctx":%s,"chunks":%s,"kv":"%s","tandem":%s,"llamacpp":%s,"model":"%s"}\n' \
                "$(basename "$file")" "$ctx" "$chunks" "$kv" "$t" "$( [[ "$l" =~ ^[0-9] ]] && echo "$l" || echo null)" "$(basename "$MODEL")" >>"$OUT"
        fi
    done
done
