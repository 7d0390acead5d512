#!/usr/bin/env bash
# Decode speed per KV cache type at one context, the types alternating round after round so a
# noisy machine's drift falls on every type alike: each round runs every (binary, type) once.
# Prints each run, then per type the median tok/s and, against the first type, the ratio of
# medians and the rounds won.
#
#   bench/kv-decode.sh [--kv f16,q8_0] [--rounds 6] [--context 4096] [--threads 2] [--repeat 2]
#                      [--bin PATH[,PATH...]] [--out FILE.jsonl] [-- extra tandem bench args]
#
# Several --bin values (e.g. a build before and after a change) alternate too, each type under
# each binary. Needs an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

kv=f16,q8_0 rounds=6 context=4096 threads=2 repeat=2 bins=target/release/tandem out=
while [ $# -gt 0 ]; do
    case "$1" in
        --kv) kv=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --context) context=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --bin) bins=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a types <<<"$kv"
IFS=, read -r -a binaries <<<"$bins"
for b in "${binaries[@]}"; do
    [ -x "$b" ] || { echo "no tandem binary at $b (cargo build --release -p tandem-cli)" >&2; exit 1; }
done

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for r in $(seq 1 "$rounds"); do
    for b in "${binaries[@]}"; do
        for t in "${types[@]}"; do
            line=$("$b" bench --backend cpu --threads "$threads" --kv-dtype "$t" --prompt-tokens 16 \
                --decode-tokens 128 --contexts "$context" --repeat "$repeat" "$@" 2>&1 | grep '^decode:')
            tps=$(sed -E 's/.*: ([0-9.]+) tok\/s.*/\1/' <<<"$line")
            echo "round $r $b $t $tps"
            printf '{"round":%d,"bin":"%s","kv":"%s","context":%d,"threads":%d,"decode_tok_s":%s}\n' \
                "$r" "$b" "$t" "$context" "$threads" "$tps" >>"$results"
        done
    done
done
[ -n "$out" ] && cp "$results" "$out"
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = list(dict.fromkeys((r["bin"], r["kv"]) for r in rows))
by = {k: {r["round"]: r["decode_tok_s"] for r in rows if (r["bin"], r["kv"]) == k} for k in keys}
base = keys[0]
for k in keys:
    med = statistics.median(by[k].values())
    line = f"{k[0]} {k[1]}: median {med:.1f} tok/s over {len(by[k])} rounds"
    if k != base:
        wins = sum(by[k][r] > by[base][r] for r in by[k] if r in by[base])
        ratio = med / statistics.median(by[base].values())
        line += f", {ratio:.2f}x {base[0]} {base[1]}'s, faster in {wins} of {len(by[k])} rounds"
    print(line)
EOF
