#!/usr/bin/env bash
# One command from a fresh machine to a running server: installs build
# dependencies, builds switchyard, pulls and verifies the default model on
# first start, and serves on 127.0.0.1:8080. Extra arguments go to `serve`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/setup.sh
cargo build --release --locked --bin switchyard
exec "${CARGO_TARGET_DIR:-$root/target}/release/switchyard" serve "$@"
