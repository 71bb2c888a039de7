#!/usr/bin/env python3
"""Time to first token of escalated requests under a verify cascade, for two
switchyard binaries served one after the other on the same eval items.

A verify cascade holds the fast answer, scores it on the strong model and,
below the threshold, answers there. The client's first token of an
escalated request therefore waits for the whole fast answer, the verdict's
prefill on the strong model, and the strong answer's prefill. With scoring
in the scheduler (one prefill per escalation) the last is one token.

  python3 bench/escalation.py --before /tmp/switchyard-before \
      --after target/release/switchyard --items 24

Each item is sent once per binary, one at a time, streamed, with its
max_tokens capped (--max-tokens) so the fast answer stays short; the
stream is closed at the first content token. Escalated = the answer came
from the cascade's escalation route (x-switchyard-route). Only items that
escalated under both binaries are compared, pairwise.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_vs_llama_server import pct, served  # noqa: E402


def items(path, n):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def first_token(port, item, max_tokens):
    body = json.dumps({"model": "auto", "messages": item["messages"], "stream": True, "temperature": 0,
                       "max_tokens": min(max_tokens, item.get("max_tokens") or max_tokens)})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    route = resp.getheader("x-switchyard-route", "?")
    ttft = None
    while ttft is None:
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                ttft = (time.perf_counter() - t0) * 1e3
    conn.close()  # the client goes: the engine frees the sequence
    return route, ttft


def run(label, binary, a, chosen):
    data_dir = os.path.join(a.work, label)
    os.makedirs(data_dir, exist_ok=True)
    cmd = [binary, "serve", "--policy", a.policy, "--port", str(a.port), "--data-dir", data_dir,
           "--threads", str(a.threads), "--parallel", "4", "--ctx-size", "8192"]
    out = {}
    with served(label, cmd, None, a.port, "auto", os.path.join(data_dir, "serve.log")):
        for i, item in enumerate(chosen):
            route, ttft = first_token(a.port, item, a.max_tokens)
            out[item["id"]] = (route, ttft)
            print(f"  {label:6} {i + 1:3}/{len(chosen)} {item['id']:24} {route:14} TTFT {ttft or float('nan'):8.0f} ms",
                  file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--policy", default="config/policy.local-verify.toml")
    ap.add_argument("--dataset", default="datasets/eval/core/v1/items.jsonl")
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--escalated-route", default="local-strong")
    ap.add_argument("--port", type=int, default=18460)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/switchyard-escalation")
    a = ap.parse_args()
    chosen = items(a.dataset, a.items)
    before = run("before", a.before, a, chosen)
    after = run("after", a.after, a, chosen)
    esc = a.escalated_route
    both = [k for k in before if before[k][0] == esc and after.get(k, ("",))[0] == esc
            and before[k][1] is not None and after[k][1] is not None]
    stayed = [k for k in before if before[k][0] != esc and after.get(k, (esc,))[0] != esc
              and before[k][1] is not None and after[k][1] is not None]
    print(f"verify cascade ({a.policy}), {len(chosen)} items of {a.dataset}, max_tokens {a.max_tokens}, "
          f"threads {a.threads}, one at a time")
    print(f"{'client TTFT ms':34} {'before':>9} {'after':>9} {'after/before':>13}")
    for name, keys in (("escalated", both), ("not escalated (control)", stayed)):
        if not keys:
            print(f"{name}: none")
            continue
        for q in (50, 90):
            b, f = pct([before[k][1] for k in keys], q), pct([after[k][1] for k in keys], q)
            print(f"{name + f' p{q} (n={len(keys)})':34} {b:9.0f} {f:9.0f} {f / b:12.2f}x")
        saved = [before[k][1] - after[k][1] for k in keys]
        print(f"{name + ' saved per request, median':34} {statistics.median(saved):9.0f} ms")
    differ = [k for k in before if k in after and (before[k][0] == esc) != (after[k][0] == esc)]
    print(f"items whose escalation differed between the binaries: {len(differ)}")


if __name__ == "__main__":
    main()
