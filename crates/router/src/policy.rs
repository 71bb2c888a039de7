//! The policy file: routes, data classes, safety categories, ordered rules.
//!
//! Loading validates everything a decision will rely on, so [`crate::decide`]
//! never meets a dangling route name or an invalid pattern. Errors name the
//! key at fault and say how to fix it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::budget::{ContextBudget, LaneConfig};
use crate::calibrate::Calibration;
use crate::confidence::Signal;
use crate::features::DifficultyModel;
use crate::protect::{Protect, ProtectFile};
use crate::safety::{Safety, SafetyFile, SafetyVerdict, UnsafeWhen};

/// How sensitive a prompt's data is. Ordered: a route allowing `Regulated`
/// data must say so explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    Public,
    Internal,
    Regulated,
}

impl DataClass {
    pub const ALL: [DataClass; 3] = [DataClass::Public, DataClass::Internal, DataClass::Regulated];

    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Public => "public",
            DataClass::Internal => "internal",
            DataClass::Regulated => "regulated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    #[default]
    Interactive,
    Batch,
    Fallback,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Interactive, Lane::Batch, Lane::Fallback];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Batch => "batch",
            Lane::Fallback => "fallback",
        }
    }
}

/// Reads the words `as_str` writes (what headers, flags and stored keys
/// carry); the error lists them.
macro_rules! from_word {
    ($($t:ty: $what:literal),*) => {$(
        impl std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
                    let known: Vec<_> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("unknown {} `{s}`; use one of {}", $what, known.join(", "))
                })
            }
        }
    )*};
}
from_word!(DataClass: "data class", Lane: "lane");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// `embedded` (a model this process runs) or `upstream` (an OpenAI-compatible URL).
    pub backend: BackendKind,
    pub model: String,
    #[serde(default)]
    pub url: Option<String>,
    /// Instead of `url`: several base URLs serving the same model (engine
    /// nodes: other switchyard servers, vLLM, llama-server). The route
    /// sends each request to the one with the fewest in flight, and takes
    /// one out while its own breaker is open.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Environment variable holding the upstream's API key; never the key itself.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A PEM file of CA certificates to trust for this upstream, beside the
    /// system's store and the public roots (a private vLLM behind an
    /// internal CA). Read when the server starts.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub lane: Lane,
    pub allowed_classes: Vec<DataClass>,
    /// Routes tried in order when this one fails.
    #[serde(default)]
    pub fallback: Vec<String>,
    #[serde(default = "default_ttft_ms")]
    pub ttft_timeout_ms: u64,
    #[serde(default = "default_total_ms")]
    pub total_timeout_ms: u64,
    /// A stream that sends nothing for longer than this is cut off with an
    /// error event (it has already started, so it cannot fall back).
    #[serde(default = "default_stall_ms")]
    pub stall_timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryBudget,
    #[serde(default)]
    pub breaker: Breaker,
    /// A system prompt this route adds to every request it is sent (before
    /// the client's own, in one leading system message): a prompt template
    /// versioned, applied and rolled back with the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// This route's context budget, replacing its lane's: how a policy
    /// grants a long context to one route only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextBudget>,
}

impl Route {
    /// The base URLs of an upstream route: its `url`, or its `urls`.
    pub fn upstream_urls(&self) -> Vec<&str> {
        self.url.iter().chain(&self.urls).map(String::as_str).collect()
    }
}

/// Retries of this route allowed as a fraction of its traffic, so an outage
/// cannot multiply the load on it (no retry storm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    /// Each request to the route earns this many retries (0 disables retries).
    pub ratio: f64,
    /// Retries always allowed per second, on top of `ratio`.
    pub min_per_second: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { ratio: 0.1, min_per_second: 1.0 }
    }
}

/// Circuit breaker: opens after `consecutive_failures` in a row, or when
/// at least `error_ratio` of the last `window` requests failed; stays open
/// for `open_ms`, then one probe request decides whether it closes again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    pub consecutive_failures: u32,
    /// Failure share that opens the breaker (1 = only all-failing windows; 0 disables the ratio).
    pub error_ratio: f64,
    /// Requests the ratio is judged over; it is not judged until the window is full.
    pub window: u32,
    pub open_ms: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { consecutive_failures: 5, error_ratio: 0.5, window: 20, open_ms: 10_000 }
    }
}

fn default_ttft_ms() -> u64 {
    10_000
}
fn default_total_ms() -> u64 {
    120_000
}
fn default_stall_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Embedded,
    Upstream,
}

/// Conditions of a rule; all given ones must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Any of these safety categories was detected.
    #[serde(default)]
    pub categories: Vec<String>,
    /// The prompt's data class is at least this.
    #[serde(default)]
    pub data_class: Option<DataClass>,
    #[serde(default)]
    pub lane: Option<Lane>,
    /// The request belongs to this workload family.
    #[serde(default)]
    pub family: Option<String>,
    /// The safety classifier (`[safety]`) scores the request above a
    /// threshold, in one of these categories if any are listed.
    #[serde(default, rename = "unsafe", skip_serializing_if = "Option::is_none")]
    pub unsafe_: Option<UnsafeWhen>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// Answer with a fixed refusal.
    Refuse { message: String },
    /// Queue for a human; the client gets a handoff id.
    Handoff { message: String },
    /// Send to this route.
    Route { route: String },
    /// Prompt difficulty score at or above `threshold` goes to `escalate`, below to `fast`.
    Difficulty { fast: String, escalate: String, threshold: f64 },
    /// Answer on `fast` (an embedded route, which always has logprobs); if
    /// the answer's confidence `signal` is below `threshold`, discard it and
    /// answer on `escalate`. Streams hold back the first `hold_tokens`
    /// tokens and judge on those; non-streaming answers are judged whole.
    Cascade {
        fast: String,
        escalate: String,
        #[serde(default)]
        signal: Signal,
        threshold: f64,
        #[serde(default = "default_hold_tokens")]
        hold_tokens: usize,
        /// What a `verify_*` cascade does when every verifier slot of the
        /// escalation model is busy (`max-verifies` bounds them, since each
        /// verify takes one of the engine's sequences while it scores).
        #[serde(default)]
        when_verifier_busy: VerifierBusy,
    },
}

/// The answer to a verify cascade that finds no free verifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifierBusy {
    /// Treat the fast answer as unchecked, so it escalates.
    #[default]
    Escalate,
    /// Answer 429 with `Retry-After`; the client tries again later.
    Reject,
}

impl Action {
    /// Refusals and handoffs: they hold even for a request that forces a route.
    pub fn is_safety(&self) -> bool {
        matches!(self, Self::Refuse { .. } | Self::Handoff { .. })
    }
}

fn default_hold_tokens() -> usize {
    16
}

/// Mirror a sample of a rule's traffic to a candidate route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    pub route: String,
    /// Share of matching requests mirrored, chosen by request hash.
    pub fraction: f64,
}

/// A kind of work (support, RAG Q&A, extraction, code, agentic...) with its
/// latency need and data boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub name: String,
    /// The family's time-to-first-token budget: a route's TTFT timeout is
    /// cut to it, so a slow route fails over in time.
    #[serde(default)]
    pub max_ttft_ms: Option<u64>,
    /// The family's end-to-end budget: an answer that took longer from
    /// arrival to its last byte is outside the SLA (it is not cut off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_e2e_ms: Option<u64>,
    /// The share of failed requests the family tolerates over a window: its
    /// error budget, judged per route in the SLA compliance report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Requests of this family are at least this class of data.
    #[serde(default = "public")]
    pub boundary: DataClass,
    /// Prompts matching any of these belong to the family (a request can
    /// also name its family in a header).
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Caps the context budget of whatever route the family's requests take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextBudget>,
}

fn public() -> DataClass {
    DataClass::Public
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub when: When,
    pub then: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: String,
    default_route: String,
    routes: Vec<Route>,
    /// Data class → patterns that put a prompt in it.
    #[serde(default)]
    classes: BTreeMap<DataClass, Vec<String>>,
    /// Safety category → patterns that flag a prompt.
    #[serde(default)]
    categories: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    difficulty: DifficultyModel,
    #[serde(default)]
    families: Vec<Family>,
    /// Settings per lane: its default context budget.
    #[serde(default)]
    lanes: BTreeMap<Lane, LaneConfig>,
    /// Rule id → how its threshold was calibrated (written by `switchyard calibrate`).
    #[serde(default)]
    calibration: BTreeMap<String, Calibration>,
    /// Detectors of personal data and secrets, and what their findings do.
    #[serde(default)]
    protect: ProtectFile,
    /// The safety classifier that `when.unsafe` conditions read.
    #[serde(default)]
    safety: Option<SafetyFile>,
}

/// A loaded, validated policy. Its [`Policy::id`] is the version label plus
/// a content hash, so two different files never share an id.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: String,
    pub sha256: String,
    /// The file as given: what a store keeps as this version.
    text: Arc<str>,
    pub version: String,
    pub default_route: String,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub difficulty: DifficultyModel,
    pub families: Vec<Family>,
    pub lanes: BTreeMap<Lane, LaneConfig>,
    pub calibration: BTreeMap<String, Calibration>,
    /// The `[protect]` section, if any detector is on.
    pub protect: Option<Arc<Protect>>,
    /// The `[safety]` classifier, if the policy has one.
    pub safety: Option<Arc<Safety>>,
    pub(crate) family_patterns: Vec<Vec<Regex>>,
    pub(crate) classes: Vec<(DataClass, Vec<Regex>)>,
    pub(crate) categories: Vec<(String, Vec<Regex>)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("policy is not valid TOML for switchyard: {0}")]
    Parse(String),
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid { key: key.into(), message: message.into() }
}

impl Policy {
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        validate(&file)?;
        let compile = |key: String, patterns: &[String]| -> Result<Vec<Regex>, PolicyError> {
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    regex::RegexBuilder::new(p)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| invalid(format!("{key}[{i}]"), format!("invalid pattern: {e}")))
                })
                .collect()
        };
        let classes = file
            .classes
            .iter()
            .map(|(c, p)| Ok((*c, compile(format!("classes.{}", c.as_str()), p)?)))
            .collect::<Result<_, PolicyError>>()?;
        let categories = file
            .categories
            .iter()
            .map(|(c, p)| Ok((c.clone(), compile(format!("categories.{c}"), p)?)))
            .collect::<Result<_, PolicyError>>()?;
        let family_patterns = file
            .families
            .iter()
            .enumerate()
            .map(|(i, f)| compile(format!("families[{i}].patterns"), &f.patterns))
            .collect::<Result<_, PolicyError>>()?;
        let route_names: Vec<&str> = file.routes.iter().map(|r| r.name.as_str()).collect();
        let protect = Protect::compile(&file.protect, &route_names)?.map(Arc::new);
        let safety = file.safety.as_ref().map(Safety::compile).transpose()?;
        validate_unsafe(&file.rules, safety.as_ref())?;
        Ok(Self {
            id: format!("{}+{}", file.version, &sha256[..12]),
            sha256,
            text: text.into(),
            version: file.version,
            default_route: file.default_route,
            routes: file.routes,
            rules: file.rules,
            difficulty: file.difficulty,
            families: file.families,
            lanes: file.lanes,
            calibration: file.calibration,
            protect,
            safety: safety.map(Arc::new),
            family_patterns,
            classes,
            categories,
        })
    }

    /// The policy file this was read from, byte for byte.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Every model this policy runs in this process, as written (a catalog
    /// id or a GGUF path), each once: its embedded routes', then its safety
    /// classifier's stages'.
    pub fn embedded_models(&self) -> Vec<&str> {
        let mut models: Vec<&str> = Vec::new();
        let routes = self.routes.iter().filter(|r| r.backend == BackendKind::Embedded).map(|r| r.model.as_str());
        let safety = self.safety.iter().flat_map(|s| {
            std::iter::once(s.file.model.as_str()).chain(s.second.as_ref().map(|s| s.file.model.as_str()))
        });
        for m in routes.chain(safety) {
            if !models.contains(&m) {
                models.push(m);
            }
        }
        models
    }

    /// Whether the policy clears a request of this verdict: it scores at or
    /// below every threshold that rules reading the classifier hold its
    /// category to (whatever categories a rule lists: a high score filed
    /// under another category is still no sign that the request is fine).
    /// `false` when no rule reads the classifier.
    pub fn safety_clears(&self, verdict: &SafetyVerdict) -> bool {
        let mut thresholds =
            self.rules.iter().filter_map(|r| r.when.unsafe_.as_ref()).map(|u| u.threshold(&verdict.category));
        thresholds.next().is_some_and(|first| thresholds.fold(first, f64::min) >= verdict.score)
    }

    pub fn category_names(&self) -> impl Iterator<Item = &str> {
        self.categories.iter().map(|(c, _)| c.as_str())
    }
}

/// `when.unsafe` needs a classifier, a threshold it can cross, and
/// categories its head knows.
fn validate_unsafe(rules: &[Rule], safety: Option<&Safety>) -> Result<(), PolicyError> {
    for (i, rule) in rules.iter().enumerate() {
        let Some(u) = &rule.when.unsafe_ else { continue };
        let Some(safety) = safety else {
            return Err(invalid(
                format!("rules[{i}].when.unsafe"),
                "needs a [safety] classifier; write one with `switchyard safety calibrate`",
            ));
        };
        if !(0.0..1.0).contains(&u.above) {
            return Err(invalid(
                format!("rules[{i}].when.unsafe.above"),
                "a probability in [0, 1): requests scoring above it match",
            ));
        }
        for (c, t) in &u.above_for {
            let key = format!("rules[{i}].when.unsafe.above_for.{c}");
            if !safety.categories().contains(c) {
                return Err(invalid(
                    key,
                    format!("unknown category `{c}`; the classifier knows {}", safety.categories().join(", ")),
                ));
            }
            if !(0.0..1.0).contains(t) {
                return Err(invalid(
                    key,
                    "a probability in [0, 1): requests filed under it and scoring above it match",
                ));
            }
        }
        for (j, c) in u.categories.iter().enumerate() {
            if !safety.categories().contains(c) {
                return Err(invalid(
                    format!("rules[{i}].when.unsafe.categories[{j}]"),
                    format!("unknown category `{c}`; the classifier knows {}", safety.categories().join(", ")),
                ));
            }
        }
    }
    Ok(())
}

fn validate(f: &PolicyFile) -> Result<(), PolicyError> {
    if f.version.trim().is_empty() {
        return Err(invalid("version", "must be a non-empty label, e.g. \"2026-11-25.1\""));
    }
    if f.routes.is_empty() {
        return Err(invalid("routes", "declare at least one [[routes]] entry"));
    }
    let mut names = HashSet::new();
    for (i, r) in f.routes.iter().enumerate() {
        let key = |field: &str| format!("routes[{i}].{field}");
        if !names.insert(r.name.as_str()) {
            return Err(invalid(key("name"), format!("route `{}` is declared twice", r.name)));
        }
        if r.allowed_classes.is_empty() {
            return Err(invalid(
                key("allowed_classes"),
                "list the data classes this route may receive, e.g. [\"public\"]",
            ));
        }
        let field = if r.urls.is_empty() { "url" } else { "urls" };
        match (&r.backend, r.upstream_urls().as_slice()) {
            (BackendKind::Upstream, []) => {
                return Err(invalid(key("url"), "an upstream route needs the base URL of an OpenAI-compatible API"))
            }
            (BackendKind::Upstream, _) if r.url.is_some() && !r.urls.is_empty() => {
                return Err(invalid(key("urls"), "give either `url` (one backend) or `urls` (several), not both"))
            }
            (BackendKind::Upstream, urls)
                if urls.iter().any(|u| !(u.starts_with("http://") || u.starts_with("https://"))) =>
            {
                let url =
                    urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://"))).map_or("", |u| u);
                return Err(invalid(
                    key(field),
                    format!("`{url}` must start with http:// or https://, e.g. https://api.example.com/v1"),
                ));
            }
            (BackendKind::Embedded, [_, ..]) => {
                return Err(invalid(key(field), "an embedded route runs a model in this process; remove its url"))
            }
            (BackendKind::Embedded, _) if r.ca_file.is_some() => {
                return Err(invalid(
                    key("ca_file"),
                    "only an upstream route talks TLS; remove ca_file from this embedded route",
                ))
            }
            _ => {}
        }
        if r.stall_timeout_ms == 0 {
            return Err(invalid(
                key("stall_timeout_ms"),
                "must be at least 1: the longest gap allowed between streamed chunks",
            ));
        }
        if r.ttft_timeout_ms == 0 || r.total_timeout_ms < r.ttft_timeout_ms {
            return Err(invalid(
                key("total_timeout_ms"),
                "timeouts must be > 0 and total_timeout_ms >= ttft_timeout_ms",
            ));
        }
        if !(0.0..=1.0).contains(&r.retry.ratio) || r.retry.min_per_second.is_nan() || r.retry.min_per_second < 0.0 {
            return Err(invalid(key("retry"), "ratio must be between 0 and 1 and min_per_second >= 0"));
        }
        if r.breaker.consecutive_failures == 0 || r.breaker.open_ms == 0 || r.breaker.window == 0 {
            return Err(invalid(key("breaker"), "consecutive_failures, window and open_ms must be at least 1"));
        }
        if !(0.0..=1.0).contains(&r.breaker.error_ratio) {
            return Err(invalid(key("breaker.error_ratio"), "a share of requests, between 0 (off) and 1"));
        }
    }
    crate::budget::validate(&f.lanes, &f.routes, &f.families)?;
    let known = |name: &str| names.contains(name);
    let known_list = || f.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ");
    let check = |key: String, name: &str| {
        if known(name) {
            Ok(())
        } else {
            Err(invalid(key, format!("unknown route `{name}`; known routes: {}", known_list())))
        }
    };
    check("default_route".into(), &f.default_route)?;
    for (i, r) in f.routes.iter().enumerate() {
        for (j, fb) in r.fallback.iter().enumerate() {
            check(format!("routes[{i}].fallback[{j}]"), fb)?;
            if fb == &r.name {
                return Err(invalid(format!("routes[{i}].fallback[{j}]"), "a route cannot fall back to itself"));
            }
        }
    }
    let mut families = HashSet::new();
    for (i, fam) in f.families.iter().enumerate() {
        if !families.insert(fam.name.as_str()) {
            return Err(invalid(format!("families[{i}].name"), format!("family `{}` is declared twice", fam.name)));
        }
        if fam.max_ttft_ms == Some(0) {
            return Err(invalid(format!("families[{i}].max_ttft_ms"), "must be at least 1 (or left out for no limit)"));
        }
        if fam.max_e2e_ms == Some(0) {
            return Err(invalid(format!("families[{i}].max_e2e_ms"), "must be at least 1 (or left out for no limit)"));
        }
        if fam.max_error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(invalid(
                format!("families[{i}].max_error_rate"),
                "a share of requests, between 0 and 1 (e.g. 0.01)",
            ));
        }
    }
    let mut ids = HashSet::new();
    for (i, rule) in f.rules.iter().enumerate() {
        if let Some(fam) = &rule.when.family {
            if !families.contains(fam.as_str()) {
                return Err(invalid(
                    format!("rules[{i}].when.family"),
                    format!("unknown family `{fam}`; declare it under [[families]]"),
                ));
            }
        }
        if let Some(shadow) = &rule.shadow {
            check(format!("rules[{i}].shadow.route"), &shadow.route)?;
            if !(shadow.fraction > 0.0 && shadow.fraction <= 1.0) {
                return Err(invalid(
                    format!("rules[{i}].shadow.fraction"),
                    "must be in (0, 1]: the share of matching requests mirrored",
                ));
            }
        }
        if !ids.insert(rule.id.as_str()) {
            return Err(invalid(format!("rules[{i}].id"), format!("rule id `{}` is used twice", rule.id)));
        }
        for (j, c) in rule.when.categories.iter().enumerate() {
            if !f.categories.contains_key(c) {
                return Err(invalid(
                    format!("rules[{i}].when.categories[{j}]"),
                    format!("unknown category `{c}`; declare it under [categories]"),
                ));
            }
        }
        match &rule.then {
            Action::Route { route } => check(format!("rules[{i}].then.route"), route)?,
            Action::Difficulty { fast, escalate, threshold } => {
                check(format!("rules[{i}].then.fast"), fast)?;
                check(format!("rules[{i}].then.escalate"), escalate)?;
                if !(0.0..=1.0).contains(threshold) {
                    return Err(invalid(
                        format!("rules[{i}].then.threshold"),
                        "must be between 0 and 1 (a calibrated score)",
                    ));
                }
            }
            Action::Cascade { fast, escalate, signal, threshold, hold_tokens, .. } => {
                check(format!("rules[{i}].then.fast"), fast)?;
                check(format!("rules[{i}].then.escalate"), escalate)?;
                if f.routes.iter().any(|r| &r.name == fast && r.backend != BackendKind::Embedded) {
                    return Err(invalid(
                        format!("rules[{i}].then.fast"),
                        "a cascade's fast route must be an embedded route: its confidence comes from the engine's logprobs",
                    ));
                }
                if signal.verifies()
                    && f.routes.iter().any(|r| &r.name == escalate && r.backend != BackendKind::Embedded)
                {
                    return Err(invalid(
                        format!("rules[{i}].then.signal"),
                        "a verify signal is scored by the escalation route's model, so `escalate` must be an embedded route",
                    ));
                }
                if threshold.is_nan() || *threshold > 0.0 {
                    return Err(invalid(
                        format!("rules[{i}].then.threshold"),
                        "a logprob threshold, so <= 0 (0 is certainty)",
                    ));
                }
                if *hold_tokens == 0 {
                    return Err(invalid(
                        format!("rules[{i}].then.hold_tokens"),
                        "hold back at least 1 token to judge a stream on",
                    ));
                }
            }
            Action::Refuse { message } | Action::Handoff { message } if message.trim().is_empty() => {
                return Err(invalid(format!("rules[{i}].then.message"), "say what the client is told"));
            }
            Action::Refuse { .. } | Action::Handoff { .. } => {}
        }
    }
    for rule_id in f.calibration.keys() {
        if !ids.contains(rule_id.as_str()) {
            return Err(invalid(
                format!("calibration.{rule_id}"),
                "names no rule; calibration records are keyed by the rule id they set the threshold of",
            ));
        }
    }
    Ok(())
}
