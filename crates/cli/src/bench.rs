//! `switchyard bench`: traffic traces for replayable benchmarks.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use switchyard_bench::trace::{import_azure, Scenario, Trace};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Make or import a traffic trace (JSONL, one request per line with its arrival offset).
    #[command(subcommand)]
    Trace(TraceCommand),
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
    let BenchCommand::Trace(cmd) = cmd;
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
