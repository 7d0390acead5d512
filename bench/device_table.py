"""Formats scripts/device-run.sh's bench.jsonl (ceilings + `tandem bench --json` lines) as the
markdown table of the CUDA notes: per backend, model, dtype and phase, tok/s and the share of
the measured limit (decode: weight + KV bytes per token x tok/s over the copy bandwidth;
prefill: matrix FLOP/s over cuBLAS's bf16 rate at 8192^3).  Usage: device_table.py bench.jsonl
"""
import json
import re
import sys

SHAPES = {  # layers, dim, ffn, q heads * hd, kv heads * hd: FLOPs per prompt token of the products
    "llama-3.2-1b": (16, 2048, 8192, 2048, 512),
    "llama-3.1-8b": (32, 4096, 14336, 4096, 1024),
}


def flops_per_token(model):
    layers, dim, ffn, q, kv = SHAPES[model]
    return 2 * layers * (dim * (q + 2 * kv) + q * dim + 3 * dim * ffn)


rows, copy, gemm = [], None, None
for line in open(sys.argv[1]):
    j = json.loads(line)
    if j.get("ceiling") == "copy":
        copy = j["gb_s"]
    elif j.get("ceiling") == "bf16_gemm" and j["m"] == 8192:
        gemm = j["tflop_s"]
    elif "backend" in j:
        rows.append(j)
print(f"ceilings: copy {copy:.0f} GB/s (PyTorch), bf16 GEMM 8192^3 {gemm:.0f} TFLOP/s (cuBLAS via PyTorch)\n")
print("| backend | model | dtype | phase | tok/s | GB/s or TFLOP/s | share of limit |")
print("|---|---|---|---|---|---|---|")
for j in rows:
    model = re.search(r"configs/([\w.-]+)\.json", j["model"]).group(1)
    p = j["prefill"]
    tf = flops_per_token(model) * p["tok_s"] / 1e12
    print(f"| {j['backend']} | {model} | {j['dtype']} | prefill {p['tokens']} | {p['tok_s']:.0f} | {tf:.0f} TFLOP/s | {100 * tf / gemm:.0f}% of bf16 GEMM |")
    for d in j["decode"]:
        bw = j["copy_bandwidth_gb_s"] or copy
        print(f"| {j['backend']} | {model} | {j['dtype']} | decode @ {d['context']:.0f} | {d['tok_s']:.1f} | {d['gb_s']:.0f} GB/s | {100 * d['gb_s'] / bw:.0f}% of copy |")
