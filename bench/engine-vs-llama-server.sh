#!/usr/bin/env bash
# Side-by-side benchmark: switchyard's embedded engine vs llama.cpp's own
# llama-server, same GGUF, same threads, same parallel slots, same CPU kernels,
# same streamed requests. Prints a table with ratios; exits non-zero if a
# target ratio is missed.
#
#   bench/engine-vs-llama-server.sh [extra args for engine_vs_llama_server.py]
#
# Environment: MODEL (catalog id, default qwen2.5-coder-0.5b), THREADS (2),
# PARALLEL (8), CTX (8192), TOKENS (128), BENCH_DIR (~/.cache/switchyard/bench).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/setup.sh
server="$(bench/llama-server.sh)"

cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
model_path="$("$bin" models pull "${MODEL:-qwen2.5-coder-0.5b}")"

python3 bench/engine_vs_llama_server.py --switchyard "$bin" --llama-server "$server" --model "$model_path" \
  --threads "${THREADS:-2}" --parallel "${PARALLEL:-8}" --ctx-size "${CTX:-8192}" --tokens "${TOKENS:-128}" "$@"
