#!/usr/bin/env python3
"""Prompt-lookup drafting on an extraction trace: answers that copy spans of
a ~1,000-token context. Serves the same GGUF with drafting off and on, one
server at a time, and prints decode tokens/s per request at concurrency 1
(the target: >= 1.5x) and aggregate tokens/s at concurrency 8 (drafting
must not cost the batch: >= 1.0x), with ratios from this run.

Greedy requests (temperature 0): drafting only ever applies to those, and
the answers are then comparable token for token. Standard library only.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_vs_llama_server import parse, peak_rss_mib, pct, served, server_args, stream_chat  # noqa: E402

NAMES = ["Alice Brown", "Omar Haddad", "Mei Chen", "Lars Berg", "Ana Silva", "Kofi Mensah", "Ivy Novak", "Raj Patel"]
GOODS = ["copper wire", "oak planks", "glass jars", "steel bolts", "wool blankets", "paper rolls"]


def document(seed):
    """About 1,000 tokens of records, different per seed."""
    rows = []
    for i in range(1, 23):
        k = seed * 31 + i * 7
        rows.append(f"Record {i}: {NAMES[k % len(NAMES)]} ordered {k % 9 + 2} boxes of {GOODS[k % len(GOODS)]} "
                    f"on 2026-{k % 12 + 1:02d}-{k % 27 + 1:02d}, invoice INV-{10000 + k * 13}, shipped by truck {k % 40}.")
    return "\n".join(rows)


def ask(seed):
    first = seed % 10 + 3
    return [
        {"role": "system", "content": "You extract text. Copy the requested records exactly, one per line."},
        {"role": "user", "content": f"{document(seed)}\n\nCopy records {first} to {first + 5} exactly."},
    ]


def one(port, model, messages, max_tokens):
    """One greedy streamed request: its timing, text and drafting counts."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    t0, chunks = stream_chat(port, body)
    first = last = None
    text, usage, timings = [], None, {}
    for at, chunk in chunks:
        for c in chunk.get("choices", []):
            if c.get("delta", {}).get("content"):
                first = first or at
                last = at
                text.append(c["delta"]["content"])
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        timings = chunk.get("timings") or timings
    return {"ttft_s": first - t0, "decode_s": last - first, "end_s": last - t0, "tokens": usage,
            "text": "".join(text), "draft_n": timings.get("draft_n", 0),
            "draft_n_accepted": timings.get("draft_n_accepted", 0)}


def load(port, model, concurrency, seeds, max_tokens, messages=ask):
    """`messages(seed)` for each seed, `concurrency` at a time; the results
    by seed, and the wall time."""
    results, lock = [], threading.Lock()
    queue = list(seeds)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                seed = queue.pop(0)
            r = one(port, model, messages(seed), max_tokens)
            with lock:
                results.append((seed, r))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return dict(sorted(results)), wall


def measure(name, cmd, port, model, args):
    with served(name, cmd, dict(os.environ), port, model, os.path.join(args.out, f"{name}.log")) as proc:
        one(port, model, ask(999), 8)  # warm-up
        single, _ = load(port, model, 1, range(args.requests), args.max_tokens)
        multi, wall = load(port, model, 8, range(100, 100 + args.multi_requests), args.max_tokens)
        rss = peak_rss_mib(proc.pid)
    rates = [(r["tokens"] - 1) / r["decode_s"] for r in single.values() if r["decode_s"] > 0]
    drafted = sum(r["draft_n"] for r in single.values())
    kept = sum(r["draft_n_accepted"] for r in single.values())
    out = {
        "decode_tok_s_p50": pct(rates, 50),
        "ttft_p50_ms": 1000 * pct([r["ttft_s"] for r in single.values()], 50),
        "agg_tok_s_c8": sum(r["tokens"] for r in multi.values()) / wall,
        "acceptance": kept / drafted if drafted else float("nan"),
        "tokens_per_step": None,
        "texts": {s: r["text"] for s, r in single.items()},
        "peak_rss_mib": rss,
    }
    tokens = sum(r["tokens"] for r in single.values())
    steps = tokens - kept
    out["tokens_per_step"] = tokens / steps if steps else float("nan")
    print(f"   c=1 decode {out['decode_tok_s_p50']:.1f} tok/s, acceptance {out['acceptance']:.2f}, "
          f"{out['tokens_per_step']:.2f} tokens/step; c=8 {out['agg_tok_s_c8']:.1f} tok/s", file=sys.stderr)
    return out


def serve_cmd(args):
    """`switchyard serve` for the model, threads, slots, context and port."""
    return [args.switchyard, "serve", "--model", args.model, "--threads", str(args.threads), "--parallel",
            str(args.parallel), "--ctx-size", str(args.ctx_size), "--port", str(args.port),
            "--data-dir", tempfile.mkdtemp(prefix="sy-bench-")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_args(ap, port=18380, ctx_size=16384)
    ap.add_argument("--lookup-draft", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--multi-requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--out", default="bench/results/lookup")
    args, model = parse(ap)
    base = serve_cmd(args)
    off = measure("lookup-off", base + ["--lookup-draft", "0"], args.port, model, args)
    on = measure("lookup-on", base + ["--lookup-draft", str(args.lookup_draft)], args.port, model, args)
    same = sum(off["texts"][s] == on["texts"][s] for s in off["texts"])
    print(f"\nextraction trace: ~1,000-token context, answers copy 6 records; model {model}, threads "
          f"{args.threads}, parallel {args.parallel}, lookup-draft {args.lookup_draft}, greedy")
    print(f"{'metric':34} {'drafting':>10} {'off':>10} {'ratio':>7}  target")
    verdicts = []
    for label, key, target in [("decode tok/s p50 (c=1)", "decode_tok_s_p50", 1.5),
                               ("TTFT p50 ms (c=1)", "ttft_p50_ms", None),
                               ("aggregate tok/s (c=8)", "agg_tok_s_c8", 1.0)]:
        a, b = on[key], off[key]
        goal = ""
        if target is not None:
            ok = a / b >= target
            verdicts.append(ok)
            goal = f">= {target:.2f}x  {'PASS' if ok else 'MISS'}"
        print(f"{label:34} {a:10.1f} {b:10.1f} {a / b:6.2f}x  {goal}")
    print(f"{'acceptance (kept / guessed)':34} {on['acceptance']:10.2f}")
    print(f"{'tokens per step (c=1)':34} {on['tokens_per_step']:10.2f} {off['tokens_per_step']:10.2f}")
    print(f"identical greedy answers at c=1: {same} of {len(off['texts'])}")
    with open(os.path.join(args.out, "lookup.json"), "w") as f:
        json.dump({"args": vars(args), "off": off, "on": on}, f, indent=2)
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
