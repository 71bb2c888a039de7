//! `switchyard bench`: traffic traces, and replaying them against any
//! OpenAI-compatible endpoint.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use switchyard_bench::compare::{self, RunReport};
use switchyard_bench::cost::{self, Meter, PowerModel, Rapl};
use switchyard_bench::replay::{
    replay_watched, summarize, Limits, Load, Percentiles, RequestResult, Target, TokenCounter, Watcher,
};
use switchyard_bench::sweep;
use switchyard_bench::trace::{from_recorded, import_azure, Recorded, Scenario, Trace};
use switchyard_wire::headers;

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
        /// Leave `usage` out of answers (the bench then counts tokens itself).
        #[arg(long)]
        no_usage: bool,
    },
    /// Systems side by side on the same trace, with ratios to the first: the
    /// output directories (or summary.json) of `bench run`s, or of `bench sweep`s
    /// (then tokens/s and TTFT p50 at each concurrency).
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
    },
    /// Replay a trace against a target; write every request's timings
    /// (requests.jsonl), a summary with percentiles (summary.json) and report.html.
    Run {
        #[command(flatten)]
        replay: ReplayArgs,
        /// Closed loop: keep this many requests in flight, ignoring arrival times.
        /// Without it, requests go out at their arrival offsets (open loop).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Open loop: multiply arrival offsets (0.5 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Open loop by conversation: each later turn of a session goes its
        /// think time (the gap the trace records) after the previous answer ended.
        #[arg(long, conflicts_with = "concurrency")]
        sessions: bool,
    },
    /// Replay a trace closed-loop at each concurrency in turn (default 1, 5, 20):
    /// one run per level under OUT/c<N>/, plus sweep.json and sweep.html
    /// (latency percentiles and throughput against concurrency).
    Sweep {
        #[command(flatten)]
        replay: ReplayArgs,
        #[arg(long, value_delimiter = ',', default_values_t = switchyard_bench::sweep::DEFAULT_LEVELS)]
        concurrency: Vec<usize>,
    },
}

/// What every replay needs: the traffic, the target, the SLOs, where to write.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[arg(long)]
    trace: PathBuf,
    /// OpenAI-compatible base URL (…/v1).
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "default")]
    model: String,
    #[arg(long, default_value_t = 2000.0)]
    slo_ttft_ms: f64,
    #[arg(long, default_value_t = 200.0)]
    slo_tpot_ms: f64,
    /// Seconds allowed for one request, from sending it to the end of its answer.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Stop sending after this many seconds (the trace's length bounds the
    /// run otherwise): open loop leaves out requests due later, closed loop
    /// starts no new one. Requests in flight finish.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Ask for whole answers instead of streams (no ITL; TTFT = E2E).
    #[arg(long)]
    no_stream: bool,
    /// Where the server sends no `usage`, count output tokens with this
    /// model's tokenizer (a catalog id, pulled if needed, or a GGUF file):
    /// its vocabulary alone is loaded. Without it such answers count chunks.
    #[arg(long, value_name = "MODEL")]
    tokenizer: Option<String>,
    /// Seconds at the start whose requests are sent but left out of the figures.
    #[arg(long, default_value_t = 0.0)]
    warmup_s: f64,
    /// Closed loop: start the --concurrency requests spread evenly over this
    /// many seconds instead of all at once (then answers of equal length keep
    /// them in lock-step waves for the whole run). Cover it with --warmup-s.
    #[arg(long, default_value_t = 0.0)]
    ramp_up_s: f64,
    /// A `[prices]` table (switchyard.toml's format) keyed by route or model:
    /// adds cost per 1M output tokens and per successful task.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Energy when RAPL counters are not readable: IDLE_W,W_PER_CORE, applied
    /// to the CPU time of --target-pid (labelled modelled).
    #[arg(long, requires = "target_pid")]
    power_model: Option<String>,
    /// The target's process id (on this machine), for --power-model.
    #[arg(long)]
    target_pid: Option<u32>,
    #[arg(long)]
    out: PathBuf,
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
    /// Turn traffic a switchyard gateway recorded (its decisions database)
    /// into a trace: arrival offsets, token lengths where counted, and the
    /// lane / family / data-class headers that steered each request.
    Record {
        /// switchyard.db in the gateway's --data-dir.
        #[arg(long)]
        db: PathBuf,
        /// Only requests recorded at or after this Unix time in ms.
        #[arg(long, default_value_t = 0)]
        since_ms: i64,
        #[arg(long, default_value_t = 100_000)]
        limit: i64,
        /// Lengths for requests whose tokens were not counted (an unpriced route).
        #[arg(long, default_value_t = 256)]
        default_input_tokens: u32,
        #[arg(long, default_value_t = 128)]
        default_max_tokens: u32,
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

/// The headers that steered a recorded request, read back from its decision.
fn recorded(r: &switchyard_store::DecisionRecord) -> Recorded {
    let decision: serde_json::Value = serde_json::from_str(r.decision.as_str()).unwrap_or_default();
    let mut headers = std::collections::BTreeMap::new();
    for (field, header, skip) in [
        ("lane", headers::LANE, Some("interactive")),
        ("family", headers::FAMILY, None),
        ("data_class", headers::DATA_CLASS, None),
    ] {
        if let Some(value) = decision[field].as_str().filter(|v| Some(*v) != skip) {
            headers.insert(header.to_string(), value.to_string());
        }
    }
    Recorded {
        created_ms: r.created_ms,
        prompt_tokens: r.measured.prompt_tokens,
        completion_tokens: r.measured.completion_tokens,
        headers,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| file.display().to_string())
}

/// A live count of answered and failed requests on a terminal (drawn only
/// when stderr is one).
fn progress(total: usize, load: Load) -> Watcher {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{load:?}"));
    let failed = AtomicUsize::new(0);
    std::sync::Arc::new(move |r: &RequestResult| {
        let failed = failed.fetch_add(usize::from(!r.ok()), Ordering::Relaxed) + usize::from(!r.ok());
        bar.set_message(format!("{failed} failed"));
        bar.inc(1);
        if bar.position() == bar.length().unwrap_or(0) {
            bar.finish_and_clear();
        }
    })
}

impl ReplayArgs {
    fn ramp_up(&self) -> anyhow::Result<std::time::Duration> {
        std::time::Duration::try_from_secs_f64(self.ramp_up_s)
            .map_err(|_| anyhow::anyhow!("--ramp-up-s: give seconds >= 0, e.g. 0.5"))
    }
}

/// What every replay of a `bench run` or `bench sweep` shares, read once:
/// the trace, the target, the prices, the power model, the runtime.
struct Replayer<'a> {
    args: &'a ReplayArgs,
    trace: Trace,
    target: Target,
    prices: Option<switchyard_router::Prices>,
    power: Option<PowerModel>,
    duration: Option<std::time::Duration>,
    rt: tokio::runtime::Runtime,
}

impl<'a> Replayer<'a> {
    fn new(args: &'a ReplayArgs) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&args.trace).with_context(|| format!("reading {}", args.trace.display()))?;
        let trace = Trace::from_jsonl(&text).with_context(|| args.trace.display().to_string())?;
        let tokenizer = args.tokenizer.as_deref().map(token_counter).transpose().context("--tokenizer")?;
        let target = Target {
            base_url: args.target.clone(),
            model: args.model.clone(),
            headers: Vec::new(),
            stream: !args.no_stream,
            tokenizer,
            prompt_salt: 0,
        };
        let prices = match &args.prices {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                Some(
                    switchyard_router::Prices::from_toml(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                )
            }
        };
        let power = args
            .power_model
            .as_deref()
            .map(PowerModel::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--power-model {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let duration = args
            .duration_s
            .map(|d| {
                std::time::Duration::try_from_secs_f64(d)
                    .map_err(|_| anyhow::anyhow!("--duration-s: give seconds >= 0, e.g. 60"))
            })
            .transpose()?;
        Ok(Self { args, trace, target, prices, power, duration, rt })
    }

    /// Replays the trace once under `load`.
    fn run(&self, load: Load) -> anyhow::Result<(RunReport, Vec<RequestResult>)> {
        let args = self.args;
        let meter = Meter::start(Path::new(Rapl::ROOT), self.power, args.target_pid).map_err(anyhow::Error::msg)?;
        let started = std::time::Instant::now();
        let timeout = std::time::Duration::from_secs(args.timeout_s);
        let limits = Limits { timeout, duration: self.duration };
        let results = self.rt.block_on(replay_watched(
            &self.trace,
            &self.target,
            load,
            limits,
            progress(self.trace.requests.len(), load),
        ));
        let wall_s = started.elapsed().as_secs_f64();
        let summary = summarize(&results, wall_s, args.warmup_s * 1000.0, args.slo_ttft_ms, args.slo_tpot_ms);
        let successful = results.iter().filter(|r| r.succeeded()).count();
        let energy = meter.map(|m| m.finish(wall_s, successful)).transpose().map_err(anyhow::Error::msg)?;
        let report = RunReport {
            trace: args.trace.display().to_string(),
            trace_sha256: self.trace.sha256(),
            cost: self
                .prices
                .as_ref()
                .map(|p| cost::summarize(&results, args.warmup_s * 1000.0, p, &self.target.model)),
            target: self.target.base_url.clone(),
            model: self.target.model.clone(),
            load: format!("{load:?}"),
            summary,
            energy,
        };
        Ok((report, results))
    }
}

/// `spec`'s tokenizer (vocabulary only) as the bench's token counter.
fn token_counter(spec: &str) -> anyhow::Result<TokenCounter> {
    let spec = switchyard_models::ModelSpec::parse(spec)?;
    let path = spec.ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::for_stderr())?;
    let tokenizer = switchyard_engine::Tokenizer::load(&path)?;
    Ok(TokenCounter::new(spec.id(), move |text| tokenizer.count(text) as u32))
}

fn write_run(dir: &Path, report: &RunReport, results: &[RequestResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lines: String = results.iter().map(|r| serde_json::to_string(r).expect("results serialize") + "\n").collect();
    std::fs::write(dir.join("requests.jsonl"), lines)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(dir.join("report.html"), switchyard_bench::report::html(report, results))?;
    Ok(())
}

/// Writes recorded requests as a trace; those without token counts get
/// the given lengths (and a line saying how many did).
pub fn write_recorded(
    rows: &[switchyard_store::DecisionRecord],
    default_input_tokens: u32,
    default_max_tokens: u32,
    out: &PathBuf,
) -> anyhow::Result<()> {
    let records: Vec<Recorded> = rows.iter().map(recorded).collect();
    let (trace, defaulted) = from_recorded(&records, default_input_tokens, default_max_tokens);
    if defaulted > 0 {
        eprintln!(
            "{defaulted} of {} requests had no token counts: given {default_input_tokens} in / {default_max_tokens} out",
            records.len()
        );
    }
    write(&trace, out)
}

fn write(trace: &Trace, out: &PathBuf) -> anyhow::Result<()> {
    std::fs::write(out, trace.to_jsonl()).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} requests over {:.1} s, sha256 {})",
        out.display(),
        trace.requests.len(),
        trace.duration_ms() / 1000.0,
        trace.sha256()
    );
    Ok(())
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let cmd = match cmd {
        BenchCommand::Trace(cmd) => cmd,
        BenchCommand::Mock { port, ttft_ms, itl_ms, chunks, no_usage } => {
            let ms = |v: f64, flag: &str| {
                std::time::Duration::try_from_secs_f64(v / 1e3)
                    .map_err(|_| anyhow::anyhow!("{flag}: give milliseconds >= 0, e.g. 50"))
            };
            let delays = switchyard_bench::mock::Delays {
                ttft: ms(ttft_ms, "--ttft-ms")?,
                itl: ms(itl_ms, "--itl-ms")?,
                chunks,
                usage: !no_usage,
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
            // A run directory holds summary.json; a sweep directory, sweep.json.
            let file = |path: &PathBuf, name: &str| if path.is_dir() { path.join(name) } else { path.clone() };
            let label = |path: &PathBuf| {
                if path.is_dir() {
                    path.display().to_string()
                } else {
                    path.parent().map_or_else(|| path.display().to_string(), |p| p.display().to_string())
                }
            };
            let is_sweep = |path: &PathBuf| {
                if path.is_dir() {
                    path.join("sweep.json").exists()
                } else {
                    path.file_name().is_some_and(|n| n == "sweep.json")
                }
            };
            if runs.iter().all(is_sweep) {
                let sweeps = runs
                    .iter()
                    .map(|p| Ok((label(p), read_json(&file(p, "sweep.json"))?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                print!("{}", sweep::compare(&sweeps).map_err(anyhow::Error::msg)?);
                return Ok(());
            }
            anyhow::ensure!(!runs.iter().any(is_sweep), "compare runs with runs, or sweeps with sweeps, not both");
            let loaded = runs
                .iter()
                .map(|p| Ok((label(p), read_json::<RunReport>(&file(p, "summary.json"))?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", compare::table(&loaded).map_err(anyhow::Error::msg)?);
            return Ok(());
        }
        BenchCommand::Run { replay, concurrency, time_scale, sessions } => {
            anyhow::ensure!(
                concurrency.is_some() || replay.ramp_up_s == 0.0,
                "--ramp-up-s is for a closed loop: give --concurrency too"
            );
            anyhow::ensure!(
                time_scale.is_finite() && time_scale >= 0.0,
                "--time-scale: give a factor >= 0, e.g. 0.5 for twice as fast"
            );
            let load = match (concurrency, sessions) {
                (Some(c), _) => Load::Closed { concurrency: c, ramp_up: replay.ramp_up()? },
                (None, true) => Load::Sessions { time_scale },
                (None, false) => Load::Open { time_scale },
            };
            let replayer = Replayer::new(&replay)?;
            let (report, results) = replayer.run(load)?;
            let trace = &replayer.trace;
            let sent = if results.len() < trace.requests.len() {
                format!("{} of the trace's {}", results.len(), trace.requests.len())
            } else {
                results.len().to_string()
            };
            eprintln!(
                "replayed {sent} requests ({:.1} s of arrivals) against {}",
                trace.duration_ms() / 1000.0,
                replay.target
            );
            write_run(&replay.out, &report, &results)?;
            let summary = &report.summary;
            let row = |name: &str, p: &Option<Percentiles>| match p {
                Some(p) => println!(
                    "{name:<14} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                    p.p50, p.p90, p.p95, p.p99, p.max
                ),
                None => println!("{name:<14} {:>10}", "–"),
            };
            println!(
                "{} ok, {} failed {:?}; {:.1} req/s, {:.1} output tok/s, goodput {:.1}/s (tokens from {})",
                summary.ok,
                summary.failed,
                summary.failures,
                summary.requests_per_s,
                summary.output_tokens_per_s,
                summary.goodput_per_s,
                summary.tokens_from
            );
            println!("{:<14} {:>10} {:>10} {:>10} {:>10} {:>10}", "ms", "p50", "p90", "p95", "p99", "max");
            for (name, p) in summary.latencies() {
                row(name, p);
            }
            println!("{}", switchyard_bench::report::cost_line(&report));
            println!("wrote {}/{{requests.jsonl,summary.json,report.html}}", replay.out.display());
            return Ok(());
        }
        BenchCommand::Sweep { replay, mut concurrency } => {
            concurrency.sort_unstable();
            concurrency.dedup();
            anyhow::ensure!(
                !concurrency.is_empty() && !concurrency.contains(&0),
                "--concurrency: give levels >= 1, e.g. 1,5,20"
            );
            let mut replayer = Replayer::new(&replay)?;
            let mut levels = Vec::new();
            for &c in &concurrency {
                // Each level's prompts are new to the server: a prompt cache
                // warmed by the level before must not make this one look fast.
                replayer.target.prompt_salt = c as u64;
                let (report, results) = replayer.run(Load::Closed { concurrency: c, ramp_up: replay.ramp_up()? })?;
                let s = &report.summary;
                eprintln!(
                    "concurrency {c}: {} ok, {} failed; {:.1} req/s, {:.1} output tok/s, TTFT p50 {} ms",
                    s.ok,
                    s.failed,
                    s.requests_per_s,
                    s.output_tokens_per_s,
                    s.ttft_ms.as_ref().map_or_else(|| "–".into(), |p| format!("{:.1}", p.p50))
                );
                write_run(&replay.out.join(format!("c{c}")), &report, &results)?;
                levels.push(sweep::Level { concurrency: c, report });
            }
            let result = sweep::Sweep { levels };
            std::fs::write(replay.out.join("sweep.json"), serde_json::to_vec_pretty(&result)?)?;
            std::fs::write(replay.out.join("sweep.html"), sweep::html(&result))?;
            print!("{}", sweep::table(&result));
            println!("wrote {}/{{sweep.json,sweep.html,c*/}}", replay.out.display());
            return Ok(());
        }
    };
    match cmd {
        TraceCommand::Generate {
            scenario,
            seed,
            count,
            turns,
            rate,
            duration_s,
            factor,
            think_ms,
            input_tokens,
            max_tokens,
            out,
        } => {
            let s = match scenario {
                ScenarioArg::Single => Scenario::Single { requests: count, think_ms, input_tokens, max_tokens },
                ScenarioArg::Team => {
                    Scenario::Team { sessions: count, turns, mean_think_ms: think_ms, input_tokens, max_tokens }
                }
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
        TraceCommand::Record { db, since_ms, limit, default_input_tokens, default_max_tokens, out } => {
            anyhow::ensure!(
                db.is_file(),
                "--db {}: no such file (give the switchyard.db in the gateway's --data-dir)",
                db.display()
            );
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let rows = rt.block_on(async {
                let store = switchyard_store::Store::open_read_only(&db).await?;
                store.decisions_since(since_ms, limit).await
            });
            let rows = rows.map_err(|e| anyhow::anyhow!("reading {}: {e}", db.display()))?;
            write_recorded(&rows, default_input_tokens, default_max_tokens, &out)
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
