//! `scripts/cpu-flags.sh`, sourced with a fake /proc/cpuinfo
//! (`SWITCHYARD_CPUINFO`): which GGML_* switches it exports for which CPU.
//! The flag lines are abridged from real CPUs, in the kernel's spellings.

use std::collections::BTreeMap;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cpu-flags.sh");

/// The GGML_* variables the script exports given this cpuinfo text (`None`: no file at all).
fn exported(cpuinfo: Option<&str>) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpuinfo");
    if let Some(text) = cpuinfo {
        std::fs::write(&path, text).unwrap();
    }
    let mut cmd = Command::new("bash");
    // `set -e` as the scripts that source it have: sourcing must not fail on a CPU without a feature.
    cmd.args(["-c", "set -euo pipefail; source \"$1\"; env", "bash", SCRIPT]).env("SWITCHYARD_CPUINFO", &path);
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("GGML_")) {
        cmd.env_remove(name);
    }
    let out = cmd.output().expect("run bash");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("GGML_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn cpu(flags: &str) -> String {
    format!("processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse sse2 avx avx2 fma f16c {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse sse2 avx avx2 fma f16c {flags}\n")
}

fn on(names: &[&str]) -> BTreeMap<String, String> {
    names.iter().map(|n| (n.to_string(), "ON".to_string())).collect()
}

#[test]
fn each_avx512_feature_is_found_under_the_kernels_spelling() {
    // Ice Lake server: VBMI as the kernel spells it (avx512vbmi), VNNI, no BF16.
    let ice_lake = cpu("avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg avx512_vpopcntdq");
    assert_eq!(exported(Some(&ice_lake)), on(&["GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI"]));
    // Sapphire Rapids: all of them, AVX-VNNI too; AMX stays off.
    let sapphire_rapids =
        cpu("avx_vnni avx512_bf16 avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi avx512_vbmi2 avx512_vnni amx_bf16 amx_tile amx_int8");
    assert_eq!(
        exported(Some(&sapphire_rapids)),
        on(&["GGML_AVX512", "GGML_AVX512_BF16", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX_VNNI"])
    );
    // VBMI2 alone is not VBMI: names match as whole words.
    assert_eq!(exported(Some(&cpu("avx512f avx512_vbmi2"))), on(&["GGML_AVX512"]));
}

#[test]
fn a_cpu_without_avx512f_gets_no_avx512_switch() {
    // Zen 3: AVX2 only.
    assert_eq!(exported(Some(&cpu("sha_ni vaes vpclmulqdq"))), BTreeMap::new());
    // AVX-512 sub-features are ignored without the foundation; AVX-VNNI (Alder Lake) stands alone.
    assert_eq!(exported(Some(&cpu("avx512vbmi avx512_vnni avx_vnni"))), on(&["GGML_AVX_VNNI"]));
    // No cpuinfo at all: nothing, and no failure.
    assert_eq!(exported(None), BTreeMap::new());
}
