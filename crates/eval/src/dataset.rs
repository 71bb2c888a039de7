//! An eval set on disk: `datasets/eval/NAME/vN/` with `manifest.toml` and
//! `items.jsonl`. Opening one checks every file against the manifest's
//! sha256, so a result always refers to exactly one dataset version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::expect::Expect;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub licence: String,
    pub items: usize,
    pub release_notes: String,
    /// File name → sha256 (hex).
    pub files: BTreeMap<String, String>,
    /// `family.difficulty` → item count.
    #[serde(default)]
    pub counts: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub id: String,
    pub family: String,
    pub difficulty: String,
    pub data_class: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub expect: Expect,
    #[serde(default)]
    pub review: bool,
}

impl Item {
    /// Identifies the item's content: a changed prompt or expectation is a
    /// different item for caching.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(serde_json::to_vec(self).expect("items serialize")))
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub items: Vec<Item>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path}: sha256 is {actual} but manifest.toml says {expected}. A published dataset version never changes: \
         put the change in a new version directory (vN+1) with its own manifest"
    )]
    Tampered { path: String, expected: String, actual: String },
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Self, DatasetError> {
        let (manifest, items_bytes) = open_verified(dir)?;
        let manifest_path = dir.join("manifest.toml");
        let invalid = |p: &Path, message: String| DatasetError::Invalid { path: p.display().to_string(), message };
        let items_path = dir.join("items.jsonl");
        let items: Vec<Item> = String::from_utf8_lossy(&items_bytes)
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| serde_json::from_str(l).map_err(|e| invalid(&items_path, format!("line {}: {e}", n + 1))))
            .collect::<Result<_, _>>()?;
        if items.len() != manifest.items {
            return Err(invalid(
                &manifest_path,
                format!("says {} items, items.jsonl has {}", manifest.items, items.len()),
            ));
        }
        if let Some(judged_only) = items.iter().find(|i| !i.expect.has_machine_check()) {
            return Err(invalid(
                &items_path,
                format!(
                    "item {}: an LLM judge may not be an item's only check; add a machine-checkable one",
                    judged_only.id
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = items.iter().find(|i| !seen.insert(i.id.as_str())) {
            return Err(invalid(&items_path, format!("item id {} appears twice", dup.id)));
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for i in &items {
            *counts.entry(format!("{}.{}", i.family, i.difficulty)).or_default() += 1;
        }
        if !manifest.counts.is_empty() && manifest.counts != counts {
            return Err(invalid(&manifest_path, format!("[counts] do not match items.jsonl: {counts:?}")));
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, items })
    }

    /// `NAME@vN`, as records name the dataset.
    /// Keeps `n` items spread evenly over the set (item `i·len/n` for each
    /// `i`), so a short run still meets every family the file interleaves.
    /// The same `n` always keeps the same items.
    pub fn spread(&mut self, n: usize) {
        let len = self.items.len();
        if n >= len {
            return;
        }
        let keep: Vec<usize> = (0..n).map(|i| i * len / n).collect();
        let mut index = 0;
        self.items.retain(|_| {
            let kept = keep.binary_search(&index).is_ok();
            index += 1;
            kept
        });
    }

    pub fn label(&self) -> String {
        format!("{}@v{}", self.manifest.name, self.manifest.version)
    }
}

/// Reads `dir/manifest.toml` and checks every file it lists against its
/// sha256; returns the manifest and the bytes of `items.jsonl`.
/// The verified manifest and the items of a set whose `items.jsonl` has
/// one `T` per line, as many as the manifest says.
pub fn open_jsonl<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<(Manifest, Vec<T>), DatasetError> {
    let (manifest, bytes) = open_verified(dir)?;
    let path = dir.join("items.jsonl").display().to_string();
    let items: Vec<T> = String::from_utf8_lossy(&bytes)
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| DatasetError::Invalid { path: path.clone(), message: format!("line {}: {e}", n + 1) })
        })
        .collect::<Result<_, _>>()?;
    if items.len() != manifest.items {
        return Err(DatasetError::Invalid {
            path,
            message: format!("manifest says {} items, items.jsonl has {}", manifest.items, items.len()),
        });
    }
    Ok((manifest, items))
}

pub fn open_verified(dir: &Path) -> Result<(Manifest, Vec<u8>), DatasetError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|source| DatasetError::Read { path: p.display().to_string(), source });
    let invalid = |p: &Path, message: String| DatasetError::Invalid { path: p.display().to_string(), message };
    let manifest_path = dir.join("manifest.toml");
    let text = String::from_utf8_lossy(&read(&manifest_path)?).into_owned();
    let manifest: Manifest = toml::from_str(&text).map_err(|e| invalid(&manifest_path, e.to_string()))?;
    if !manifest.files.contains_key("items.jsonl") {
        return Err(invalid(&manifest_path, "[files] must list items.jsonl".into()));
    }
    let mut items_bytes = Vec::new();
    for (name, expected) in &manifest.files {
        let path = dir.join(name);
        let bytes = read(&path)?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(DatasetError::Tampered {
                path: path.display().to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        if name == "items.jsonl" {
            items_bytes = bytes;
        }
    }
    Ok((manifest, items_bytes))
}
