//! Commands that change a running server through its `/admin` API:
//! `policy apply` and `policy history`, `rollback`, `faults`, `gameday`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use switchyard_gameday::{report, run, scenario::Scenario};
use switchyard_wire::admin::{Admin, Body, Method};

/// A running switchyard server and the key to change it with.
#[derive(Args, Debug, Clone)]
pub struct Server {
    /// The server's address.
    #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An operator's or an admin's API key (not needed by a server without keys).
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl Server {
    fn admin(&self) -> Admin {
        Admin::new(&self.url, self.api_key.clone())
    }
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// `switchyard policy apply FILE`: the server validates the file against
/// its own models, records it and swaps it in.
pub fn apply(file: &std::path::Path, server: &Server) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // Checked here first, so a broken file names its key without a round trip.
    crate::policy::load(file)?;
    let applied = block_on(async {
        server.admin().call(Method::PUT, "/admin/policy", Body::Text(text)).await.map_err(anyhow::Error::msg)
    })?;
    print_applied("applied", &applied);
    Ok(())
}

fn print_applied(what: &str, v: &Value) {
    let routes: Vec<&str> = v["changed_routes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!(
        "{what}: {} (was {}), version #{}; routes changed: {}",
        v["current"].as_str().unwrap_or("?"),
        v["previous"].as_str().unwrap_or("?"),
        v["seq"],
        if routes.is_empty() { "none".into() } else { routes.join(", ") }
    );
}

/// `switchyard policy history`.
pub fn history(server: &Server) -> anyhow::Result<()> {
    let v = block_on(async {
        server.admin().call(Method::GET, "/admin/policy", Body::None).await.map_err(anyhow::Error::msg)
    })?;
    println!(
        "serving: {}  (in force in the store: {})",
        v["serving"].as_str().unwrap_or("?"),
        v["in_force"].as_str().unwrap_or("?")
    );
    println!("{:>5}  {:<28} {:<9} {:<16} {:<13} reason", "#", "version", "source", "by", "applied");
    for h in v["history"].as_array().into_iter().flatten() {
        println!(
            "{:>5}  {:<28} {:<9} {:<16} {:<13} {}",
            h["seq"],
            h["version_id"].as_str().unwrap_or("?"),
            h["source"].as_str().unwrap_or("?"),
            h["actor"].as_str().unwrap_or("?"),
            h["applied_ms"],
            h["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Object {
    /// The routing policy.
    Policy,
}

/// `switchyard rollback policy`.
pub fn rollback(object: Object, server: &Server) -> anyhow::Result<()> {
    let Object::Policy = object;
    let v = block_on(async {
        server.admin().call(Method::POST, "/admin/policy/rollback", Body::None).await.map_err(anyhow::Error::msg)
    })?;
    print_applied("rolled back", &v);
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum FaultsCommand {
    /// The faults in force on a server's routes.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Break a route on purpose: its attempts fail, time out, stall, get cut, slow down or die.
    Set {
        route: String,
        #[arg(long, value_enum)]
        kind: FaultKind,
        /// With `error`: the 5xx status.
        #[arg(long, default_value_t = 500)]
        status: u16,
        /// With `stall-first-token` and `slow`: the delay in ms.
        #[arg(long, default_value_t = 2000)]
        ms: u64,
        /// With `cut-stream`: tokens sent before the cut.
        #[arg(long, default_value_t = 4)]
        after_tokens: u32,
        /// Seconds it lasts (default: until cleared).
        #[arg(long)]
        for_s: Option<f64>,
        #[command(flatten)]
        server: Server,
    },
    /// End a route's fault.
    Clear {
        route: String,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FaultKind {
    Error,
    Timeout,
    StallFirstToken,
    CutStream,
    Slow,
    Die,
}

pub fn faults(cmd: FaultsCommand) -> anyhow::Result<()> {
    match cmd {
        FaultsCommand::List { server } => {
            let v = block_on(async {
                server.admin().call(Method::GET, "/admin/faults", Body::None).await.map_err(anyhow::Error::msg)
            })?;
            let all = v["faults"].as_array().cloned().unwrap_or_default();
            if all.is_empty() {
                println!("no faults in force");
            }
            for f in all {
                println!("{}", serde_json::to_string(&f)?);
            }
        }
        FaultsCommand::Set { route, kind, status, ms, after_tokens, for_s, server } => {
            let mut body = match kind {
                FaultKind::Error => json!({"kind": "error", "status": status}),
                FaultKind::Timeout => json!({"kind": "timeout"}),
                FaultKind::StallFirstToken => json!({"kind": "stall_first_token", "ms": ms}),
                FaultKind::CutStream => json!({"kind": "cut_stream", "after_tokens": after_tokens}),
                FaultKind::Slow => json!({"kind": "slow", "ms": ms}),
                FaultKind::Die => json!({"kind": "die"}),
            };
            if let Some(s) = for_s {
                body["for_s"] = json!(s);
            }
            let path = format!("/admin/faults/{route}");
            let v = block_on(async {
                server.admin().call(Method::PUT, &path, Body::Json(body)).await.map_err(anyhow::Error::msg)
            })?;
            println!("set: {}", serde_json::to_string(&v)?);
        }
        FaultsCommand::Clear { route, server } => {
            let path = format!("/admin/faults/{route}");
            block_on(async {
                server.admin().call(Method::DELETE, &path, Body::None).await.map_err(anyhow::Error::msg)
            })?;
            println!("cleared the fault on {route}");
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum GamedayCommand {
    /// Run a scenario against a running server: traffic from a trace, faults on schedule,
    /// and a report (terminal, JSON, HTML with a timeline); exits 1 if an expectation fails.
    Run {
        scenario: PathBuf,
        #[command(flatten)]
        server: Server,
        /// Where gameday.json and gameday.html go.
        #[arg(long, default_value = "gameday-report")]
        out: PathBuf,
    },
}

pub fn gameday(cmd: GamedayCommand) -> anyhow::Result<()> {
    let GamedayCommand::Run { scenario, server, out } = cmd;
    let scenario = Scenario::load(&scenario)?;
    let admin = server.admin();
    let progress: run::Progress = Arc::new(|line: &str| eprintln!("{line}"));
    let observed = tokio::runtime::Runtime::new()?.block_on(run::run(&scenario, &admin, progress))?;
    let r = report::report(&observed);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&json!({"report": r, "observed": observed}))?;
    std::fs::write(out.join("gameday.json"), json)?;
    std::fs::write(out.join("gameday.html"), report::html(&r, &observed))?;
    print!("{}", report::text(&r));
    println!("report: {} and gameday.html", out.join("gameday.json").display());
    if !r.pass {
        std::process::exit(1);
    }
    Ok(())
}
