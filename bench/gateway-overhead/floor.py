#!/usr/bin/env python3
"""switchyard against the floor, from one gateway-overhead run.

The floor is a bare single-threaded hyper forwarder (floor/): whatever a
proxy must pay on this machine. Issue 20's targets, at concurrency 10,
non-streaming: switchyard's CPU per request and its added latency at p50
and p99 each at most 2x the floor's. Streaming and the other concurrency
levels are printed beside them, unjudged.

  python3 bench/gateway-overhead/floor.py RESULTS.json [--conc 10]
"""
import argparse
import json

TARGET = 2.0
FIGURES = [  # (label, mode, how to read it off a result row)
    ("CPU ms/request", "nonstream", lambda r: r.get("cpu_ms_per_req")),
    ("added p50 ms", "nonstream", lambda r: (r.get("added_ms") or {}).get("p50")),
    ("added p99 ms", "nonstream", lambda r: (r.get("added_ms") or {}).get("p99")),
    ("stream CPU ms/request", "stream", lambda r: r.get("cpu_ms_per_req")),
    ("stream added TTFB p50 ms", "stream_ttfb", lambda r: (r.get("added_ms") or {}).get("ttfb_p50")),
    ("stream added TTFB p99 ms", "stream_ttfb", lambda r: (r.get("added_ms") or {}).get("ttfb_p99")),
]
JUDGED = {"CPU ms/request", "added p50 ms", "added p99 ms"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--conc", type=int, default=10, help="the concurrency judged (default 10)")
    a = ap.parse_args()
    rows = json.load(open(a.results))["results"]
    cell = {(r.get("target"), r.get("mode"), r.get("conc")): r for r in rows if "conc" in r}
    gateways = [t for t in dict.fromkeys(r.get("target") for r in rows) if t and t.startswith("switchyard")]
    if not any(k[0] == "floor" for k in cell):
        raise SystemExit("no floor in this run: bench/gateway-overhead/run.sh starts it beside switchyard")
    concs = sorted({k[2] for k in cell})
    for conc in concs:
        print(f"\nconcurrency {conc}" + (" (judged)" if conc == a.conc else ""))
        print(f"{'figure':26} {'floor':>8} " + " ".join(f"{g:>18}" for g in gateways))
        for label, mode, read in FIGURES:
            floor_row = cell.get(("floor", mode, conc))
            base = read(floor_row) if floor_row else None
            line = f"{label:26} {fmt(base):>8} "
            for g in gateways:
                row = cell.get((g, mode, conc))
                v = read(row) if row else None
                ratio = v / base if v is not None and base not in (None, 0) and base > 0 else None
                verdict = ""
                if conc == a.conc and label in JUDGED and g == "switchyard":
                    verdict = " PASS" if ratio is not None and ratio <= TARGET else " MISS"
                line += f"{fmt(v) + ' ' + (f'{ratio:.2f}x' if ratio is not None else '-'):>13}{verdict:5}"
            print(line)
    print(f"\ntarget: switchyard (decisions and telemetry recorded) <= {TARGET:.0f}x the floor at c={a.conc}, "
          "non-streaming: CPU per request, added p50, added p99")


def fmt(v):
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
