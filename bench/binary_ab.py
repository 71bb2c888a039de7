#!/usr/bin/env python3
"""Two switchyard binaries (before and after a change), alternating on one
machine: the load phases of engine_vs_llama_server.py on each, round after
round, so a change's effect is read against the machine's own drift rather
than against another server measured minutes apart.

    cargo build --release --bin switchyard && cp target/release/switchyard /tmp/after
    git stash && cargo build --release --bin switchyard && cp target/release/switchyard /tmp/before && git stash pop
    python3 bench/binary_ab.py --before /tmp/before --after /tmp/after --model MODEL.gguf

Prints one line per binary per round and the ratios after/before of the
medians. Standard library only.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_vs_llama_server import run_load, served  # noqa: E402

METRICS = [("c1_ttft_p50_ms", "TTFT p50 ms (c=1)"), ("c1_ttft_p99_ms", "TTFT p99 ms (c=1)"),
           ("c8_agg_tok_s", "aggregate tok/s (c=8)"), ("c8_itl_p99_ms", "ITL p99 ms (c=8)")]


def one_round(binary, args, model_id):
    cmd = [binary, "serve", "--model", args.model, "--threads", str(args.threads), "--parallel",
           str(args.parallel), "--ctx-size", str(args.ctx_size), "--port", str(args.port)]
    with served(os.path.basename(binary), cmd, dict(os.environ), args.port, model_id, args.log):
        run_load(args.port, model_id, 2, 1, 16, 20_000)  # warm-up, as the side-by-side script does
        c1 = run_load(args.port, model_id, 1, args.single_requests, args.single_tokens, 0)
        c8 = run_load(args.port, model_id, 8, 3, 128, 1000) if not args.skip_c8 else None
    errors = c1["errors"] + (c8["errors"] if c8 else [])
    if errors:
        raise RuntimeError(f"{binary}: {len(errors)} failed requests, first: {errors[0]}")
    r = {"c1_ttft_p50_ms": c1["ttft_p50_ms"], "c1_ttft_p99_ms": c1["ttft_p99_ms"]}
    if c8:
        r.update(c8_agg_tok_s=c8["agg_tok_s"], c8_itl_p99_ms=c8["itl_p99_ms"])
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="switchyard binary without the change")
    ap.add_argument("--after", required=True, help="switchyard binary with it")
    ap.add_argument("--model", required=True, help="GGUF path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=8192)
    ap.add_argument("--single-requests", type=int, default=6)
    ap.add_argument("--single-tokens", type=int, default=16, help="output tokens per c=1 request")
    ap.add_argument("--skip-c8", action="store_true", help="only the c=1 phase")
    ap.add_argument("--port", type=int, default=18095)
    ap.add_argument("--log", default="/dev/null", help="where the servers' output goes")
    args = ap.parse_args()
    model_id = os.path.splitext(os.path.basename(args.model))[0]
    runs = {"before": [], "after": []}
    for i in range(args.rounds):
        for side in ("before", "after"):
            r = one_round(getattr(args, side), args, model_id)
            runs[side].append(r)
            print(f"round {i + 1} {side:6} " + "  ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    print(f"\n{'metric':24} {'before':>9} {'after':>9} {'after/before':>13}  (medians of {args.rounds} rounds)")
    for key, label in METRICS:
        if key not in runs["before"][0]:
            continue
        b = statistics.median(r[key] for r in runs["before"])
        a = statistics.median(r[key] for r in runs["after"])
        print(f"{label:24} {b:9.1f} {a:9.1f} {a / b:12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
