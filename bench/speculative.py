#!/usr/bin/env python3
"""Draft-model speculative decoding: the strong route's model (the target,
Qwen2.5-Coder-1.5B) with and without a draft (Qwen2.5-Coder-0.5B, the same
tokenizer), one server at a time, on coding prompts, greedy.

Prints from one run:
- decode tokens/s per request at concurrency 1, drafting (adaptive) against
  none (target: >= 1.3x), and aggregate tokens/s at concurrency 8 (target:
  no lower than without);
- the acceptance rate;
- a cost model for a pinned draft length k (`--draft-min k --draft-max k`):
  from the measured one-token target step t1, the measured (k+1)-token
  verify step tv, the measured draft time per round D (its one-token
  steps and its catch-up) and the measured tokens per round E, predicted
  speedup = E * t1 / (D + tv), against the measured one (target: within
  10%); and the same with D taken as k one-token draft steps. It also says what draft-to-target
  step ratio would pay on this machine.

Step times come from the servers' own trace events
(SWITCHYARD_LOG=switchyard_engine=trace: `step` and `draft step`), the
rest from the streamed answers. Standard library only.
"""

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_vs_llama_server import parse, pct, served, server_args  # noqa: E402
from lookup import load, serve_cmd  # noqa: E402

TASKS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively, with type hints and a docstring.",
    "Write a JavaScript function debounce(fn, ms) and show how to use it on a window resize handler.",
    "Write a SQL query for the five customers with the largest total order amount, given "
    "customers(id, name) and orders(id, customer_id, amount).",
    "Write a Rust function that reverses the order of the words in a string, with a unit test.",
    "Write a Python class Stack with push, pop, peek and is_empty, raising IndexError when empty.",
    "Write a bash script that prints the number of lines in every .txt file in a directory given as $1.",
]

STEP = re.compile(r"\bstep tokens=(\d+) sequences=(\d+) decode_ms=([\d.]+)")
DRAFT = re.compile(r"\bdraft step ms=([\d.]+) tokens=(\d+)")


def task(seed):
    # A different name per seed: no two requests share a whole prompt.
    return [{"role": "user", "content": f"{TASKS[seed % len(TASKS)]} Call the main function or query item_{seed}."}]


def steps(log_path):
    """Decode steps' and draft steps' milliseconds by their token count."""
    target, draft = {}, {}
    with open(log_path, errors="replace") as f:
        for line in f:
            if m := STEP.search(line):
                target.setdefault(int(m[1]), []).append(float(m[3]))
            elif m := DRAFT.search(line):
                draft.setdefault(int(m[2]), []).append(float(m[1]))
    return target, draft


def measure(name, cmd, port, model, args, multi=True):
    env = dict(os.environ, SWITCHYARD_LOG="info,switchyard_engine=trace")
    log = os.path.join(args.out, f"{name}.log")
    with served(name, cmd, env, port, model, log):
        load(port, model, 1, [999], 16, task)  # warm-up
        single, _ = load(port, model, 1, range(args.requests), args.max_tokens, task)
        agg = None
        if multi:
            many, wall = load(port, model, 8, range(100, 100 + args.multi_requests), args.max_tokens, task)
            agg = sum(r["tokens"] for r in many.values()) / wall
    rates = [(r["tokens"] - 1) / r["decode_s"] for r in single.values() if r["decode_s"] > 0]
    tokens = sum(r["tokens"] for r in single.values())
    drafted = sum(r["draft_n"] for r in single.values())
    kept = sum(r["draft_n_accepted"] for r in single.values())
    target, draft = steps(log)
    out = {"decode_tok_s_p50": pct(rates, 50), "agg_tok_s_c8": agg, "tokens": tokens, "drafted": drafted,
           "kept": kept, "acceptance": kept / drafted if drafted else float("nan"),
           "texts": {s: r["text"] for s, r in single.items()},
           "step_ms": {k: statistics.median(v) for k, v in sorted(target.items())},
           "step_n": {k: len(v) for k, v in sorted(target.items())},
           "draft_step_ms": {k: statistics.median(v) for k, v in sorted(draft.items())},
           "draft_ms_total": sum(sum(v) for v in draft.values())}
    agg_text = f"; c=8 {agg:.1f} tok/s" if agg is not None else ""
    print(f"   c=1 decode {out['decode_tok_s_p50']:.2f} tok/s, acceptance {out['acceptance']:.2f}{agg_text}",
          file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_args(ap, port=18390, ctx_size=8192)
    ap.add_argument("--draft", required=True, help="the draft model's GGUF")
    ap.add_argument("--k", type=int, default=3, help="the pinned draft length the cost model is checked at")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--multi-requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default="bench/results/speculative")
    args, model = parse(ap)
    base = serve_cmd(args)
    drafting = base + ["--draft", f"{args.model}={args.draft}"]
    plain = measure("plain", base, args.port, model, args)
    adaptive = measure("draft-adaptive", drafting, args.port, model, args)
    k = args.k
    pinned = measure(f"draft-k{k}", drafting + ["--draft-min", str(k), "--draft-max", str(k)], args.port, model,
                     args, multi=False)

    # The cost model, at the pinned k: every round drafts k guesses (k draft
    # steps) and verifies them with the sampled token in one (k+1)-token step.
    t1 = plain["step_ms"].get(1, float("nan"))
    tv = pinned["step_ms"].get(k + 1, float("nan"))
    td = pinned["draft_step_ms"].get(1, float("nan"))
    rounds = pinned["step_n"].get(k + 1, 0)
    per_round = (pinned["tokens"] / (pinned["drafted"] / k)) if pinned["drafted"] else float("nan")
    predicted = per_round * t1 / (k * td + tv)
    measured = pinned["decode_tok_s_p50"] / plain["decode_tok_s_p50"]
    draft_measured = pinned["draft_ms_total"] / rounds if rounds else float("nan")

    print(f"\nspeculative decoding: target {model}, draft {os.path.basename(args.draft)}, coding prompts, greedy, "
          f"max_tokens {args.max_tokens}, threads {args.threads}, parallel {args.parallel}")
    print(f"{'metric':40} {'drafting':>10} {'none':>10} {'ratio':>7}  target")
    verdicts = []
    for label, a, b, target in [
        ("decode tok/s p50 (c=1), adaptive", adaptive["decode_tok_s_p50"], plain["decode_tok_s_p50"], 1.3),
        ("aggregate tok/s (c=8), adaptive", adaptive["agg_tok_s_c8"], plain["agg_tok_s_c8"], 1.0),
        (f"decode tok/s p50 (c=1), k={k} pinned", pinned["decode_tok_s_p50"], plain["decode_tok_s_p50"], None),
    ]:
        goal = ""
        if target is not None:
            ok = a / b >= target
            verdicts.append(ok)
            goal = f">= {target:.2f}x  {'PASS' if ok else 'MISS'}"
        print(f"{label:40} {a:10.2f} {b:10.2f} {a / b:6.2f}x  {goal}")
    print(f"{'acceptance (kept / guessed), adaptive':40} {adaptive['acceptance']:10.2f}   "
          f"({adaptive['drafted']} guessed)")
    print(f"{'acceptance (kept / guessed), pinned':40} {pinned['acceptance']:10.2f}   ({pinned['drafted']} guessed)")
    same = sum(plain["texts"][s] == adaptive["texts"][s] for s in plain["texts"])
    same_k = sum(plain["texts"][s] == pinned["texts"][s] for s in plain["texts"])
    print(f"identical greedy answers at c=1: adaptive {same} of {len(plain['texts'])}, pinned {same_k}")
    # The draft's real time per round: its k-1 one-token steps and the
    # catch-up, two tokens after a round whose every guess was kept.
    predicted_rounds = per_round * t1 / (draft_measured + tv)
    close = abs(predicted_rounds / measured - 1) <= 0.10
    verdicts.append(close)
    print(f"\ncost model at k={k}: target step t1 {t1:.1f} ms, verify step of {k + 1} tv {tv:.1f} ms, "
          f"draft step td {td:.1f} ms, draft time per round D {draft_measured:.1f} ms (k*td {k * td:.1f}), "
          f"tokens per round E {per_round:.2f}")
    print(f"predicted speedup E*t1/(k*td+tv) = {predicted:.2f}x (one-token draft steps only), "
          f"{abs(predicted / measured - 1) * 100:.0f}% from the measured {measured:.2f}x")
    print(f"predicted speedup E*t1/(D+tv) = {predicted_rounds:.2f}x, measured {measured:.2f}x: "
          f"{abs(predicted_rounds / measured - 1) * 100:.0f}% apart  {'PASS' if close else 'MISS'} (within 10%)")
    # What would pay at this k: E*t1 > k*td + tv, at best with every guess kept (E = k+1).
    room = ((k + 1) * t1 - tv) / k
    print(f"draft-to-target step ratio td/t1 here {td / t1:.2f}; even with every guess kept, k={k} pays only if "
          f"td < {max(room, 0):.1f} ms ({max(room, 0) / t1:.2f} of t1) at this machine's verify cost")
    with open(os.path.join(args.out, "speculative.json"), "w") as f:
        json.dump({"args": vars(args), "plain": plain, "adaptive": adaptive, "pinned": pinned,
                   "cost_model": {"k": k, "t1": t1, "tv": tv, "td": td, "E": per_round, "predicted": predicted,
                                  "draft_per_round": draft_measured, "predicted_rounds": predicted_rounds,
                                  "measured": measured}}, f, indent=2)
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
