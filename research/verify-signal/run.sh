#!/usr/bin/env bash
# Does the strong model's likelihood of the fast answer tell which answers
# escalation would fix? Scores every fast answer of an eval run under the
# strong model (one prefill, no decoding) and lets `switchyard calibrate`
# judge that signal held out. An experiment, not part of the server: see
# README.md here and docs/eval.md.
#
#   research/verify-signal/run.sh [FAST_RECORDS STRONG_RECORDS]
#
# Needs the two eval runs of docs/eval.md. Builds llama-cpp-python from
# source into a venv under ~/.cache the first time (about 10 minutes).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bin="${SWITCHYARD_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/switchyard}"
fast="${1:-eval-runs/core-v1/route_local-fast/records.jsonl}"
strong="${2:-eval-runs/core-v1/route_local-strong/records.jsonl}"
out="${OUT:-eval-runs/core-v1/verify}"
venv="${VERIFY_VENV:-$HOME/.cache/switchyard-verify-venv}"

[ -x "$bin" ] || { echo "run.sh: build switchyard first (cargo build --release), or set SWITCHYARD_BIN" >&2; exit 1; }
[ -f "$fast" ] && [ -f "$strong" ] || { echo "run.sh: no eval records at $fast and $strong; run the two evals in docs/eval.md first" >&2; exit 1; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import llama_cpp, numpy" 2>/dev/null; then
  echo "run.sh: building llama-cpp-python from source (once)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install --quiet --no-binary llama-cpp-python "llama-cpp-python==0.3.36" numpy
fi
model="$("$bin" models pull qwen2.5-coder-1.5b | tail -1)"
mkdir -p "$out"
"$venv/bin/python" research/verify-signal/score.py --model "$model" --dataset datasets/eval/core/v1/items.jsonl --records "$fast" --out "$out/records.jsonl"

# The cascade rule on each of the two verify signals.
for signal in verify_mean verify_window_min; do
  policy="$out/policy.$signal.toml"
  sed "s/signal = \"mean\"/signal = \"$signal\"/" config/policy.local.toml > "$policy"
  echo "== $signal: the strong model's logprob of the fast answer"
  "$bin" calibrate --policy "$policy" --rule cascade --records "$out/records.jsonl" "$strong" \
    --fast route:local-fast --strong route:local-strong --min-retention 0.95 --out "$out/calibrated.$signal.toml" | sed -n '/^chosen/,$p'
done
