#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers (tandem serve, llama-server, vLLM): a mixed
workload of streamed completions at a fixed concurrency (and optionally a fixed arrival rate),
reporting output tok/s, time to first token and inter-token latency (p50/p99) and errors.

    python3 bench/serve_load.py --base-url http://127.0.0.1:8080/v1 --concurrency 16 --requests 200

Prompts and output lengths vary tenfold (prompts of --min-prompt..10x words, outputs of
--min-output..10x tokens), from a fixed seed, so two servers get the same workload; outputs run
to their length (`ignore_eos`). Needs the `openai` package (pip install openai).
"""

import argparse
import asyncio
import json
import random
import time

from openai import AsyncOpenAI

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing "
         "matches in the old town square near the river").split()


def workload(n, min_prompt, min_output, seed):
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        words = rng.randint(min_prompt, 10 * min_prompt)
        prompt = " ".join(rng.choice(WORDS) for _ in range(words))
        reqs.append((prompt, rng.randint(min_output, 10 * min_output)))
    return reqs


def pct(values, p):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


async def one(client, model, prompt, max_tokens, stats):
    start = time.perf_counter()
    last = None
    tokens = 0
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                if last is None:
                    stats["ttft"].append(now - start)
                else:
                    stats["itl"].append(now - last)
                last = now
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        stats["tokens"] += tokens
    except Exception as e:  # a failed request is counted, and the run goes on
        # The client wraps transport failures ("Connection error."): keep what lies beneath.
        cause = f" from {e.__cause__!r}" if e.__cause__ is not None else ""
        stats["errors"].append((repr(e) + cause)[:300])


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default=None, help="default: the server's first model")
    ap.add_argument("--api-key", default="unused")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rate", type=float, default=0.0, help="arrivals per second (0: as fast as the concurrency allows)")
    ap.add_argument("--min-prompt", type=int, default=8, help="words; prompts have 1x..10x")
    ap.add_argument("--min-output", type=int, default=8, help="tokens; outputs have 1x..10x")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-keepalive", action="store_true",
                    help="a new connection per request: some servers (llama-server) close kept-alive "
                         "connections in a way that races their reuse, failing a request now and then")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    http_client = None
    if args.no_keepalive:
        from openai import DefaultAsyncHttpxClient
        try:  # the openai package's own transport: httpx, renamed httpx2 in newer releases
            import httpx2 as httpx
        except ImportError:
            import httpx
        http_client = DefaultAsyncHttpxClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=600)
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600, http_client=http_client)
    model = args.model or (await client.models.list()).data[0].id
    reqs = workload(args.requests, args.min_prompt, args.min_output, args.seed)
    stats = {"ttft": [], "itl": [], "tokens": 0, "errors": []}
    gate = asyncio.Semaphore(args.concurrency)

    async def run(i, prompt, max_tokens):
        if args.rate > 0:
            await asyncio.sleep(i / args.rate)
        async with gate:
            await one(client, model, prompt, max_tokens, stats)

    start = time.perf_counter()
    await asyncio.gather(*(run(i, p, m) for i, (p, m) in enumerate(reqs)))
    secs = time.perf_counter() - start
    report = {
        "base_url": args.base_url, "model": model, "requests": args.requests, "concurrency": args.concurrency,
        "rate": args.rate, "seconds": secs, "output_tokens": stats["tokens"], "output_tok_s": stats["tokens"] / secs,
        "ttft_ms": {"p50": 1e3 * pct(stats["ttft"], 50), "p99": 1e3 * pct(stats["ttft"], 99)},
        "itl_ms": {"p50": 1e3 * pct(stats["itl"], 50), "p99": 1e3 * pct(stats["itl"], 99)},
        "errors": len(stats["errors"]), "first_errors": stats["errors"][:3],
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.base_url} ({model}): {args.requests} requests, {args.concurrency} at a time"
          + (f", {args.rate}/s" if args.rate else ""))
    print(f"output: {stats['tokens']} tokens in {secs:.1f} s: {report['output_tok_s']:.1f} tok/s")
    print(f"TTFT p50 {report['ttft_ms']['p50']:.0f} ms, p99 {report['ttft_ms']['p99']:.0f} ms; "
          f"ITL p50 {report['itl_ms']['p50']:.1f} ms, p99 {report['itl_ms']['p99']:.1f} ms")
    print(f"errors: {len(stats['errors'])}" + (f" (first: {stats['errors'][0]})" if stats["errors"] else ""))


if __name__ == "__main__":
    asyncio.run(main())
