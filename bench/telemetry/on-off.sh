#!/usr/bin/env bash
# What telemetry costs, per request: the same server and load with
# telemetry on and off (--no-telemetry), alternated ROUNDS times (default
# 3) so that a shared, noisy machine drifts on both alike. One-route policy
# to a mock upstream (`switchyard bench mock`, 20 chunks), wrk at C
# connections (default 10) for SECS seconds (default 8) after a 3 s warm-up;
# CPU is the server process's own (utime + stime from /proc).
#
#   bench/telemetry/on-off.sh           needs wrk (the gateway-overhead harness's --setup installs it)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
rounds="${ROUNDS:-3}"
conns="${C:-10}"
secs="${SECS:-8}"
mock_port="${MOCK_PORT:-18380}"
port="${SWITCHYARD_PORT:-18390}"
lua="${GATEWAY_OVERHEAD_DIR:-$root/../shared/bench/gateway-overhead}/post.lua"
command -v wrk >/dev/null || { echo "wrk is missing: run ../shared/bench/gateway-overhead/run.sh --setup" >&2; exit 1; }
[ -f "$lua" ] || { echo "no $lua (set GATEWAY_OVERHEAD_DIR)" >&2; exit 1; }

cd "$root"
source scripts/setup.sh
source bench/mock-route.sh
cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
dir="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT

"$bin" bench mock --port "$mock_port" --ttft-ms 0 --itl-ms 0 --chunks 20 >"$dir/mock.log" 2>&1 &
pids+=($!)
mock_policy telemetry-on-off.1 "$mock_port" >"$dir/policy.toml"

hz=$(getconf CLK_TCK)

# Prints the CPU microseconds per request of one measured run.
measure() { # data dir, body, serve flags...
  local data=$1 body=$2
  shift 2
  "$bin" serve --policy "$dir/policy.toml" --port "$port" --data-dir "$data" "$@" >"$data.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do grep -q "listening on" "$data.log" 2>/dev/null && break; sleep 0.1; done
  local url="http://127.0.0.1:$port/v1/chat/completions"
  BENCH_BODY="$body" wrk -t1 -c"$conns" -d3s -s "$lua" "$url" >/dev/null 2>&1
  local before
  before=$(cpu_ticks "$pid")
  BENCH_BODY="$body" wrk -t1 -c"$conns" -d"${secs}s" -s "$lua" "$url" >"$data.wrk" 2>&1
  local after n
  after=$(cpu_ticks "$pid")
  n=$(grep -o '"requests":[0-9]*' "$data.wrk" | cut -d: -f2)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo $(((after - before) * 1000000 / hz / n))
}

for kind in nonstream stream; do
  body='{"model":"mock","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
  [ "$kind" = stream ] && body='{"model":"mock","stream":true,"messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
  on=() off=()
  for r in $(seq 1 "$rounds"); do
    on+=("$(measure "$dir/$kind-on-$r" "$body")")
    off+=("$(measure "$dir/$kind-off-$r" "$body" --no-telemetry)")
  done
  python3 - "$kind" "${on[*]}" "${off[*]}" <<'PY'
import statistics, sys
kind, on, off = sys.argv[1], [int(x) for x in sys.argv[2].split()], [int(x) for x in sys.argv[3].split()]
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"{kind:9} CPU us/request  on {on} median {m_on:.0f}   off {off} median {m_off:.0f}   on/off {m_on / m_off:.3f}")
PY
done
