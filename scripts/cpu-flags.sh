#!/usr/bin/env bash
# Sourced: turns on llama.cpp's AVX-512 kernels when this CPU has them.
#
# llama-cpp-sys-2 builds ggml with GGML_NATIVE=OFF (AVX2/FMA/F16C only)
# unless told otherwise, and forwards every GGML_* variable to CMake.
# `-C target-cpu=native` is not an option: it turns on GGML_NATIVE, whose AMX
# kernels die with SIGILL on Xeons that report AMX. So each AVX-512 feature
# is switched on only if /proc/cpuinfo lists it, and AMX stays off. The same
# variables build the reference llama-server in bench/, so both sides of a
# comparison get the same kernels.
has() { grep -qw "$1" /proc/cpuinfo 2>/dev/null; }
if has avx512f; then
  export GGML_AVX512=ON
  has avx512_vnni && export GGML_AVX512_VNNI=ON
  has avx512_vbmi && export GGML_AVX512_VBMI=ON
  has avx512_bf16 && export GGML_AVX512_BF16=ON
fi
has avx_vnni && export GGML_AVX_VNNI=ON
true
