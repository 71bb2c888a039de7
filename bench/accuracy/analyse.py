"""Tables for bench/accuracy/run.sh from `switchyard bench run` outputs."""
import json
import os
import re
import sys

TTFT, ITL = 50.0, 10.0


def summary(run):
    with open(f"{run}/summary.json") as f:
        return json.load(f)["summary"]


def accuracy(*runs):
    print(f"{'run':5} {'metric':6} {'n':>6} {'p50-inj':>8} {'p99-inj':>8}  target (1 / 3 ms)")
    for run in runs:
        s = summary(run)
        for name, key, injected in (("TTFT", "ttft_ms", TTFT), ("ITL", "itl_ms", ITL)):
            p = s[key]
            d50, d99 = p["p50"] - injected, p["p99"] - injected
            met = "met" if abs(d50) <= 1 and abs(d99) <= 3 else "NOT met"
            print(f"{os.path.basename(run):5} {name:6} {p['count']:>6} {d50:>+8.2f} {d99:>+8.2f}  {met}")


def sweep(*pairs):
    """TTFT measured vs injected, one run per injected delay ("MS:RUN")."""
    print(f"{'injected':>8} {'n':>5} {'p50':>8} {'p99':>8} {'p50-inj':>8} {'p99-inj':>8}  target (1 / 3 ms)")
    for pair in pairs:
        injected, run = pair.split(":", 1)
        injected = float(injected)
        p = summary(run)["ttft_ms"]
        d50, d99 = p["p50"] - injected, p["p99"] - injected
        met = "met" if abs(d50) <= 1 and abs(d99) <= 3 else "NOT met"
        print(f"{injected:>8.0f} {p['count']:>5} {p['p50']:>8.2f} {p['p99']:>8.2f} {d50:>+8.2f} {d99:>+8.2f}  {met}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def wire(capture, requests):
    """Pairs each request packet with its first-chunk packet (concurrency 1: in order)."""
    head = re.compile(r"^(\d+\.\d+) IP ")
    sent, first, at = [], [], None
    with open(capture, encoding="latin1") as f:
        for line in f:
            m = head.match(line)
            if m:
                at = float(m.group(1))
            elif "POST /v1" in line:
                sent.append(at)
            elif '"content":"t0 "' in line:
                first.append(at)
    with open(requests) as f:
        results = sorted((json.loads(line) for line in f), key=lambda r: r["index"])
    if any(r["ttft_ms"] is None for r in results):
        print("wire: some requests failed; not paired")
        return
    if not (len(sent) == len(first) == len(results)):
        print(f"wire: {len(sent)} requests and {len(first)} first chunks captured for {len(results)} results; not paired")
        return
    mock = [(b - a) * 1e3 - TTFT for a, b in zip(sent, first)]
    bench = [r["ttft_ms"] - TTFT for r in results]
    own = [b - m for b, m in zip(bench, mock)]
    print("TTFT error at c=1, split by packet times on loopback (ms):")
    for name, xs in (("measured - injected", bench), ("mock's lateness", mock), ("bench's own", own)):
        print(f"  {name:20} p50 {pct(xs, 50):+.3f}  p99 {pct(xs, 99):+.3f}  max {max(xs):+.3f}")


def overhead(what, *runs):
    for run in runs:
        s = summary(run)
        with open(f"{run}.time") as f:
            user, system, wall = (float(x) for x in f.read().split()[-3:])
        rate = s["requests_per_s"] if what == "requests" else s["output_tokens_per_s"]
        cpu = (user + system) / wall
        print(f"{os.path.basename(run):11} {rate:>10,.0f} {what}/s  ({s['ok']} ok, {s['failed']} failed)  bench CPU {cpu:.2f} cores")


if __name__ == "__main__":
    {"accuracy": accuracy, "sweep": sweep, "wire": wire, "overhead": overhead}[sys.argv[1]](*sys.argv[2:])
