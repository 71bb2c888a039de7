#!/usr/bin/env python3
"""The time the safety classifier adds before the first token.

Sends the same ~200-token prompt, streamed, alternately to two switchyard
servers: one serving a policy with `[safety]` (A) and one serving the same
policy without it (B, the anchor), and prints client TTFT p50/p99 of each,
the difference and the ratio, all from one run.

    python3 scripts/safety-ttft.py http://127.0.0.1:8080 http://127.0.0.1:8081 15
"""
import json
import sys
import time
import urllib.request

PROMPT = (
    "Hi team, I'm preparing the quarterly review for our small bakery chain and could use a hand. We have four "
    "shops: the one on Mill Street sells mostly bread and coffee in the morning, the station kiosk does sandwiches "
    "at lunch, the market stall only opens on Saturdays, and the new shop near the university is still finding its "
    "feet. Sales this quarter were up eight percent overall, but the university shop lost money in two of the three "
    "months, mostly because students leave for the holidays and we kept the same staff rota. Our flour supplier also "
    "raised prices twice. I would like a short summary for the owners, three or four bullet points on what went "
    "well, what did not, and two concrete suggestions for next quarter, for example adjusting opening hours around "
    "the academic calendar or negotiating a fixed price with the supplier. Please keep it friendly and plain, no "
    "jargon, under two hundred words."
)


def ttft_ms(base: str) -> float:
    body = json.dumps(
        {
            "model": "auto",
            "stream": True,
            "max_tokens": 4,
            "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT}],
        }
    ).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req) as resp:
        for line in resp:
            if line.startswith(b"data: {") and b'"content"' in line:
                elapsed = time.perf_counter() - start
                resp.read()
                return elapsed * 1000
    raise SystemExit(f"{base}: no content came back (was the prompt refused?)")


def quantile(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * q))]


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    with_classifier, anchor, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    a, b = [], []
    for _ in range(n):
        a.append(ttft_ms(with_classifier))
        b.append(ttft_ms(anchor))
    for name, xs in (("with classifier", a), ("without (anchor)", b)):
        print(f"{name:18} TTFT p50 {quantile(xs, .5):7.1f} ms  p99 {quantile(xs, .99):7.1f} ms")
    print(
        f"added: p50 {quantile(a, .5) - quantile(b, .5):.1f} ms, p99 {quantile(a, .99) - quantile(b, .99):.1f} ms; "
        f"ratio p50 {quantile(a, .5) / quantile(b, .5):.2f}x, p99 {quantile(a, .99) / quantile(b, .99):.2f}x "
        f"(n={n} each, alternating)"
    )


if __name__ == "__main__":
    main()
