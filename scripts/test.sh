#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (real SmolLM2 model, real
# loopback HTTP server), then the end-to-end tests through the official
# `openai` Python client against the real binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/setup.sh
# Formatting is checked where the toolchain has rustfmt (it cannot be added
# here: the Rust distribution server is not reachable).
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "test: rustfmt is not installed; skipping the format check" >&2
fi

# Lints are part of the tests: warnings (clippy's and the workspace's
# [workspace.lints]) fail the run. Release profile, like everything below,
# so llama.cpp is built once.
cargo clippy --release --locked --workspace --all-targets -- -D warnings

# The model is pulled (and verified) once, up front, so tests in parallel
# binaries don't each fetch it.
cargo build --release --locked --bin switchyard
bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
"$bin" models pull smollm2-135m >/dev/null

# Tests run in the release profile: llama.cpp is built optimised either way,
# and this reuses the binary's build instead of compiling everything twice.
cargo test --release --locked --workspace --no-fail-fast

# The dashboard's test drives Debian's chromium with playwright-core (npm,
# pinned in tests/ui/package.json; it downloads no browser of its own).
ui=()
command -v chromium >/dev/null 2>&1 || ui+=(chromium)
command -v node >/dev/null 2>&1 || ui+=(nodejs)
command -v npm >/dev/null 2>&1 || ui+=(npm)
if ((${#ui[@]})); then
  echo "test: installing ${ui[*]} for the dashboard test" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${ui[@]}" >/dev/null
fi
[ -d tests/ui/node_modules/playwright-core ] ||
  npm install --prefix tests/ui --no-package-lock --no-audit --no-fund --silent

venv="${SWITCHYARD_TEST_VENV:-$root/.venv-test}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
SWITCHYARD_BIN="$bin" "$venv/bin/python" -m pytest -q tests/e2e
