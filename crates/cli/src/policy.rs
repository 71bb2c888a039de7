//! `switchyard policy` and `switchyard route`: offline policy tools.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use switchyard_router::{classify, decide, decide_forced, DataClass, Declared, Lane, Policy, RequestFacts};
use switchyard_wire::ChatCompletionRequest;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check a policy file; prints its id (version + content hash) or the key at fault.
    Validate { file: PathBuf },
    /// Print a policy's id, routes and rules.
    Show { file: PathBuf },
    /// What changed between two policy files: routes and rules added, removed or changed.
    Diff { old: PathBuf, new: PathBuf },
    /// Apply a policy file to a running server: checked there against its models,
    /// written to the audit chain and the store, and swapped in with no restart
    /// (requests in flight finish under the version they started with; every
    /// replica on the same database follows within a second).
    Apply {
        file: PathBuf,
        #[command(flatten)]
        server: crate::ops::Server,
    },
    /// The policy versions a running server has served, newest first.
    History {
        #[command(flatten)]
        server: crate::ops::Server,
    },
}

#[derive(Subcommand, Debug)]
pub enum RouteCommand {
    /// Replay a chat request (JSON body) against a policy and print the decision.
    Explain {
        #[arg(long)]
        policy: PathBuf,
        /// A /v1/chat/completions request body.
        #[arg(long, required_unless_present = "request_id")]
        request: Option<PathBuf>,
        /// Instead of --request: a request the server answered, replayed from
        /// the payload its policy kept ([[protect.payloads]]) with the lane,
        /// family and class it had, and compared with its recorded decision.
        #[arg(long, value_name = "ID", conflicts_with_all = ["request", "family", "data_class", "force_route"])]
        request_id: Option<String>,
        /// The keys that open an encrypted payload (as the server's).
        #[arg(long, value_name = "FILE", env = "SWITCHYARD_PAYLOAD_KEY_FILE")]
        payload_key_file: Option<PathBuf>,
        #[command(flatten)]
        at: crate::keys::DataDir,
        /// The lane the request asked for.
        #[arg(long, value_enum, default_value = "interactive")]
        lane: LaneArg,
        /// The workload family the request declared (x-switchyard-family).
        #[arg(long)]
        family: Option<String>,
        /// The data class the request declared (x-switchyard-data-class):
        /// public, internal or regulated. Detection can raise it, never lower it.
        #[arg(long, value_name = "CLASS")]
        data_class: Option<String>,
        /// The route the request forced (x-switchyard-force-route), as a
        /// server started with --allow-force-route would take it.
        #[arg(long, value_name = "ROUTE")]
        force_route: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LaneArg {
    Interactive,
    Batch,
    Fallback,
}

pub fn load(path: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Policy::from_toml(&text).with_context(|| format!("policy {}", path.display()))
}

pub fn run_policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Validate { file } => println!("ok: {}", load(&file)?.id),
        PolicyCommand::Apply { file, server } => crate::ops::apply(&file, &server)?,
        PolicyCommand::History { server } => crate::ops::history(&server)?,
        PolicyCommand::Show { file } => {
            let p = load(&file)?;
            println!("policy {} (sha256 {})\ndefault route: {}\n\nroutes:", p.id, p.sha256, p.default_route);
            for r in &p.routes {
                let classes: Vec<_> = r.allowed_classes.iter().map(|c| c.as_str()).collect();
                println!(
                    "  {:14} {:?} {} lane={:?} classes=[{}] fallback=[{}] ttft={}ms total={}ms",
                    r.name,
                    r.backend,
                    r.model,
                    r.lane,
                    classes.join(","),
                    r.fallback.join(","),
                    r.ttft_timeout_ms,
                    r.total_timeout_ms
                );
            }
            println!("\nrules (first match wins):");
            for r in &p.rules {
                println!(
                    "  {:24} when {} then {}",
                    r.id,
                    serde_json::to_string(&r.when)?,
                    serde_json::to_string(&r.then)?
                );
            }
        }
        PolicyCommand::Diff { old, new } => {
            let (a, b) = (load(&old)?, load(&new)?);
            println!("{} -> {}", a.id, b.id);
            diff("route", &a.routes, &b.routes, |r| r.name.clone());
            diff("rule", &a.rules, &b.rules, |r| r.id.clone());
            if a.difficulty != b.difficulty {
                println!(
                    "~ difficulty model: {} -> {}",
                    serde_json::to_string(&a.difficulty)?,
                    serde_json::to_string(&b.difficulty)?
                );
            }
            if a.default_route != b.default_route {
                println!("~ default route: {} -> {}", a.default_route, b.default_route);
            }
        }
    }
    Ok(())
}

fn diff<T: serde::Serialize>(what: &str, old: &[T], new: &[T], key: impl Fn(&T) -> String) {
    let json = |t: &T| serde_json::to_string(t).expect("policy types serialize");
    for o in old {
        match new.iter().find(|n| key(n) == key(o)) {
            None => println!("- {what} {}", key(o)),
            Some(n) if json(n) != json(o) => println!("~ {what} {}: {} -> {}", key(o), json(o), json(n)),
            Some(_) => {}
        }
    }
    for n in new.iter().filter(|n| !old.iter().any(|o| key(o) == key(n))) {
        println!("+ {what} {}: {}", key(n), json(n));
    }
}

pub fn run_route(cmd: RouteCommand) -> anyhow::Result<()> {
    let RouteCommand::Explain {
        policy,
        request,
        request_id,
        payload_key_file,
        at,
        lane,
        family,
        data_class,
        force_route,
    } = cmd;
    let policy = load(&policy)?;
    if let Some(id) = request_id {
        return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(replay(
            &policy,
            &id,
            payload_key_file.as_deref(),
            &at,
        ));
    }
    let request = request.context("give --request FILE or --request-id ID")?;
    if let Some(f) = family.as_deref().filter(|f| policy.family(f).is_none()) {
        anyhow::bail!("--family {f}: the policy declares no such family");
    }
    let body = std::fs::read_to_string(&request).with_context(|| format!("reading {}", request.display()))?;
    let req: ChatCompletionRequest =
        serde_json::from_str(&body).with_context(|| format!("parsing {}", request.display()))?;
    let messages: Vec<String> =
        req.messages.iter().filter_map(|m| m.content.as_ref().and_then(|c| c.text().ok())).collect();
    let lane = match lane {
        LaneArg::Interactive => Lane::Interactive,
        LaneArg::Batch => Lane::Batch,
        LaneArg::Fallback => Lane::Fallback,
    };
    let data_class = data_class
        .map(|c| c.to_ascii_lowercase().parse::<DataClass>().map_err(|e| anyhow::anyhow!("--data-class {c}: {e}")))
        .transpose()?;
    let (facts, classification) =
        (RequestFacts { lane }, classify(&messages, &Declared { data_class, family }, &policy));
    let decision = match force_route {
        None => decide(&facts, &classification, &policy),
        Some(route) => decide_forced(&facts, &classification, &policy, &route).ok_or_else(|| {
            let known: Vec<_> = policy.routes.iter().map(|r| r.name.as_str()).collect();
            anyhow::anyhow!("--force-route {route}: the policy has no such route; it has {}", known.join(", "))
        })?,
    };
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(())
}

/// `route explain --request-id`: the stored payload through `policy`, and
/// the decision recorded for it beside the one made now.
async fn replay(policy: &Policy, id: &str, key_file: Option<&Path>, at: &crate::keys::DataDir) -> anyhow::Result<()> {
    let store = at.open().await?;
    let kept = store.payload(id).await?.with_context(|| {
        format!("no payload kept for {id}: its policy keeps none for its route and class, or it was purged")
    })?;
    let text = match kept.kind.as_str() {
        "encrypted" => {
            let keys = switchyard_gateway::read_payload_keys(key_file)?.with_context(|| {
                format!(
                    "this payload is encrypted: give the keys with --payload-key-file or {}",
                    switchyard_gateway::PAYLOAD_KEYS_ENV
                )
            })?;
            String::from_utf8(keys.open(&kept)?)?
        }
        _ => kept.body.clone(),
    };
    let payload: serde_json::Value = serde_json::from_str(&text).context("the kept payload is not JSON")?;
    let messages: Vec<String> = payload["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["content"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let lane: Lane = payload["lane"].as_str().unwrap_or("interactive").parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_class = payload["data_class"].as_str().and_then(|c| c.parse::<DataClass>().ok());
    let family = payload["family"].as_str().map(str::to_string).filter(|f| policy.family(f).is_some());
    let decision =
        decide(&RequestFacts { lane }, &classify(&messages, &Declared { data_class, family }, policy), policy);
    println!("{}", serde_json::to_string_pretty(&decision)?);
    if kept.kind == "redacted" {
        eprintln!("note: replayed from a redacted payload: detectors see placeholders, not the values");
    }
    let route = match &decision.outcome {
        switchyard_router::Outcome::Route { route, .. } => route.clone(),
        switchyard_router::Outcome::Refuse { .. } => "refused".into(),
        switchyard_router::Outcome::Handoff { .. } => "handoff".into(),
    };
    if let Some(recorded) = store.decision(id).await? {
        let same = recorded.rule_id == decision.rule_id && recorded.route == route;
        eprintln!(
            "recorded: policy {} rule {} -> {} ({})\nreplayed: policy {} rule {} -> {}: {}",
            recorded.policy_id,
            recorded.rule_id.as_deref().unwrap_or("-"),
            recorded.route,
            recorded.reason,
            policy.id,
            decision.rule_id.as_deref().unwrap_or("-"),
            route,
            if same && recorded.policy_id == policy.id {
                "the same rule and route under the same policy"
            } else if same {
                "the same rule and route"
            } else {
                "a different rule or route"
            }
        );
    }
    Ok(())
}
