#!/usr/bin/env bash
# switchyard servers against the floor, interleaved: each round measures
# the floor, then every variant, one at a time, so a shared machine's
# drift lands on all of them alike. A variant is LABEL=COMMAND, the
# command that starts `switchyard` (a binary, or `env VAR=... binary`);
# the first variant is the anchor the others are compared with. Commands
# run from the repository root, so a relative path is taken from there.
# wrk c=10 for 8 s after 2 s warm-up through the harness's mock upstream;
# CPU of the server process from /proc. Prints each cell, then medians
# and ratios to the floor and to the anchor.
#
#   cp target/release/switchyard /tmp/switchyard-before   # before a change
#   bench/gateway-overhead/ab.sh before=/tmp/switchyard-before after=target/release/switchyard
#   bench/gateway-overhead/ab.sh default=target/release/switchyard \
#     one-worker="env TOKIO_WORKER_THREADS=1 target/release/switchyard"
#
# Environment: ROUNDS (3), GATEWAY_OVERHEAD_DIR (../shared/bench/gateway-overhead).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,17p' "$0"; exit 2; }
labels=" floor "
for variant in "$@"; do
  label="${variant%%=*}"
  case "$variant" in *=*) ;; *) echo "not LABEL=COMMAND: $variant" >&2; exit 2 ;; esac
  case "$labels" in *" $label "*) echo "label used twice (or named floor): $label" >&2; exit 2 ;; esac
  labels+="$label "
done
root="$(cd "$(dirname "$0")/../.." && pwd)"
harness="${GATEWAY_OVERHEAD_DIR:-$root/../shared/bench/gateway-overhead}"
cd "$root"
source scripts/setup.sh
source bench/mock-route.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --locked --bin switchyard --bin gateway-floor
mock_target="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-gateway-overhead/mock-target"
(cd "$harness/mock-upstream" && CARGO_TARGET_DIR="$mock_target" cargo build --release -q)

run_dir="$(mktemp -d)"
server=""
MOCK_ADDR=127.0.0.1:18080 "$mock_target/release/mock-upstream" >"$run_dir/mock.log" 2>&1 &
mock=$!
# Only processes still running: a reaped one's pid may belong to another by now.
trap 'kill $mock $server 2>/dev/null || true; rm -rf "$run_dir"' EXIT
mock_policy ab.1 18080 >"$run_dir/policy.toml"
export BENCH_BODY='{"model":"mock","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
tck="$(getconf CLK_TCK)"
cells="$run_dir/cells.jsonl"
wait_ready() { for _ in $(seq 60); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; echo "not ready: $1" >&2; tail -20 "$run_dir/sy.log" >&2; return 1; }
# A port still held by an earlier server would measure that one instead.
wait_free() { for _ in $(seq 40); do curl -s -o /dev/null "$1" || return 0; sleep 0.25; done; echo "port still answering: $1" >&2; return 1; }
measure() { # label pid url
  wrk -t1 -c10 -d2s -s "$harness/post.lua" "$3" >/dev/null 2>&1
  local t0 t1 line
  t0="$(cpu_ticks "$2")"
  line="$(wrk -t2 -c10 -d8s -s "$harness/post.lua" "$3" 2>&1 | sed -n 's/^WRKJSON //p')"
  t1="$(cpu_ticks "$2")"
  python3 - "$1" "$line" "$t0" "$t1" "$tck" "$cells" <<'PY'
import json, sys
label, line, t0, t1, tck, cells = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
n, s = line["requests"], line["duration_us"] / 1e6
cell = {"label": label, "rps": n / s, "cpu_ms": 1000 * (t1 - t0) / tck / n,
        "p50_ms": line["lat_p50_us"] / 1000, "p99_ms": line["lat_p99_us"] / 1000}
open(cells, "a").write(json.dumps(cell) + "\n")
print(f"{label:>14}: {cell['rps']:8.0f} req/s  CPU {cell['cpu_ms']:.3f} ms/req  p50 {cell['p50_ms']:.2f} ms  p99 {cell['p99_ms']:.2f} ms")
PY
}
for round in $(seq "${ROUNDS:-3}"); do
  echo "round $round"
  target/release/gateway-floor --listen 127.0.0.1:18095 --upstream http://127.0.0.1:18080 >/dev/null 2>&1 &
  server=$!
  sleep 1
  measure floor "$server" http://127.0.0.1:18095/v1/chat/completions
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
  for variant in "$@"; do
    data="$(mktemp -d -p "$run_dir")"
    wait_free http://127.0.0.1:18090/healthz
    # shellcheck disable=SC2086 # the command is words: `env VAR=1 binary`
    ${variant#*=} serve --policy "$run_dir/policy.toml" --port 18090 --data-dir "$data" >>"$run_dir/sy.log" 2>&1 &
    server=$!
    # /healthz: /readyz also asks the upstream, which the mock does not answer.
    wait_ready http://127.0.0.1:18090/healthz
    measure "${variant%%=*}" "$server" http://127.0.0.1:18090/v1/chat/completions
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
  done
done
python3 - "$cells" "${1%%=*}" <<'PY'
import json, statistics, sys
cells, anchor = [json.loads(l) for l in open(sys.argv[1])], sys.argv[2]
labels = list(dict.fromkeys(c["label"] for c in cells))
med = {l: {k: statistics.median(c[k] for c in cells if c["label"] == l) for k in ("rps", "cpu_ms", "p50_ms", "p99_ms")} for l in labels}
print(f"\nmedians over rounds, c=10 non-streaming")
print(f"{'':>14}  {'req/s':>8}  {'CPU ms/req':>10}  {'p50 ms':>7}  {'p99 ms':>7}  {'CPU vs floor':>12}  {'CPU vs ' + anchor:>14}")
for l in labels:
    m = med[l]
    print(f"{l:>14}  {m['rps']:8.0f}  {m['cpu_ms']:10.3f}  {m['p50_ms']:7.2f}  {m['p99_ms']:7.2f}  "
          f"{m['cpu_ms'] / med['floor']['cpu_ms']:11.2f}x  {m['cpu_ms'] / med[anchor]['cpu_ms']:13.2f}x")
PY
