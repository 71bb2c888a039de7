#!/usr/bin/env python3
"""Drives switchyard and llama.cpp's llama-server with identical streamed
requests, one server at a time, and prints a side-by-side table with ratios.

Standard library only. Each server is started by this script, measured alone
(the machine has few cores), then stopped; its peak RSS is read from /proc.
"""

import argparse
import contextlib
import http.client
import json
import os
import statistics
import socket
import subprocess
import sys
import threading
import time
import urllib.request

TOPICS = [
    "the history of railways", "how compilers work", "the water cycle", "medieval castles",
    "the invention of the telephone", "coral reefs", "the French revolution", "volcanoes",
    "how vaccines work", "the game of chess", "jazz music", "the Roman aqueducts",
    "solar power", "the printing press", "honey bees", "deep sea exploration",
]


def prompt(i):
    # Unique per request, so no server can answer from a cached prompt prefix.
    return f"Request {i}: write a detailed, multi-paragraph essay about {TOPICS[i % len(TOPICS)]}."


def stream_chat(port, body):
    """POSTs a streamed chat request (JSON text); returns when it was sent
    and each `data:` event as (arrival time, parsed chunk), up to [DONE]."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    chunks = []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunks.append((time.perf_counter(), json.loads(data)))
    conn.close()
    return t0, chunks


def stream_one(port, model, i, max_tokens):
    """One streamed request: returns (ttft_s, token_times, completion_tokens)."""
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt(i)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    })
    t0, chunks = stream_chat(port, body)
    times, usage = [], None
    for at, chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            if choice.get("delta", {}).get("content"):
                times.append(at)
    if not times:
        raise RuntimeError("no tokens streamed")
    return times[0] - t0, times, usage if usage is not None else len(times)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_load(port, model, concurrency, per_worker, max_tokens, offset):
    results, errors = [], []
    lock = threading.Lock()

    def worker(w):
        for k in range(per_worker):
            try:
                r = stream_one(port, model, offset + w * per_worker + k, max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported, counted as a failure
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    gaps = [b - a for _, times, _ in results for a, b in zip(times, times[1:])]
    decode = [(len(t) - 1) / (t[-1] - t[0]) for _, t, _ in results if len(t) > 1 and t[-1] > t[0]]
    return {
        "requests": len(results),
        "errors": errors,
        "wall_s": wall,
        "output_tokens": sum(n for _, _, n in results),
        "agg_tok_s": sum(n for _, _, n in results) / wall,
        "ttft_p50_ms": 1000 * pct([r[0] for r in results], 50),
        "ttft_p99_ms": 1000 * pct([r[0] for r in results], 99),
        "itl_p50_ms": 1000 * pct(gaps, 50),
        "itl_p99_ms": 1000 * pct(gaps, 99),
        "decode_tok_s": statistics.mean(decode),
    }


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(port, model, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            stream_one(port, model, 10_000, 4)
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    raise RuntimeError("server did not become ready")


@contextlib.contextmanager
def served(name, cmd, env, port, model, log_path):
    """Starts a server, waits until it answers, yields its process, stops it."""
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr)
    # Whatever already listens there would answer in the server's place
    # (the server binds only after loading its model).
    with socket.socket() as probe:
        # As servers do: a closed connection's TIME_WAIT does not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise RuntimeError(f"port {port} is taken ({e}): another server would be measured as {name}") from e
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, model, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def server_args(ap, port, ctx_size):
    """The arguments every engine benchmark here takes."""
    ap.add_argument("--switchyard", required=True)
    ap.add_argument("--model", required=True, help="GGUF path served by every side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=ctx_size)
    ap.add_argument("--port", type=int, default=port)


def llama_server(args, port):
    """The llama-server command and environment matching `server_args`."""
    t, p, c = str(args.threads), str(args.parallel), str(args.ctx_size)
    cmd = [args.llama_server, "-m", args.model, "-t", t, "-tb", t, "-np", p, "-c", c,
           "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    return cmd, {**os.environ, "LD_LIBRARY_PATH": os.path.dirname(args.llama_server)}


def parse(ap):
    """Parses the arguments, makes the output folder; returns them and the
    model's id (its file name, which every side serves it as)."""
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    return args, os.path.splitext(os.path.basename(args.model))[0]


def measure(name, cmd, env, port, model, args):
    with served(name, cmd, env, port, model, os.path.join(args.out, f"{name}.log")) as proc:
        run_load(port, model, 2, 1, 16, 20_000)  # warm-up
        single = run_load(port, model, 1, args.single_requests, args.tokens, 0)
        print(f"   c=1: {single['decode_tok_s']:.1f} tok/s decode, TTFT p50 {single['ttft_p50_ms']:.0f} ms", file=sys.stderr)
        multi = run_load(port, model, args.concurrency, args.per_worker, args.tokens, 1000)
        print(f"   c={args.concurrency}: {multi['agg_tok_s']:.1f} tok/s aggregate, ITL p99 {multi['itl_p99_ms']:.0f} ms", file=sys.stderr)
        rss = peak_rss_mib(proc.pid)
    return {"single": single, "multi": multi, "peak_rss_mib": rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    server_args(ap, port=18080, ctx_size=8192)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--per-worker", type=int, default=3)
    ap.add_argument("--single-requests", type=int, default=6)
    ap.add_argument("--out", default="bench/results")
    args, model_id = parse(ap)
    t, p, c = str(args.threads), str(args.parallel), str(args.ctx_size)

    env = dict(os.environ)
    results = {
        "llama-server": measure("llama-server", *llama_server(args, args.port + 1), args.port + 1, model_id, args),
        "switchyard": measure(
            "switchyard",
            [args.switchyard, "serve", "--model", args.model, "--threads", t, "--parallel", p,
             "--ctx-size", c, "--port", str(args.port)],
            env, args.port, model_id, args),
    }
    sy, ls = results["switchyard"], results["llama-server"]
    rows = [
        ("single-stream decode tok/s (c=1)", lambda r: r["single"]["decode_tok_s"], "higher", 0.95),
        ("TTFT p50 ms (c=1)", lambda r: r["single"]["ttft_p50_ms"], "lower", None),
        ("TTFT p99 ms (c=1)", lambda r: r["single"]["ttft_p99_ms"], "lower", None),
        (f"aggregate output tok/s (c={args.concurrency})", lambda r: r["multi"]["agg_tok_s"], "higher", 1.0),
        (f"ITL p50 ms (c={args.concurrency})", lambda r: r["multi"]["itl_p50_ms"], "lower", None),
        (f"ITL p99 ms (c={args.concurrency})", lambda r: r["multi"]["itl_p99_ms"], "lower", 1.0),
        ("peak RSS MiB", lambda r: r["peak_rss_mib"], "lower", None),
    ]
    print(f"\nmodel {model_id}, threads {t}, parallel {p}, ctx {c}, {args.tokens} output tokens per request")
    print(f"{'metric':40} {'switchyard':>12} {'llama-server':>13} {'ratio':>7}  target")
    verdicts = []
    for name, get, better, target in rows:
        a, b = get(sy), get(ls)
        ratio = a / b if b else float("nan")
        goal = ""
        if target is not None:
            ok = ratio >= target if better == "higher" else ratio <= target
            goal = f"{'>=' if better == 'higher' else '<='} {target:.2f}x  {'PASS' if ok else 'MISS'}"
            verdicts.append(ok)
        print(f"{name:40} {a:12.1f} {b:13.1f} {ratio:6.2f}x  {goal}")
    for n, r in results.items():
        errs = r["single"]["errors"] + r["multi"]["errors"]
        if errs:
            print(f"{n}: {len(errs)} failed requests, first: {errs[0]}")
    with open(os.path.join(args.out, "engine-vs-llama-server.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
