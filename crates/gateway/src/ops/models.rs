//! The embedded models this process runs, as a set that changes with the
//! policy in force: a policy applied with a model no route ran before
//! loads it beside the others ([`Models::ensure`]), the routing switches,
//! and a model no route of the new version names is retired
//! ([`Models::retire_unused`]).
//!
//! Invariants:
//! - a request holds its routing (an `Arc`), which holds its routes'
//!   engines: a retired model keeps answering what it started, and is
//!   unloaded (its scheduler thread ends, its memory is freed) when the
//!   last of those requests ends;
//! - models given to `serve` with `--model` are pinned: never retired;
//! - a server without a loader (tests, or no cache) loads nothing new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use switchyard_engine::{Engine, EngineSettings};
use switchyard_router::Policy;

pub type Loaded = BTreeMap<String, Arc<Engine>>;

/// The id a route's `model` is loaded under: a catalog id as it is, a
/// GGUF path by its file stem (as `--model` names it).
pub fn model_id(spec: &str) -> String {
    switchyard_models::ModelSpec::parse(spec).map_or_else(|_| spec.to_string(), |s| s.id())
}

/// How models are loaded while serving: as `serve` loaded its own.
#[derive(Debug, Clone)]
pub struct Loader {
    pub settings: EngineSettings,
    /// Model id → its draft model's spec (`[drafts]`).
    pub drafts: std::collections::BTreeMap<String, String>,
    pub cache: PathBuf,
}

impl Loader {
    /// Pulls (and verifies) `spec` and its draft, if `[drafts]` names one,
    /// and loads them.
    pub fn load(&self, spec: &str, progress: switchyard_models::Progress) -> anyhow::Result<Engine> {
        let parsed = switchyard_models::ModelSpec::parse(spec)?;
        let id = parsed.id();
        let path = parsed.ensure(&self.cache, progress)?;
        let draft = match self.drafts.get(&id) {
            None => None,
            Some(draft) => {
                let draft = switchyard_models::ModelSpec::parse(draft)
                    .map_err(|e| anyhow::anyhow!("`drafts.\"{id}\"`: {e}"))?;
                Some(draft.ensure(&self.cache, progress).map_err(|e| anyhow::anyhow!("`drafts.\"{id}\"`: {e}"))?)
            }
        };
        Ok(Engine::load_with_draft(&id, &path, draft.as_deref(), self.settings.clone())?)
    }
}

pub struct Models {
    loaded: ArcSwap<Loaded>,
    loader: Option<Loader>,
    pinned: BTreeSet<String>,
}

impl Models {
    pub fn new(engines: Vec<Engine>) -> Self {
        let loaded = engines.into_iter().map(|e| (e.id().to_string(), Arc::new(e))).collect();
        Self { loaded: ArcSwap::from_pointee(loaded), loader: None, pinned: BTreeSet::new() }
    }

    /// The same models, loading more with `loader`; `pinned` are never retired.
    pub fn with_loader(self, loader: Loader, pinned: BTreeSet<String>) -> Self {
        Self { loader: Some(loader), pinned, ..self }
    }

    /// The models loaded now.
    pub fn snapshot(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// Loads each embedded model `policy` names that is not loaded yet
    /// (pulling and verifying a catalog model first); returns the ids
    /// loaded, with the file each came from. Blocks a thread of the
    /// blocking pool per model, never the runtime.
    pub async fn ensure(&self, policy: &Policy) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let have = self.snapshot();
        let wanted: BTreeSet<&str> =
            policy.embedded_models().into_iter().filter(|m| !have.contains_key(&model_id(m))).collect();
        let mut added = Vec::new();
        for spec in wanted {
            let Some(loader) = self.loader.clone() else {
                anyhow::bail!("model `{spec}` is not loaded and this server loads no models while it runs");
            };
            let spec = spec.to_string();
            tracing::info!(model = %spec, "loading a model the new policy names, beside the ones serving");
            let engine =
                tokio::task::spawn_blocking(move || loader.load(&spec, switchyard_models::Progress::Quiet)).await??;
            let (id, path) = (engine.id().to_string(), engine.path().to_path_buf());
            let engine = Arc::new(engine);
            self.loaded.rcu(|all| {
                let mut all = Loaded::clone(all);
                all.insert(id.clone(), engine.clone());
                all
            });
            added.push((id, path));
        }
        Ok(added)
    }

    /// Drops from the set each unpinned model no embedded route of
    /// `policy` names; returns their ids. Each unloads once the requests
    /// it is answering end.
    pub fn retire_unused(&self, policy: &Policy) -> Vec<String> {
        let used: BTreeSet<String> = policy.embedded_models().into_iter().map(model_id).collect();
        let retired: Vec<String> =
            self.snapshot().keys().filter(|id| !used.contains(*id) && !self.pinned.contains(*id)).cloned().collect();
        if !retired.is_empty() {
            self.loaded.rcu(|all| {
                let mut all = Loaded::clone(all);
                all.retain(|id, _| !retired.contains(id));
                all
            });
            tracing::info!(models = ?retired, "models no route uses any more: unloading once their requests end");
        }
        retired
    }
}
