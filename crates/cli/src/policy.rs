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
}

#[derive(Subcommand, Debug)]
pub enum RouteCommand {
    /// Replay a chat request (JSON body) against a policy and print the decision.
    Explain {
        #[arg(long)]
        policy: PathBuf,
        /// A /v1/chat/completions request body.
        #[arg(long)]
        request: PathBuf,
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
    let RouteCommand::Explain { policy, request, lane, family, data_class, force_route } = cmd;
    let policy = load(&policy)?;
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
