//! `switchyard calibrate`: eval records in, a new policy version out, with
//! the rule's threshold picked from the quality-vs-escalation curve and the
//! curve stored beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchyard_eval::record::RecordConfidence;
use switchyard_router::calibrate::{self, Calibration, CurvePoint, Direction, Sample, Target};
use switchyard_router::{Action, DifficultyModel, Features, Policy, Signal};

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The policy to calibrate.
    #[arg(long)]
    policy: PathBuf,
    /// The rule whose threshold to set: a `cascade` rule (its logprob signal)
    /// or a `difficulty` rule (the prompt-feature score; its weights are
    /// refitted when the records carry prompt features).
    #[arg(long)]
    rule: String,
    /// Eval records (JSONL, one line per item and target, as `eval run` writes).
    #[arg(long = "records", required = true, num_args = 1..)]
    records: Vec<PathBuf>,
    /// The `target` (or `route`) value of the fast route's records.
    #[arg(long)]
    fast: String,
    /// The `target` (or `route`) value of the strong route's records.
    #[arg(long)]
    strong: String,
    /// Keep at least this share of the strong route's quality (e.g. 0.95),
    /// escalating as little as possible.
    #[arg(long, conflicts_with = "max_escalation", required_unless_present = "max_escalation")]
    min_retention: Option<f64>,
    /// Escalate at most this share of requests (e.g. 0.3), with the best quality.
    #[arg(long)]
    max_escalation: Option<f64>,
    /// Folds for cross-validation (of the threshold, and of a refitted difficulty model).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Version label of the new policy (default: the old one + `.cal`).
    #[arg(long)]
    version: Option<String>,
    /// Where to write the new policy file.
    #[arg(long)]
    out: PathBuf,
    /// Also draw the curve, random routing and the chosen point as a self-contained HTML page.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The fields of an eval record that calibration reads (DESIGN.md, "Eval records").
#[derive(Deserialize)]
struct Record {
    item_id: String,
    target: String,
    #[serde(default)]
    route: Option<String>,
    correct: Correct,
    #[serde(default)]
    confidence: Option<RecordConfidence>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Correct {
    Pass(bool),
    Score(f64),
}

/// One item's results, averaged over repeats.
#[derive(Default)]
struct Item {
    fast: Vec<f64>,
    strong: Vec<f64>,
    confidence: Vec<RecordConfidence>,
}

fn avg(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = xs.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.policy).with_context(|| format!("reading {}", args.policy.display()))?;
    let policy = Policy::from_toml(&text).with_context(|| format!("policy {}", args.policy.display()))?;
    let (index, rule) = policy
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.id == args.rule)
        .with_context(|| format!("--rule {}: the policy has no such rule", args.rule))?;
    let target = match (args.min_retention, args.max_escalation) {
        (Some(r), _) if (0.0..=1.5).contains(&r) => Target::MinRetention(r),
        (None, Some(m)) if (0.0..=1.0).contains(&m) => Target::MaxEscalation(m),
        _ => bail!("--min-retention must be in 0..1.5 and --max-escalation in 0..1"),
    };

    let mut hasher = Sha256::new();
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    for path in &args.records {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        hasher.update(&bytes);
        for (n, line) in String::from_utf8_lossy(&bytes).lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r: Record = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not an eval record", path.display(), n + 1))?;
            let score = match r.correct {
                Correct::Pass(b) => f64::from(u8::from(b)),
                Correct::Score(s) => s,
            };
            let is = |name: &str| r.target == name || r.route.as_deref() == Some(name);
            let item = items.entry(r.item_id.clone()).or_default();
            if is(&args.fast) {
                item.fast.push(score);
                item.confidence.push(r.confidence.unwrap_or_default());
            } else if is(&args.strong) {
                item.strong.push(score);
            }
        }
    }

    type SignalOf = Box<dyn Fn(&RecordConfidence) -> Option<f64>>;
    let (direction, max_threshold, signal_name, signal_of): (Direction, f64, &str, SignalOf) = match &rule.then {
        Action::Cascade { signal, .. } => {
            let signal = *signal;
            let get = move |c: &RecordConfidence| match signal {
                Signal::Mean => c.mean_logprob,
                Signal::WindowMin => c.min_window_logprob,
                Signal::VerifyMean => c.verify_mean_logprob,
                Signal::VerifyWindowMin => c.verify_min_window_logprob,
            };
            (Direction::Below, 0.0, signal.as_str(), Box::new(get))
        }
        Action::Difficulty { .. } => {
            (Direction::AtOrAbove, 1.0, "prompt_score", Box::new(|c: &RecordConfidence| c.prompt_score))
        }
        _ => bail!("--rule {}: only `cascade` and `difficulty` rules have thresholds", rule.id),
    };

    // Items answered by both routes.
    let paired: Vec<(&String, f64, f64, Vec<RecordConfidence>)> = items
        .iter()
        .filter_map(|(id, it)| {
            Some((id, avg(it.fast.iter().copied())?, avg(it.strong.iter().copied())?, it.confidence.clone()))
        })
        .collect();
    if paired.len() < 10 {
        bail!(
            "only {} items have records from both --fast {} and --strong {}; calibration needs at least 10",
            paired.len(),
            args.fast,
            args.strong
        );
    }

    // A difficulty rule with prompt features gets a refitted model, judged
    // on out-of-fold scores so the curve shows held-out quality.
    let mut refit = None;
    let features: Option<Vec<Features>> = match rule.then {
        Action::Difficulty { .. } => paired.iter().map(|(_, _, _, c)| c.first().and_then(|c| c.features)).collect(),
        _ => None,
    };
    let signals: Vec<Option<f64>> = match &features {
        Some(xs) => {
            let fails: Vec<f64> = paired.iter().map(|(_, fast, _, _)| 1.0 - fast).collect();
            refit = Some(DifficultyModel::fit(xs, &fails));
            DifficultyModel::cross_validated_scores(xs, &fails, args.folds).into_iter().map(Some).collect()
        }
        None => paired.iter().map(|(_, _, _, c)| avg(c.iter().filter_map(&signal_of))).collect(),
    };
    let samples: Vec<Sample> = paired
        .iter()
        .zip(&signals)
        .filter_map(|((_, fast, strong, _), s)| Some(Sample { signal: (*s)?, fast: *fast, strong: *strong }))
        .collect();
    let skipped = paired.len() - samples.len();
    if samples.len() < 10 {
        bail!("only {} items carry `confidence.{signal_name}` in the fast route's records", samples.len());
    }

    let (curve, chosen) = calibrate::calibrate(&samples, direction, max_threshold, target);
    print_curve(&curve);
    let Some(p) = chosen else {
        bail!("no threshold meets {target} on these {} items (see the curve above); relax the target", samples.len());
    };
    let (fast_q, strong_q, random_q) = calibrate::baselines(&samples, p.escalation_rate);
    let retention = if strong_q > 0.0 { p.quality / strong_q } else { 1.0 };
    println!(
        "\nchosen: threshold {:.4} on {signal_name}: escalates {:.1}% of {} items, quality {:.3} ({:.1}% of strong {:.3}; fast alone {:.3})",
        p.threshold,
        100.0 * p.escalation_rate,
        samples.len(),
        p.quality,
        100.0 * retention,
        strong_q,
        fast_q
    );
    println!(
        "random routing at the same escalation rate: quality {random_q:.3}; calibrated lift {:+.3}",
        p.quality - random_q
    );
    let cv = calibrate::cross_validate(&samples, direction, max_threshold, target, args.folds);
    println!(
        "held out ({}-fold, threshold picked on the other folds): escalates {:.1}%, quality {:.3} vs random {:.3} at that rate: lift {:+.3}",
        cv.folds,
        100.0 * cv.escalation_rate,
        cv.quality,
        cv.random_quality,
        cv.quality - cv.random_quality
    );
    if let Some(p) = cv.p_value {
        let verdict = if p < 0.05 { "beats random routing" } else { "not shown to beat random routing (p >= 0.05)" };
        println!("chance that escalating as many items at random does as well: p = {p:.4} (permutation test, {} draws): {verdict}", calibrate::PERMUTATIONS);
    }
    if skipped > 0 {
        println!("({skipped} items had no {signal_name} in the fast records and were left out)");
    }
    print_slices(&calibrate::slices(&samples, direction, 10), signal_name);

    let calibration = Calibration {
        signal: signal_name.to_string(),
        source: args.records.iter().map(|p| p.display().to_string()).collect(),
        source_sha256: hex::encode(hasher.finalize()),
        items: samples.len(),
        target: target.to_string(),
        threshold: p.threshold,
        escalation_rate: p.escalation_rate,
        quality: p.quality,
        fast_quality: fast_q,
        strong_quality: strong_q,
        retention,
        random_quality: random_q,
        held_out: refit.is_some(),
        cross_validated: Some(cv),
        curve: calibrate::thin(&curve, 41),
    };
    let version = args.version.unwrap_or_else(|| format!("{}.cal", policy.version));
    let new_text = rewrite(&text, index, &rule.id, &version, &calibration, refit.as_ref())?;
    let new_policy =
        Policy::from_toml(&new_text).context("the calibrated policy did not validate (a bug: please report it)")?;
    let tmp = args.out.with_extension("toml.tmp");
    std::fs::write(&tmp, &new_text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} (policy {})", args.out.display(), new_policy.id);
    if let Some(path) = &args.plot {
        let title = format!("{}: {} ({} items, target {target})", rule.id, signal_name, samples.len());
        std::fs::write(path, plot_html(&title, &curve, &p, fast_q, strong_q))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Quality vs escalation rate (the curve), random routing (the straight
/// line from fast-only to strong-only) and the chosen point, as inline SVG.
fn plot_html(title: &str, curve: &[CurvePoint], chosen: &CurvePoint, fast_q: f64, strong_q: f64) -> String {
    let (w, h, pad) = (560.0, 400.0, 48.0);
    let lo = curve.iter().map(|p| p.quality).fold(fast_q.min(strong_q), f64::min).min(1.0);
    let hi = curve.iter().map(|p| p.quality).fold(fast_q.max(strong_q), f64::max).max(lo + 1e-9);
    let x = |r: f64| pad + r * (w - 2.0 * pad);
    let y = |q: f64| h - pad - (q - lo) / (hi - lo) * (h - 2.0 * pad);
    let path: Vec<String> = curve.iter().map(|p| format!("{:.1},{:.1}", x(p.escalation_rate), y(p.quality))).collect();
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>"
    );
    for i in 0..=4 {
        let (r, q) = (i as f64 / 4.0, lo + (hi - lo) * i as f64 / 4.0);
        svg.push_str(&format!(
            "<line x1='{0:.1}' x2='{0:.1}' y1='{1}' y2='{2}' stroke='#eee'/><text x='{0:.1}' y='{3}' text-anchor='middle'>{4:.0}%</text>\
             <line x1='{5}' x2='{6}' y1='{7:.1}' y2='{7:.1}' stroke='#eee'/><text x='{8}' y='{9:.1}' text-anchor='end'>{q:.2}</text>",
            x(r),
            pad,
            h - pad,
            h - pad + 16.0,
            r * 100.0,
            pad,
            w - pad,
            y(q),
            pad - 4.0,
            y(q) + 4.0
        ));
    }
    svg.push_str(&format!(
        "<line x1='{:.1}' y1='{:.1}' x2='{:.1}' y2='{:.1}' stroke='#999' stroke-dasharray='5 4'/>\
         <polyline fill='none' stroke='#4e79a7' stroke-width='2' points='{}'/>\
         <circle cx='{:.1}' cy='{:.1}' r='5' fill='#e15759'/>\
         <text x='{}' y='{}' text-anchor='middle'>escalation rate</text><text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>quality</text></svg>",
        x(0.0), y(fast_q), x(1.0), y(strong_q), path.join(" "), x(chosen.escalation_rate), y(chosen.quality), w / 2.0, h - 8.0, h / 2.0, h / 2.0
    ));
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>calibration</title></head><body style='font-family:sans-serif'>\
         <h2>{}</h2>{svg}<p><span style='color:#4e79a7'>&#9632;</span> calibrated curve &nbsp; <span style='color:#999'>- -</span> random routing \
         &nbsp; <span style='color:#e15759'>&#9679;</span> chosen: threshold {:.4}, {:.1}% escalated, quality {:.3}</p></body></html>",
        title.replace('<', "&lt;"),
        chosen.threshold,
        100.0 * chosen.escalation_rate,
        chosen.quality
    )
}

/// The old policy text with the rule's threshold, the version, the
/// calibration record and (if refitted) the difficulty weights replaced;
/// everything else, comments included, kept as written.
fn rewrite(
    text: &str,
    index: usize,
    rule_id: &str,
    version: &str,
    cal: &Calibration,
    refit: Option<&DifficultyModel>,
) -> anyhow::Result<String> {
    use toml_edit::{value, DocumentMut, Item};
    let mut doc: DocumentMut = text.parse().context("re-reading the policy")?;
    doc["version"] = value(version);
    doc["rules"][index]["then"]["threshold"] = value(cal.threshold);
    if let Some(m) = refit {
        let mut table = toml::to_string(m)?.parse::<DocumentMut>()?.as_table().clone();
        // Where the old weights were, else after everything but the calibration (a
        // table parsed from another document keeps its position there: the top).
        let old = doc.get("difficulty").and_then(Item::as_table).and_then(toml_edit::Table::position);
        table.set_position(old.unwrap_or_else(|| last_position(&doc, &["calibration"]).map_or(0, |p| p + 1)));
        doc["difficulty"] = Item::Table(table);
    }
    let record: DocumentMut = toml::to_string(cal)?.parse()?;
    if !doc.contains_key("calibration") {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        doc["calibration"] = Item::Table(t);
    }
    doc["calibration"][rule_id] = Item::Table(record.as_table().clone());
    move_last(&mut doc, "calibration");
    Ok(doc.to_string())
}

/// Moves the top-level table `key` and every table under it after all the
/// others, in the order of their keys (`[calibration…]`: each rule's
/// record, then its cross-validation, then its curve). toml_edit prints tables by their
/// position in the document, and a table inserted from another document
/// keeps its position there, which scattered a curve's points between
/// `[[routes]]` and `[[rules]]`.
pub(crate) fn move_last(doc: &mut toml_edit::DocumentMut, key: &str) {
    use toml_edit::{Item, Table};
    fn renumber(item: &mut Item, next: &mut usize) {
        let mut visit = |t: &mut Table| {
            t.set_position(*next);
            *next += 1;
            t.iter_mut().for_each(|(_, i)| renumber(i, next));
        };
        match item {
            Item::Table(t) => visit(t),
            Item::ArrayOfTables(a) => a.iter_mut().for_each(visit),
            _ => {}
        }
    }
    let mut next = last_position(doc, &[key]).map_or(0, |p| p + 1);
    if let Some(item) = doc.get_mut(key) {
        renumber(item, &mut next);
    }
}

/// The largest position of a table in `doc`, but for those under the top-level keys `except`.
fn last_position(doc: &toml_edit::DocumentMut, except: &[&str]) -> Option<usize> {
    use toml_edit::{Item, Table};
    fn positions(item: &Item, out: &mut Vec<usize>) {
        let mut visit = |t: &Table| {
            out.extend(t.position());
            t.iter().for_each(|(_, i)| positions(i, out));
        };
        match item {
            Item::Table(t) => visit(t),
            Item::ArrayOfTables(a) => a.iter().for_each(visit),
            _ => {}
        }
    }
    let mut out = Vec::new();
    doc.as_table().iter().filter(|(k, _)| !except.contains(k)).for_each(|(_, i)| positions(i, &mut out));
    out.into_iter().max()
}

/// Where the gains lie along the signal: the table that explains a curve
/// hugging the random line.
fn print_slices(slices: &[calibrate::Slice], signal: &str) {
    let (gained, items) = slices.iter().fold((0.0, 0), |(g, n), s| (g + s.gained - s.lost, n + s.items));
    println!("\nwhere escalation pays, by {signal} in escalation order (tenths of the items):");
    println!("{:>10} {:>10} {:>6} {:>7} {:>6} {:>8}", "from", "to", "items", "gained", "lost", "neither");
    for s in slices {
        println!(
            "{:>10.4} {:>10.4} {:>6} {:>7.1} {:>6.1} {:>8.1}",
            s.first, s.last, s.items, s.gained, s.lost, s.neither
        );
    }
    if let Some(first) = slices.first() {
        let random = gained * first.items as f64 / items.max(1) as f64;
        println!(
            "gained: strong right where fast was wrong; lost: the reverse; neither: wrong on both, so escalating costs without gaining. \
             A random group of {} nets {random:.1}.",
            first.items
        );
    }
}

fn print_curve(curve: &[CurvePoint]) {
    println!("{:>12} {:>10} {:>8}", "threshold", "escalated", "quality");
    for p in calibrate::thin(curve, 21) {
        let bar = "#".repeat((p.quality * 40.0).round() as usize);
        println!("{:>12.4} {:>9.1}% {:>8.3} {bar}", p.threshold, 100.0 * p.escalation_rate, p.quality);
    }
}
