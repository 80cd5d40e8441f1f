#!/usr/bin/env python3
"""loadgen.py — drive a running `llmint8 serve` at several concurrency levels and report
throughput and latency.

Each level runs --requests requests (default: 2 x the concurrency, at least 16) from as many
client threads as the concurrency, all streamed (so the time to the first token is seen),
greedy, with a fixed set of prompts and max_tokens, ignoring EOS so that every request
generates the same number of tokens. Per level it prints:
  tokens/s   generated tokens of all requests / the level's wall time
  req/s      completed requests / wall time
  TTFT       time from sending a request to its first generated text, p50 and p99
  TPOT       per request: (last token time - first token time) / (tokens - 1), p50 and p99
  failed     requests without a 200 and [DONE] (a 503 from a full queue counts here)
and at the end the ratio of tokens/s at each level to concurrency 1.

Usage:
  llmint8 serve MODEL --port 8000 --parallel 64 --max-queue 256 &
  python3 tools/loadgen.py --port 8000 --concurrency 1,4,16,64 --max-tokens 64
Only the standard library is used.
"""
import argparse
import http.client
import json
import threading
import time

PROMPTS = [
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals,",
    "The old man and the sea had been friends for longer than anyone in the village could remember, and",
    "Once upon a time there lived a king who had three daughters. The youngest",
    "She opened the door and looked out into the garden, where",
    "In the morning the travellers set out along the river road toward the mountains, and by noon",
    "\u201cWhat do you want?\u201d he asked, without turning round. The answer",
    "Chapter I. The house stood on a hill above the town, and from its windows",
    "He had never seen so many people in one place before. They",
]


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def one_request(host, port, prompt, max_tokens, key):
    """Returns (ok, ttft, tpot or None, tokens)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True, "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    c = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.monotonic()
    first = last = None
    tokens, done = 0, False
    try:
        c.request("POST", "/v1/completions", body=body, headers=headers)
        r = c.getresponse()
        if r.status != 200:
            r.read()
            return False, None, None, 0
        buf = b""
        while True:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                payload = event[6:]
                if payload == b"[DONE]":
                    done = True
                    continue
                ev = json.loads(payload)
                if ev.get("usage"):
                    tokens = ev["usage"]["completion_tokens"]
                for ch in ev.get("choices", []):
                    if ch.get("text"):
                        now = time.monotonic()
                        first = first or now
                        last = now
    except (OSError, http.client.HTTPException, ValueError):
        return False, None, None, 0
    finally:
        c.close()
    if not done or first is None:
        return False, None, None, tokens
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    return True, first - t0, tpot, tokens


def wait_ready(host, port, timeout=600):
    """Waits until GET /health answers 200 (the model is loaded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"loadgen: the server at {host}:{port} is not ready")


def run_level(args, conc):
    n = args.requests or max(16, 2 * conc)
    results, lock, nxt = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                if nxt[0] >= n:
                    return
                i = nxt[0]
                nxt[0] += 1
            res = one_request(args.host, args.port, PROMPTS[i % len(PROMPTS)], args.max_tokens, args.api_key)
            with lock:
                results.append(res)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    ok = [r for r in results if r[0]]
    tokens = sum(r[3] for r in ok)
    ttft = [r[1] for r in ok]
    tpot = [r[2] for r in ok if r[2] is not None]
    return {"concurrency": conc, "requests": n, "failed": n - len(ok), "wall_s": wall, "tokens_s": tokens / wall,
            "req_s": len(ok) / wall, "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "tpot_p50": percentile(tpot, 50), "tpot_p99": percentile(tpot, 99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels (default 1,4,16,64)")
    ap.add_argument("--requests", type=int, default=0, help="requests per level (default: 2 x concurrency, >= 16)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print one JSON object per level instead of a table")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x]
    wait_ready(args.host, args.port)
    rows = []
    if not args.json:
        print("| concurrency | requests | failed | tokens/s | req/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | TPOT p99 (ms) | vs c=1 |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conc in levels:
        r = run_level(args, conc)
        rows.append(r)
        base = rows[0]["tokens_s"] if rows[0]["concurrency"] == 1 and rows[0]["tokens_s"] > 0 else float("nan")
        r["speedup_vs_c1"] = r["tokens_s"] / base
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"| {conc} | {r['requests']} | {r['failed']} | {r['tokens_s']:.1f} | {r['req_s']:.2f} | "
                  f"{1e3 * r['ttft_p50']:.0f} | {1e3 * r['ttft_p99']:.0f} | {1e3 * r['tpot_p50']:.1f} | "
                  f"{1e3 * r['tpot_p99']:.1f} | {r['speedup_vs_c1']:.2f}x |", flush=True)
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
