#!/usr/bin/env bash
# Installs what building and testing switchyard needs on a fresh Debian/Ubuntu
# machine: cmake, clang and libclang (llama.cpp's build and bindgen), Python 3
# with pip (model pulls). Idempotent; sourced by serve.sh and test.sh.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v clang >/dev/null 2>&1 || missing+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: a Rust toolchain (cargo) is required; install it with rustup" >&2
  exit 1
fi
source "$(dirname "${BASH_SOURCE[0]}")/cpu-flags.sh"
