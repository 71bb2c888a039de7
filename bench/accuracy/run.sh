#!/usr/bin/env bash
# The bench's own accuracy and self-overhead, against `switchyard bench mock`
# (its own process) with known delays: first chunk after 50 ms, then one
# every 10 ms, 20 chunks.
#
# 1. Accuracy: closed loop at concurrency 1 (1000 requests) and 50 (2000,
#    ramped up over 240 ms, and again all started at once), first 0.5 s left
#    out as warm-up; prints measured − injected for TTFT and
#    ITL at p50 and p99 against the targets (≤ 1 ms and ≤ 3 ms). p99 needs
#    enough samples to mean anything: of 200 requests it is the 2nd worst.
# 2. Where the error is (c=1, only where tcpdump can run): packet times on
#    loopback split the TTFT error into the mock's lateness (request packet
#    → first-chunk packet, minus 50 ms) and the bench's own (first-chunk
#    packet → the bench's first-chunk timestamp).
# 3. TTFT across injected delays of 5, 10, 20, 37, 50 and 100 ms (c=1, 200
#    requests each, so every request after the first goes on a kept-alive
#    connection): measured vs injected for each. A floor (say every TTFT
#    under 40 ms reading ~40 ms, as Nagle's algorithm and a delayed ACK made
#    it before the mock set TCP_NODELAY) shows here as a large error at the
#    small delays only.
# 4. Self-overhead against a mock with no delays: short whole answers sent
#    open loop at 5,000/s, then closed loop at concurrency 64 (as fast as it
#    goes); streams of 200 chunks at 250/s (50,000 chunks/s), then at
#    concurrency 32. Each with the rate reached and the bench process's CPU.
#
#   bench/accuracy/run.sh                (all parts; work files in ~/.cache/switchyard-accuracy)
#   bench/accuracy/run.sh sweep          (only part 3; also: accuracy, overhead)
set -euo pipefail
parts="${*:-accuracy sweep overhead}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
source scripts/setup.sh
cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
work="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-accuracy"
port="${MOCK_PORT:-18300}"
analyse="python3 $root/bench/accuracy/analyse.py"
mkdir -p "$work"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

stop() { # the mock (and tcpdump) of the part just run
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
}
mock() {
  "$bin" bench mock --port "$port" "$@" >"$work/mock.log" 2>&1 &
  pids+=($!)
  sleep 0.5
  kill -0 "$!" 2>/dev/null || { cat "$work/mock.log" >&2; exit 1; }
}
trace() { # requests [think-ms]: one request every think-ms (0: all due at once)
  "$bin" bench trace generate --scenario single --count "$1" --think-ms "${2:-0}" --input-tokens 64 --max-tokens 20 --out "$work/trace-$1-${2:-0}.jsonl" >/dev/null
}
run() { # out concurrency|open:THINK_MS requests [flags...]
  local out=$1 load=$2 n=$3 think=0
  shift 3
  if [[ $load == open:* ]]; then think=${load#open:}; else set -- --concurrency "$load" "$@"; fi
  trace "$n" "$think"
  /usr/bin/time -f "%U %S %e" -o "$work/$out.time" "$bin" bench run --trace "$work/trace-$n-$think.jsonl" --target "http://127.0.0.1:$port/v1" \
    --model mock --out "$work/$out" "$@" >/dev/null
}

part_accuracy() {
  echo "== accuracy: injected TTFT 50 ms, ITL 10 ms"
  mock --ttft-ms 50 --itl-ms 10 --chunks 20
  wire=""
  if command -v tcpdump >/dev/null && [ "$(id -u)" -eq 0 ]; then
    tcpdump -i lo -n -tt -l -A "tcp port $port and (tcp[tcpflags] & tcp-push != 0)" >"$work/c1.pcap.txt" 2>/dev/null &
    pids+=($!)
    wire=$!
    sleep 1
  fi
  run c1 1 1000 --warmup-s 0.5
  if [ -n "$wire" ]; then
    sleep 0.5
    kill "$wire" 2>/dev/null || wire="" # tcpdump could not capture here (no CAP_NET_RAW)
  fi
  # Fifty requests started together against answers of one fixed length stay
  # in lock-step: the mock writes fifty first chunks at one instant and the
  # bench reads fifty at once, for the whole run. Real traffic does not arrive
  # so; the ramp-up spreads the starts over one answer's length (240 ms).
  run c50 50 2000 --warmup-s 0.5 --ramp-up-s 0.24
  run c50-waves 50 2000 --warmup-s 0.5
  $analyse accuracy "$work/c1" "$work/c50" "$work/c50-waves"
  [ -n "$wire" ] && $analyse wire "$work/c1.pcap.txt" "$work/c1/requests.jsonl"
  stop
}

part_sweep() {
  echo "== TTFT across injected delays (c=1, kept-alive connection, ITL 10 ms)"
  swept=()
  for ttft in 5 10 20 37 50 100; do
    mock --ttft-ms "$ttft" --itl-ms 10 --chunks 5
    run "ttft-$ttft" 1 200 --warmup-s 0.5
    stop
    swept+=("$ttft:$work/ttft-$ttft")
  done
  $analyse sweep "${swept[@]}"
}

part_overhead() {
  echo "== self-overhead (targets: >= 5,000 req/s, >= 50,000 chunks/s, <= 1 core)"
  mock --ttft-ms 0 --itl-ms 0 --chunks 1
  run whole-5k open:0.2 50000 --no-stream
  run whole-max 64 50000 --no-stream
  stop
  mock --ttft-ms 0 --itl-ms 0 --chunks 200
  run stream-50k open:4 2500
  run stream-max 32 5000
  $analyse overhead requests "$work/whole-5k" "$work/whole-max"
  $analyse overhead chunks "$work/stream-50k" "$work/stream-max"
  stop
}

for part in $parts; do
  case $part in
    accuracy | sweep | overhead) "part_$part" ;;
    *) echo "unknown part $part (accuracy, sweep, overhead)" >&2; exit 2 ;;
  esac
done
