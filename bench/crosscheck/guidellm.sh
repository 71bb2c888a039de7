#!/usr/bin/env bash
# Cross-check of `switchyard bench` against an established tool, guidellm
# (from PyPI), on the same target: `switchyard bench mock` with known delays
# (first chunk after 50 ms, then one every 10 ms, 20 chunks). Both tools run
# closed-loop at concurrency 1 and 50; each prints TTFT / ITL / throughput.
#
# guidellm wants a tokenizer from a model hub, which is not reachable here: it
# gets SmolLM2's, rebuilt from the GGUF file switchyard pulls (transformers +
# gguf). Token counts do not enter the comparison: the mock reports usage.
#
#   bench/crosscheck/guidellm.sh        (venv in ~/.cache/switchyard-crosscheck)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
source scripts/setup.sh
cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
work="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-crosscheck"
port="${MOCK_PORT:-18300}"
mkdir -p "$work"

if [ ! -x "$work/venv/bin/guidellm" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check guidellm gguf
fi
"$bin" models pull smollm2-135m >/dev/null
models="${SWITCHYARD_MODELS_DIR:-$HOME/.cache/switchyard/models}"
if [ ! -f "$work/tokenizer/tokenizer.json" ]; then
  "$work/venv/bin/python" - "$models" "$work/tokenizer" <<'PY'
import sys
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(sys.argv[1], gguf_file="smollm2-135m.gguf").save_pretrained(sys.argv[2])
PY
fi

"$bin" bench mock --port "$port" --ttft-ms 50 --itl-ms 10 --chunks 20 >"$work/mock.log" 2>&1 &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
sleep 0.5

for spec in "1 200" "50 1000"; do
  set -- $spec
  conc=$1 n=$2
  echo "== concurrency $conc, $n requests (injected: TTFT 50 ms, ITL 10 ms)"
  "$bin" bench trace generate --scenario single --count "$n" --think-ms 0 --input-tokens 64 --max-tokens 20 --out "$work/trace-$n.jsonl" >/dev/null
  echo "-- switchyard bench (first 0.5 s left out as warm-up)"
  /usr/bin/time -f "switchyard bench CPU: %P of one core" "$bin" bench run --trace "$work/trace-$n.jsonl" --target "http://127.0.0.1:$port/v1" --model mock \
    --concurrency "$conc" --warmup-s 0.5 --out "$work/switchyard-c$conc" 2>&1 | grep -E "ok,|^ms|^ttft|^itl|CPU"
  echo "-- guidellm"
  HF_HUB_OFFLINE=1 /usr/bin/time -f "guidellm CPU: %P of one core" "$work/venv/bin/guidellm" run \
    --backend "kind=openai_http,target=http://127.0.0.1:$port,model=mock,request_format=/v1/chat/completions,validate_backend=false" \
    --profile "kind=concurrent,streams=$conc" --constraint "kind=max_requests,count=$n" \
    --tokenizer "kind=huggingface_auto,model=$work/tokenizer" --data "kind=synthetic_text,prompt_tokens=64,output_tokens=20" \
    --output "kind=json,path=$work/guidellm-c$conc.json" --disable-progress 2>&1 | grep -E "Benchmark|Strategy|Mdn|concurrent@|CPU" | grep -v INFO
done
