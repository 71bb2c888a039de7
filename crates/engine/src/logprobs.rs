//! Log-probabilities from raw logits.
//!
//! They are computed from the model's distribution before any sampling
//! transform (temperature, top-p, grammar), as OpenAI reports them: they are
//! the fast path's confidence signal, so they must not depend on how the
//! token happened to be picked.

/// `log_softmax(logits)[token]` and, if asked, the `top` most likely tokens.
pub fn token_logprob(logits: &[f32], token: usize, top: usize) -> (f32, Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    let chosen = logits.get(token).map_or(f32::NEG_INFINITY, |l| l - log_z);
    if top == 0 {
        return (chosen, Vec::new());
    }
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(top + 1);
    for (i, &l) in logits.iter().enumerate() {
        if best.len() < top || l > best[best.len() - 1].1 {
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i, l));
            best.truncate(top);
        }
    }
    (chosen, best.into_iter().map(|(i, l)| (i, l - log_z)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one() {
        let logits = [1.0f32, 2.0, 3.0, 0.5];
        let total: f32 = (0..4).map(|t| token_logprob(&logits, t, 0).0.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn top_is_sorted_and_contains_argmax() {
        let logits = [0.1f32, 5.0, -1.0, 4.0, 4.5];
        let (lp, top) = token_logprob(&logits, 1, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 4, 3]);
        assert_eq!(top[0].1, lp);
        assert!(lp < 0.0);
    }
}
