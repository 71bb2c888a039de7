//! Where models come from and where they live.
//!
//! Invariant: a file named `<id>.gguf` in the cache has been verified (size
//! and sha256) and was moved there by one atomic rename. An interrupted or
//! corrupt pull leaves only a `.pull-*` temporary directory, which is never
//! mistaken for a model and is cleaned up on drop.

mod catalog;
mod pull;

use std::path::{Path, PathBuf};

pub use catalog::{catalog, find, CatalogEntry, Part, DEFAULT_MODEL};
pub use pull::{pull, Progress, PullError};

/// The model cache: `$SWITCHYARD_MODELS_DIR`, else `~/.cache/switchyard/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("switchyard").join("models")
}

/// Where a verified copy of catalog model `id` lives in `cache`.
pub fn cached_path(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("{id}.gguf"))
}

/// A model named on the command line or in config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A catalog id, fetched on demand.
    Catalog(CatalogEntry),
    /// A GGUF file used in place.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("`{0}` is neither a catalog model ({1}) nor an existing GGUF file")]
    Unknown(String, String),
}

impl ModelSpec {
    /// A catalog id wins; anything else must be an existing file.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        if let Some(entry) = find(spec) {
            return Ok(Self::Catalog(entry));
        }
        let path = PathBuf::from(spec);
        if path.is_file() {
            return Ok(Self::File(path));
        }
        let ids: Vec<_> = catalog().iter().map(|e| e.id).collect();
        Err(SpecError::Unknown(spec.to_string(), ids.join(", ")))
    }

    /// The id clients use in `model`: the catalog id, or the file stem.
    pub fn id(&self) -> String {
        match self {
            Self::Catalog(e) => e.id.to_string(),
            Self::File(p) => {
                p.file_stem().map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned())
            }
        }
    }

    /// The local file, pulling catalog models that are not cached yet.
    pub fn ensure(&self, cache: &Path, progress: Progress) -> Result<PathBuf, PullError> {
        match self {
            Self::File(p) => Ok(p.clone()),
            Self::Catalog(e) => {
                let path = cached_path(cache, e.id);
                if path.is_file() {
                    Ok(path)
                } else {
                    pull(e, cache, progress)
                }
            }
        }
    }
}
