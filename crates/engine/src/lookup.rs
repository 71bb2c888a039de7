//! Prompt-lookup drafting: guesses a sequence's next tokens by finding its
//! last few tokens earlier in its own context (the prompt and what it has
//! generated) and copying what followed them there. Answers that quote
//! their context (extraction, RAG, code edits) repeat long spans, so the
//! target model can verify several guessed tokens in one batch instead of
//! producing one per step. No draft model: the guess costs a scan.
//!
//! Verification keeps greedy output exact: a drafted token is kept only
//! while it equals the target's own argmax at that position, and the first
//! disagreement is replaced by the target's token (see the scheduler).

use llama_cpp_2::token::LlamaToken;

/// The longest and shortest suffix looked up. Longer matches are tried
/// first: they predict better; a single token matches too often to trust.
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 2;

/// Up to `k` tokens that followed the most recent earlier occurrence of
/// `context`'s last n tokens (n from [`MAX_NGRAM`] down to [`MIN_NGRAM`]).
/// Empty when nothing matches.
pub(crate) fn draft(context: &[LlamaToken], k: usize) -> Vec<LlamaToken> {
    if k == 0 {
        return Vec::new();
    }
    for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
        if context.len() <= n {
            continue;
        }
        let suffix = &context[context.len() - n..];
        // Most recent first: the nearest copy is the likeliest to continue.
        // A match must leave at least one token after it before the suffix.
        let found = (0..context.len() - n).rev().find(|&start| &context[start..start + n] == suffix);
        if let Some(start) = found {
            let from = start + n;
            let to = (from + k).min(context.len());
            return context[from..to].to_vec();
        }
    }
    Vec::new()
}

/// What a decode step costs, as the scheduler measures it, by the number
/// of tokens in the batch. On a CPU an extra token is far from free, and
/// not linear: llama.cpp multiplies one token by the weights with a
/// matrix-vector kernel and two or more with a matrix-matrix one, so (on
/// Qwen2.5-0.5B, 2 cores, AVX-512) one token takes 19 ms, two 44 ms, four
/// 60 ms. How much to draft is a trade these measured costs decide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepCost {
    /// Smoothed milliseconds per step of `i + 1` tokens; `None` until seen.
    ms: [Option<f64>; COSTED],
}

/// Batch sizes whose cost is tracked: one token and up to 15 guesses.
const COSTED: usize = 16;

impl Default for StepCost {
    fn default() -> Self {
        Self { ms: [None; COSTED] }
    }
}

impl StepCost {
    /// Folds in a measured decode of `tokens` tokens (no prompt chunks).
    pub fn observe(&mut self, tokens: usize, ms: f64) {
        if let Some(slot) = tokens.checked_sub(1).and_then(|i| self.ms.get_mut(i)) {
            *slot = Some(smoothed(*slot, ms));
        }
    }

    /// A step of `tokens` tokens: as measured, or, until it has been, an
    /// optimistic guess (a quarter of a one-token step per extra token), so
    /// that drafting is tried and its real cost learned.
    fn of(&self, tokens: usize) -> f64 {
        let one = self.ms[0].unwrap_or(20.0);
        let guess = one * (1.0 + 0.25 * tokens.saturating_sub(1) as f64);
        tokens.checked_sub(1).and_then(|i| self.ms.get(i).copied().flatten()).unwrap_or(guess)
    }
}

/// `ms` folded into a running cost (the first measurement stands alone):
/// recent steps weigh most, since the machine's load changes.
pub(crate) fn smoothed(old: Option<f64>, ms: f64) -> f64 {
    const WEIGHT: f64 = 0.2;
    old.map_or(ms, |old| old + WEIGHT * (ms - old))
}

/// One sequence's drafting record: how often a guessed token is right, and
/// from it the draft length that gives the most tokens per millisecond.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DraftLength {
    max: usize,
    /// Guessed tokens kept, and guesses that ended on a wrong token: a
    /// guess is kept token by token until the first miss, so the chance
    /// that the next guessed token is right is `kept / (kept + misses)`.
    kept: f64,
    misses: f64,
    /// Steps since drafting last paid, for an occasional probe.
    idle: u32,
}

/// A sequence not worth drafting for still guesses one token at least
/// this many steps apart, to notice when its answer starts quoting (or its
/// draft model starts agreeing).
const PROBE_EVERY: u32 = 8;

/// The most of the steps between two probes that a probe may cost.
const PROBE_SHARE: f64 = 0.05;

/// Steps between probes: a probe turns a one-token step into a two-token
/// one and adds a guess, so where those are dear (a CPU's matrix-matrix
/// kernel, a draft model's step) probes come further apart.
fn probe_every(cost: &StepCost, per_guess_ms: f64) -> u32 {
    let one = cost.of(1).max(1e-3);
    let probe_ms = (cost.of(2) - one).max(0.0) + per_guess_ms;
    let every = (probe_ms / (PROBE_SHARE * one)).ceil();
    PROBE_EVERY.max(if every < f64::from(u32::MAX) { every as u32 } else { u32::MAX })
}

impl DraftLength {
    pub fn new(max: usize) -> Self {
        // A prior of 3 kept to 1 missed: start by drafting a little.
        Self { max, kept: 3.0, misses: 1.0, idle: 0 }
    }

    /// The draft length with the most expected tokens per millisecond:
    /// `1 + a + … + a^k` tokens for a step of `k + 1` tokens and `k`
    /// guesses at `per_guess_ms` each (a draft model's step; nothing for
    /// prompt lookup), `a` the chance a guessed token is right. At most
    /// `cap`.
    pub fn choose(&mut self, cost: &StepCost, cap: usize, per_guess_ms: f64) -> usize {
        let a = self.kept / (self.kept + self.misses);
        let (mut best, mut best_rate) = (0, 1.0 / cost.of(1).max(1e-3));
        let (mut expected, mut p) = (1.0, 1.0);
        for k in 1..=self.max.min(cap).min(COSTED - 1) {
            p *= a;
            expected += p;
            let rate = expected / (cost.of(k + 1) + k as f64 * per_guess_ms).max(1e-3);
            if rate > best_rate {
                (best, best_rate) = (k, rate);
            }
        }
        if best == 0 {
            self.idle += 1;
            if self.idle >= probe_every(cost, per_guess_ms) && cap > 0 {
                self.idle = 0;
                return 1;
            }
        }
        best
    }

    /// `drafted` tokens were verified and `accepted` of them kept.
    pub fn update(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        // Recent behaviour matters most: an answer moves in and out of quotes.
        const DECAY: f64 = 0.9;
        self.kept = self.kept * DECAY + accepted as f64;
        self.misses = self.misses * DECAY + f64::from(u8::from(accepted < drafted));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[i32]) -> Vec<LlamaToken> {
        v.iter().map(|&t| LlamaToken(t)).collect()
    }

    #[test]
    fn copies_what_followed_the_latest_earlier_occurrence() {
        // ... 1 2 3 [7 8 9] ... 1 2 3 [5 6] ... 1 2 3 -> drafts 5 6 first (most recent).
        let ctx = toks(&[1, 2, 3, 7, 8, 9, 0, 1, 2, 3, 5, 6, 0, 1, 2, 3]);
        assert_eq!(draft(&ctx, 2), toks(&[5, 6]));
        assert_eq!(draft(&ctx, 10), toks(&[5, 6, 0, 1, 2, 3]));
    }

    #[test]
    fn prefers_a_longer_match() {
        // "4 2" occurs late, "3 4 2" only early: the longer match wins.
        let ctx = toks(&[3, 4, 2, 10, 11, 4, 2, 20, 21, 3, 4, 2]);
        assert_eq!(draft(&ctx, 2), toks(&[10, 11]));
    }

    #[test]
    fn nothing_to_copy_drafts_nothing() {
        assert!(draft(&toks(&[1, 2, 3, 4, 5]), 4).is_empty());
        assert!(draft(&toks(&[1, 1]), 4).is_empty());
        assert!(draft(&toks(&[1, 2, 1, 2]), 0).is_empty());
    }

    fn measured(one: f64, per_extra: f64) -> StepCost {
        let mut cost = StepCost::default();
        for tokens in 1..=COSTED {
            cost.observe(tokens, one + per_extra * (tokens - 1) as f64);
        }
        cost
    }

    #[test]
    fn the_draft_length_follows_acceptance_and_cost() {
        let (cheap, dear) = (measured(20.0, 2.0), measured(20.0, 20.0));
        let mut quoting = DraftLength::new(8);
        for _ in 0..20 {
            quoting.update(8, 8);
        }
        assert_eq!(quoting.choose(&cheap, 8, 0.0), 8, "every guess kept and guesses cheap: draft all");
        assert_eq!(quoting.choose(&cheap, 3, 0.0), 3, "never past the cap");
        assert!(quoting.choose(&dear, 8, 0.0) < 8, "a guess as dear as a step is worth less");
        assert_eq!(quoting.choose(&cheap, 8, 30.0), 0, "a draft step dearer than a target step never pays");

        let mut wandering = DraftLength::new(8);
        for _ in 0..20 {
            wandering.update(2, 0);
        }
        let picks: Vec<usize> = (0..PROBE_EVERY).map(|_| wandering.choose(&cheap, 8, 0.0)).collect();
        assert_eq!(picks.iter().filter(|&&k| k == 0).count() as u32, PROBE_EVERY - 1, "{picks:?}");
        assert_eq!(picks.last(), Some(&1), "an occasional one-token probe");
    }

    #[test]
    fn a_jump_from_one_token_to_two_is_priced_as_measured() {
        // As measured on Qwen2.5-0.5B: 19 ms, 44 ms, then about 8 ms a token.
        let mut cost = StepCost::default();
        for (tokens, ms) in [(1, 19.0), (2, 44.0), (3, 53.0), (4, 60.0)] {
            cost.observe(tokens, ms);
        }
        assert_eq!((cost.of(1), cost.of(2)), (19.0, 44.0));
        let mut fairly_good = DraftLength::new(3);
        for _ in 0..20 {
            fairly_good.update(3, 2);
        }
        // Kept guesses at ~0.7 a token: 1 + 0.7 + 0.5 + 0.35 tokens in 60 ms
        // is fewer per ms than one in 19 ms, so it does not draft.
        assert_eq!(fairly_good.choose(&cost, 3, 0.0), 0);
        // A probe adds 25 ms to a 19 ms step: at most 5% of the steps
        // between probes means one in 27; a 37 ms draft step, one in 66.
        assert_eq!((probe_every(&cost, 0.0), probe_every(&cost, 37.0)), (27, 66));
        let picks: Vec<usize> = (0..27).map(|_| fairly_good.choose(&cost, 3, 0.0)).collect();
        assert_eq!(picks.iter().filter(|&&k| k > 0).count(), 1, "{picks:?}");
    }
}
