//! Prompt features and the difficulty score computed from them before
//! generation: the router's first confidence signal.

use serde::{Deserialize, Serialize};

/// Cheap, deterministic features of a prompt (all messages' text).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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

const REASONING_MARKERS: &[&str] = &["why", "explain", "prove", "step by step", "compare", "analy", "derive", "trade-off", "tradeoff"];
const CODE_MARKERS: &[&str] = &["```", "def ", "fn ", "function ", "class ", "#include", "import ", "SELECT ", "=>", "};"];

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

impl DifficultyModel {
    pub fn score(&self, f: &Features) -> f64 {
        let z = self.bias
            + self.log_chars * f.log_chars
            + self.turns * f.turns
            + self.code * f.code
            + self.math * f.math
            + self.questions * f.questions
            + self.reasoning * f.reasoning;
        1.0 / (1.0 + (-z).exp())
    }
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
}
