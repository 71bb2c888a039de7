//! Threshold calibration: from per-prompt results of a fast and a strong
//! route plus a confidence signal, the quality-vs-escalation-rate curve and
//! the threshold on it that meets a target. Pure; `switchyard calibrate`
//! reads the eval records and writes the new policy version.

use serde::{Deserialize, Serialize};

/// One eval item: the signal the router would see, and how well each route
/// answered (1 = correct, 0 = wrong, or a score in between).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub signal: f64,
    pub fast: f64,
    pub strong: f64,
}

/// Which side of the threshold escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Cascade: low confidence (signal < threshold) escalates.
    Below,
    /// Difficulty: a high score (signal >= threshold) escalates.
    AtOrAbove,
}

impl Direction {
    pub fn escalates(self, signal: f64, threshold: f64) -> bool {
        match self {
            Direction::Below => signal < threshold,
            Direction::AtOrAbove => signal >= threshold,
        }
    }
}

/// What the chosen threshold must achieve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Quality at least this share of always-escalating's quality, escalating as little as possible.
    MinRetention(f64),
    /// At most this share of requests escalated, with the best quality.
    MaxEscalation(f64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::MinRetention(r) => write!(f, "min_retention={r}"),
            Target::MaxEscalation(m) => write!(f, "max_escalation={m}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurvePoint {
    pub threshold: f64,
    pub escalation_rate: f64,
    /// Mean score when items past the threshold take the strong answer.
    pub quality: f64,
}

/// How a rule's threshold was chosen: stored in the policy beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// `mean_logprob`, `min_window_logprob` or `prompt_score`.
    pub signal: String,
    /// The eval record files, and the sha256 of their concatenated bytes.
    pub source: Vec<String>,
    pub source_sha256: String,
    pub items: usize,
    pub target: String,
    pub threshold: f64,
    pub escalation_rate: f64,
    pub quality: f64,
    pub fast_quality: f64,
    pub strong_quality: f64,
    /// `quality / strong_quality`.
    pub retention: f64,
    /// Quality of escalating the same share of items at random.
    pub random_quality: f64,
    /// True when the curve was drawn on held-out (cross-validated) scores.
    pub held_out: bool,
    /// The threshold rule judged on items it was not picked on.
    pub cross_validated: Option<CrossValidated>,
    pub curve: Vec<CurvePoint>,
}

/// k-fold check of the threshold-picking rule: each fold is routed by a
/// threshold picked (for the same target) on the other folds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossValidated {
    pub folds: usize,
    pub escalation_rate: f64,
    pub quality: f64,
    /// Random escalation at the same rate, on the same items.
    pub random_quality: f64,
    /// The chance that escalating as many items at random does at least as
    /// well as the held-out routing did: a permutation test over
    /// [`PERMUTATIONS`] seeded draws. Small means the signal beats random;
    /// a lift with a large one is noise.
    #[serde(default)]
    pub p_value: Option<f64>,
}

/// Draws for [`CrossValidated::p_value`]: its standard error is at most 0.005.
pub const PERMUTATIONS: usize = 10_000;

/// One-sided permutation p-value that `m` items escalated at random gain at
/// least `observed` (gain = strong − fast score), with the usual +1
/// correction so it is never 0. Seeded: the same items give the same value.
fn permutation_p_value(gains: &[f64], m: usize, observed: f64) -> f64 {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut order: Vec<usize> = (0..gains.len()).collect();
    let at_least = (0..PERMUTATIONS)
        .filter(|_| {
            // A partial Fisher-Yates shuffle: the first m are a uniform m-subset.
            for i in 0..m {
                let j = rng.gen_range(i..order.len());
                order.swap(i, j);
            }
            order[..m].iter().map(|&i| gains[i]).sum::<f64>() >= observed - 1e-9
        })
        .count();
    (at_least + 1) as f64 / (PERMUTATIONS + 1) as f64
}

/// Held-out quality of calibrating for `target`: folds by index modulo `k`.
/// Folds whose training part meets no threshold escalate everything (the
/// safe choice), which the figures then include.
pub fn cross_validate(
    samples: &[Sample],
    dir: Direction,
    max_threshold: f64,
    target: Target,
    k: usize,
) -> CrossValidated {
    let k = k.clamp(2, samples.len().max(2));
    let (mut escalated, mut quality, mut gained) = (0, 0.0, 0.0);
    for fold in 0..k {
        let train: Vec<Sample> = samples.iter().enumerate().filter(|(i, _)| i % k != fold).map(|(_, s)| *s).collect();
        let (_, chosen) = calibrate(&train, dir, max_threshold, target);
        for s in samples.iter().skip(fold).step_by(k) {
            let up = chosen.is_none_or(|p| dir.escalates(s.signal, p.threshold));
            escalated += usize::from(up);
            quality += if up { s.strong } else { s.fast };
            gained += if up { s.strong - s.fast } else { 0.0 };
        }
    }
    let n = samples.len().max(1) as f64;
    let rate = escalated as f64 / n;
    let (_, _, random_quality) = baselines(samples, rate);
    let gains: Vec<f64> = samples.iter().map(|s| s.strong - s.fast).collect();
    let p_value = Some(permutation_p_value(&gains, escalated, gained));
    CrossValidated { folds: k, escalation_rate: rate, quality: quality / n, random_quality, p_value }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// The point reached by escalating at `threshold`.
pub fn point(samples: &[Sample], dir: Direction, threshold: f64) -> CurvePoint {
    let escalated = |s: &Sample| dir.escalates(s.signal, threshold);
    CurvePoint {
        threshold,
        escalation_rate: mean(samples.iter().map(|s| f64::from(u8::from(escalated(s))))),
        quality: mean(samples.iter().map(|s| if escalated(s) { s.strong } else { s.fast })),
    }
}

/// Every distinct operating point, from escalating nothing to escalating
/// everything, ordered by escalation rate. `max_threshold` bounds the
/// thresholds a policy accepts (0 for logprobs, 1 for scores).
pub fn curve(samples: &[Sample], dir: Direction, max_threshold: f64) -> Vec<CurvePoint> {
    let mut values: Vec<f64> = samples.iter().map(|s| s.signal).filter(|v| v.is_finite()).collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    let Some(&top) = values.last() else { return Vec::new() };
    // Each distinct value is a threshold; one more past the top value makes
    // the other extreme (everything for Below, nothing for AtOrAbove).
    let beyond = (top + top.abs().max(1.0) * 1e-9).min(max_threshold);
    let mut points: Vec<CurvePoint> = values.iter().copied().chain([beyond]).map(|t| point(samples, dir, t)).collect();
    points.sort_by(|a, b| a.escalation_rate.total_cmp(&b.escalation_rate).then(a.threshold.total_cmp(&b.threshold)));
    points.dedup_by(|a, b| a.escalation_rate == b.escalation_rate && a.quality == b.quality);
    points
}

/// The point on `curve` that meets `target`, if any does.
pub fn pick(curve: &[CurvePoint], target: Target, strong_quality: f64) -> Option<CurvePoint> {
    let retention = |p: &CurvePoint| if strong_quality > 0.0 { p.quality / strong_quality } else { 1.0 };
    match target {
        Target::MinRetention(r) => curve
            .iter()
            .filter(|p| retention(p) >= r - 1e-12)
            .min_by(|a, b| a.escalation_rate.total_cmp(&b.escalation_rate).then(b.quality.total_cmp(&a.quality)))
            .copied(),
        Target::MaxEscalation(m) => curve
            .iter()
            .filter(|p| p.escalation_rate <= m + 1e-12)
            .max_by(|a, b| a.quality.total_cmp(&b.quality).then(b.escalation_rate.total_cmp(&a.escalation_rate)))
            .copied(),
    }
}

/// Calibrates on `samples` and describes the result. `None` when no point
/// meets the target (the caller reports the curve so the target can be
/// revised).
pub fn calibrate(
    samples: &[Sample],
    dir: Direction,
    max_threshold: f64,
    target: Target,
) -> (Vec<CurvePoint>, Option<CurvePoint>) {
    let strong = mean(samples.iter().map(|s| s.strong));
    let c = curve(samples, dir, max_threshold);
    let chosen = pick(&c, target, strong);
    (c, chosen)
}

/// Mean fast and strong quality, and the quality random escalation reaches
/// at escalation rate `rate`.
pub fn baselines(samples: &[Sample], rate: f64) -> (f64, f64, f64) {
    let fast = mean(samples.iter().map(|s| s.fast));
    let strong = mean(samples.iter().map(|s| s.strong));
    (fast, strong, fast + rate * (strong - fast))
}

/// One group of items with neighbouring signals, and what escalating them does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slice {
    /// The signal range, in escalation order (`first` is escalated first).
    pub first: f64,
    pub last: f64,
    pub items: usize,
    /// Items escalation fixes: the strong route right, the fast one wrong.
    pub gained: f64,
    /// Items escalation breaks: the fast route right, the strong one wrong.
    pub lost: f64,
    /// Items neither route gets right: escalating them costs without gaining.
    pub neither: f64,
}

/// Where escalation pays along the signal: the items in escalation order
/// (least sure first for [`Direction::Below`], highest score first for
/// [`Direction::AtOrAbove`]) cut into `n` groups of (nearly) equal size.
/// A signal worth calibrating puts the gains in the first groups and the
/// items neither route can do in the last; spread evenly, no threshold on
/// it beats random escalation. Scores in between 0 and 1 count in part.
pub fn slices(samples: &[Sample], dir: Direction, n: usize) -> Vec<Slice> {
    let mut sorted: Vec<Sample> = samples.iter().filter(|s| s.signal.is_finite()).copied().collect();
    sorted.sort_by(|a, b| match dir {
        Direction::Below => a.signal.total_cmp(&b.signal),
        Direction::AtOrAbove => b.signal.total_cmp(&a.signal),
    });
    let n = n.clamp(1, sorted.len().max(1));
    (0..n)
        .map(|i| &sorted[i * sorted.len() / n..(i + 1) * sorted.len() / n])
        .filter(|group| !group.is_empty())
        .map(|group| Slice {
            first: group[0].signal,
            last: group[group.len() - 1].signal,
            items: group.len(),
            gained: group.iter().map(|s| (s.strong - s.fast).max(0.0)).sum(),
            lost: group.iter().map(|s| (s.fast - s.strong).max(0.0)).sum(),
            neither: group.iter().map(|s| (1.0 - s.fast).min(1.0 - s.strong)).sum(),
        })
        .collect()
}

/// Thins a curve (a cascade's, or the safety classifier's) to at most `n`
/// points for storage, keeping both ends.
pub fn thin<P: Copy>(curve: &[P], n: usize) -> Vec<P> {
    if curve.len() <= n || n < 2 {
        return curve.to_vec();
    }
    (0..n).map(|i| curve[i * (curve.len() - 1) / (n - 1)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fast is right exactly when its confidence is above -1 (49 of 100
    /// items); strong is always right.
    fn table() -> Vec<Sample> {
        (0..100)
            .map(|i| {
                let signal = -((i + 1) as f64) / 50.0;
                Sample { signal, fast: f64::from(u8::from(signal > -1.0)), strong: 1.0 }
            })
            .collect()
    }

    #[test]
    fn the_curve_spans_nothing_to_everything() {
        let c = curve(&table(), Direction::Below, 0.0);
        assert_eq!(c.first().unwrap().escalation_rate, 0.0);
        assert_eq!(c.last().unwrap().escalation_rate, 1.0);
        assert!(c.windows(2).all(|w| w[0].escalation_rate <= w[1].escalation_rate));
        assert!(c.iter().all(|p| p.threshold <= 0.0));
    }

    #[test]
    fn min_retention_picks_the_cheapest_point_that_meets_it() {
        let (_, chosen) = calibrate(&table(), Direction::Below, 0.0, Target::MinRetention(1.0));
        let p = chosen.unwrap();
        // Items with signal <= -1 (51 of them) are exactly the ones to escalate.
        assert_eq!((p.escalation_rate, p.quality), (0.51, 1.0));
        assert!(p.threshold > -1.0 && p.threshold <= -0.98, "{p:?}");
        let (_, fast, random) = baselines(&table(), p.escalation_rate);
        assert!(fast == 1.0 && random < p.quality);
    }

    #[test]
    fn max_escalation_picks_the_best_point_within_it() {
        let (_, chosen) = calibrate(&table(), Direction::Below, 0.0, Target::MaxEscalation(0.25));
        let p = chosen.unwrap();
        assert_eq!(p.escalation_rate, 0.25);
        assert!((p.quality - 0.74).abs() < 1e-9, "49 right + 25 escalated: {p:?}");
    }

    #[test]
    fn an_unreachable_target_gives_no_threshold() {
        let bad: Vec<Sample> = table().into_iter().map(|s| Sample { strong: 0.5, fast: 0.0, ..s }).collect();
        let (c, chosen) = calibrate(&bad, Direction::Below, 0.0, Target::MaxEscalation(0.5));
        assert!(!c.is_empty());
        assert_eq!(chosen.unwrap().escalation_rate, 0.5);
        let (_, none) = calibrate(&bad, Direction::Below, 0.0, Target::MinRetention(1.01));
        assert_eq!(none, None);
    }

    #[test]
    fn cross_validation_holds_out_each_fold() {
        let cv = cross_validate(&table(), Direction::Below, 0.0, Target::MinRetention(1.0), 5);
        assert_eq!(cv.folds, 5);
        // The signal separates perfectly, so held-out thresholds still do.
        assert!(cv.quality > 0.97 && cv.quality > cv.random_quality + 0.2, "{cv:?}");
        assert!(cv.p_value.unwrap() < 0.001, "no random draw comes close: {cv:?}");
        // A signal unrelated to correctness does no better than random.
        let noise: Vec<Sample> = table()
            .iter()
            .enumerate()
            .map(|(i, s)| Sample { signal: -(((i * 37) % 100) as f64) / 50.0, ..*s })
            .collect();
        let cv = cross_validate(&noise, Direction::Below, 0.0, Target::MaxEscalation(0.5), 5);
        assert!(cv.quality < cv.random_quality + 0.1, "{cv:?}");
        assert!(cv.p_value.unwrap() > 0.05, "{cv:?}");
        assert_eq!(
            cross_validate(&noise, Direction::Below, 0.0, Target::MaxEscalation(0.5), 5),
            cv,
            "seeded: the same every time"
        );
    }

    #[test]
    fn the_permutation_test_knows_the_extremes() {
        // Escalating nothing or everything is what random does: p = 1.
        let gains = [1.0, 0.0, 1.0, 0.0];
        assert_eq!(permutation_p_value(&gains, 0, 0.0), 1.0);
        assert_eq!(permutation_p_value(&gains, 4, 2.0), 1.0);
        // Picking both gains out of four: a random pair does so 1 time in 6.
        let p = permutation_p_value(&gains, 2, 2.0);
        assert!((p - 1.0 / 6.0).abs() < 0.02, "{p}");
    }

    #[test]
    fn slices_show_where_escalation_pays() {
        // The 30 least sure items neither route gets right, the next 30 only
        // the strong one, the top 40 both: no threshold skips the first 30.
        let s: Vec<Sample> = (0..100)
            .map(|i| {
                let (fast, strong) = match i {
                    0..30 => (0.0, 0.0),
                    30..60 => (0.0, 1.0),
                    _ => (1.0, 1.0),
                };
                Sample { signal: -2.0 + f64::from(i) / 50.0, fast, strong }
            })
            .collect();
        let tenths = slices(&s, Direction::Below, 10);
        assert_eq!(tenths.len(), 10);
        assert!(tenths.iter().all(|t| t.items == 10 && t.first <= t.last && t.lost == 0.0));
        let column = |f: fn(&Slice) -> f64| tenths.iter().map(f).collect::<Vec<_>>();
        assert_eq!(column(|t| t.neither), [10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(column(|t| t.gained), [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!((tenths[0].first, tenths[9].last), (s[0].signal, s[99].signal));
        // A score escalates from the top down; a fast-only win counts as lost.
        let scored = [
            Sample { signal: 0.9, fast: 1.0, strong: 0.0 },
            Sample { signal: 0.1, fast: 0.0, strong: 1.0 },
            Sample { signal: 0.5, fast: 0.5, strong: 1.0 },
        ];
        let halves = slices(&scored, Direction::AtOrAbove, 2);
        assert_eq!(halves.iter().map(|h| (h.items, h.first)).collect::<Vec<_>>(), [(1, 0.9), (2, 0.5)]);
        assert_eq!((halves[0].lost, halves[1].gained, halves[1].neither), (1.0, 1.5, 0.0));
        assert!(slices(&[], Direction::Below, 10).is_empty());
    }

    #[test]
    fn at_or_above_escalates_high_scores() {
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample { signal: i as f64 / 10.0, fast: f64::from(u8::from(i < 7)), strong: 1.0 })
            .collect();
        let (_, chosen) = calibrate(&s, Direction::AtOrAbove, 1.0, Target::MinRetention(1.0));
        let p = chosen.unwrap();
        assert_eq!((p.threshold, p.escalation_rate), (0.7, 0.3));
        assert_eq!(thin(&curve(&s, Direction::AtOrAbove, 1.0), 3).len(), 3);
    }
}
