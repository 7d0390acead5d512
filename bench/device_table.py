"""Formats scripts/device-run.sh's bench.jsonl (ceilings + `tandem bench --json` lines) as the
markdown table of the CUDA notes: per backend, model, dtype and phase, tok/s and the share of
the measured limit (decode: weight + KV bytes per token x tok/s over the copy bandwidth;
prefill: matrix FLOP/s over cuBLAS's bf16 rate at 8192^3), then the speculative verify steps'
cost against one-token steps where the runs timed them (--verify-tokens).  Usage: device_table.py bench.jsonl
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
fmt = lambda v, unit: f"{v:.0f} {unit}" if v else "not measured in this file"
print(f"ceilings: copy {fmt(copy, 'GB/s')} (PyTorch), bf16 GEMM 8192^3 {fmt(gemm, 'TFLOP/s')} (cuBLAS via PyTorch)\n")
batches = [j for j in rows if "concurrency" in j]
rows = [j for j in rows if "prefill" in j]
print("| backend | model | dtype | phase | tok/s | GB/s or TFLOP/s | share of limit |")
print("|---|---|---|---|---|---|---|")
for j in rows:
    model = re.search(r"configs/([\w.-]+)\.json", j["model"]).group(1)
    p = j["prefill"]
    tf = flops_per_token(model) * p["tok_s"] / 1e12
    share = f"{100 * tf / gemm:.0f}% of bf16 GEMM" if gemm else "-"
    print(f"| {j['backend']} | {model} | {j['dtype']} | prefill {p['tokens']} | {p['tok_s']:.0f} | {tf:.0f} TFLOP/s | {share} |")
    for d in j["decode"]:
        bw = j.get("copy_bandwidth_gb_s") or copy
        share = f"{100 * d['gb_s'] / bw:.0f}% of copy" if bw else "-"
        print(f"| {j['backend']} | {model} | {j['dtype']} | decode @ {d['context']:.0f} | {d['tok_s']:.1f} | {d['gb_s']:.0f} GB/s | {share} |")
verify = [(j, v) for j in rows for v in j.get("verify", []) if v["tokens"] > 1]
if verify:
    print("\nSpeculative verification (#15): a step scoring N tokens of one sequence against a one-token step")
    print("\n| backend | model | dtype | context | tokens | ms | x one-token step |")
    print("|---|---|---|---|---|---|---|")
    for j, v in verify:
        model = re.search(r"configs/([\w.-]+)\.json", j["model"]).group(1)
        print(f"| {j['backend']} | {model} | {j['dtype']} | {v['context']} | {v['tokens']} | {v['ms']:.2f} | {v['vs_one_token']:.2f} |")
for j in batches:
    model = re.search(r"configs/([\w.-]+)\.json", j["model"]).group(1)
    runs = {r["mode"]: r for r in j["runs"]}
    print(f"\n{j['backend']} {model}: {j['requests']} requests, {j['concurrency']} at a time: " + ", ".join(
        f"{m} {r['output_tok_s']:.1f} tok/s (ITL p50 {r['itl_ms']['p50']:.1f} ms)" for m, r in runs.items())
        + f"; continuous {j['continuous_vs_sequential']:.2f}x sequential")
