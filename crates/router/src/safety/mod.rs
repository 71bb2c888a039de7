//! The safety classifier: a linear head over a model's embedding of the
//! prompt, computed before any generation (the gateway embeds; everything
//! here is pure). It gives each request a probability of being unsafe and
//! the most likely unsafe category; rules test it with
//! `when = { unsafe = { above = T, categories = [...] } }`, where `T` comes
//! from `switchyard safety calibrate` on the safety set ([`train`] fits the
//! head, [`measure`] draws the curve and picks the threshold).
//!
//! The policy carries the head itself (`[safety]`, weights as base64 of
//! little-endian f32), so a version is the whole classifier: applying,
//! rolling back or following a version on another replica changes the head
//! and the thresholds together, never one without the other.

pub mod measure;
pub mod train;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::policy::{invalid, PolicyError};

/// The class every head lists first: the request is fine.
pub const SAFE: &str = "safe";

/// The `[safety]` section as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyFile {
    /// The model whose embedding the head reads (a catalog id or a GGUF
    /// path, as routes name models): the server loads it if no route does.
    pub model: String,
    /// The prompt's last tokens that are embedded: bounds the time the
    /// classifier adds before the first token.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// How the prompt's hidden states become one vector.
    #[serde(default)]
    pub pooling: Pooling,
    /// A system message asking about the prompt (which then goes in the
    /// user's turn of the model's chat template); with `last` pooling the
    /// head reads the model's state as it starts to answer it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubric: Option<String>,
    /// When a request the classifier judged safe gets a refusal from a
    /// cascade's fast route, escalate it (the answer is over-refused)
    /// instead of sending the refusal.
    #[serde(default)]
    pub escalate_over_refusals: bool,
    pub head: HeadFile,
    /// How the head and thresholds were chosen (written by calibrate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<measure::SafetyCalibration>,
}

/// See `switchyard_engine::Pooling`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Mean,
    Last,
}

/// The most prompt tokens a policy may have embedded: the classifier's
/// context is sized by it.
pub const MAX_EMBEDDED_TOKENS: usize = 4096;

fn default_max_tokens() -> usize {
    256
}

/// A softmax head over standardised embedding features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadFile {
    /// Class names, [`SAFE`] first; the others are the unsafe categories.
    pub classes: Vec<String>,
    pub dim: usize,
    /// Per-feature mean and standard deviation of the training embeddings.
    pub mean: String,
    pub scale: String,
    /// `classes × dim` weights, class by class.
    pub weights: String,
    pub bias: Vec<f64>,
}

/// A head ready to score: decoded and checked (or, by default, empty: a
/// placeholder until one is fitted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Head {
    pub classes: Vec<String>,
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    /// One row of `dim` per class.
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f64>,
}

/// What the classifier says of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyVerdict {
    /// Probability that the request is unsafe: 1 − P(safe).
    pub score: f64,
    /// The most likely unsafe category (even when the score is low).
    pub category: String,
}

/// The compiled `[safety]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Safety {
    pub file: SafetyFile,
    pub head: Head,
}

impl Safety {
    pub(crate) fn compile(file: &SafetyFile) -> Result<Self, PolicyError> {
        if file.max_tokens == 0 || file.max_tokens > MAX_EMBEDDED_TOKENS {
            return Err(invalid(
                "safety.max_tokens",
                format!("embed between 1 and {MAX_EMBEDDED_TOKENS} tokens of the prompt (256 is the default)"),
            ));
        }
        let head = Head::decode(&file.head)?;
        Ok(Self { file: file.clone(), head })
    }

    /// The unsafe categories the head knows.
    pub fn categories(&self) -> &[String] {
        &self.head.classes[1..]
    }
}

fn floats(key: &str, text: &str, len: usize) -> Result<Vec<f32>, PolicyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| invalid(key, format!("not base64 ({e}); rewrite the head with `switchyard safety calibrate`")))?;
    if bytes.len() != len * 4 {
        return Err(invalid(key, format!("holds {} floats, expected {len}", bytes.len() / 4)));
    }
    let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(invalid(key, "holds a value that is not a finite number"));
    }
    Ok(values)
}

/// Base64 of little-endian f32s: how a head's vectors are written.
pub fn encode_floats(values: impl IntoIterator<Item = f32>) -> String {
    let bytes: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Head {
    fn decode(f: &HeadFile) -> Result<Self, PolicyError> {
        if f.classes.first().map(String::as_str) != Some(SAFE) || f.classes.len() < 2 {
            return Err(invalid(
                "safety.head.classes",
                format!("list `{SAFE}` first, then at least one unsafe category"),
            ));
        }
        if f.dim == 0 {
            return Err(invalid("safety.head.dim", "the embedding size of the head's model, at least 1"));
        }
        let n = f.classes.len();
        if f.bias.len() != n || f.bias.iter().any(|b| !b.is_finite()) {
            return Err(invalid("safety.head.bias", format!("one finite number per class ({n})")));
        }
        let mean = floats("safety.head.mean", &f.mean, f.dim)?;
        let scale = floats("safety.head.scale", &f.scale, f.dim)?;
        if scale.iter().any(|s| *s <= 0.0) {
            return Err(invalid("safety.head.scale", "every scale must be > 0"));
        }
        let flat = floats("safety.head.weights", &f.weights, f.dim * n)?;
        let weights = flat.chunks_exact(f.dim).map(<[f32]>::to_vec).collect();
        Ok(Self { classes: f.classes.clone(), mean, scale, weights, bias: f.bias.clone() })
    }

    pub fn encode(&self) -> HeadFile {
        HeadFile {
            classes: self.classes.clone(),
            dim: self.mean.len(),
            mean: encode_floats(self.mean.iter().copied()),
            scale: encode_floats(self.scale.iter().copied()),
            weights: encode_floats(self.weights.iter().flatten().copied()),
            bias: self.bias.clone(),
        }
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Class probabilities of one embedding; `None` if its size is not the head's.
    pub fn probabilities(&self, embedding: &[f32]) -> Option<Vec<f64>> {
        if embedding.len() != self.dim() {
            return None;
        }
        let x: Vec<f64> =
            embedding.iter().zip(self.mean.iter().zip(&self.scale)).map(|(v, (m, s))| f64::from((v - m) / s)).collect();
        let logits: Vec<f64> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| b + w.iter().zip(&x).map(|(w, x)| f64::from(*w) * x).sum::<f64>())
            .collect();
        Some(softmax(&logits))
    }

    /// `None` for an embedding of the wrong size or one that gives no
    /// finite score (the caller fails closed).
    pub fn verdict(&self, embedding: &[f32]) -> Option<SafetyVerdict> {
        let p = self.probabilities(embedding)?;
        if p.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let (best, _) =
            p.iter().enumerate().skip(1).fold((1, f64::MIN), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc });
        Some(SafetyVerdict { score: (1.0 - p[0]).clamp(0.0, 1.0), category: self.classes[best].clone() })
    }
}

pub(crate) fn softmax(logits: &[f64]) -> Vec<f64> {
    let top = logits.iter().copied().fold(f64::MIN, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// `when.unsafe`: the classifier's score is above `above` and, if
/// categories are listed, its category is one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsafeWhen {
    pub above: f64,
    #[serde(default)]
    pub categories: Vec<String>,
}

impl UnsafeWhen {
    /// A request the classifier did not judge matches no `unsafe` condition
    /// (the gateway never routes such a request: it fails closed first).
    pub fn holds(&self, verdict: Option<&SafetyVerdict>) -> bool {
        verdict.is_some_and(|v| {
            v.score > self.above && (self.categories.is_empty() || self.categories.contains(&v.category))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            classes: vec![SAFE.into(), "violence".into(), "self_harm".into()],
            mean: vec![0.0, 0.0],
            scale: vec![1.0, 2.0],
            weights: vec![vec![0.0, 0.0], vec![2.0, 0.0], vec![0.0, 2.0]],
            bias: vec![1.0, 0.0, 0.0],
        }
    }

    #[test]
    fn a_head_survives_its_encoding_and_scores() {
        let h = head();
        let back = Head::decode(&h.encode()).unwrap();
        assert_eq!(back, h);
        let calm = h.verdict(&[0.0, 0.0]).unwrap();
        assert!(calm.score < 0.5, "{calm:?}");
        let v = h.verdict(&[0.0, 8.0]).unwrap();
        assert_eq!(v.category, "self_harm");
        assert!(v.score > 0.9, "{v:?}");
        assert!(h.verdict(&[1.0]).is_none(), "a wrong-sized embedding is not scored");
        assert!(h.verdict(&[f32::NAN, 0.0]).is_none(), "nor one that gives no finite score");
    }

    #[test]
    fn a_broken_head_names_its_key() {
        let mut f = head().encode();
        f.weights = encode_floats([1.0, 2.0]);
        let e = Head::decode(&f).unwrap_err();
        assert!(e.to_string().contains("safety.head.weights"), "{e}");
        let mut f = head().encode();
        f.classes[0] = "violence".into();
        assert!(Head::decode(&f).unwrap_err().to_string().contains("safety.head.classes"));
        let mut f = head().encode();
        f.scale = encode_floats([1.0, f32::NAN]);
        assert!(Head::decode(&f).unwrap_err().to_string().contains("safety.head.scale"));
    }

    #[test]
    fn unsafe_conditions_read_score_and_category() {
        let v = SafetyVerdict { score: 0.7, category: "self_harm".into() };
        let any = UnsafeWhen { above: 0.5, categories: vec![] };
        let harm = UnsafeWhen { above: 0.5, categories: vec!["self_harm".into()] };
        let other = UnsafeWhen { above: 0.5, categories: vec!["violence".into()] };
        assert!(any.holds(Some(&v)) && harm.holds(Some(&v)) && !other.holds(Some(&v)));
        assert!(!UnsafeWhen { above: 0.7, categories: vec![] }.holds(Some(&v)), "strictly above");
        assert!(!any.holds(None));
    }
}
