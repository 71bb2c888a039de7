//! `switchyard telemetry query`: one record per chat request (routed or
//! not) from the server's store, filtered by time, route, tenant, label
//! and status; printed as a table, or exported as JSON lines, CSV or a
//! bench trace to replay.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use switchyard_gateway::observe::export;
use switchyard_store::{DecisionRecord, TelemetryFilter};

use crate::keys::DataDir;

#[derive(Subcommand, Debug)]
pub enum TelemetryCommand {
    /// Records oldest first, with every field (see docs/observability.md).
    Query {
        /// Since this long ago (`90s`, `15m`, `2h`, `7d`) [default: all]
        #[arg(long, value_name = "AGE", value_parser = parse_age, conflicts_with = "since_ms")]
        last: Option<i64>,
        /// Since this Unix time in ms (inclusive)
        #[arg(long, value_name = "MS")]
        since_ms: Option<i64>,
        /// Before this Unix time in ms (exclusive)
        #[arg(long, value_name = "MS")]
        until_ms: Option<i64>,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// answered, refused, human-escalated or error
        #[arg(long)]
        label: Option<String>,
        /// HTTP status
        #[arg(long)]
        status: Option<u16>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write here instead of stdout (required for `--format trace`)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        at: DataDir,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A line per request: id, tenant, route, status, label, tokens, TTFT, total
    Table,
    Jsonl,
    Csv,
    /// A bench trace (`switchyard bench run --trace FILE`) of these requests
    Trace,
}

/// `90s`, `15m`, `2h`, `7d` → milliseconds.
pub fn parse_age(text: &str) -> Result<i64, String> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = n.parse().map_err(|_| format!("`{text}`: a number then s, m, h or d (e.g. 15m)"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}`: the unit is s, m, h or d (e.g. 15m)")),
    };
    Ok(n * ms)
}

pub fn run(cmd: TelemetryCommand) -> anyhow::Result<()> {
    let TelemetryCommand::Query { last, since_ms, until_ms, route, tenant, label, status, limit, format, out, at } =
        cmd;
    anyhow::ensure!(format != Format::Trace || out.is_some(), "--format trace writes a file: give it with --out FILE");
    let since_ms = match last {
        Some(age) => switchyard_wire::unix_ms() - age,
        None => since_ms.unwrap_or(0),
    };
    let filter = TelemetryFilter { since_ms, until_ms, route, tenant, label, status, limit, newest_first: false };
    let records = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async { anyhow::Ok(at.open().await?.telemetry(&filter).await?) })?;
    let text = match format {
        Format::Trace => {
            let out = out.unwrap_or_default();
            return crate::bench::write_recorded(&records, 256, 128, &out);
        }
        Format::Jsonl => export::render(&records, export::Format::Jsonl),
        Format::Csv => export::render(&records, export::Format::Csv),
        Format::Table => table(&records),
    };
    match out {
        Some(path) => {
            std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            eprintln!("wrote {} records to {}", records.len(), path.display());
        }
        None => print!("{text}"),
    }
    if records.len() == limit as usize {
        eprintln!("stopped at --limit {limit}; there may be more");
    }
    Ok(())
}

fn table(records: &[DecisionRecord]) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let n = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = format!(
        "{:<42} {:<14} {:<14} {:>6} {:<16} {:>6} {:>6} {:>8} {:>8}\n",
        "request_id", "tenant", "route", "status", "label", "in", "out", "ttft_ms", "total_ms"
    );
    for r in records {
        let m = &r.measured;
        out.push_str(&format!(
            "{:<42} {:<14} {:<14} {:>6} {:<16} {:>6} {:>6} {:>8} {:>8}\n",
            r.request_id,
            r.tenant.as_deref().unwrap_or("-"),
            r.route,
            r.status,
            r.label,
            n(m.prompt_tokens),
            n(m.completion_tokens),
            ms(m.ttft_ms),
            ms(m.total_ms),
        ));
    }
    out
}
