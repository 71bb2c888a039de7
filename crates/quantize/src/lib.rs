//! A new quantization path of a model, made by llama.cpp's own quantizer
//! (`llama_model_quantize`, the code behind its `llama-quantize` tool) from
//! a GGUF file, so that the bake-off compares files this build can load.
//!
//! Invariants: the result is written beside `out` under a `.partial` name
//! and renamed only once the quantizer returned success, so a file at `out`
//! is always whole; the source's own quantization is read from its header
//! and reported, because a path derived from an already-quantized file
//! (requantization) is not the same experiment as one made from full
//! precision weights.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod gguf;

use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use gguf::{file_type_name, read_file_type};

/// The quantization types offered, with llama.cpp's `llama_ftype` numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantType {
    pub name: &'static str,
    ftype: u32,
    /// About how many bits a weight takes (llama.cpp's figures), to tell
    /// the user what the file will weigh.
    pub bits: f32,
}

impl QuantType {
    pub const ALL: [QuantType; 12] = [
        QuantType { name: "Q3_K_M", ftype: 12, bits: 3.9 },
        QuantType { name: "Q4_0", ftype: 2, bits: 4.5 },
        QuantType { name: "Q4_1", ftype: 3, bits: 5.0 },
        QuantType { name: "Q4_K_S", ftype: 14, bits: 4.6 },
        QuantType { name: "Q4_K_M", ftype: 15, bits: 4.9 },
        QuantType { name: "IQ4_NL", ftype: 25, bits: 4.5 },
        QuantType { name: "Q5_0", ftype: 8, bits: 5.5 },
        QuantType { name: "Q5_K_S", ftype: 16, bits: 5.5 },
        QuantType { name: "Q5_K_M", ftype: 17, bits: 5.7 },
        QuantType { name: "Q6_K", ftype: 18, bits: 6.6 },
        QuantType { name: "Q8_0", ftype: 7, bits: 8.5 },
        QuantType { name: "F16", ftype: 1, bits: 16.0 },
    ];
}

impl std::str::FromStr for QuantType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.name.eq_ignore_ascii_case(s)).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|t| t.name).collect();
            format!("unknown quantization type `{s}`; use one of {}", known.join(", "))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not a GGUF file this build can read: {1}")]
    NotGguf(PathBuf, String),
    #[error("{out} exists; remove it or choose another --out")]
    Exists { out: PathBuf },
    #[error("llama.cpp's quantizer failed on {src} (status {status}); nothing was written to {out}")]
    Failed { src: PathBuf, out: PathBuf, status: u32 },
}

/// What a quantization made.
#[derive(Debug, Clone)]
pub struct Quantized {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub quant: QuantType,
    /// The source's own type (`general.file_type`), e.g. `Q4_K_M`, `F16`.
    pub source_type: String,
    /// The source was already quantized below 16 bits: this path is a
    /// requantization, with the source's rounding errors in it.
    pub requantized: bool,
    pub seconds: f64,
}

/// Quantizes `src` to `quant` at `out` with `threads` threads, calling
/// `progress` with the bytes written so far about five times a second.
pub fn quantize(
    src: &Path,
    out: &Path,
    quant: QuantType,
    threads: u32,
    mut progress: impl FnMut(u64),
) -> Result<Quantized, QuantizeError> {
    if out.exists() {
        return Err(QuantizeError::Exists { out: out.to_path_buf() });
    }
    let source = read_file_type(src)?;
    let partial = out.with_extension("gguf.partial");
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| QuantizeError::Io(p.to_path_buf(), std::io::Error::other("path holds a NUL byte")))
    };
    let (c_src, c_out) = (c_path(src)?, c_path(&partial)?);
    // llama.cpp's global state (and its log sink, silenced) before any call.
    switchyard_engine::llama_backend();
    let began = Instant::now();
    let nthread = i32::try_from(threads.max(1)).unwrap_or(1);
    let worker = std::thread::spawn(move || run_quantizer(&c_src, &c_out, quant.ftype, nthread));
    while !worker.is_finished() {
        progress(std::fs::metadata(&partial).map_or(0, |m| m.len()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = worker.join().unwrap_or(u32::MAX);
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(QuantizeError::Failed { src: src.to_path_buf(), out: out.to_path_buf(), status });
    }
    let (bytes, sha256) = sha256_file(&partial)?;
    progress(bytes);
    std::fs::rename(&partial, out).map_err(|e| QuantizeError::Io(out.to_path_buf(), e))?;
    Ok(Quantized {
        path: out.to_path_buf(),
        bytes,
        sha256,
        quant,
        requantized: !matches!(source, 0 | 1 | 32),
        source_type: file_type_name(source).to_string(),
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// The quantizer itself; 0 is success.
fn run_quantizer(src: &CString, out: &CString, ftype: u32, nthread: i32) -> u32 {
    #[expect(unsafe_code, reason = "llama.cpp's quantizer has no safe wrapper; see SAFETY")]
    // SAFETY: both functions are plain C calls into the llama.cpp build the
    // engine links. The default params are a value; the pointers in them
    // (imatrix, overrides, pruned layers) stay null, which the quantizer
    // reads as "none". `src` and `out` are NUL-terminated strings that
    // outlive the call, and `params` lives on this stack frame throughout.
    unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = nthread;
        params.ftype = ftype;
        // Every catalog model ships already quantized; without this the
        // quantizer refuses them (the report says the path is derived).
        params.allow_requantize = true;
        llama_cpp_sys_2::llama_model_quantize(src.as_ptr(), out.as_ptr(), &params)
    }
}

/// Size and sha256 of a file, read once.
pub fn sha256_file(path: &Path) -> Result<(u64, String), QuantizeError> {
    let io = |e| QuantizeError::Io(path.to_path_buf(), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let (mut hasher, mut buf, mut total) = (Sha256::new(), vec![0u8; 1 << 20], 0u64);
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_by_name_in_any_case_and_unknown_ones_list_the_known() {
        assert_eq!("q8_0".parse::<QuantType>().map(|t| t.ftype), Ok(7));
        assert_eq!("Q4_K_M".parse::<QuantType>().map(|t| t.ftype), Ok(15));
        let e = "Q9".parse::<QuantType>().unwrap_err();
        assert!(e.contains("Q5_K_M") && e.contains("Q4_0"), "{e}");
    }
}
