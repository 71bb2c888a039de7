#!/usr/bin/env bash
# switchyard's CPU per request through the harness's mock upstream, with
# the default multi-thread runtime and with TOKIO_WORKER_THREADS=1, beside
# the floor, interleaved (ROUNDS rounds): does handing a request between
# fewer runtime threads cut the proxy path's cost? wrk c=10 for 8 s after
# 2 s warm-up; CPU of the server process from /proc.
#
#   bench/gateway-overhead/runtime-ab.sh
#
# Environment: ROUNDS (2), GATEWAY_OVERHEAD_DIR (../shared/bench/gateway-overhead).
set -euo pipefail
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
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$run_dir"' EXIT
MOCK_ADDR=127.0.0.1:18080 "$mock_target/release/mock-upstream" >"$run_dir/mock.log" 2>&1 &
pids+=($!)
mock_policy runtime-ab.1 18080 >"$run_dir/policy.toml"
export BENCH_BODY='{"model":"mock","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
tck="$(getconf CLK_TCK)"
wait_ready() { for _ in $(seq 60); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; echo "not ready: $1" >&2; head -20 "$run_dir/sy.log" >&2; return 1; }
measure() { # label pid url
  wrk -t1 -c10 -d2s -s "$harness/post.lua" "$3" >/dev/null 2>&1
  local t0 t1 line
  t0="$(cpu_ticks "$2")"
  line="$(wrk -t2 -c10 -d8s -s "$harness/post.lua" "$3" 2>&1 | sed -n 's/^WRKJSON //p')"
  t1="$(cpu_ticks "$2")"
  python3 - "$1" "$line" "$t0" "$t1" "$tck" <<'PY'
import json, sys
label, line, t0, t1, tck = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
n, s = line["requests"], line["duration_us"] / 1e6
print(f"{label:>22}: {n / s:8.0f} req/s  CPU {1000 * (t1 - t0) / tck / n:.3f} ms/req  "
      f"p50 {line['lat_p50_us'] / 1000:.2f} ms  p99 {line['lat_p99_us'] / 1000:.2f} ms")
PY
}
for round in $(seq "${ROUNDS:-2}"); do
  echo "round $round"
  target/release/gateway-floor --listen 127.0.0.1:18095 --upstream http://127.0.0.1:18080 >/dev/null 2>&1 &
  p=$!
  pids+=("$p")
  sleep 1
  measure floor "$p" http://127.0.0.1:18095/v1/chat/completions
  kill "$p"; wait "$p" 2>/dev/null || true
  for workers in default 1; do
    data="$(mktemp -d -p "$run_dir")"
    if [ "$workers" = 1 ]; then
      TOKIO_WORKER_THREADS=1 target/release/switchyard serve --policy "$run_dir/policy.toml" --port 18090 --data-dir "$data" >>"$run_dir/sy.log" 2>&1 &
    else
      target/release/switchyard serve --policy "$run_dir/policy.toml" --port 18090 --data-dir "$data" >>"$run_dir/sy.log" 2>&1 &
    fi
    p=$!
    pids+=("$p")
    # /healthz: /readyz also asks the upstream, which the mock does not answer.
    wait_ready http://127.0.0.1:18090/healthz
    measure "switchyard workers=$workers" "$p" http://127.0.0.1:18090/v1/chat/completions
    kill "$p"; wait "$p" 2>/dev/null || true
  done
done
