//! `switchyard bench`: traffic traces, and replaying them against any
//! OpenAI-compatible endpoint.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use switchyard_bench::compare::{self, RunReport};
use switchyard_bench::replay::{replay, summarize, Load, Percentiles, Target};
use switchyard_bench::trace::{import_azure, Scenario, Trace};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Make or import a traffic trace (JSONL, one request per line with its arrival offset).
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Serve a mock OpenAI endpoint with injected timings (first chunk after
    /// --ttft-ms, then one every --itl-ms): what the bench's own accuracy is measured against.
    Mock {
        #[arg(long, default_value_t = 18100)]
        port: u16,
        #[arg(long, default_value_t = 50.0)]
        ttft_ms: f64,
        #[arg(long, default_value_t = 10.0)]
        itl_ms: f64,
        #[arg(long, default_value_t = 20)]
        chunks: u32,
    },
    /// Systems side by side on the same trace (the summary.json of each `bench run`), with ratios to the first.
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
    },
    /// Replay a trace against a target; write every request's timings
    /// (requests.jsonl) and a summary with percentiles (summary.json).
    Run {
        #[arg(long)]
        trace: PathBuf,
        /// OpenAI-compatible base URL (…/v1).
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "default")]
        model: String,
        /// Closed loop: keep this many requests in flight, ignoring arrival times.
        /// Without it, requests go out at their arrival offsets (open loop).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Open loop: multiply arrival offsets (0.5 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        #[arg(long, default_value_t = 2000.0)]
        slo_ttft_ms: f64,
        #[arg(long, default_value_t = 200.0)]
        slo_tpot_ms: f64,
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// Ask for whole answers instead of streams (no ITL; TTFT = E2E).
        #[arg(long)]
        no_stream: bool,
        /// Seconds at the start whose requests are sent but left out of the figures.
        #[arg(long, default_value_t = 0.0)]
        warmup_s: f64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum TraceCommand {
    /// Generate a trace from a scenario; the same seed always gives the same file.
    Generate {
        #[arg(long, value_enum)]
        scenario: ScenarioArg,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Requests (single, long-context) or sessions (team).
        #[arg(long, default_value_t = 8)]
        count: u32,
        /// Turns per session (team).
        #[arg(long, default_value_t = 4)]
        turns: u32,
        /// Mean arrivals per second (burst, long-context).
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// Seconds of traffic (burst).
        #[arg(long, default_value_t = 60.0)]
        duration_s: f64,
        /// Spike multiplier (burst).
        #[arg(long, default_value_t = 4.0)]
        factor: f64,
        /// Think time between turns in ms (single: fixed; team: mean).
        #[arg(long, default_value_t = 3000.0)]
        think_ms: f64,
        #[arg(long, default_value_t = 256)]
        input_tokens: u32,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert a published trace (Azure LLM inference CSV) to a switchyard trace.
    Import {
        #[arg(long)]
        azure: PathBuf,
        /// Keep only the first N requests.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ScenarioArg {
    Single,
    Team,
    Burst,
    LongContext,
}

fn write(trace: &Trace, out: &PathBuf) -> anyhow::Result<()> {
    std::fs::write(out, trace.to_jsonl()).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({} requests over {:.1} s, sha256 {})", out.display(), trace.requests.len(), trace.duration_ms() / 1000.0, trace.sha256());
    Ok(())
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let cmd = match cmd {
        BenchCommand::Trace(cmd) => cmd,
        BenchCommand::Mock { port, ttft_ms, itl_ms, chunks } => {
            let delays = switchyard_bench::mock::Delays {
                ttft: std::time::Duration::from_secs_f64(ttft_ms / 1e3),
                itl: std::time::Duration::from_secs_f64(itl_ms / 1e3),
                chunks,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            return rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                println!("mock listening on http://{}/v1 ({delays:?})", listener.local_addr()?);
                switchyard_bench::mock::serve(listener, delays).await?;
                Ok(())
            });
        }
        BenchCommand::Compare { runs } => {
            let mut loaded = Vec::new();
            for path in &runs {
                let file = if path.is_dir() { path.join("summary.json") } else { path.clone() };
                let report: RunReport = serde_json::from_slice(&std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?)
                    .with_context(|| file.display().to_string())?;
                let label = if path.is_dir() {
                    path.display().to_string()
                } else {
                    path.parent().map_or_else(|| path.display().to_string(), |p| p.display().to_string())
                };
                loaded.push((label, report));
            }
            print!("{}", compare::table(&loaded).map_err(anyhow::Error::msg)?);
            return Ok(());
        }
        BenchCommand::Run { trace, target, model, concurrency, time_scale, slo_ttft_ms, slo_tpot_ms, timeout_s, no_stream, warmup_s, out } => {
            let text = std::fs::read_to_string(&trace).with_context(|| format!("reading {}", trace.display()))?;
            let parsed = Trace::from_jsonl(&text).with_context(|| trace.display().to_string())?;
            let load = match concurrency {
                Some(c) => Load::Closed { concurrency: c },
                None => Load::Open { time_scale },
            };
            let target = Target { base_url: target, model, headers: Vec::new(), stream: !no_stream };
            eprintln!("replaying {} requests ({:.1} s of arrivals) against {} ...", parsed.requests.len(), parsed.duration_ms() / 1000.0, target.base_url);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let started = std::time::Instant::now();
            let results = rt.block_on(replay(&parsed, &target, load, std::time::Duration::from_secs(timeout_s)));
            let summary = summarize(&results, started.elapsed().as_secs_f64(), warmup_s * 1000.0, slo_ttft_ms, slo_tpot_ms);
            std::fs::create_dir_all(&out)?;
            let lines: String = results.iter().map(|r| serde_json::to_string(r).expect("results serialize") + "\n").collect();
            std::fs::write(out.join("requests.jsonl"), lines)?;
            let report = RunReport {
                trace: trace.display().to_string(),
                trace_sha256: parsed.sha256(),
                target: target.base_url.clone(),
                model: target.model.clone(),
                load: format!("{load:?}"),
                summary,
            };
            std::fs::write(out.join("summary.json"), serde_json::to_vec_pretty(&report)?)?;
            std::fs::write(out.join("report.html"), switchyard_bench::report::html(&report, &results))?;
            let summary = report.summary;
            let row = |name: &str, p: &Option<Percentiles>| match p {
                Some(p) => println!("{name:<8} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}", p.p50, p.p90, p.p95, p.p99, p.max),
                None => println!("{name:<8} {:>10}", "–"),
            };
            println!(
                "{} ok, {} failed {:?}; {:.1} req/s, {:.1} output tok/s, goodput {:.1}/s (tokens from {})",
                summary.ok, summary.failed, summary.failures, summary.requests_per_s, summary.output_tokens_per_s, summary.goodput_per_s, summary.tokens_from
            );
            println!("{:<8} {:>10} {:>10} {:>10} {:>10} {:>10}", "ms", "p50", "p90", "p95", "p99", "max");
            for (name, p) in
                [("ttft", &summary.ttft_ms), ("itl", &summary.itl_ms), ("tpot", &summary.tpot_ms), ("e2e", &summary.e2e_ms), ("lag", &summary.lag_ms)]
            {
                row(name, p);
            }
            println!("wrote {}/{{requests.jsonl,summary.json,report.html}}", out.display());
            return Ok(());
        }
    };
    match cmd {
        TraceCommand::Generate { scenario, seed, count, turns, rate, duration_s, factor, think_ms, input_tokens, max_tokens, out } => {
            let s = match scenario {
                ScenarioArg::Single => Scenario::Single { requests: count, think_ms, input_tokens, max_tokens },
                ScenarioArg::Team => Scenario::Team { sessions: count, turns, mean_think_ms: think_ms, input_tokens, max_tokens },
                ScenarioArg::Burst => Scenario::Burst {
                    duration_ms: duration_s * 1000.0,
                    rate_per_s: rate,
                    factor,
                    every_ms: 10_000.0,
                    spike_ms: 2_000.0,
                    input_tokens,
                    max_tokens,
                },
                ScenarioArg::LongContext => Scenario::LongContext {
                    requests: count,
                    rate_per_s: rate,
                    input_range: (input_tokens.max(2048), input_tokens.max(2048) * 3),
                    output_range: (16, max_tokens.max(16)),
                },
            };
            write(&s.generate(seed), &out)
        }
        TraceCommand::Import { azure, limit, out } => {
            let csv = std::fs::read_to_string(&azure).with_context(|| format!("reading {}", azure.display()))?;
            let mut trace = import_azure(&csv).with_context(|| azure.display().to_string())?;
            if let Some(n) = limit {
                trace.requests.truncate(n);
            }
            write(&trace, &out)
        }
    }
}
