//! Judging a safety classifier on labelled prompts: the curve of unsafe
//! requests caught against safe requests refused as the threshold moves,
//! the threshold that meets a target, and bootstrap intervals for the
//! shares (a held-out split of a few hundred prompts moves by points, not
//! decimals).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One labelled prompt's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub unsafe_: bool,
}

/// The operating point of flagging every score above `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyPoint {
    pub threshold: f64,
    /// Share of unsafe prompts flagged (refused or handed off).
    pub caught: f64,
    /// Share of safe prompts flagged: refused though they were fine.
    pub safe_refused: f64,
}

/// What the threshold must achieve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyTarget {
    pub min_caught: f64,
    pub max_safe_refused: f64,
}

impl std::fmt::Display for SafetyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "min_caught={},max_safe_refused={}", self.min_caught, self.max_safe_refused)
    }
}

/// How `[safety]` was calibrated: stored in the policy beside the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyCalibration {
    /// The safety set (directory) and the sha256 of its items file.
    pub source: String,
    pub source_sha256: String,
    /// The splits the head and threshold were fitted on: `train`, and with
    /// `calibrate --fit-on`, blind splits already spent. `safety evaluate`
    /// refuses to judge a policy on one of them.
    #[serde(default = "train_only")]
    pub fitted_on: Vec<String>,
    /// Prompts the head and threshold were fitted on (those splits').
    pub items: usize,
    pub folds: usize,
    /// The penalty chosen by cross-validation on the training split.
    pub l2: f64,
    pub target: String,
    /// Whether the out-of-fold point at `threshold` meets the target.
    pub target_met: bool,
    pub threshold: f64,
    /// Categories held to a threshold of their own (`--threshold-per-category`):
    /// every `when.unsafe` rule's `above_for`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub above_for: BTreeMap<String, f64>,
    /// Out-of-fold shares on the training split at these thresholds.
    pub caught: f64,
    pub safe_refused: f64,
    /// The same head and threshold on the held-out split, never tuned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<HeldOut>,
    /// Out-of-fold curve on the training split (thinned): of the first
    /// stage's scores, or with a second stage, of the scores the router
    /// acts on (the second stage's inside its band, the first's outside).
    pub curve: Vec<SafetyPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<SecondCalibration>,
}

/// Policies calibrated before `fitted_on` was recorded were fitted on the
/// training split alone.
fn train_only() -> Vec<String> {
    vec!["train".to_string()]
}

/// How `[safety.second]` was fitted and its band chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondCalibration {
    /// The second head's penalty, chosen like the first's.
    pub l2: f64,
    /// Out-of-fold AUC on the training split of each stage alone.
    pub first_auc: f64,
    pub second_auc: f64,
    /// The band keeps the first stage's verdict only where, out of fold,
    /// it let through at most `1 - keep` of the unsafe prompts (below the
    /// band) and refused at most `1 - keep` of the safe ones (above it).
    pub keep: f64,
    /// Share of training prompts (out of fold) whose first score fell in
    /// the band: the share of requests that pay for the second model.
    pub judged: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOut {
    pub unsafe_items: usize,
    pub safe_items: usize,
    pub caught: f64,
    /// 95% bootstrap interval.
    pub caught_interval: [f64; 2],
    pub safe_refused: f64,
    pub safe_refused_interval: [f64; 2],
}

fn share(flags: impl Iterator<Item = bool>) -> f64 {
    let (hit, n) = flags.fold((0usize, 0usize), |(h, n), f| (h + usize::from(f), n + 1));
    if n == 0 {
        0.0
    } else {
        hit as f64 / n as f64
    }
}

pub fn point(items: &[Scored], threshold: f64) -> SafetyPoint {
    let flags: Vec<bool> = items.iter().map(|s| s.score > threshold).collect();
    flagged_point(items, &flags, threshold)
}

/// The figures of flagging `items[i]` where `flags[i]`, labelled with the
/// `threshold` that stands for the rule (with thresholds per category,
/// the one the others replace).
pub fn flagged_point(items: &[Scored], flags: &[bool], threshold: f64) -> SafetyPoint {
    let side = |unsafe_: bool| share(items.iter().zip(flags).filter(|(s, _)| s.unsafe_ == unsafe_).map(|(_, f)| *f));
    SafetyPoint { threshold, caught: side(true), safe_refused: side(false) }
}

/// Every distinct operating point, from flagging everything to nothing:
/// thresholds halfway between neighbouring scores, so a point's figures do
/// not hinge on a tie at its threshold.
pub fn curve(items: &[Scored]) -> Vec<SafetyPoint> {
    let mut scores: Vec<f64> = items.iter().map(|s| s.score).filter(|s| s.is_finite()).collect();
    scores.sort_by(f64::total_cmp);
    scores.dedup();
    let Some((&low, &high)) = scores.first().zip(scores.last()) else { return Vec::new() };
    let cuts =
        std::iter::once(low - 1e-6).chain(scores.windows(2).map(|w| (w[0] + w[1]) / 2.0)).chain(std::iter::once(high));
    cuts.map(|t| point(items, t)).collect()
}

impl SafetyTarget {
    /// How far `p` clears the nearer of the two bounds (negative: it misses one).
    pub fn margin(&self, p: &SafetyPoint) -> f64 {
        (p.caught - self.min_caught).min(self.max_safe_refused - p.safe_refused)
    }

    pub fn met_by(&self, p: &SafetyPoint) -> bool {
        self.margin(p) >= -1e-12
    }
}

/// The point with the widest margin to both bounds of `target`: where
/// points meet it, the one farthest inside (the held-out split will move
/// the figures; a point on the edge falls off); where none does, the one
/// that misses the nearer bound by least, so neither bound is given up
/// for the other. `None` only for an empty curve.
pub fn pick(curve: &[SafetyPoint], target: SafetyTarget) -> Option<SafetyPoint> {
    curve.iter().max_by(|a, b| target.margin(a).total_cmp(&target.margin(b))).copied()
}

/// The band of first-stage scores a second stage judges: below it, out
/// of fold, at most `1 - keep` of the unsafe prompts; at or above it at
/// most `1 - keep` of the safe ones. `None` when those bounds cross (the
/// first stage alone already separates the prompts that well).
pub fn band(first: &[Scored], keep: f64) -> Option<[f64; 2]> {
    let sorted = |unsafe_: bool| {
        let mut v: Vec<f64> = first.iter().filter(|s| s.unsafe_ == unsafe_).map(|s| s.score).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (bad, good) = (sorted(true), sorted(false));
    let (Some(&lowest_bad), false) = (bad.first(), good.is_empty()) else { return None };
    // The nudge keeps 1 − 0.9 of 10 at 1 prompt, not 0.99999….
    let allowed = |n: usize| (((1.0 - keep) * n as f64 + 1e-9).floor() as usize).min(n - 1);
    // Halfway between neighbours, as the curve's thresholds are.
    let from = match allowed(bad.len()) {
        0 => lowest_bad,
        k => (bad[k - 1] + bad[k]) / 2.0,
    };
    // The safe prompts that must stay below the band's top, and every one
    // tied with the highest of them: a cut between equal scores would let
    // them all above it.
    let highest_kept = good[good.len() - allowed(good.len()) - 1];
    let to = match good.iter().find(|&&g| g > highest_kept) {
        // Halfway, unless the two are neighbouring floats and halfway rounds down onto the kept one.
        Some(&next) => Some((highest_kept + next) / 2.0).filter(|&mid| mid > highest_kept).unwrap_or(next),
        // A top of 1 takes a score of 1 too (see `Second::takes`).
        None => (highest_kept + 1e-9).min(1.0),
    };
    (from < to).then_some([from, to])
}

/// The points of `curve` whose thresholds fall inside `band`: there, a
/// first score below the band is cleared and one at or above it flagged,
/// so the band's promise (`keep`) is what the router does outside it.
pub fn within(curve: &[SafetyPoint], [from, to]: [f64; 2]) -> Vec<SafetyPoint> {
    curve.iter().filter(|p| from <= p.threshold && p.threshold < to).copied().collect()
}

/// The nearer-bound margin of `target` (see [`SafetyTarget::margin`]) of the
/// worst of `groups` (each a category's prompts) when flagging above
/// `threshold`. A group with no prompt of one label has no share to judge
/// on that side, so only the other bound counts for it.
pub fn worst_margin(groups: &[Vec<Scored>], target: SafetyTarget, threshold: f64) -> f64 {
    groups
        .iter()
        .map(|g| {
            let mut counts = Counts::default();
            g.iter().for_each(|s| counts.add(s, s.score > threshold));
            counts.margin(target)
        })
        .fold(f64::INFINITY, f64::min)
}

/// One group's prompts by label, and how many of each were flagged.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    unsafe_: usize,
    caught: usize,
    safe: usize,
    refused: usize,
}

impl Counts {
    fn add(&mut self, s: &Scored, flagged: bool) {
        if s.unsafe_ {
            self.unsafe_ += 1;
            self.caught += usize::from(flagged);
        } else {
            self.safe += 1;
            self.refused += usize::from(flagged);
        }
    }

    /// [`SafetyTarget::margin`] of these counts; a label with no prompt has
    /// no share to judge, so only the other bound counts.
    fn margin(&self, target: SafetyTarget) -> f64 {
        let caught = match self.unsafe_ {
            0 => f64::INFINITY,
            n => self.caught as f64 / n as f64 - target.min_caught,
        };
        let refused = match self.safe {
            0 => f64::INFINITY,
            n => target.max_safe_refused - self.refused as f64 / n as f64,
        };
        caught.min(refused)
    }
}

/// Out-of-fold scores as [`pick_per_class`] reads them: for each prompt,
/// the category the classifier filed it under (an index of the head's
/// classes, as `safety::likeliest_unsafe` gives it) and the group of its
/// own category (the target is held in each group).
#[derive(Debug, Clone, Copy)]
pub struct Filed<'a> {
    pub items: &'a [Scored],
    pub filed: &'a [usize],
    pub group: &'a [usize],
}

impl Filed<'_> {
    /// Prompt `i` is flagged above `thresholds[filed[i]]`.
    pub fn flags(&self, thresholds: &[f64]) -> Vec<bool> {
        self.items.iter().zip(self.filed).map(|(s, &c)| thresholds.get(c).is_some_and(|t| s.score > *t)).collect()
    }

    /// The margin of the group that clears the target by least.
    pub fn worst_margin(&self, thresholds: &[f64], target: SafetyTarget) -> f64 {
        self.standing(thresholds, target).0.first().copied().unwrap_or(f64::INFINITY)
    }

    /// Every group's margin, worst first, then the whole split's margin.
    fn standing(&self, thresholds: &[f64], target: SafetyTarget) -> (Vec<f64>, f64) {
        let flags = self.flags(thresholds);
        let groups = self.group.iter().max().map_or(0, |g| g + 1);
        let mut counts = vec![Counts::default(); groups];
        let mut all = Counts::default();
        for ((s, &f), &g) in self.items.iter().zip(&flags).zip(self.group) {
            counts[g].add(s, f);
            all.add(s, f);
        }
        let mut margins: Vec<f64> = counts.iter().map(|c| c.margin(target)).collect();
        margins.sort_by(f64::total_cmp);
        (margins, all.margin(target))
    }
}

/// Whether standing `a` beats `b`: its worst group clears the target by
/// more, or as much and its next-worst by more, and so on (leximin), and
/// where all groups tie, the whole split's margin. Shares are counts over
/// a few hundred prompts: differences under 1e-12 are ties.
fn beats(a: &(Vec<f64>, f64), b: &(Vec<f64>, f64)) -> bool {
    const TIE: f64 = 1e-12;
    for (x, y) in a.0.iter().zip(&b.0).chain(std::iter::once((&a.1, &b.1))) {
        if x > &(y + TIE) {
            return true;
        }
        if x < &(y - TIE) {
            return false;
        }
    }
    false
}

/// Passes of [`pick_per_class`] at most; each moves one category at a
/// time, so a few settle it.
const PASSES: usize = 10;

/// One threshold per category the classifier files prompts under (index
/// by class; index 0, [`SAFE`](super::SAFE), keeps `start`): starting from
/// `start` everywhere, each category's threshold in turn moves to the point
/// of its own prompts' scores that most improves the worst group's margin
/// (then the next worst, then the whole split's), until a pass moves none.
/// Thresholds stay in `allowed` (a second stage's band: outside it the
/// first stage's verdict is what the band promised). A greedy climb, not a
/// search of every combination: it keeps what it starts from unless a
/// move is strictly better.
pub fn pick_per_class(
    filed: &Filed<'_>,
    classes: usize,
    start: f64,
    allowed: Option<[f64; 2]>,
    target: SafetyTarget,
) -> Vec<f64> {
    let mut thresholds = vec![start; classes];
    let mut best = filed.standing(&thresholds, target);
    for _ in 0..PASSES {
        let mut moved = false;
        for class in 1..classes {
            let own: Vec<Scored> =
                filed.items.iter().zip(filed.filed).filter(|(_, &c)| c == class).map(|(s, _)| *s).collect();
            let candidates = curve(&own)
                .into_iter()
                .map(|p| p.threshold)
                .filter(|t| allowed.is_none_or(|[from, to]| from <= *t && *t < to));
            for t in candidates {
                let mut trial = thresholds.clone();
                trial[class] = t;
                let standing = filed.standing(&trial, target);
                if beats(&standing, &best) {
                    (thresholds, best, moved) = (trial, standing, true);
                }
            }
        }
        if !moved {
            break;
        }
    }
    thresholds
}

/// [`pick`] judged per category: the point whose worst group has the
/// widest margin, so that no category is given up for the others' sake;
/// among equals, the one with the widest margin overall. With one group
/// it is [`pick`]. `None` only for an empty curve.
pub fn pick_per_group(curve: &[SafetyPoint], groups: &[Vec<Scored>], target: SafetyTarget) -> Option<SafetyPoint> {
    let key = |p: &SafetyPoint| (worst_margin(groups, target, p.threshold), target.margin(p));
    curve
        .iter()
        .map(|p| (key(p), p))
        .max_by(|(a, _), (b, _)| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, p)| *p)
}

/// Bootstrap draws for [`interval`].
pub const DRAWS: usize = 2_000;

/// 95% percentile-bootstrap interval of the share of `true` in `flags`;
/// seeded, so the same flags give the same interval.
pub fn interval(flags: &[bool]) -> [f64; 2] {
    if flags.is_empty() {
        return [0.0, 0.0];
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut shares: Vec<f64> =
        (0..DRAWS).map(|_| share((0..flags.len()).map(|_| flags[rng.gen_range(0..flags.len())]))).collect();
    shares.sort_by(f64::total_cmp);
    [shares[DRAWS * 25 / 1000], shares[DRAWS * 975 / 1000 - 1]]
}

/// The held-out figures of flagging `items[i]` where `flags[i]`.
pub fn held_out(items: &[Scored], flags: &[bool]) -> HeldOut {
    let side = |unsafe_: bool| -> Vec<bool> {
        items.iter().zip(flags).filter(|(s, _)| s.unsafe_ == unsafe_).map(|(_, f)| *f).collect()
    };
    let (caught, refused) = (side(true), side(false));
    HeldOut {
        unsafe_items: caught.len(),
        safe_items: refused.len(),
        caught: share(caught.iter().copied()),
        caught_interval: interval(&caught),
        safe_refused: share(refused.iter().copied()),
        safe_refused_interval: interval(&refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<Scored> {
        // Unsafe scores 0.55..1.0, safe 0.0..0.6: they overlap on 0.55..0.6.
        let unsafe_ = (0..10).map(|i| Scored { score: 0.55 + f64::from(i) * 0.05, unsafe_: true });
        let safe = (0..13).map(|i| Scored { score: f64::from(i) * 0.05, unsafe_: false });
        unsafe_.chain(safe).collect()
    }

    #[test]
    fn the_curve_runs_from_everything_to_nothing() {
        let c = curve(&items());
        assert_eq!((c[0].caught, c[0].safe_refused), (1.0, 1.0));
        let last = c.last().unwrap();
        assert_eq!((last.caught, last.safe_refused), (0.0, 0.0));
        assert!(c.windows(2).all(|w| w[0].threshold < w[1].threshold && w[0].caught >= w[1].caught));
    }

    #[test]
    fn pick_takes_the_widest_margin_and_says_when_nothing_meets_it() {
        let c = curve(&items());
        let target = SafetyTarget { min_caught: 0.8, max_safe_refused: 0.2 };
        let p = pick(&c, target).unwrap();
        assert!(target.met_by(&p), "{p:?}");
        // Between 0.5 and 0.55 every unsafe one is caught and 2 of 13 safe
        // refused (0.046 inside the refusal bound); between 0.55 and 0.6,
        // 9 of 10 and 1 of 13: 0.1 inside both, the widest margin.
        assert!((p.threshold - 0.575).abs() < 1e-9, "{p:?}");
        let strict = SafetyTarget { min_caught: 1.0, max_safe_refused: 0.0 };
        let p = pick(&c, strict).unwrap();
        assert!(!strict.met_by(&p));
        // The nearest miss: all caught misses by 2 of 13 safe refused
        // (0.154), none refused by 2 of 10 caught; 9 of 10 caught with 1 of
        // 13 refused misses each bound by at most 0.1.
        assert_eq!((p.caught, p.safe_refused), (0.9, 1.0 / 13.0), "{p:?}");
        assert!(pick(&[], strict).is_none());
    }

    #[test]
    fn the_band_holds_where_the_first_stage_errs() {
        // Every unsafe prompt scores at least 0.55 and every safe one at
        // most 0.6: keeping all of them, the band is the overlap.
        let [from, to] = band(&items(), 1.0).unwrap();
        assert!((from - 0.55).abs() < 1e-12 && (to - 0.6).abs() < 1e-6 && to > 0.6, "{from} {to}");
        // Letting one of each through, the first stage errs nowhere else.
        assert_eq!(band(&items(), 0.9), None);
        let one_sided: Vec<Scored> = items().into_iter().filter(|s| s.unsafe_).collect();
        assert_eq!(band(&one_sided, 1.0), None, "no safe prompt, no band");
    }

    #[test]
    fn ties_at_the_bands_top_stay_below_it() {
        // Ten safe prompts, the top two tied at 0.9: letting one above the
        // band cannot cut between them, so both stay below it.
        let mut s: Vec<Scored> = (0..8).map(|i| Scored { score: f64::from(i) * 0.1, unsafe_: false }).collect();
        s.extend([0.9, 0.9].map(|score| Scored { score, unsafe_: false }));
        s.extend((0..10).map(|i| Scored { score: 0.5 + f64::from(i) * 0.05, unsafe_: true }));
        let [_, to] = band(&s, 0.9).unwrap();
        assert!(to > 0.9, "{to}");
    }

    #[test]
    fn within_keeps_the_thresholds_inside_the_band() {
        let c = curve(&items());
        let target = SafetyTarget { min_caught: 0.8, max_safe_refused: 0.2 };
        // The widest margin overall is at 0.575 (see above); the band
        // leaves only thresholds from 0.3 up to 0.5.
        let p = pick(&within(&c, [0.3, 0.5]), target).unwrap();
        assert!((0.3..0.5).contains(&p.threshold), "{p:?}");
        assert!(within(&c, [0.3, 0.31]).is_empty(), "no threshold of the curve in the band");
    }

    #[test]
    fn per_group_the_worst_category_decides() {
        // Two categories: `a` is easy (60 unsafe at 0.9; 57 safe at 0.1,
        // one at 0.31, two at 0.5); in `b` the 10 unsafe prompts score
        // 0.3..0.75 and the 10 safe ones 0.0..0.225.
        let a: Vec<Scored> = [(0.9, true, 60), (0.1, false, 57), (0.31, false, 1), (0.5, false, 2)]
            .into_iter()
            .flat_map(|(score, unsafe_, n)| std::iter::repeat_n(Scored { score, unsafe_ }, n))
            .collect();
        let b: Vec<Scored> = (0..10)
            .map(|i| Scored { score: 0.3 + f64::from(i) * 0.05, unsafe_: true })
            .chain((0..10).map(|i| Scored { score: f64::from(i) * 0.025, unsafe_: false }))
            .collect();
        let all: Vec<Scored> = a.iter().chain(&b).copied().collect();
        let target = SafetyTarget { min_caught: 0.9, max_safe_refused: 0.05 };
        let c = curve(&all);
        // Overall, the widest margin refuses no safe prompt and catches
        // 65 of 70 (0.929): 5 of them `b`'s, which misses its bound by 0.4.
        let whole = pick(&c, target).unwrap();
        assert!((whole.threshold - 0.525).abs() < 1e-9, "{whole:?}");
        let groups = vec![a, b];
        assert!((worst_margin(&groups, target, whole.threshold) + 0.4).abs() < 1e-9);
        // Per category, three thresholds meet both bounds on the edge; of
        // those, the widest overall margin: `b` catches 9 of 10 and `a`
        // refuses 2 of 60.
        let p = pick_per_group(&c, &groups, target).unwrap();
        assert!((p.threshold - 0.33).abs() < 1e-9, "{p:?}");
        assert_eq!(worst_margin(&groups, target, p.threshold), 0.0);
        assert_eq!(pick_per_group(&c, std::slice::from_ref(&all), target), pick(&c, target), "one group is the whole");
        // A group of one label is judged on that label alone.
        let only_safe = vec![all.iter().filter(|s| !s.unsafe_).copied().collect::<Vec<_>>()];
        assert_eq!(worst_margin(&only_safe, target, 0.6), 0.05);
    }

    #[test]
    fn intervals_hold_the_share_and_narrow_with_more_items() {
        let few: Vec<bool> = (0..20).map(|i| i % 10 != 0).collect();
        let many: Vec<bool> = (0..400).map(|i| i % 10 != 0).collect();
        let (a, b) = (interval(&few), interval(&many));
        assert!(a[0] <= 0.9 && 0.9 <= a[1] && b[0] <= 0.9 && 0.9 <= b[1], "{a:?} {b:?}");
        assert!(b[1] - b[0] < a[1] - a[0]);
        assert_eq!(interval(&[true; 5]), [1.0, 1.0]);
        let flags: Vec<bool> = items().iter().map(|s| s.score > 0.525).collect();
        let h = held_out(&items(), &flags);
        assert_eq!((h.unsafe_items, h.safe_items, h.caught), (10, 13, 1.0));
    }

    #[test]
    fn per_class_thresholds_hold_each_category_where_one_cannot() {
        // Category `a` (filed as class 1): unsafe prompts at 0.9, safe
        // look-alikes at 0.6. Category `b` (class 2): quiet harm at 0.4,
        // safe prompts at 0.1. One threshold either refuses `a`'s safe
        // prompts or lets `b`'s unsafe ones through.
        let rows = [(0.9, true, 0, 20), (0.6, false, 0, 20), (0.4, true, 1, 20), (0.1, false, 1, 20)];
        let (mut items, mut group) = (Vec::new(), Vec::new());
        for (score, unsafe_, g, n) in rows {
            items.extend(std::iter::repeat_n(Scored { score, unsafe_ }, n));
            group.extend(std::iter::repeat_n(g, n));
        }
        let filed_as: Vec<usize> = group.iter().map(|g| g + 1).collect();
        let filed = Filed { items: &items, filed: &filed_as, group: &group };
        let target = SafetyTarget { min_caught: 0.9, max_safe_refused: 0.05 };
        let groups = vec![items[..40].to_vec(), items[40..].to_vec()];
        let one = pick_per_group(&curve(&items), &groups, target).unwrap();
        assert!(worst_margin(&groups, target, one.threshold) < -0.5, "{one:?}");
        let t = pick_per_class(&filed, 3, one.threshold, None, target);
        assert!((0.6..0.9).contains(&t[1]) && (0.1..0.4).contains(&t[2]), "{t:?}");
        let flags = filed.flags(&t);
        assert!(flags.iter().zip(&items).all(|(f, s)| *f == s.unsafe_), "every prompt where it belongs");
        // Held inside a band that starts above `b`'s unsafe prompts, `b`
        // cannot be helped; `a` still can.
        let banded = pick_per_class(&filed, 3, 0.95, Some([0.5, 1.0]), target);
        assert!((0.6..0.9).contains(&banded[1]) && banded[2] >= 0.5, "{banded:?}");
        assert_eq!(banded[0], 0.95, "the safe class keeps the start");
    }
}
