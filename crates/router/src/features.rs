//! Prompt features and the difficulty score computed from them before
//! generation: the router's first confidence signal.

use serde::{Deserialize, Serialize};

/// Cheap, deterministic features of a prompt (all messages' text).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// ln(1 + characters).
    pub log_chars: f64,
    /// Messages in the conversation.
    pub turns: f64,
    /// 1 if the prompt contains a code block or code-looking lines.
    pub code: f64,
    /// 1 if it contains arithmetic or equations.
    pub math: f64,
    /// Question marks.
    pub questions: f64,
    /// 1 if it asks for reasoning ("why", "explain", "prove", "step by step", ...).
    pub reasoning: f64,
}

const REASONING_MARKERS: &[&str] =
    &["why", "explain", "prove", "step by step", "compare", "analy", "derive", "trade-off", "tradeoff"];
const CODE_MARKERS: &[&str] =
    &["```", "def ", "fn ", "function ", "class ", "#include", "import ", "SELECT ", "=>", "};"];

impl Features {
    pub fn of(messages: &[String]) -> Self {
        let text = messages.join("\n");
        let lower = text.to_lowercase();
        let math = text.chars().any(|c| c.is_ascii_digit())
            && text.chars().any(|c| matches!(c, '+' | '*' | '/' | '=' | '^' | '%'));
        Self {
            log_chars: (1.0 + text.chars().count() as f64).ln(),
            turns: messages.len() as f64,
            code: f64::from(u8::from(CODE_MARKERS.iter().any(|m| text.contains(m)))),
            math: f64::from(u8::from(math)),
            questions: text.matches('?').count() as f64,
            reasoning: f64::from(u8::from(REASONING_MARKERS.iter().any(|m| lower.contains(m)))),
        }
    }
}

/// Logistic model over [`Features`]: `sigmoid(bias + Σ weight·feature)`.
/// Its weights belong in the policy (fitted offline by `calibrate`), so a
/// score is reproducible from the policy version alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DifficultyModel {
    pub bias: f64,
    pub log_chars: f64,
    pub turns: f64,
    pub code: f64,
    pub math: f64,
    pub questions: f64,
    pub reasoning: f64,
}

impl Default for DifficultyModel {
    /// Neutral until calibrated: every prompt scores 0.5.
    fn default() -> Self {
        Self { bias: 0.0, log_chars: 0.0, turns: 0.0, code: 0.0, math: 0.0, questions: 0.0, reasoning: 0.0 }
    }
}

impl Features {
    /// In [`DifficultyModel`]'s weight order.
    pub fn to_array(&self) -> [f64; 6] {
        [self.log_chars, self.turns, self.code, self.math, self.questions, self.reasoning]
    }
}

impl DifficultyModel {
    pub fn from_weights(bias: f64, w: [f64; 6]) -> Self {
        Self { bias, log_chars: w[0], turns: w[1], code: w[2], math: w[3], questions: w[4], reasoning: w[5] }
    }

    /// Fits the weights so the score estimates the chance that `y` is 1
    /// (for routing: that the fast route gets the item wrong). Logistic
    /// regression with a little L2, by gradient descent on standardised
    /// features, mapped back to raw-feature weights so the policy needs no
    /// scaler. Deterministic.
    pub fn fit(xs: &[Features], y: &[f64]) -> Self {
        const STEPS: usize = 3000;
        const RATE: f64 = 0.3;
        const L2: f64 = 1e-3;
        let n = xs.len().max(1) as f64;
        let rows: Vec<[f64; 6]> = xs.iter().map(Features::to_array).collect();
        let mut mu = [0.0; 6];
        let mut sd = [0.0; 6];
        for j in 0..6 {
            mu[j] = rows.iter().map(|r| r[j]).sum::<f64>() / n;
            sd[j] = (rows.iter().map(|r| (r[j] - mu[j]).powi(2)).sum::<f64>() / n).sqrt();
        }
        let z = |r: &[f64; 6], j: usize| if sd[j] > 0.0 { (r[j] - mu[j]) / sd[j] } else { 0.0 };
        let (mut b, mut w) = (0.0, [0.0; 6]);
        for _ in 0..STEPS {
            let (mut gb, mut gw) = (0.0, [0.0; 6]);
            for (r, &t) in rows.iter().zip(y) {
                let p = sigmoid(b + (0..6).map(|j| w[j] * z(r, j)).sum::<f64>());
                gb += p - t;
                for (j, g) in gw.iter_mut().enumerate() {
                    *g += (p - t) * z(r, j);
                }
            }
            b -= RATE * gb / n;
            for (wj, gj) in w.iter_mut().zip(gw) {
                *wj -= RATE * (gj / n + L2 * *wj);
            }
        }
        let raw: [f64; 6] = std::array::from_fn(|j| if sd[j] > 0.0 { w[j] / sd[j] } else { 0.0 });
        let bias = b - (0..6).map(|j| raw[j] * mu[j]).sum::<f64>();
        Self::from_weights(bias, raw)
    }

    /// Out-of-fold scores: item `i` is scored by a model fitted without the
    /// fold it is in (folds by index modulo `k`), so a curve drawn on them
    /// shows held-out quality, not training quality.
    pub fn cross_validated_scores(xs: &[Features], y: &[f64], k: usize) -> Vec<f64> {
        let k = k.clamp(2, xs.len().max(2));
        let mut scores = vec![0.0; xs.len()];
        for fold in 0..k {
            let (train_x, train_y): (Vec<Features>, Vec<f64>) =
                xs.iter().zip(y).enumerate().filter(|(i, _)| i % k != fold).map(|(_, (x, t))| (*x, *t)).unzip();
            let m = Self::fit(&train_x, &train_y);
            for i in (fold..xs.len()).step_by(k) {
                scores[i] = m.score(&xs[i]);
            }
        }
        scores
    }

    pub fn score(&self, f: &Features) -> f64 {
        let z = self.bias
            + self.log_chars * f.log_chars
            + self.turns * f.turns
            + self.code * f.code
            + self.math * f.math
            + self.questions * f.questions
            + self.reasoning * f.reasoning;
        sigmoid(z)
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_see_code_math_and_reasoning() {
        let f = Features::of(&["Explain why 2 + 2 = 4?".into(), "```rust\nfn main() {}\n```".into()]);
        assert_eq!((f.turns, f.code, f.math, f.questions, f.reasoning), (2.0, 1.0, 1.0, 1.0, 1.0));
        let g = Features::of(&["hello there".into()]);
        assert_eq!((g.code, g.math, g.questions, g.reasoning), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn score_is_monotone_in_positive_weights() {
        let m = DifficultyModel { bias: -2.0, reasoning: 1.5, code: 1.0, ..Default::default() };
        let easy = m.score(&Features::of(&["hi".into()]));
        let hard = m.score(&Features::of(&["Explain this code: ```x```".into()]));
        assert!(easy < 0.5 && hard > easy);
        assert_eq!(DifficultyModel::default().score(&Features::of(&["x".into()])), 0.5);
    }

    #[test]
    fn fitting_learns_which_feature_predicts_failure_and_holds_out_folds() {
        // Fast fails on exactly the code prompts; length is noise.
        let prompts: Vec<Features> = (0..60)
            .map(|i| {
                let text = if i % 3 == 0 {
                    format!("```\nfn f{i}() {{}}\n```")
                } else {
                    format!("say hi {}", "x".repeat(i % 7))
                };
                Features::of(&[text])
            })
            .collect();
        let fails: Vec<f64> = prompts.iter().map(|f| f.code).collect();
        let m = DifficultyModel::fit(&prompts, &fails);
        assert!(m.code > 1.0, "{m:?}");
        for (f, y) in prompts.iter().zip(&fails) {
            assert_eq!(m.score(f) >= 0.5, *y == 1.0);
        }
        let held_out = DifficultyModel::cross_validated_scores(&prompts, &fails, 5);
        let correct = held_out.iter().zip(&fails).filter(|(s, y)| (**s >= 0.5) == (**y == 1.0)).count();
        assert_eq!(correct, prompts.len());
        // A label unrelated to the features cannot be predicted out of fold.
        let noise: Vec<f64> = (0..60).map(|i| f64::from(u8::from((i * 7919) % 11 < 5))).collect();
        let s = DifficultyModel::cross_validated_scores(&prompts, &noise, 5);
        let right = s.iter().zip(&noise).filter(|(s, y)| (**s >= 0.5) == (**y == 1.0)).count();
        assert!(right < 45, "{right}/60 on noise");
    }
}
