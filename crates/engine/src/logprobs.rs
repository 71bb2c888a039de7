//! Log-probabilities from raw logits.
//!
//! They are computed from the model's distribution before any sampling
//! transform (temperature, top-p, grammar), as OpenAI reports them: they are
//! the fast path's confidence signal, so they must not depend on how the
//! token happened to be picked.
//!
//! This runs over the whole vocabulary (150k entries for Qwen) for every
//! generated token of every sequence, on the scheduler thread, between two
//! decode steps. So the loops are written in 8 independent lanes that the
//! compiler vectorises (a plain float `sum()` or `fold(max)` is sequential
//! by IEEE rules), and `exp` is a polynomial instead of a libm call.

const LANES: usize = 8;

/// What one pass over a token's logits tells us.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitStats {
    /// First index of the largest logit: what greedy sampling picks.
    pub argmax: usize,
    /// `log(sum(exp(logits)))`, the softmax normaliser.
    pub log_z: f32,
}

impl LogitStats {
    pub fn of(logits: &[f32]) -> Self {
        let max = lane_max(logits);
        let argmax = first_index_of(logits, max);
        let mut acc = [0f32; LANES];
        let chunks = logits.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().map(|&l| exp_nonpositive(l - max)).sum();
        for chunk in chunks {
            for (a, &l) in acc.iter_mut().zip(chunk) {
                *a += exp_nonpositive(l - max);
            }
        }
        let sum = acc.iter().sum::<f32>() + tail;
        Self { argmax, log_z: max + sum.ln() }
    }

    pub fn logprob(&self, logits: &[f32], token: usize) -> f32 {
        logits.get(token).map_or(f32::NEG_INFINITY, |l| l - self.log_z)
    }

    /// The `k` most likely tokens and their logprobs, most likely first.
    pub fn top(&self, logits: &[f32], k: usize) -> Vec<(usize, f32)> {
        if k == 0 {
            return Vec::new();
        }
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < k || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i, l));
                best.truncate(k);
            }
        }
        best.into_iter().map(|(i, l)| (i, l - self.log_z)).collect()
    }
}

/// First index of the largest logit, without the normaliser: what a
/// drafter's greedy guess needs.
pub fn argmax(logits: &[f32]) -> usize {
    first_index_of(logits, lane_max(logits))
}

fn first_index_of(logits: &[f32], max: f32) -> usize {
    logits.iter().position(|&l| l == max).unwrap_or(0)
}

fn lane_max(xs: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (m, &x) in m.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    m.iter().copied().fold(tail, f32::max)
}

/// `exp(x)` for `x <= 0`, relative error within 5e-7 (a few ulp),
/// branch-free so it vectorises with plain SSE2. Cody-Waite range reduction
/// `x = n ln2 + y` with `|y| <= ln2 / 2` (ln2 split in two so `y` is exact),
/// a degree-7 Taylor polynomial for `e^y`, and `2^n` built in the exponent bits.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Cody-Waite split of ln 2, written as the published decimal values.
    #[expect(clippy::excessive_precision, reason = "the constants are written as published")]
    const LN2_HI: f32 = 0.693_145_751_953_125;
    #[expect(clippy::excessive_precision, reason = "the constants are written as published")]
    const LN2_LO: f32 = 1.428_606_765_330_187e-6;
    // 1.5 * 2^23: adding and subtracting rounds to an integer without SSE4.1.
    const ROUND: f32 = 12_582_912.0;
    // Below -87, 2^n would leave the normal range; exp is ~0 there anyway.
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let y = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + y * (1.0
            + y * (1.0 / 2.0
                + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm() {
        for i in 0..=17_000 {
            let x = -(i as f32) * 0.005;
            let (fast, exact) = (exp_nonpositive(x), x.exp());
            assert!((fast - exact).abs() <= 5e-7 * exact.max(f32::MIN_POSITIVE), "x={x}: {fast} vs {exact}");
        }
        assert!(exp_nonpositive(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn probabilities_sum_to_one() {
        let logits: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 * 0.1 - 3.0).collect();
        let s = LogitStats::of(&logits);
        let total: f64 = (0..logits.len()).map(|t| f64::from(s.logprob(&logits, t)).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
    }

    #[test]
    fn argmax_is_the_first_maximum_and_top_is_sorted() {
        let logits = [0.1f32, 5.0, -1.0, 4.0, 5.0, 4.5, 0.0, 0.0, 0.0, 2.0];
        let s = LogitStats::of(&logits);
        assert_eq!(s.argmax, 1);
        let top = s.top(&logits, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 4, 5]);
        assert_eq!(top[0].1, s.logprob(&logits, 1));
        assert!(top[0].1 < 0.0);
    }
}
