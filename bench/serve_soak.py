#!/usr/bin/env python3
"""Soak test for `tandem serve` (or any OpenAI-compatible server on this machine): N clients
send requests back to back for a while, some of them hanging up mid-stream, and at the end the
server must have served them all, leaked no KV block, and kept its memory bounded.

    python3 bench/serve_soak.py --serve-cmd "tandem serve --backend cpu --threads 2" --clients 64 --duration 600
    python3 bench/serve_soak.py --base-url http://127.0.0.1:8080/v1 --server-pid $(pgrep -n tandem)

Each client loops until --duration is over: a streamed or plain completion or chat request,
from a fixed seed, with prompts and outputs of varied length; some sample, some ask for
logprobs or penalties. One stream in --disconnect-every closes early at a random point (right
after the headers included, i.e. possibly while still queued). Requests are bounded
(--max-output tokens, --request-timeout seconds), and only loopback servers are accepted.

At the end it waits for the server to go idle and reports: requests served, intended
disconnects, failures (any other error, including 429s and timeouts) with the first few,
output tokens, `tandem_kv_blocks_used` from /metrics after the load stopped (must be 0), and the
server's RSS at the start, the end, and its peak (VmHWM from /proc/PID/status, with
--server-pid, or for the server --serve-cmd started). Exits 1 if anything failed, a block
leaked or the server died. Needs the `openai` package (pip install openai).
"""

import argparse
import asyncio
import ipaddress
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from openai import AsyncOpenAI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import WORDS, pct  # noqa: E402  (the load generator's word list and percentiles)


def loopback(url):
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_get(url, timeout=10):
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def metric_sum(text, name):
    """The sum of every series of metric `name` (all models) in Prometheus text."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def proc_kib(pid, field):
    """A /proc/PID/status field in KiB (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


class Stats:
    def __init__(self):
        self.served = 0
        self.disconnects = 0
        self.tokens = 0
        self.failures = []
        self.ttft = []
        self.kinds = {}


def request_plan(rng, args):
    """One request's shape: endpoint, streaming, sampling, extras, and where a stream hangs up."""
    words = rng.randint(args.min_prompt, 10 * args.min_prompt)
    plan = {
        "prompt": " ".join(rng.choice(WORDS) for _ in range(words)),
        "max_tokens": rng.randint(1, args.max_output),
        "chat": rng.random() < args.chat_share,
        "stream": rng.random() < args.stream_share,
        "extra": {"ignore_eos": True},
        "temperature": 0.0 if rng.random() < 0.5 else 0.8,
        "seed": rng.randrange(1 << 31),
    }
    roll = rng.random()
    if roll < 0.15:
        plan["logprobs"] = True
    elif roll < 0.3:
        plan["penalties"] = (rng.uniform(-1, 2), rng.uniform(-1, 2))
    plan["hang_up_after"] = rng.randint(0, plan["max_tokens"]) if plan["stream"] and rng.randrange(args.disconnect_every) == 0 else None
    return plan


async def one(client, model, plan, stats):
    """Runs one request; returns how it ended: 'served', 'disconnect' or 'failed'."""
    kw = {"model": model, "max_tokens": plan["max_tokens"], "temperature": plan["temperature"], "seed": plan["seed"]}
    if "penalties" in plan:
        kw["presence_penalty"], kw["frequency_penalty"] = plan["penalties"]
    if plan["chat"]:
        kw["messages"] = [{"role": "user", "content": plan["prompt"]}]
        if plan.get("logprobs"):
            kw.update(logprobs=True, top_logprobs=3)
        create = client.chat.completions.create
    else:
        kw["prompt"] = plan["prompt"]
        if plan.get("logprobs"):
            kw["logprobs"] = 2
        create = client.completions.create
    start = time.perf_counter()
    if not plan["stream"]:
        r = await create(**kw, extra_body=plan["extra"])
        stats.tokens += r.usage.completion_tokens
        return "served"
    stream = await create(**kw, stream=True, stream_options={"include_usage": True}, extra_body=plan["extra"])
    chunks, first = 0, True
    try:
        if plan["hang_up_after"] == 0:
            return "disconnect"  # right after the headers: the request may still be queued
        async for chunk in stream:
            if plan["hang_up_after"] is not None and chunks >= plan["hang_up_after"]:
                return "disconnect"  # closes the stream (and its connection) below
            chunks += 1
            if first and chunk.choices:
                stats.ttft.append(time.perf_counter() - start)
                first = False
            if chunk.usage:
                stats.tokens += chunk.usage.completion_tokens
        return "served"
    finally:
        await stream.close()


async def client_loop(i, client, model, args, deadline, stats):
    rng = random.Random(args.seed * 1_000_003 + i)
    while time.monotonic() < deadline:
        plan = request_plan(rng, args)
        kind = ("chat" if plan["chat"] else "completion") + ("/stream" if plan["stream"] else "")
        stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
        try:
            how = await asyncio.wait_for(one(client, model, plan, stats), args.request_timeout)
        except Exception as e:  # counted; the client goes on
            stats.failures.append(f"{kind}: {e!r}"[:300])
            continue
        if how == "served":
            stats.served += 1
        else:
            stats.disconnects += 1


async def wait_idle(root, timeout):
    """Waits until no request runs or waits; returns the final /metrics text (or None)."""
    end = time.monotonic() + timeout
    text = None
    while time.monotonic() < end:
        status, text = await asyncio.to_thread(http_get, root + "/metrics")
        if status == 200:
            busy = (metric_sum(text, "tandem_requests_running") or 0) + (metric_sum(text, "tandem_requests_waiting") or 0)
            if busy == 0:
                return text
        await asyncio.sleep(0.5)
    return text


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1", help="a loopback server's /v1 URL")
    ap.add_argument("--serve-cmd", default=None, help="start this server command (it must listen at --base-url) and stop it at the end")
    ap.add_argument("--server-pid", type=int, default=None, help="the running server's pid, for its RSS")
    ap.add_argument("--model", default=None, help="default: the server's first model")
    ap.add_argument("--api-key", default="unused")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--disconnect-every", type=int, default=5, help="one stream in N hangs up early")
    ap.add_argument("--min-prompt", type=int, default=4, help="words; prompts have 1x..10x")
    ap.add_argument("--max-output", type=int, default=200, help="tokens; outputs have 1..this")
    ap.add_argument("--chat-share", type=float, default=0.3)
    ap.add_argument("--stream-share", type=float, default=0.7)
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds for --serve-cmd to become healthy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not loopback(args.base_url):
        sys.exit(f"refusing {args.base_url}: a soak hammers its server, so only loopback servers are accepted")
    if args.clients < 1 or args.duration <= 0 or args.disconnect_every < 1:
        sys.exit("--clients and --disconnect-every must be >= 1 and --duration > 0")
    root = args.base_url.rstrip("/").removesuffix("/v1")

    server = None
    pid = args.server_pid
    if args.serve_cmd:
        server = subprocess.Popen(shlex.split(args.serve_cmd), stdout=subprocess.DEVNULL, stderr=sys.stderr)
        pid = server.pid
        end = time.monotonic() + args.start_timeout
        while (await asyncio.to_thread(http_get, root + "/health", 2))[0] != 200:
            if server.poll() is not None:
                sys.exit(f"the server exited with {server.returncode} before it was ready")
            if time.monotonic() > end:
                server.kill()
                sys.exit(f"the server was not healthy after {args.start_timeout:.0f} s")
            await asyncio.sleep(0.5)

    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.request_timeout)
    model = args.model or (await client.models.list()).data[0].id
    stats = Stats()
    rss = {"start_kib": proc_kib(pid, "VmRSS") if pid else None}
    start = time.perf_counter()
    deadline = time.monotonic() + args.duration
    await asyncio.gather(*(client_loop(i, client, model, args, deadline, stats) for i in range(args.clients)))
    secs = time.perf_counter() - start
    await client.close()

    metrics = await wait_idle(root, 60)
    kv_used = metric_sum(metrics or "", "tandem_kv_blocks_used")
    died = pid is not None and not alive(pid)
    if pid and not died:
        rss["end_kib"] = proc_kib(pid, "VmRSS")
        rss["peak_kib"] = proc_kib(pid, "VmHWM")
    exit_code = None
    if server:
        server.send_signal(signal.SIGINT)
        try:
            exit_code = await asyncio.to_thread(server.wait, 60)
        except subprocess.TimeoutExpired:
            server.kill()
            exit_code = "killed after 60 s"

    ok = not stats.failures and kv_used == 0 and not died and exit_code in (None, 0)
    report = {
        "base_url": args.base_url, "model": model, "clients": args.clients, "seconds": round(secs, 1),
        "requests": {"served": stats.served, "disconnects": stats.disconnects, "failures": len(stats.failures), "by_kind": stats.kinds},
        "output_tokens": stats.tokens, "output_tok_s": round(stats.tokens / secs, 1),
        "ttft_ms": {"p50": round(1e3 * pct(stats.ttft, 50), 1), "p99": round(1e3 * pct(stats.ttft, 99), 1)},
        "kv_blocks_used_after": kv_used, "server_rss_kib": rss, "server_died": died, "server_exit": exit_code,
        "first_failures": stats.failures[:5], "ok": ok,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.base_url} ({model}): {args.clients} clients for {secs:.0f} s, one stream in {args.disconnect_every} hanging up")
        print(f"requests: {stats.served} served, {stats.disconnects} disconnected on purpose, {len(stats.failures)} failed"
              f" ({', '.join(f'{k} {v}' for k, v in sorted(stats.kinds.items()))})")
        print(f"output: {stats.tokens} tokens, {report['output_tok_s']} tok/s; TTFT p50 {report['ttft_ms']['p50']} ms, p99 {report['ttft_ms']['p99']} ms")
        print(f"tandem_kv_blocks_used after the load: {kv_used if kv_used is not None else 'not reported'}")
        mib = lambda k: f"{rss[k] / 1024:.1f} MiB" if rss.get(k) else "?"  # noqa: E731
        print(f"server RSS: start {mib('start_kib')}, end {mib('end_kib')}, peak (VmHWM) {mib('peak_kib')}"
              + (" -- the server died" if died else "") + (f"; exit status {exit_code}" if server else ""))
        for f in stats.failures[:5]:
            print(f"failure: {f}")
        print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
