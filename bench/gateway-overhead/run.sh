#!/usr/bin/env bash
# switchyard as a pure proxy, side by side with LiteLLM, in one run of the
# shared gateway-overhead harness (../shared/bench/gateway-overhead): the
# same fast mock upstream, the same wrk load, direct vs each gateway.
#
# switchyard runs with its defaults and a one-route policy pointing at the
# mock, so every request is classified, decided and recorded (SQLite).
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
cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"

run_dir="$(mktemp -d)"
trap 'rm -rf "$run_dir"' EXIT
cat > "$run_dir/policy.toml" <<TOML
version = "gateway-overhead.1"
default_route = "mock"

[[routes]]
name = "mock"
backend = "upstream"
model = "mock"
url = "http://127.0.0.1:$mock_port/v1"
allowed_classes = ["public", "internal"]
TOML
"$bin" policy validate "$run_dir/policy.toml"

[ -x "$work/venv/bin/python" ] || "$harness/run.sh" --setup
cd "$harness"
MOCK_PORT="$mock_port" ./run.sh --out "$out" \
  --gateway "switchyard=http://127.0.0.1:$port/v1" \
  --start "switchyard=$bin serve --port $port --policy $run_dir/policy.toml --data-dir $run_dir/data" "$@"
echo "results: $out/results.md"
