#!/usr/bin/env python3
"""How often tandem's greedy chat answers agree with llama.cpp's own on the same GGUF files.

Issue #12 asks for this as a report, not a requirement: llama.cpp rounds activations to 8 bits
for its quantized dot products, which flips near-ties (on SmolLM2's France prompt the top two
logits are 0.08 apart), while tandem keeps the f32 reference's arithmetic. For each file, both
servers (`tandem serve` and `llama-server`, 2 threads each, one after the other on the same
port range) answer the same chat prompts greedily; the table gives, per file and prompt,
whether the answers are equal and, where not, the first character where they part.

    bench/kquant_agreement.py FILE.gguf [FILE.gguf ...] [--tokens 24] [--prompts N]

$TANDEM (default target/release/tandem) and $LLAMA_SERVER (default: the llama.cpp build in
tandem's cache, see bench/build-llamacpp.sh) name the servers. Nothing is written but stdout.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Explain what a prime number is in one sentence.",
    "Give me a short tip for learning to cook.",
    "What does a compiler do?",
]
PORT = 18190


def cache_dir():
    base = os.environ.get("TANDEM_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tandem")
    return Path(base)


def post(url, body, timeout=300):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(proc, url, deadline=120):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def answers(cmd, prompts, tokens):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{PORT}"
    try:
        wait_ready(proc, url)
        out = []
        for p in prompts:
            body = {"model": "m", "messages": [{"role": "user", "content": p}], "temperature": 0, "max_tokens": tokens, "seed": 0}
            r = post(url + "/v1/chat/completions", body)
            out.append(r["choices"][0]["message"]["content"])
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def parted(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    a = ap.parse_args()
    tandem = os.environ.get("TANDEM", "target/release/tandem")
    server = os.environ.get("LLAMA_SERVER", str(cache_dir() / "llamacpp/0.3.36/build/bin/llama-server"))
    prompts = PROMPTS[: a.prompts]
    print("| file | prompt | equal | parts at char | tandem | llama.cpp |")
    print("|---|---|---|---:|---|---|")
    same = total = 0
    for f in a.files:
        t = answers([tandem, "serve", "--model", f"m={f}", "--backend", "cpu", "--threads", "2", "--port", str(PORT)], prompts, a.tokens)
        env_cmd = [server, "-m", f, "-t", "2", "--port", str(PORT), "--host", "127.0.0.1", "-a", "m", "-c", "2048", "-np", "1"]
        l = answers(env_cmd, prompts, a.tokens)
        for p, x, y in zip(prompts, t, l):
            eq = x == y
            same += eq
            total += 1
            at = "" if eq else str(parted(x, y))
            print(f"| {Path(f).name} | {p} | {'yes' if eq else 'no'} | {at} | {json.dumps(x)} | {json.dumps(y)} |", flush=True)
    print(f"\n{same} of {total} answers equal")


if __name__ == "__main__":
    sys.exit(main())
