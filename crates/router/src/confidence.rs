//! The router's second confidence signal: how sure the fast model was of
//! the answer it wrote, from the logprobs of the tokens it chose.

use serde::{Deserialize, Serialize};

/// Tokens per window for [`Confidence::min_window_logprob`]. Fixed, so that
/// a threshold calibrated on recorded signals means the same thing when
/// serving.
pub const CONFIDENCE_WINDOW: usize = 8;

/// Logprob statistics of one answer (natural log, so ≤ 0; 0 is certainty).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    /// Mean logprob over all tokens.
    pub mean_logprob: f64,
    /// The lowest mean over any [`CONFIDENCE_WINDOW`] consecutive tokens (the
    /// whole answer if shorter): catches one unsure stretch in a long answer.
    pub min_window_logprob: f64,
    pub tokens: usize,
}

impl Confidence {
    /// `None` for an empty answer: there is nothing to be confident about.
    pub fn of(logprobs: &[f64]) -> Option<Self> {
        if logprobs.is_empty() {
            return None;
        }
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        let window = CONFIDENCE_WINDOW.min(logprobs.len());
        let min_window_logprob = logprobs.windows(window).map(mean).fold(f64::INFINITY, f64::min);
        Some(Self { mean_logprob: mean(logprobs), min_window_logprob, tokens: logprobs.len() })
    }

    /// The statistic `signal` compares; a verify signal's confidence is
    /// computed from the escalation model's logprobs, not the fast one's.
    pub fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::Mean | Signal::VerifyMean => self.mean_logprob,
            Signal::WindowMin | Signal::VerifyWindowMin => self.min_window_logprob,
        }
    }
}

/// Which statistic a cascade compares with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    #[default]
    Mean,
    WindowMin,
    /// The escalation model's mean logprob of the fast answer, teacher-forced
    /// after the prompt: its verdict on an answer it did not write. Where it
    /// would have written the same answer, escalating changes nothing; on
    /// core@v1 this separates the answers escalation fixes, where the fast
    /// model's own logprobs do not (docs/eval.md).
    VerifyMean,
    /// The same, as the lowest [`CONFIDENCE_WINDOW`]-token window.
    VerifyWindowMin,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Mean => "mean_logprob",
            Signal::WindowMin => "min_window_logprob",
            Signal::VerifyMean => "verify_mean_logprob",
            Signal::VerifyWindowMin => "verify_min_window_logprob",
        }
    }

    /// True when the escalation model scores the fast answer.
    pub fn verifies(self) -> bool {
        matches!(self, Signal::VerifyMean | Signal::VerifyWindowMin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_min_finds_the_unsure_stretch() {
        let mut lp = vec![-0.1; 20];
        for x in &mut lp[10..18] {
            *x = -2.0;
        }
        let c = Confidence::of(&lp).unwrap();
        assert!((c.min_window_logprob - -2.0).abs() < 1e-12);
        assert!((c.mean_logprob - (-0.1 * 12.0 + -2.0 * 8.0) / 20.0).abs() < 1e-12);
        assert_eq!(c.get(Signal::Mean), c.mean_logprob);
        let short = Confidence::of(&[-1.0, -3.0]).unwrap();
        assert_eq!((short.mean_logprob, short.min_window_logprob, short.tokens), (-2.0, -2.0, 2));
        assert_eq!(Confidence::of(&[]), None);
    }
}
