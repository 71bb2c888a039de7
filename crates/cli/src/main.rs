//! The `switchyard` binary.

mod audit;
mod bakeoff;
mod bench;
mod calibrate;
mod eval;
mod keys;
mod models;
mod ops;
mod policy;
mod safety;
mod serve;
mod telemetry;
mod tenants;

use clap::{Parser, Subcommand};

// The gateway allocates many small, short-lived buffers per request;
// mimalloc measured ~10% less CPU per proxied request than glibc's malloc
// (docs/performance.md). llama.cpp's own allocations are unaffected.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// switchyard: a local-first LLM serving platform.
///
/// Serves OpenAI-compatible chat completions from models it runs itself
/// (llama.cpp, embedded, with continuous batching).
#[derive(Parser)]
#[command(name = "switchyard", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (pulls the default model on first run).
    Serve(serve::ServeArgs),
    /// API keys: create (shown once), list, revoke, rotate; offline, in the data dir.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Tenants: limits shared by all of a tenant's keys; offline, in the data dir.
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// The hash-chained log of changes: list it, verify it, print its head.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Per-request telemetry: query, export (JSON lines, CSV, a bench trace).
    #[command(subcommand)]
    Telemetry(telemetry::TelemetryCommand),
    /// List, fetch and verify models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Routing policies: validate, show and diff files (offline); apply one
    /// to a running server and read its history (no restart).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Restore the version of an object in force before the current one, on a running server.
    Rollback {
        #[arg(value_enum)]
        object: ops::Object,
        #[command(flatten)]
        server: ops::Server,
    },
    /// Canary rollouts of a policy on a running server: start, status, abort, promote.
    #[command(subcommand)]
    Rollout(ops::RolloutCommand),
    /// Faults injected on purpose into a running server's routes.
    #[command(subcommand)]
    Faults(ops::FaultsCommand),
    /// Game days: break routes under traffic on purpose and prove the fallback.
    #[command(subcommand)]
    Gameday(ops::GamedayCommand),
    /// Explain routing decisions offline.
    #[command(subcommand)]
    Route(policy::RouteCommand),
    /// Pick a rule's threshold from eval records (fast vs strong route) and
    /// write a new policy version holding it and the curve it came from.
    Calibrate(calibrate::CalibrateArgs),
    /// The safety classifier: fit and calibrate it on the safety set (a new
    /// policy version), judge a policy's as written on a split it never
    /// saw, and measure a running server on the same prompts.
    #[command(subcommand)]
    Safety(safety::SafetyCommand),
    /// Benchmarks: replayable traffic traces and their replay against any endpoint.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run eval sets against any target, report scorecards, compare runs (regression gate), review.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Compare model variants (quantization paths, runtimes, endpoints) under
    /// one trace and one eval set; name the cheapest that meets the SLAs.
    Bakeoff(bakeoff::BakeoffArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Tenants(cmd) => tenants::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Telemetry(cmd) => telemetry::run(cmd),
        Command::Models(cmd) => models::run(cmd),
        Command::Policy(cmd) => policy::run_policy(cmd),
        Command::Route(cmd) => policy::run_route(cmd),
        Command::Rollback { object, server } => ops::rollback(object, &server),
        Command::Rollout(cmd) => ops::rollout(cmd),
        Command::Faults(cmd) => ops::faults(cmd),
        Command::Gameday(cmd) => ops::gameday(cmd),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Safety(cmd) => safety::run(cmd),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Bakeoff(args) => bakeoff::run(args),
    }
}
