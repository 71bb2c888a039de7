//! Data classification, workload family and safety categories, before any
//! inference.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::features::Features;
use crate::policy::{DataClass, Policy};
use crate::protect::{summarize, Detected, Found, ProtectAction, TenantLists};
use crate::safety::SafetyVerdict;

/// What the caller asserted about a request (by header or API key).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declared {
    pub data_class: Option<DataClass>,
    /// Must name one of the policy's families (the gateway checks).
    pub family: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The highest of: the class whose patterns match, the class the caller
    /// declared, the family's boundary. Detection never lowers it.
    pub data_class: DataClass,
    /// The declared family, else the first whose patterns match.
    pub family: Option<String>,
    /// Safety categories whose patterns match, in policy order.
    pub categories: Vec<String>,
    /// The `[safety]` classifier's verdict, once the gateway has run it
    /// (it needs a model, so it is not computed here).
    pub safety: Option<SafetyVerdict>,
    /// The `[protect]` detectors' findings, message by message (the
    /// gateway redacts or blocks by them); never serialized.
    #[serde(skip)]
    pub found: Vec<Found>,
    /// The findings by detector, as the decision records them.
    pub detected: Vec<Detected>,
    /// A finding's class says: embedded routes only.
    pub local_only: bool,
    pub features: Features,
    /// A number in [0, 1) fixed by the request's content: shadow sampling
    /// compares it with a fraction, so the same request is always (or
    /// never) mirrored.
    pub sample: f64,
}

/// Classifies a prompt (every message's text) under `policy`.
pub fn classify(messages: &[String], declared: &Declared, policy: &Policy) -> Classification {
    classify_with(messages, declared, policy, None)
}

/// [`classify`], with a tenant's own detectors scanned beside the policy's.
pub fn classify_with(
    messages: &[String],
    declared: &Declared,
    policy: &Policy,
    tenant: Option<&TenantLists>,
) -> Classification {
    let matches = |patterns: &[regex::Regex]| messages.iter().any(|m| patterns.iter().any(|p| p.is_match(m)));
    let mut found = policy.protect.as_ref().map(|p| p.inspect(messages)).unwrap_or_default();
    if let Some(t) = tenant {
        // Where a tenant's finding overlaps the policy's, the policy's stands.
        let own: Vec<Found> = t
            .inspect(policy.protect.as_deref(), messages)
            .into_iter()
            .filter(|o| {
                !found.iter().any(|f| {
                    f.message == o.message
                        && f.finding.range.start < o.finding.range.end
                        && o.finding.range.start < f.finding.range.end
                })
            })
            .collect();
        found.extend(own);
        found.sort_by_key(|f| (f.message, f.finding.range.start));
    }
    // A finding to be redacted does not raise the class: the routes that
    // may not receive its class never see it.
    let protected = found.iter().filter(|f| f.action != Some(ProtectAction::Redact)).map(|f| f.class).max();
    let detected = policy.classes.iter().filter(|(_, p)| matches(p)).map(|(c, _)| *c).max().max(protected);
    let family = declared.family.clone().or_else(|| {
        policy.families.iter().zip(&policy.family_patterns).find(|(_, p)| matches(p)).map(|(f, _)| f.name.clone())
    });
    let boundary = family.as_deref().and_then(|f| policy.family(f)).map(|f| f.boundary);
    let data_class = [declared.data_class, detected, boundary].into_iter().flatten().max().unwrap_or(DataClass::Public);
    let categories = policy.categories.iter().filter(|(_, p)| matches(p)).map(|(c, _)| c.clone()).collect();
    Classification {
        data_class,
        family,
        categories,
        safety: None,
        detected: summarize(&found),
        local_only: found.iter().any(|f| f.action == Some(ProtectAction::Local)),
        found,
        features: Features::of(messages),
        sample: sample_point(messages),
    }
}

fn sample_point(messages: &[String]) -> f64 {
    let mut h = Sha256::new();
    for m in messages {
        h.update(m.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
