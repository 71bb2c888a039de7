//! A policy's `[protect]` section: which detectors put a prompt in which
//! data class, and what a finding of each class does.
//!
//! - **block**: the request is refused before any route sees it (the
//!   gateway answers 400 `sensitive_data`, naming the detectors);
//! - **redact**: the finding does not raise the request's class; a route
//!   that may not receive its class gets the prompt with typed placeholders
//!   instead (`[EMAIL_1]`), restored in the answer if `restore = true`; a
//!   route that may receive it gets the prompt as sent;
//! - **local**: the request may only go to embedded routes (the class is
//!   raised too, so the data boundary still holds);
//! - no action: the class is raised and the data boundary decides.
//!
//! `[protect.output]` names detectors redacted from answers, streams too.
//! What a decision records of all this is [`Detected`]: detector, class,
//! action and count, never the matched text.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex_automata::hybrid::dfa::DFA;
use serde::{Deserialize, Serialize};

use crate::detect::{self, prefix_automaton, Custom, Detectors, Finding, Placeholders};
use crate::policy::{invalid, DataClass, PolicyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtectAction {
    Block,
    Redact,
    Local,
}

impl ProtectAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtectAction::Block => "block",
            ProtectAction::Redact => "redact",
            ProtectAction::Local => "local",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassAction {
    pub action: ProtectAction,
    /// With `redact`: put the originals back into the answer.
    #[serde(default)]
    pub restore: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomFile {
    name: String,
    class: DataClass,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    keywords: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputFile {
    #[serde(default)]
    redact: Vec<String>,
}

/// How a request's payload (its messages) is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    None,
    /// With every built-in detector's findings replaced by placeholders.
    Redacted,
    /// Whole, sealed with the server's payload key (AES-256-GCM).
    Encrypted,
}

/// Which payloads are kept, how, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadRule {
    /// Routes it applies to (the one that answered); none: every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Data classes it applies to; none: every class.
    #[serde(default)]
    pub classes: Vec<DataClass>,
    pub keep: Keep,
    /// Deleted this long after the request.
    #[serde(default = "thirty")]
    pub retention_days: f64,
}

fn thirty() -> f64 {
    30.0
}

/// How long shadow copies and resolved handoffs are kept; none: forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub shadows_days: Option<f64>,
    pub handoffs_days: Option<f64>,
}

/// What is done to a prompt's text before anything reads it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRules {
    /// Remove control characters other than newline, carriage return and tab.
    #[serde(default = "yes")]
    pub strip_control: bool,
    /// Most messages in one request; more is a 400.
    pub max_messages: Option<usize>,
    /// Most characters in one message; more is a 400.
    pub max_message_chars: Option<usize>,
    /// Defang chat-template markers (`<|im_start|>`, `[INST]`, `<<SYS>>`,
    /// …) a prompt could use to forge a turn: `<|im_start|>` becomes
    /// `<\u{2060}|im_start|\u{2060}>`, which no tokenizer reads as a marker.
    #[serde(default)]
    pub neutralise_injection: bool,
}

fn yes() -> bool {
    true
}

/// The markers chat templates use for turns and roles (ChatML, Llama 2/3,
/// Mistral, Phi, Gemma, end-of-text tokens): spelled out in a user's text,
/// a model may read them as the template's own.
const TEMPLATE_MARKERS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "</s>",
];

/// What [`sanitise`] changed in a text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sanitised {
    pub control_stripped: usize,
    pub markers_neutralised: usize,
}

/// Applies `rules` to one message's text.
pub fn sanitise(text: &str, rules: &InputRules) -> (String, Sanitised) {
    let mut done = Sanitised::default();
    let mut out: String = if rules.strip_control {
        text.chars()
            .filter(|c| {
                let keep = !c.is_control() || matches!(c, '\n' | '\r' | '\t');
                done.control_stripped += usize::from(!keep);
                keep
            })
            .collect()
    } else {
        text.to_string()
    };
    if rules.neutralise_injection {
        for marker in TEMPLATE_MARKERS {
            let n = out.matches(marker).count();
            if n > 0 {
                // A word joiner after the first and before the last
                // character: shown the same, tokenized apart.
                let mut chars = marker.chars();
                let (first, last) = (chars.next().unwrap_or('<'), chars.next_back().unwrap_or('>'));
                let middle: String = chars.collect();
                out = out.replace(marker, &format!("{first}\u{2060}{middle}\u{2060}{last}"));
                done.markers_neutralised += n;
            }
        }
    }
    (out, done)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProtectFile {
    /// Detector (or group) → the class its findings put a prompt in.
    #[serde(default)]
    detectors: BTreeMap<String, DataClass>,
    #[serde(default)]
    custom: Vec<CustomFile>,
    /// Class → what its findings do.
    #[serde(default)]
    actions: BTreeMap<DataClass, ClassAction>,
    #[serde(default)]
    output: OutputFile,
    /// First match wins; no match: no payload is kept.
    #[serde(default)]
    payloads: Vec<PayloadRule>,
    #[serde(default)]
    retention: Retention,
    input: Option<InputRules>,
}

/// A compiled `[protect]` section.
pub struct Protect {
    detectors: Detectors,
    /// Detector name → class, every detector of `detectors` once.
    class_of: BTreeMap<String, DataClass>,
    pub actions: BTreeMap<DataClass, ClassAction>,
    /// The output guard's detectors and their prefix automaton.
    pub output: Option<(Arc<Detectors>, Arc<DFA>)>,
    pub payloads: Vec<PayloadRule>,
    pub retention: Retention,
    pub input: Option<InputRules>,
}

impl std::fmt::Debug for Protect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protect").field("classes", &self.class_of).field("actions", &self.actions).finish()
    }
}

/// One finding in a prompt, as classification hands it on: which message,
/// where, and what the policy makes of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub message: usize,
    pub finding: Finding,
    pub class: DataClass,
    pub action: Option<ProtectAction>,
}

/// What a decision records of a detector's findings: never the text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detected {
    pub detector: String,
    pub class: DataClass,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ProtectAction>,
    pub count: usize,
}

fn known_names() -> String {
    let mut names: Vec<&str> = detect::Group::ALL.iter().map(|g| g.as_str()).collect();
    names.extend(detect::builtins().iter().map(|b| b.name));
    names.join(", ")
}

impl Protect {
    pub(crate) fn compile(file: &ProtectFile, routes: &[&str]) -> Result<Option<Self>, PolicyError> {
        for (i, rule) in file.payloads.iter().enumerate() {
            if let Some(r) = rule.routes.iter().find(|r| !routes.contains(&r.as_str())) {
                return Err(invalid(format!("protect.payloads[{i}].routes"), format!("no route `{r}` in this policy")));
            }
            if rule.retention_days.is_nan() || rule.retention_days <= 0.0 {
                return Err(invalid(format!("protect.payloads[{i}].retention_days"), "must be more than 0"));
            }
        }
        for (key, days) in
            [("shadows_days", file.retention.shadows_days), ("handoffs_days", file.retention.handoffs_days)]
        {
            if days.is_some_and(|d| d.is_nan() || d <= 0.0) {
                return Err(invalid(format!("protect.retention.{key}"), "must be more than 0"));
            }
        }
        if file.detectors.is_empty()
            && file.custom.is_empty()
            && file.output.redact.is_empty()
            && file.payloads.is_empty()
            && file.retention == Retention::default()
            && file.input.is_none()
        {
            if !file.actions.is_empty() {
                return Err(invalid("protect.actions", "no detector is on: map some in [protect.detectors]"));
            }
            return Ok(None);
        }
        let mut class_of = BTreeMap::new();
        for (name, class) in &file.detectors {
            let names = detect::expand(name).ok_or_else(|| {
                invalid(format!("protect.detectors.{name}"), format!("unknown detector; known: {}", known_names()))
            })?;
            for n in names {
                // A detector named alone wins over its group, whatever the order.
                if !class_of.contains_key(n) || detect::builtins().iter().any(|b| b.name == name) {
                    class_of.insert(n.to_string(), *class);
                }
            }
        }
        let mut custom = Vec::new();
        for (i, c) in file.custom.iter().enumerate() {
            let detector = Custom { name: c.name.clone(), patterns: c.patterns.clone(), keywords: c.keywords.clone() };
            check_custom(&format!("protect.custom[{i}]"), &detector, class_of.contains_key(&c.name))?;
            class_of.insert(c.name.clone(), c.class);
            custom.push(detector);
        }
        for (class, a) in &file.actions {
            if a.restore && a.action != ProtectAction::Redact {
                return Err(invalid(
                    format!("protect.actions.{}.restore", class.as_str()),
                    "only `redact` can restore",
                ));
            }
        }
        let builtin: Vec<&str> =
            class_of.keys().filter(|n| detect::builtins().iter().any(|b| b.name == *n)).map(String::as_str).collect();
        let detectors = Detectors::new(builtin, &custom).map_err(|e| invalid("protect.custom", e.to_string()))?;
        let output = if file.output.redact.is_empty() {
            None
        } else {
            for name in &file.output.redact {
                if detect::expand(name).is_none() {
                    return Err(invalid(
                        "protect.output.redact",
                        format!("unknown detector `{name}`; known: {}", known_names()),
                    ));
                }
            }
            let d = Detectors::new(file.output.redact.iter().map(String::as_str), &[])
                .map_err(|e| invalid("protect.output.redact", e.to_string()))?;
            let dfa = prefix_automaton(&d).map_err(|e| invalid("protect.output.redact", e))?;
            Some((Arc::new(d), Arc::new(dfa)))
        };
        Ok(Some(Self {
            detectors,
            class_of,
            actions: file.actions.clone(),
            output,
            payloads: file.payloads.clone(),
            retention: file.retention,
            input: file.input,
        }))
    }

    /// Every finding in the prompt's messages.
    pub fn inspect(&self, messages: &[String]) -> Vec<Found> {
        inspect(&self.detectors, &self.class_of, &self.actions, messages)
    }

    /// How the payload of a request of `class` answered by `route` is kept.
    pub fn payload_rule(&self, route: &str, class: DataClass) -> Option<&PayloadRule> {
        self.payloads
            .iter()
            .find(|r| {
                (r.routes.is_empty() || r.routes.iter().any(|n| n == route))
                    && (r.classes.is_empty() || r.classes.contains(&class))
            })
            .filter(|r| r.keep != Keep::None)
    }

    pub fn restores(&self, class: DataClass) -> bool {
        self.actions.get(&class).is_some_and(|a| a.restore)
    }
}

/// What a route that may receive the `allowed` classes is sent: every
/// finding the policy redacts whose class the route may not receive,
/// replaced by its placeholder (one set for the whole request, so a value
/// has one placeholder in every message). `None` when nothing is replaced.
pub fn redact_for(messages: &[String], found: &[Found], allowed: &[DataClass]) -> Option<Redacted> {
    let redact: Vec<&Found> =
        found.iter().filter(|f| f.action == Some(ProtectAction::Redact) && !allowed.contains(&f.class)).collect();
    if redact.is_empty() {
        return None;
    }
    let mut placeholders = Placeholders::default();
    let texts = messages
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let findings: Vec<Finding> = redact.iter().filter(|f| f.message == i).map(|f| f.finding.clone()).collect();
            if findings.is_empty() {
                text.clone()
            } else {
                placeholders.redact(text, &findings)
            }
        })
        .collect();
    let classes = redact.iter().map(|f| f.class).collect();
    Some(Redacted { texts, placeholders, count: redact.len(), classes })
}

/// A request's texts as one route is sent them.
#[derive(Debug, Clone)]
pub struct Redacted {
    pub texts: Vec<String>,
    pub placeholders: Placeholders,
    /// Findings replaced.
    pub count: usize,
    /// Their classes (one per finding).
    pub classes: Vec<DataClass>,
}

fn inspect(
    detectors: &Detectors,
    class_of: &BTreeMap<String, DataClass>,
    actions: &BTreeMap<DataClass, ClassAction>,
    messages: &[String],
) -> Vec<Found> {
    let mut found = Vec::new();
    for (message, text) in messages.iter().enumerate() {
        for finding in detectors.scan(text) {
            let Some(class) = class_of.get(finding.detector.as_ref()).copied() else { continue };
            let action = actions.get(&class).map(|a| a.action);
            found.push(Found { message, finding, class, action });
        }
    }
    found
}

/// A tenant's own detectors, compiled: scanned on that tenant's requests
/// beside the policy's, their findings acted on by the policy's actions
/// for their class (or, without a `[protect]` section, raising the class).
pub struct TenantLists {
    detectors: Detectors,
    class_of: BTreeMap<String, DataClass>,
    /// What it was compiled from, to tell two copies apart.
    source: String,
}

impl std::fmt::Debug for TenantLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLists").field("classes", &self.class_of).finish()
    }
}

impl PartialEq for TenantLists {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl TenantLists {
    /// `lists`: each detector and the class its findings put a prompt in.
    /// Errors name the list by its index and field.
    pub fn compile(lists: &[(Custom, String)]) -> Result<Self, PolicyError> {
        let mut class_of = BTreeMap::new();
        let mut custom = Vec::new();
        for (i, (c, class)) in lists.iter().enumerate() {
            let key = format!("custom[{i}]");
            check_custom(&key, c, class_of.contains_key(&c.name))?;
            let class: DataClass = class.to_ascii_lowercase().parse().map_err(|_| {
                invalid(format!("{key}.class"), format!("`{class}` is not public, internal or regulated"))
            })?;
            class_of.insert(c.name.clone(), class);
            custom.push(c.clone());
        }
        let detectors = Detectors::new([], &custom).map_err(|e| invalid("custom", e.to_string()))?;
        let source = format!("{lists:?}");
        Ok(Self { detectors, class_of, source })
    }

    /// The tenant's findings, acted on by `protect`'s actions if any.
    pub fn inspect(&self, protect: Option<&Protect>, messages: &[String]) -> Vec<Found> {
        let none = BTreeMap::new();
        inspect(&self.detectors, &self.class_of, protect.map_or(&none, |p| &p.actions), messages)
    }
}

/// A custom detector (a policy's or a tenant's) is named with ASCII word
/// characters (the name travels in the ASCII `x-switchyard-reason`), once
/// (`taken`: the name is in use), not after a built-in, and finds something.
fn check_custom(key: &str, c: &Custom, taken: bool) -> Result<(), PolicyError> {
    let word = !c.name.is_empty() && c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !word || taken || detect::expand(&c.name).is_some() {
        return Err(invalid(
            format!("{key}.name"),
            "name it with letters, digits and _, once, and not after a built-in detector or group",
        ));
    }
    if c.patterns.is_empty() && c.keywords.is_empty() {
        return Err(invalid(key, "give `patterns` or `keywords`"));
    }
    Ok(())
}

/// `days` as milliseconds, as retention settings are applied.
pub fn days_ms(days: f64) -> i64 {
    (days * 86_400_000.0) as i64
}

/// Findings summed by detector, for the record.
pub fn summarize(found: &[Found]) -> Vec<Detected> {
    let mut out: Vec<Detected> = Vec::new();
    for f in found {
        match out.iter_mut().find(|d| *d.detector == *f.finding.detector) {
            Some(d) => d.count += 1,
            None => out.push(Detected {
                detector: f.finding.detector.to_string(),
                class: f.class,
                action: f.action,
                count: 1,
            }),
        }
    }
    out
}
