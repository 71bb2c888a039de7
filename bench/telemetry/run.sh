#!/usr/bin/env bash
# Telemetry under load: no record lost at RATE requests/s (default 1000)
# for SECS seconds (default 60) through switchyard to a fast mock upstream,
# then the same load with the server killed (`kill -9`) halfway: no
# decision lost, and what the killed process had not yet measured counted
# at its next start.
#
#   bench/telemetry/run.sh            RATE=1000 SECS=60 by default
#   RATE=500 SECS=20 bench/telemetry/run.sh
#
# Everything runs on this machine (mock, server, load) and shares its
# cores: the figures say what this machine sustained, not a ceiling.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
rate="${RATE:-1000}"
secs="${SECS:-60}"
mock_port="${MOCK_PORT:-18180}"
port="${SWITCHYARD_PORT:-18190}"

cd "$root"
source scripts/setup.sh
source bench/mock-route.sh
cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
dir="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# Waits for "listening on" in a server's log.
wait_listening() {
  for _ in $(seq 1 200); do
    grep -q "listening on" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no server came up; its log:" >&2
  cat "$1" >&2
  exit 1
}

"$bin" bench mock --port "$mock_port" --ttft-ms 1 --itl-ms 0 --chunks 4 >"$dir/mock.log" 2>&1 &
pids+=($!)
mock_policy telemetry-bench.1 "$mock_port" >"$dir/policy.toml"
"$bin" bench trace generate --scenario burst --rate "$rate" --duration-s "$secs" --factor 1 \
  --input-tokens 16 --max-tokens 16 --out "$dir/trace.jsonl" >/dev/null

serve() { # data dir, log
  "$bin" serve --policy "$dir/policy.toml" --port "$port" --data-dir "$1" --node-id telemetry-bench >"$2" 2>&1 &
  server=$!
  pids+=("$server")
  wait_listening "$2"
}

# Counts what a run's records say: rows, rows measured, rows marked lost.
count_rows() { # data dir
  "$bin" telemetry query --data-dir "$1" --format jsonl --limit 4000000000 2>/dev/null | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
measured = sum(1 for r in rows if (r["measured_ms"] or 0) > 0)
lost = sum(1 for r in rows if r["measured_ms"] == 0)
print(len(rows), measured, lost)'
}

# Counts the bench's requests: sent, answered (any HTTP status), 200s.
count_sent() { # run dir
  python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(len(rows), sum(1 for r in rows if r.get("status")), sum(1 for r in rows if r.get("status") == 200))' "$1/requests.jsonl"
}

echo "== steady: $rate requests/s for $secs s"
serve "$dir/steady" "$dir/steady.log"
"$bin" bench run --trace "$dir/trace.jsonl" --target "http://127.0.0.1:$port/v1" --model mock \
  --out "$dir/run-steady" >"$dir/bench-steady.log" 2>&1
kill "$server"
wait "$server" || true
read -r sent answered ok < <(count_sent "$dir/run-steady")
read -r rows measured lost < <(count_rows "$dir/steady")
achieved=$(python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))["summary"]; print(round(s["requests_per_s"], 1), s["lag_ms"]["p99"] if s.get("lag_ms") else "-")' "$dir/run-steady/summary.json")
read -r achieved lag_p99 <<<"$achieved"
printf '| sent | achieved req/s | send lag p99 ms | HTTP answers | 200s | records | measured | lost |\n|---|---|---|---|---|---|---|---|\n'
printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$sent" "$achieved" "$lag_p99" "$answered" "$ok" "$rows" "$measured" "$lost"
steady_ok=$([ "$rows" -eq "$answered" ] && [ "$measured" -eq "$rows" ] && echo yes || echo NO)
echo "every answered request has its record, measured: $steady_ok"

echo
echo "== kill -9 halfway through the same load"
serve "$dir/killed" "$dir/killed.log"
"$bin" bench run --trace "$dir/trace.jsonl" --target "http://127.0.0.1:$port/v1" --model mock \
  --out "$dir/run-killed" >"$dir/bench-killed.log" 2>&1 &
load=$!
sleep "$((secs / 2))"
kill -9 "$server"
wait "$server" 2>/dev/null || true
wait "$load" || true
read -r sent answered ok < <(count_sent "$dir/run-killed")
read -r rows_before _ _ < <(count_rows "$dir/killed")
serve "$dir/killed" "$dir/restarted.log"
reported=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^switchyard_telemetry_lost_at_start_total /{print $2}')
kill "$server"
wait "$server" || true
read -r rows measured lost < <(count_rows "$dir/killed")
printf '| 200s before the kill | records | measured | lost (marked) | reported at restart |\n|---|---|---|---|---|\n'
printf '| %s | %s | %s | %s | %s |\n' "$ok" "$rows" "$measured" "$lost" "${reported:-0}"
killed_ok=$([ "$rows" -ge "$ok" ] && [ "$((measured + lost))" -eq "$rows" ] && [ "${reported:-0}" -eq "$lost" ] && echo yes || echo NO)
echo "no decision lost, every record measured or counted as lost: $killed_ok"
grep -h "never got their measurements" "$dir/restarted.log" || true
[ "$steady_ok" = yes ] && [ "$killed_ok" = yes ]
