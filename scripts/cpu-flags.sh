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
#
# The names are the kernel's (arch/x86/include/asm/cpufeatures.h), which are
# not spelled alike: avx512f, avx512_vnni, avx512vbmi (no underscore, unlike
# avx512_vbmi2), avx512_bf16, avx_vnni. Each feature is looked up under the
# kernel's spelling and the other one, whole words only (avx512_vbmi2 is not
# avx512vbmi). SWITCHYARD_CPUINFO reads another file instead (for tests).
_switchyard_cpuinfo="${SWITCHYARD_CPUINFO:-/proc/cpuinfo}"
_switchyard_has() { # any of the names, as a whole word
  local name
  for name in "$@"; do
    grep -qw -- "$name" "$_switchyard_cpuinfo" 2>/dev/null && return 0
  done
  return 1
}
if _switchyard_has avx512f; then
  export GGML_AVX512=ON
  _switchyard_has avx512_vnni avx512vnni && export GGML_AVX512_VNNI=ON
  _switchyard_has avx512vbmi avx512_vbmi && export GGML_AVX512_VBMI=ON
  _switchyard_has avx512_bf16 avx512bf16 && export GGML_AVX512_BF16=ON
fi
_switchyard_has avx_vnni avxvnni && export GGML_AVX_VNNI=ON
unset -f _switchyard_has
unset _switchyard_cpuinfo
true
