#!/usr/bin/env bash
# switchyard as a pure proxy, side by side with LiteLLM and the floor, in
# one run of the shared gateway-overhead harness
# (../shared/bench/gateway-overhead): the same fast mock upstream, the same
# wrk load, direct vs each gateway.
#
# The floor (`floor/`, binary gateway-floor) is a bare single-threaded
# hyper forwarder: what standing between client and upstream costs on this
# machine with nothing else done. `floor.py` prints switchyard's CPU per
# request and added latency as ratios to it, from the same run.
#
# switchyard runs with its defaults and a one-route policy pointing at the
# mock, so every request is classified, decided and recorded (SQLite),
# three ways in the same run:
#   switchyard        no keys (open, as on a fresh machine);
#   switchyard-keyed  an API key with every limit set (checked on each
#                     request, never reached), limits counted in process;
#   switchyard-redis  the same key, limits counted in Redis (redis://127.0.0.1:6379);
#   switchyard-notel  open, with --no-telemetry: no measured part of each
#                     record, no request metrics (decisions are recorded
#                     still), the anchor for what telemetry costs.
# The harness sends one bearer key to every target, so it sends the key
# made here (the mock and the open server ignore it; LiteLLM uses it as its
# master key).
#
#   bench/gateway-overhead/run.sh [--quick] [any run.sh option]
# Results: $OUT (default ~/.cache/switchyard-gateway-overhead/switchyard-out)/results.md
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
harness="${GATEWAY_OVERHEAD_DIR:-$root/../shared/bench/gateway-overhead}"
[ -x "$harness/run.sh" ] || { echo "gateway-overhead harness not found at $harness (set GATEWAY_OVERHEAD_DIR)" >&2; exit 1; }
work="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-gateway-overhead"
out="${OUT:-$work/switchyard-out}"
mock_port="${MOCK_PORT:-18080}"
port="${SWITCHYARD_PORT:-18090}"

cd "$root"
source scripts/setup.sh
source bench/mock-route.sh
cargo build --release --locked --bin switchyard --bin gateway-floor
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
floor="${CARGO_TARGET_DIR:-$root/target}/release/gateway-floor"

run_dir="$(mktemp -d)"
trap 'rm -rf "$run_dir"' EXIT
mock_policy gateway-overhead.1 "$mock_port" >"$run_dir/policy.toml"
"$bin" policy validate "$run_dir/policy.toml"

# One key, with every limit far above what the load reaches, in the keyed
# servers' data dirs (made once, copied: the same key in both).
limits=(--requests-per-minute 1000000000 --tokens-per-minute 1000000000000 --tokens-per-day 1000000000000
        --cost-per-day-usd 1000000 --concurrent 100000)
key="$("$bin" keys create --tenant bench --role tenant "${limits[@]}" --data-dir "$run_dir/keyed" 2>/dev/null)"
"$bin" tenants set bench "${limits[@]}" --data-dir "$run_dir/keyed" >/dev/null
cp -r "$run_dir/keyed" "$run_dir/redis"
redis_url="${SWITCHYARD_BENCH_REDIS:-redis://127.0.0.1:6379}"

[ -x "$work/venv/bin/python" ] || "$harness/run.sh" --setup
# A copy of the harness, with one race closed: it sums CPU ticks with
# `cat /proc/[0-9]*/stat | awk` under `set -o pipefail`, so a process that
# exits between the glob and the read (a LiteLLM worker's child, say) ends
# the whole run.
cp -r "$harness" "$run_dir/harness"
sed -i 's|cat /proc/\[0-9\]\*/stat 2>/dev/null |{ cat /proc/[0-9]*/stat 2>/dev/null \|\| true; } |' "$run_dir/harness/run.sh"
grep -q '|| true; } | awk' "$run_dir/harness/run.sh" || { echo "could not patch the harness's CPU tick reader" >&2; exit 1; }
cd "$run_dir/harness"
serve="$bin serve --policy $run_dir/policy.toml"
GATEWAY_API_KEY="$key" MOCK_PORT="$mock_port" ./run.sh --out "$out" \
  --gateway "floor=http://127.0.0.1:$((port + 5))/v1" \
  --start "floor=$floor --listen 127.0.0.1:$((port + 5)) --upstream http://127.0.0.1:$mock_port" \
  --gateway "switchyard=http://127.0.0.1:$port/v1" \
  --start "switchyard=$serve --port $port --data-dir $run_dir/open" \
  --gateway "switchyard-keyed=http://127.0.0.1:$((port + 1))/v1" \
  --start "switchyard-keyed=$serve --port $((port + 1)) --data-dir $run_dir/keyed" \
  --gateway "switchyard-redis=http://127.0.0.1:$((port + 2))/v1" \
  --start "switchyard-redis=$serve --port $((port + 2)) --data-dir $run_dir/redis --redis $redis_url" \
  --gateway "switchyard-notel=http://127.0.0.1:$((port + 3))/v1" \
  --start "switchyard-notel=$serve --port $((port + 3)) --data-dir $run_dir/notel --no-telemetry" "$@"
echo "results: $out/results.md"
python3 "$root/bench/gateway-overhead/floor.py" "$out/results.json"
