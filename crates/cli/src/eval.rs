//! `switchyard eval`: run an eval set against a target, report, compare
//! (the regression gate), review.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use switchyard_eval::dataset::Dataset;
use switchyard_eval::record::{read_records, EvalRecord};
use switchyard_eval::runner::{self, RunOptions, Target};
use switchyard_eval::sandbox::Sandbox;
use switchyard_eval::scorecard::{self, apply_reviews, Review, Scorecard};
use switchyard_router::Prices;
use switchyard_wire::{headers, ResultLabel};

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Ask every item of a dataset of a target; write records, a summary and scorecards.
    Run(Box<RunArgs>),
    /// Scorecards (markdown, HTML, JSON) over one or more runs' records.
    Report {
        /// Run directories or records.jsonl files.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Quality retention of a candidate run against a baseline, per slice.
    /// With --max-drop, exits non-zero when any slice lost more than that.
    Compare {
        baseline: PathBuf,
        candidate: PathBuf,
        /// Largest allowed drop in retention (e.g. 0.05 = candidate keeps >= 95%).
        #[arg(long)]
        max_drop: Option<f64>,
        /// Slices with fewer items than this are shown but never fail the gate.
        #[arg(long, default_value_t = 10)]
        min_items: usize,
    },
    /// Precision and recall of every built-in detector of personal data and
    /// secrets on a labelled corpus, per split. Exits non-zero when a
    /// validated detector (checksums, parses) misses its targets.
    Pii {
        /// The corpus version directory.
        #[arg(long, default_value = "datasets/pii/v1")]
        dataset: PathBuf,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list each false positive (detector, item id).
        #[arg(long)]
        false_positives: bool,
    },
    /// Walk through records flagged for review (and, with --failed, failed
    /// ones) and record human verdicts; scorecards then use them.
    Review {
        run: PathBuf,
        #[arg(long)]
        reviewer: String,
        #[arg(long)]
        failed: bool,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The dataset version directory, e.g. datasets/eval/core/v1.
    #[arg(long)]
    dataset: PathBuf,
    /// An OpenAI-compatible base URL (…/v1), a model id served by --server,
    /// or `route:NAME` (one route of the switchyard at --server).
    #[arg(long)]
    target: String,
    /// The switchyard that serves model and route targets.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    server: String,
    /// Model name sent to a URL target.
    #[arg(long, default_value = "default")]
    model: String,
    /// Output directory (default eval-runs/NAME-vN/TARGET).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Ask only this many items, spread evenly over the set (the same ones each time).
    #[arg(long)]
    limit: Option<usize>,
    /// Ask every item this many times (sampling variance).
    #[arg(long, default_value_t = 1)]
    repeats: u32,
    /// Seed for repeat 0; repeat r uses seed + r.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seconds allowed for one whole answer.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Do not ask for logprobs (for servers that reject them).
    #[arg(long)]
    no_logprobs: bool,
    /// Ask again even what the cache has.
    #[arg(long)]
    no_cache: bool,
    /// A policy whose prompt-feature model scores every item (`confidence.prompt_score`).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A TOML file with a [prices] table; the target's entry prices each answer.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// An OpenAI-compatible base URL whose model grades `judge` checks (with --judge-model).
    #[arg(long)]
    judge: Option<String>,
    #[arg(long, default_value = "default")]
    judge_model: String,
}

fn target(args: &RunArgs) -> Target {
    let slug = |s: &str| s.to_string();
    if args.target.starts_with("http://") || args.target.starts_with("https://") {
        Target {
            label: slug(&args.target),
            base_url: args.target.clone(),
            model: args.model.clone(),
            headers: Vec::new(),
        }
    } else if let Some(route) = args.target.strip_prefix("route:") {
        Target {
            label: slug(&args.target),
            base_url: args.server.clone(),
            model: "auto".into(),
            headers: vec![(headers::FORCE_ROUTE.into(), route.to_string())],
        }
    } else {
        Target {
            label: slug(&args.target),
            base_url: args.server.clone(),
            model: args.target.clone(),
            headers: Vec::new(),
        }
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_EVAL_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".cache").join("switchyard").join("eval")
    })
}

fn records_of(path: &Path) -> anyhow::Result<Vec<EvalRecord>> {
    let file = if path.is_dir() { path.join("records.jsonl") } else { path.to_path_buf() };
    let mut records = read_records(&file)?;
    let reviews = file.with_file_name("reviews.jsonl");
    if reviews.exists() {
        let reviews: Vec<Review> = std::fs::read_to_string(&reviews)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        apply_reviews(&mut records, &reviews);
    }
    Ok(records)
}

fn write_reports(out: &Path, card: &Scorecard) -> anyhow::Result<()> {
    std::fs::write(out.join("scorecard.md"), scorecard::markdown(card))?;
    std::fs::write(out.join("scorecard.html"), scorecard::html(card))?;
    std::fs::write(out.join("scorecard.json"), serde_json::to_vec_pretty(card)?)?;
    Ok(())
}

fn print_overall(card: &Scorecard) {
    println!(
        "{:<28} {:>10} {:>6} {:>9} {:>15} {:>9} {:>9}",
        "target", "difficulty", "n", "success", "95% CI", "refusal✓", "over-ref"
    );
    for s in card.slices.iter().filter(|s| s.family == "all") {
        println!(
            "{:<28} {:>10} {:>6} {:>8.1}% {:>6.1}–{:>5.1}% {:>9} {:>9}",
            s.target,
            s.difficulty,
            s.n,
            100.0 * s.success,
            100.0 * s.ci_low,
            100.0 * s.ci_high,
            s.correct_refusal.map_or("–".into(), |v| format!("{:.0}%", 100.0 * v)),
            s.over_refusal.map_or("–".into(), |v| format!("{:.0}%", 100.0 * v)),
        );
    }
}

pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Run(args) => run_eval(*args),
        EvalCommand::Pii { dataset, json, false_positives } => {
            let set = switchyard_eval::pii::PiiSet::open(&dataset)?;
            let report = switchyard_eval::pii::score(&set, &switchyard_router::detect::Detectors::all());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
                if false_positives {
                    for (detector, id) in &report.false_positive_items {
                        println!("false positive: {detector} in {id}");
                    }
                }
            }
            if !report.targets_met() {
                bail!("a validated detector missed its precision or recall target (see the table)");
            }
            Ok(())
        }
        EvalCommand::Report { runs, out } => {
            let mut records = Vec::new();
            for r in &runs {
                records.extend(records_of(r)?);
            }
            std::fs::create_dir_all(&out)?;
            let card = scorecard::scorecard(&records);
            write_reports(&out, &card)?;
            print_overall(&card);
            println!("wrote {}/scorecard.{{md,html,json}}", out.display());
            Ok(())
        }
        EvalCommand::Compare { baseline, candidate, max_drop, min_items } => {
            let (b, c) =
                (scorecard::scorecard(&records_of(&baseline)?), scorecard::scorecard(&records_of(&candidate)?));
            if b.dataset != c.dataset {
                bail!(
                    "the runs used different datasets ({} vs {}): results are only comparable within one version",
                    b.dataset,
                    c.dataset
                );
            }
            println!("{:<12} {:<10} {:>9} {:>10} {:>10}", "family", "difficulty", "baseline", "candidate", "retention");
            let mut failed = Vec::new();
            for scorecard::Gated { retention: r, regressed: gate, .. } in scorecard::gate(&b, &c, max_drop, min_items) {
                println!(
                    "{:<12} {:<10} {:>8.1}% {:>9.1}% {:>9.1}%{}",
                    r.family,
                    r.difficulty,
                    100.0 * r.baseline,
                    100.0 * r.candidate,
                    100.0 * r.retention,
                    if gate { "  REGRESSION" } else { "" }
                );
                if gate {
                    failed.push(format!("{}/{}", r.family, r.difficulty));
                }
            }
            if !failed.is_empty() {
                bail!("quality dropped by more than {:.1}% in: {}", 100.0 * max_drop.unwrap_or(0.0), failed.join(", "));
            }
            Ok(())
        }
        EvalCommand::Review { run, reviewer, failed } => review(&run, &reviewer, failed),
    }
}

fn run_eval(args: RunArgs) -> anyhow::Result<()> {
    let mut dataset = Dataset::open(&args.dataset).with_context(|| format!("dataset {}", args.dataset.display()))?;
    if let Some(n) = args.limit {
        dataset.spread(n);
    }
    let target = target(&args);
    let difficulty = match &args.policy {
        Some(p) => Some(crate::policy::load(p)?.difficulty),
        None => None,
    };
    let price = match &args.prices {
        Some(p) => {
            let prices =
                Prices::from_toml(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                    .map_err(anyhow::Error::msg)?;
            let name = args.target.strip_prefix("route:").unwrap_or(&args.target);
            prices.for_route(name, &target.model).cloned()
        }
        None => None,
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let slug: String = target
            .label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        PathBuf::from("eval-runs").join(format!("{}-v{}", dataset.manifest.name, dataset.manifest.version)).join(slug)
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let opts = RunOptions {
        concurrency: args.concurrency,
        repeats: args.repeats.max(1),
        seed: args.seed,
        temperature: args.temperature,
        timeout: Duration::from_secs(args.timeout_s),
        logprobs: !args.no_logprobs,
        cache_dir: (!args.no_cache).then(cache_dir),
        difficulty,
        price,
        judge: args.judge.as_ref().map(|url| Target {
            label: format!("{url} ({})", args.judge_model),
            base_url: url.clone(),
            model: args.judge_model.clone(),
            headers: Vec::new(),
        }),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let sandbox = Sandbox::new(Duration::from_secs(10))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let records = rt.block_on(runner::run(&dataset, &target, &opts, sandbox));
    let mut lines = String::new();
    for r in &records {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    let tmp = out.join("records.jsonl.tmp");
    std::fs::write(&tmp, lines)?;
    std::fs::rename(&tmp, out.join("records.jsonl"))?;
    let card = scorecard::scorecard(&records);
    let errors = records.iter().filter(|r| r.label == ResultLabel::Error.as_str()).count();
    let summary = serde_json::json!({
        "dataset": dataset.label(),
        "dataset_sha256": dataset.manifest.files,
        "target": target.label,
        "base_url": target.base_url,
        "model": target.model,
        "repeats": opts.repeats,
        "seed": opts.seed,
        "temperature": opts.temperature,
        "items": dataset.items.len(),
        "records": records.len(),
        "cached": records.iter().filter(|r| r.cached).count(),
        "errors": errors,
        "scorecard": card,
    });
    std::fs::write(out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    write_reports(&out, &card)?;
    print_overall(&card);
    if errors > 0 {
        let first = records.iter().find_map(|r| r.error.as_deref()).unwrap_or_default();
        println!("{errors} items failed with errors (first: {first})");
    }
    println!("wrote {}/{{records.jsonl,summary.json,scorecard.md,scorecard.html}}", out.display());
    Ok(())
}

/// A line-by-line terminal walk-through: works on any terminal and with
/// verdicts piped in (`p`, `f`, `s`kip, `q`uit).
fn review(run: &Path, reviewer: &str, failed: bool) -> anyhow::Result<()> {
    let records = records_of(run)?;
    let path = run.join("reviews.jsonl");
    let done: Vec<Review> = if path.exists() {
        std::fs::read_to_string(&path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let todo: Vec<&EvalRecord> = records
        .iter()
        .filter(|r| r.review || (failed && !r.correct))
        .filter(|r| !done.iter().any(|d| d.item_id == r.item_id && d.target == r.target && d.repeat == r.repeat))
        .collect();
    println!(
        "{} records to review ({} already reviewed). Answer p (pass), f (fail), s (skip) or q (quit).",
        todo.len(),
        done.len()
    );
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    for r in todo {
        println!(
            "\n=== {} ({} / {}) on {} ===\n--- answer ---\n{}\n--- automatic verdict: {} ({})",
            r.item_id,
            r.family,
            r.difficulty,
            r.target,
            r.output,
            if r.correct { "pass" } else { "fail" },
            r.scorer
        );
        print!("verdict [p/f/s/q]: ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next().transpose()? else { break };
        let pass = match line.trim() {
            "p" => true,
            "f" => false,
            "q" => break,
            _ => continue,
        };
        let v = Review {
            item_id: r.item_id.clone(),
            target: r.target.clone(),
            repeat: r.repeat,
            pass,
            reviewer: reviewer.to_string(),
            note: String::new(),
        };
        writeln!(file, "{}", serde_json::to_string(&v)?)?;
    }
    println!("verdicts in {}", path.display());
    Ok(())
}
