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

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Start a canary rollout of a policy file on a running server: a share of traffic
    /// (by request id) goes to it, judged against the policy in force on the same
    /// windows (errors, refusals, escalations, TTFT and end-to-end p95, feedback),
    /// stepped up while healthy and rolled back by itself on a regression. With
    /// --eval-set it stays attached and runs a canary eval on both arms each
    /// --eval-every-s, whose failed gate rolls back too.
    Start {
        file: PathBuf,
        /// The candidate's first share, `10%` or `0.1`.
        #[arg(long, default_value = "10%", value_parser = share)]
        canary: f64,
        /// Every share after the first, rising (`50%,100%`); 100% promotes at the end.
        #[arg(long, value_delimiter = ',', value_parser = share, default_values = ["50%", "100%"])]
        then: Vec<f64>,
        /// Least seconds at each share before the next.
        #[arg(long, default_value_t = 60.0)]
        step_s: f64,
        /// Least requests per arm in a window before it is judged.
        #[arg(long, default_value_t = 20)]
        min_requests: u32,
        #[arg(long, default_value_t = 5.0)]
        judge_every_s: f64,
        /// Stay at the canary share until promoted or aborted by hand.
        #[arg(long)]
        no_auto_promote: bool,
        /// Margins, `KEY=VALUE` (error_rate, refusal_rate, escalation_rate,
        /// bad_feedback_rate: added share; ttft_p95_ratio, e2e_p95_ratio: ratio).
        #[arg(long = "margin", value_name = "KEY=VALUE")]
        margins: Vec<String>,
        /// An eval set (a `datasets/eval/...` directory) for the canary eval.
        #[arg(long)]
        eval_set: Option<PathBuf>,
        /// Items per canary eval (spread over the set).
        #[arg(long, default_value_t = 20)]
        eval_sample: usize,
        /// The regression gate: a slice's success may drop by at most this share.
        #[arg(long, default_value_t = 0.05)]
        max_drop: f64,
        /// Slices with fewer items are not gated.
        #[arg(long, default_value_t = 5)]
        min_items: usize,
        #[arg(long, default_value_t = 30.0)]
        eval_every_s: f64,
        #[arg(long, default_value_t = 2)]
        eval_concurrency: usize,
        #[command(flatten)]
        server: Server,
    },
    /// The rollout in progress and every recent step, with the figures that caused it.
    Status {
        #[command(flatten)]
        server: Server,
    },
    /// Back to the policy in force, by hand.
    Abort {
        #[command(flatten)]
        server: Server,
    },
    /// Put the candidate in force now, by hand.
    Promote {
        #[command(flatten)]
        server: Server,
    },
}

fn share(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("`{s}` is not a share (10% or 0.1)"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("`{s}`: a share above 0 and at most 100%"))
    }
}

pub fn rollout(cmd: RolloutCommand) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Status { server } => {
            let v = block_on(async {
                server.admin().call(Method::GET, "/admin/rollout", Body::None).await.map_err(anyhow::Error::msg)
            })?;
            print_rollout(&v);
        }
        RolloutCommand::Abort { server } => {
            let v = block_on(async {
                server.admin().call(Method::POST, "/admin/rollout/abort", Body::None).await.map_err(anyhow::Error::msg)
            })?;
            println!(
                "aborted {}; serving {}",
                v["aborted"].as_str().unwrap_or("?"),
                v["serving"].as_str().unwrap_or("?")
            );
        }
        RolloutCommand::Promote { server } => {
            let v = block_on(async {
                server
                    .admin()
                    .call(Method::POST, "/admin/rollout/promote", Body::None)
                    .await
                    .map_err(anyhow::Error::msg)
            })?;
            println!(
                "promoted {}; serving {}",
                v["promoted"].as_str().unwrap_or("?"),
                v["serving"].as_str().unwrap_or("?")
            );
        }
        RolloutCommand::Start {
            file,
            canary,
            then,
            step_s,
            min_requests,
            judge_every_s,
            no_auto_promote,
            margins,
            eval_set,
            eval_sample,
            max_drop,
            min_items,
            eval_every_s,
            eval_concurrency,
            server,
        } => {
            crate::policy::load(&file)?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut steps = vec![canary];
            steps.extend(then.into_iter().filter(|s| *s > canary));
            let mut margin = serde_json::Map::new();
            for m in &margins {
                let (k, v) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--margin `{m}`: KEY=VALUE"))?;
                let v: f64 = v.parse().map_err(|_| anyhow::anyhow!("--margin `{m}`: the value is a number"))?;
                margin.insert(k.to_string(), json!(v));
            }
            let plan = json!({"steps": steps, "step_s": step_s, "min_requests": min_requests,
                "judge_every_s": judge_every_s, "auto_promote": !no_auto_promote, "margins": margin});
            let dataset = eval_set.as_deref().map(switchyard_eval::dataset::Dataset::open).transpose()?;
            let admin = server.admin();
            let rt = tokio::runtime::Runtime::new()?;
            let started = rt.block_on(async {
                admin
                    .call(Method::POST, "/admin/rollout", Body::Json(json!({"policy": text, "plan": plan})))
                    .await
                    .map_err(anyhow::Error::msg)
            })?;
            let id = started["id"].as_str().unwrap_or_default().to_string();
            println!(
                "rollout {id}: {} over {} at {:.0}%",
                started["candidate"].as_str().unwrap_or("?"),
                started["incumbent"].as_str().unwrap_or("?"),
                100.0 * started["share"].as_f64().unwrap_or(0.0)
            );
            if let Some(dataset) = dataset {
                let eval =
                    CanaryEval { dataset, sample: eval_sample, max_drop, min_items, concurrency: eval_concurrency };
                rt.block_on(watch(&admin, &id, &eval, std::time::Duration::from_secs_f64(eval_every_s)))?;
            }
        }
    }
    Ok(())
}

fn print_rollout(v: &Value) {
    match v["active"].as_object() {
        Some(a) => println!(
            "rollout {} in progress: {} over {} at {:.0}% (step {})",
            a["id"].as_str().unwrap_or("?"),
            a["candidate"].as_str().unwrap_or("?"),
            a["incumbent"].as_str().unwrap_or("?"),
            100.0 * a["share"].as_f64().unwrap_or(0.0),
            a["step"]
        ),
        None => println!("no rollout in progress; serving {}", v["serving"].as_str().unwrap_or("?")),
    }
    for s in v["steps"].as_array().into_iter().flatten() {
        println!(
            "  {}  {:<8} {:>4.0}%  {}  figures: {}",
            s["rollout_id"].as_str().unwrap_or("?"),
            s["action"].as_str().unwrap_or("?"),
            100.0 * s["share"].as_f64().unwrap_or(0.0),
            s["reason"].as_str().unwrap_or(""),
            s["figures"]
        );
    }
}

struct CanaryEval {
    dataset: switchyard_eval::dataset::Dataset,
    sample: usize,
    max_drop: f64,
    min_items: usize,
    concurrency: usize,
}

/// Runs the canary eval on both arms every `every` until the rollout ends,
/// posting each verdict; prints the steps as they come.
async fn watch(admin: &Admin, id: &str, eval: &CanaryEval, every: std::time::Duration) -> anyhow::Result<()> {
    use switchyard_eval::runner::{run, RunOptions, Target};
    use switchyard_eval::scorecard::{gate, scorecard};
    let sandbox = switchyard_eval::sandbox::Sandbox::new(std::time::Duration::from_secs(10))?;
    let opts = RunOptions {
        concurrency: eval.concurrency,
        repeats: 1,
        seed: Some(0),
        temperature: 0.0,
        timeout: std::time::Duration::from_secs(120),
        logprobs: false,
        cache_dir: None,
        difficulty: None,
        price: None,
        judge: None,
        progress: false,
    };
    let mut round = 0usize;
    loop {
        let status = admin.call(Method::GET, "/admin/rollout", Body::None).await.map_err(anyhow::Error::msg)?;
        if status["active"]["id"].as_str() != Some(id) {
            let steps: Vec<&Value> =
                status["steps"].as_array().into_iter().flatten().filter(|s| s["rollout_id"] == id).collect();
            print_rollout(&json!({"active": null, "serving": status["serving"], "steps": steps}));
            return Ok(());
        }
        // A different spread of the set each round.
        let n = eval.dataset.items.len().max(1);
        let stride = (n / eval.sample.max(1)).max(1);
        let items: Vec<_> =
            (0..eval.sample.min(n)).map(|i| eval.dataset.items[(i * stride + round) % n].clone()).collect();
        let sample = switchyard_eval::dataset::Dataset { items, ..eval.dataset.clone() };
        let mut cards = Vec::new();
        for arm in ["incumbent", "candidate"] {
            let mut headers: Vec<(String, String)> = admin.auth_header().into_iter().collect();
            headers.push((switchyard_wire::headers::CANARY.into(), arm.into()));
            let target =
                Target { label: arm.into(), base_url: format!("{}/v1", admin.base()), model: "auto".into(), headers };
            cards.push(scorecard(&run(&sample, &target, &opts, sandbox.clone()).await));
        }
        let slices = gate(&cards[0], &cards[1], Some(eval.max_drop), eval.min_items);
        let overall = slices.iter().find(|g| g.retention.family == "all" && g.retention.difficulty == "all");
        let regressed: Vec<String> = slices
            .iter()
            .filter(|g| g.regressed)
            .map(|g| {
                format!(
                    "{}/{} {:.1}% -> {:.1}%",
                    g.retention.family,
                    g.retention.difficulty,
                    100.0 * g.retention.baseline,
                    100.0 * g.retention.candidate
                )
            })
            .collect();
        let detail = match overall {
            Some(o) => format!(
                "{} items: incumbent {:.1}%, candidate {:.1}% (retention {:.2}, max drop {:.0}%){}",
                o.n,
                100.0 * o.retention.baseline,
                100.0 * o.retention.candidate,
                o.retention.retention,
                100.0 * eval.max_drop,
                if regressed.is_empty() { String::new() } else { format!("; regressed: {}", regressed.join(", ")) }
            ),
            None => "no items answered".into(),
        };
        println!("canary eval {}: {detail}", round + 1);
        let verdict =
            json!({"rollout_id": id, "passed": regressed.is_empty(), "figures": {"slices": slices}, "detail": detail});
        admin.call(Method::POST, "/admin/rollout/eval", Body::Json(verdict)).await.map_err(anyhow::Error::msg)?;
        round += 1;
        tokio::time::sleep(every).await;
    }
}
