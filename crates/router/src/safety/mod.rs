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

use std::collections::BTreeMap;

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
    /// A second, slower classifier that judges again only the requests
    /// this one is unsure of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<SecondFile>,
    /// How the head and thresholds were chosen (written by calibrate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<measure::SafetyCalibration>,
}

/// `[safety.second]`: the second stage of the classifier. A request whose
/// first-stage score falls in `band` is embedded again by this model, and
/// this head's verdict replaces the first one; every other request keeps
/// the first verdict. The better, slower model is thus paid for only where
/// the cheap one is unsure, and the rules read one score either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondFile {
    pub model: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubric: Option<String>,
    /// First-stage scores from `band[0]` (included) to `band[1]`
    /// (excluded, unless it is 1) go to this stage.
    pub band: [f64; 2],
    /// Its classes must be the first head's, in the same order.
    pub head: HeadFile,
}

/// How a stage turns a prompt into the vector its head reads: the same
/// call whether `switchyard safety calibrate` fits the head or the gateway
/// serves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Embedding<'a> {
    pub max_tokens: usize,
    pub pooling: Pooling,
    pub rubric: Option<&'a str>,
}

impl SafetyFile {
    pub fn embedding(&self) -> Embedding<'_> {
        Embedding { max_tokens: self.max_tokens, pooling: self.pooling, rubric: self.rubric.as_deref() }
    }
}

impl SecondFile {
    pub fn embedding(&self) -> Embedding<'_> {
        Embedding { max_tokens: self.max_tokens, pooling: self.pooling, rubric: self.rubric.as_deref() }
    }
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
    /// The first stage's score, when the second stage judged the request
    /// (and `score` and `category` are the second stage's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_score: Option<f64>,
}

/// The compiled `[safety]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Safety {
    pub file: SafetyFile,
    pub head: Head,
    pub second: Option<Second>,
}

/// The compiled `[safety.second]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    pub file: SecondFile,
    pub head: Head,
}

fn check_max_tokens(key: &str, max_tokens: usize) -> Result<(), PolicyError> {
    if max_tokens == 0 || max_tokens > MAX_EMBEDDED_TOKENS {
        return Err(invalid(
            key,
            format!("embed between 1 and {MAX_EMBEDDED_TOKENS} tokens of the prompt (256 is the default)"),
        ));
    }
    Ok(())
}

impl Safety {
    pub(crate) fn compile(file: &SafetyFile) -> Result<Self, PolicyError> {
        check_max_tokens("safety.max_tokens", file.max_tokens)?;
        let head = Head::decode("safety.head", &file.head)?;
        let second = file.second.as_ref().map(|s| Second::compile(s, &head)).transpose()?;
        Ok(Self { file: file.clone(), head, second })
    }

    /// The unsafe categories the head knows.
    pub fn categories(&self) -> &[String] {
        &self.head.classes[1..]
    }

    /// The second stage, if `first` (this head's verdict) is one it must judge again.
    pub fn second_for(&self, first: &SafetyVerdict) -> Option<&Second> {
        self.second.as_ref().filter(|s| s.takes(first.score))
    }
}

impl Second {
    fn compile(file: &SecondFile, first: &Head) -> Result<Self, PolicyError> {
        check_max_tokens("safety.second.max_tokens", file.max_tokens)?;
        let [from, to] = file.band;
        if !(0.0..=1.0).contains(&from) || !(0.0..=1.0).contains(&to) || from >= to {
            return Err(invalid(
                "safety.second.band",
                "two first-stage scores [from, to) with 0 <= from < to <= 1 (a `to` of 1 takes 1 too): the requests \
                 the second stage judges",
            ));
        }
        let head = Head::decode("safety.second.head", &file.head)?;
        if head.classes != first.classes {
            return Err(invalid(
                "safety.second.head.classes",
                format!("must be the first head's classes in its order ({})", first.classes.join(", ")),
            ));
        }
        Ok(Self { file: file.clone(), head })
    }

    /// Whether a first-stage score is in the band this stage judges: from
    /// `from` up to but not `to`, except that a top of 1 takes 1 as well
    /// (no score lies above it, and the sure-looking 1 must not escape).
    pub fn takes(&self, first_score: f64) -> bool {
        let [from, to] = self.file.band;
        from <= first_score && (first_score < to || to >= 1.0)
    }

    /// This stage's verdict on its own embedding of a request the first
    /// stage scored `first`; `None` as for [`Head::verdict`].
    pub fn verdict(&self, first: &SafetyVerdict, embedding: &[f32]) -> Option<SafetyVerdict> {
        let v = self.head.verdict(embedding)?;
        Some(SafetyVerdict { first_score: Some(first.score), ..v })
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
    /// `key` names the head's table in errors (`safety.head`, `safety.second.head`).
    fn decode(key: &str, f: &HeadFile) -> Result<Self, PolicyError> {
        let at = |field: &str| format!("{key}.{field}");
        if f.classes.first().map(String::as_str) != Some(SAFE) || f.classes.len() < 2 {
            return Err(invalid(at("classes"), format!("list `{SAFE}` first, then at least one unsafe category")));
        }
        if f.dim == 0 {
            return Err(invalid(at("dim"), "the embedding size of the head's model, at least 1"));
        }
        let n = f.classes.len();
        if f.bias.len() != n || f.bias.iter().any(|b| !b.is_finite()) {
            return Err(invalid(at("bias"), format!("one finite number per class ({n})")));
        }
        let mean = floats(&at("mean"), &f.mean, f.dim)?;
        let scale = floats(&at("scale"), &f.scale, f.dim)?;
        if scale.iter().any(|s| *s <= 0.0) {
            return Err(invalid(at("scale"), "every scale must be > 0"));
        }
        let flat = floats(&at("weights"), &f.weights, f.dim * n)?;
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
        Some(SafetyVerdict {
            score: (1.0 - p[0]).clamp(0.0, 1.0),
            category: self.classes[likeliest_unsafe(&p)].clone(),
            first_score: None,
        })
    }
}

/// The index of the likeliest unsafe class in a head's probabilities
/// ([`SAFE`] is index 0 and never chosen; the first of equals wins): the
/// category a verdict names, whatever its score.
pub fn likeliest_unsafe(p: &[f64]) -> usize {
    p.iter().enumerate().skip(1).fold((1, f64::MIN), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc }).0
}

pub(crate) fn softmax(logits: &[f64]) -> Vec<f64> {
    let top = logits.iter().copied().fold(f64::MIN, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// `when.unsafe`: the classifier's score is above the threshold of the
/// category it names (`above_for` of that category, else `above`) and, if
/// categories are listed, that category is one of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsafeWhen {
    pub above: f64,
    /// Thresholds that replace `above` for requests the classifier files
    /// under these categories: a category whose safe look-alikes score
    /// high can be held to a higher bar, one whose harm is quiet to a
    /// lower one (`safety calibrate --threshold-per-category` fits them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub above_for: BTreeMap<String, f64>,
    #[serde(default)]
    pub categories: Vec<String>,
}

impl UnsafeWhen {
    /// The score a request filed under `category` must exceed.
    pub fn threshold(&self, category: &str) -> f64 {
        self.above_for.get(category).copied().unwrap_or(self.above)
    }

    /// A request the classifier did not judge matches no `unsafe` condition
    /// (the gateway never routes such a request: it fails closed first).
    pub fn holds(&self, verdict: Option<&SafetyVerdict>) -> bool {
        verdict.is_some_and(|v| {
            v.score > self.threshold(&v.category)
                && (self.categories.is_empty() || self.categories.contains(&v.category))
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
        let back = Head::decode("safety.head", &h.encode()).unwrap();
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
        let e = Head::decode("safety.head", &f).unwrap_err();
        assert!(e.to_string().contains("safety.head.weights"), "{e}");
        let mut f = head().encode();
        f.classes[0] = "violence".into();
        assert!(Head::decode("safety.head", &f).unwrap_err().to_string().contains("safety.head.classes"));
        let mut f = head().encode();
        f.scale = encode_floats([1.0, f32::NAN]);
        assert!(Head::decode("safety.head", &f).unwrap_err().to_string().contains("safety.head.scale"));
    }

    fn with_second(band: [f64; 2], second: &Head) -> Result<Safety, PolicyError> {
        let file = SafetyFile {
            model: "small".into(),
            max_tokens: 256,
            pooling: Pooling::Last,
            rubric: None,
            escalate_over_refusals: false,
            head: head().encode(),
            second: Some(SecondFile {
                model: "large".into(),
                max_tokens: 256,
                pooling: Pooling::Last,
                rubric: None,
                band,
                head: second.encode(),
            }),
            calibration: None,
        };
        Safety::compile(&file)
    }

    #[test]
    fn the_second_stage_judges_only_its_band_and_its_verdict_replaces_the_first() {
        // A second head that reads the other feature: it disagrees with the first.
        let mut other = head();
        other.weights = vec![vec![0.0, 0.0], vec![0.0, 2.0], vec![2.0, 0.0]];
        let s = with_second([0.2, 0.8], &other).unwrap();
        let unsure = s.head.verdict(&[0.5, 0.0]).unwrap();
        assert!((0.2..0.8).contains(&unsure.score), "{unsure:?}");
        let second = s.second_for(&unsure).expect("an unsure verdict goes to the second stage");
        let v = second.verdict(&unsure, &[0.0, 8.0]).unwrap();
        assert_eq!(v.category, "violence", "the second head's category, not the first's");
        assert_eq!(v.first_score, Some(unsure.score), "the record keeps what the first stage said");
        let sure = s.head.verdict(&[8.0, 0.0]).unwrap();
        assert!(sure.score >= 0.8 && s.second_for(&sure).is_none(), "{sure:?}");
        let calm = s.head.verdict(&[-8.0, -8.0]).unwrap();
        assert!(calm.score < 0.2 && s.second_for(&calm).is_none(), "{calm:?}");
        assert!(s.second.as_ref().unwrap().takes(0.2) && !s.second.as_ref().unwrap().takes(0.8), "[from, to)");
        let to_one = with_second([0.2, 1.0], &other).unwrap();
        assert!(to_one.second.as_ref().unwrap().takes(1.0), "a top of 1 takes 1");
        assert!(!to_one.second.as_ref().unwrap().takes(f64::NAN));
    }

    #[test]
    fn a_broken_second_stage_names_its_key() {
        let e = with_second([0.8, 0.2], &head()).unwrap_err();
        assert!(e.to_string().contains("safety.second.band"), "{e}");
        let e = with_second([0.0, 1.5], &head()).unwrap_err();
        assert!(e.to_string().contains("safety.second.band"), "{e}");
        let mut other = head();
        other.classes.swap(1, 2);
        let e = with_second([0.2, 0.8], &other).unwrap_err();
        assert!(e.to_string().contains("safety.second.head.classes"), "{e}");
        let mut other = head();
        other.bias = vec![f64::NAN, 0.0, 0.0];
        let e = with_second([0.2, 0.8], &other).unwrap_err();
        assert!(e.to_string().contains("safety.second.head.bias"), "{e}");
    }

    #[test]
    fn unsafe_conditions_read_score_and_category() {
        let v = SafetyVerdict { score: 0.7, category: "self_harm".into(), first_score: None };
        let any = UnsafeWhen { above: 0.5, ..UnsafeWhen::default() };
        let harm = UnsafeWhen { above: 0.5, categories: vec!["self_harm".into()], ..UnsafeWhen::default() };
        let other = UnsafeWhen { above: 0.5, categories: vec!["violence".into()], ..UnsafeWhen::default() };
        assert!(any.holds(Some(&v)) && harm.holds(Some(&v)) && !other.holds(Some(&v)));
        assert!(!UnsafeWhen { above: 0.7, ..UnsafeWhen::default() }.holds(Some(&v)), "strictly above");
        assert!(!any.holds(None));
    }

    #[test]
    fn a_category_of_its_own_threshold_replaces_above_for_it_alone() {
        let harm = SafetyVerdict { score: 0.7, category: "self_harm".into(), first_score: None };
        let violence = SafetyVerdict { category: "violence".into(), ..harm.clone() };
        let when = UnsafeWhen {
            above: 0.8,
            above_for: BTreeMap::from([("self_harm".to_string(), 0.6)]),
            ..UnsafeWhen::default()
        };
        assert!(when.holds(Some(&harm)), "self_harm is held to 0.6");
        assert!(!when.holds(Some(&violence)), "every other category to 0.8");
        assert_eq!((when.threshold("self_harm"), when.threshold("fraud")), (0.6, 0.8));
        // A listed category narrows the rule; its own threshold does not widen it.
        let narrowed = UnsafeWhen { categories: vec!["violence".into()], ..when };
        assert!(!narrowed.holds(Some(&harm)));
    }
}
