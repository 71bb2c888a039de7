//! Data classification and safety categories, before any inference.

use serde::Serialize;

use crate::features::Features;
use crate::policy::{DataClass, Policy};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The highest class whose patterns match, or the class the caller
    /// declared if that is higher. Never lowered by detection.
    pub data_class: DataClass,
    /// Safety categories whose patterns match, in policy order.
    pub categories: Vec<String>,
    pub features: Features,
}

/// Classifies a prompt (every message's text) under `policy`. `declared` is
/// a class the caller asserted (header or API key); detection may raise it,
/// never lower it.
pub fn classify(messages: &[String], declared: Option<DataClass>, policy: &Policy) -> Classification {
    let detected = policy
        .classes
        .iter()
        .filter(|(_, patterns)| messages.iter().any(|m| patterns.iter().any(|p| p.is_match(m))))
        .map(|(c, _)| *c)
        .max();
    let data_class = [declared, detected].into_iter().flatten().max().unwrap_or(DataClass::Public);
    let categories = policy
        .categories
        .iter()
        .filter(|(_, patterns)| messages.iter().any(|m| patterns.iter().any(|p| p.is_match(m))))
        .map(|(c, _)| c.clone())
        .collect();
    Classification { data_class, categories, features: Features::of(messages) }
}
