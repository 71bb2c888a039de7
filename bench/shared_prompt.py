#!/usr/bin/env python3
"""Users behind one long system prompt (a ~700-token handbook), arriving one
after another while the earlier ones still generate: time to first token of
each user's request on switchyard (prefix cache on, its default, and off)
and on llama-server (its prompt cache on, as by default), same GGUF,
threads, slots and context, one server at a time.

llama-server reuses a prefix only from an idle slot (or from its host-memory
cache of evicted slots); here every slot holding the handbook is busy when
the next user arrives, so each user prefills it again. switchyard copies the
prefix from a running slot.

Prints a table with ratios from this run; exits non-zero if a request fails.
Standard library only.
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_vs_llama_server import llama_server, parse, pct, served, server_args, stream_chat  # noqa: E402

PARTS = ["pump", "valve", "filter", "sensor", "gasket", "controller"]
CHECKS = ["pressure", "temperature", "flow rate", "vibration", "seal wear", "firmware version"]


def handbook():
    """A deterministic service handbook of about 700 tokens."""
    lines = ["You are the support assistant for the Northwind W-400 water system. "
             "Answer only from this handbook, briefly.", ""]
    for i, part in enumerate(PARTS):
        check = CHECKS[i % len(CHECKS)]
        lines.append(
            f"Section {i + 1}, the {part}. Inspect the {part} every {3 + i} months. Record its {check} "
            f"in the service log before and after any work. A {part} that reads outside {10 + 5 * i} to "
            f"{40 + 7 * i} units must be replaced, not adjusted. Replacement part number W4-{100 + 13 * i}. "
            f"Torque its fixings to {12 + i} newton metres in a cross pattern. Never run the system with the "
            f"{part} removed; close inlet valve {chr(65 + i)} first and drain line {i + 2}. After replacing "
            f"it, run the self-test for {5 + 2 * i} minutes and confirm the {check} is stable.")
    return "\n".join(lines)


# Asking for the whole procedure keeps each answer going to `--max-tokens`,
# so earlier users are still generating when later ones arrive.
QUESTIONS = [f"List, step by step and with every number, everything the handbook says about the {part}."
             for part in PARTS + PARTS]


def one_user(port, model, system, question, max_tokens):
    body = json.dumps({
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    })
    t0, chunks = stream_chat(port, body)
    first = next((at for at, c in chunks for ch in c.get("choices", []) if ch.get("delta", {}).get("content")),
                 None)
    if first is None:
        raise RuntimeError("no tokens streamed")
    timings = next((c["timings"] for _, c in reversed(chunks) if c.get("timings")), {})
    return first - t0, timings.get("prompt_n"), timings.get("cache_n")


def measure(name, cmd, env, port, model, args):
    system = handbook()
    results, errors = [None] * args.users, []

    def user(i):
        time.sleep(i * args.spacing_ms / 1000)
        try:
            results[i] = one_user(port, model, system, QUESTIONS[i % len(QUESTIONS)], args.max_tokens)
        except Exception as e:  # noqa: BLE001 - reported, counted as a failure
            errors.append(str(e))

    with served(name, cmd, env, port, model, os.path.join(args.out, f"{name}.log")):
        threads = [threading.Thread(target=user, args=(i,)) for i in range(args.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    done = [r for r in results if r]
    evaluated = [r[1] for r in done if r[1] is not None]
    r = {
        "errors": errors,
        "ttft_ms": [1000 * x[0] for x in done],
        "ttft_p50_ms": 1000 * pct([x[0] for x in done], 50) if done else float("nan"),
        "ttft_p99_ms": 1000 * pct([x[0] for x in done], 99) if done else float("nan"),
        "evaluated_mean": sum(evaluated) / len(evaluated) if evaluated else float("nan"),
        "reused_mean": sum(r[2] or 0 for r in done) / len(done) if done else float("nan"),
    }
    print(f"   TTFT p50 {r['ttft_p50_ms']:.0f} ms, p99 {r['ttft_p99_ms']:.0f} ms, "
          f"{r['evaluated_mean']:.0f} prompt tokens evaluated per request, {len(errors)} errors", file=sys.stderr)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_args(ap, port=18380, ctx_size=16384)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--users", type=int, default=8, help="users, one request each (default: one per slot)")
    ap.add_argument("--spacing-ms", type=float, default=3000,
                    help="time between two users' arrivals (the default leaves a 2-core machine unsaturated)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default="bench/results/shared-prompt")
    args, model_id = parse(ap)
    t, p, c = str(args.threads), str(args.parallel), str(args.ctx_size)
    env = dict(os.environ)
    sy = [args.switchyard, "serve", "--model", args.model, "--threads", t, "--parallel", p, "--ctx-size", c,
          "--port", str(args.port)]
    results = {
        "llama-server": measure("llama-server", *llama_server(args, args.port + 1), args.port + 1, model_id, args),
        "no-cache": measure("switchyard-no-cache", sy + ["--no-prefix-cache"], env, args.port, model_id, args),
        "cache": measure("switchyard", sy, env, args.port, model_id, args),
    }
    sw, nc, ls = results["cache"], results["no-cache"], results["llama-server"]
    prompt = ls["evaluated_mean"]
    print(f"\n{args.users} users behind one system prompt (llama-server evaluated {prompt:.0f} prompt tokens per request), one every "
          f"{args.spacing_ms:.0f} ms, {args.max_tokens} tokens each; model {model_id}, threads {t}, slots {p}")
    print(f"{'metric':36} {'switchyard':>11} {'no cache':>9} {'llama-srv':>10} {'vs no cache':>12} "
          f"{'vs llama-srv':>13}")
    for label, key in [("TTFT p50 ms", "ttft_p50_ms"), ("TTFT p99 ms", "ttft_p99_ms"),
                       ("prompt tokens evaluated per request", "evaluated_mean")]:
        a, b, l = sw[key], nc[key], ls[key]
        print(f"{label:36} {a:11.0f} {b:9.0f} {l:10.0f} {a / b:11.2f}x {a / l:12.2f}x")
    failed = {n: r["errors"] for n, r in results.items() if r["errors"]}
    for name, errs in failed.items():
        print(f"{name}: {len(errs)} failed requests, first: {errs[0]}")
    with open(os.path.join(args.out, "shared-prompt.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
