//! What one variant measured, as a bake-off directory keeps it:
//! `NAME/variant.json` (the spec, file and memory), `NAME/sweep/sweep.json`
//! (the bench at each concurrency) and `NAME/eval/scorecard.json` (the eval
//! set). Each step writes its own file, so a run can be resumed and a page
//! re-rendered from the directory alone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_bench::sweep::Sweep;
use switchyard_eval::scorecard::{Scorecard, Slice};

use crate::variant::Variant;

/// Written once the variant's server is stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Served {
    pub variant: Variant,
    /// The GGUF file's size and declared type, where the variant has one.
    pub file_bytes: Option<u64>,
    pub file_type: Option<String>,
    /// The serving process's peak resident memory (`VmHWM`), where this
    /// machine ran it.
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub served: Served,
    pub sweep: Option<Sweep>,
    pub scorecard: Option<Scorecard>,
}

/// Where a variant's steps write.
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(root: &Path, name: &str) -> Self {
        Self { dir: root.join(name) }
    }
    pub fn served(&self) -> PathBuf {
        self.dir.join("variant.json")
    }
    pub fn sweep_dir(&self) -> PathBuf {
        self.dir.join("sweep")
    }
    pub fn sweep(&self) -> PathBuf {
        self.sweep_dir().join("sweep.json")
    }
    pub fn eval_dir(&self) -> PathBuf {
        self.dir.join("eval")
    }
    pub fn scorecard(&self) -> PathBuf {
        self.eval_dir().join("scorecard.json")
    }
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

impl Outcome {
    /// Reads a variant's directory; `None` if it was never served.
    pub fn load(root: &Path, name: &str) -> anyhow::Result<Option<Self>> {
        let paths = Paths::new(root, name);
        let Some(served) = read::<Served>(&paths.served())? else { return Ok(None) };
        Ok(Some(Self { served, sweep: read(&paths.sweep())?, scorecard: read(&paths.scorecard())? }))
    }

    pub fn name(&self) -> &str {
        &self.served.variant.name
    }

    /// The eval's slice over everything.
    pub fn overall(&self) -> Option<&Slice> {
        let card = self.scorecard.as_ref()?;
        card.slices.iter().find(|s| s.family == "all" && s.difficulty == "all")
    }

    pub fn level(&self, concurrency: usize) -> Option<&switchyard_bench::sweep::Level> {
        self.sweep.as_ref()?.levels.iter().find(|l| l.concurrency == concurrency)
    }
}
