//! `switchyard keys`: API keys in the data dir's store, offline. The first
//! admin key is made here; later ones here or with `POST /admin/keys`. A
//! running server sees a change within a second.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use switchyard_gateway::audit::{changing, state_hash, Actor};
use switchyard_gateway::auth::{issue, KeySpec};
use switchyard_gateway::ServeConfig;
use switchyard_store::{AuditRecord, KeyRecord, Limits, Store};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key and print it, once: only its hash is kept.
    Create {
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// admin (everything), operator (routes, forcing a route, handoffs),
        /// auditor (reads decisions and the audit trail), or tenant
        /// (inference, its own decisions and handoffs).
        #[arg(long)]
        role: String,
        /// The lane of the key's requests (interactive, batch, fallback);
        /// a header may not ask for another.
        #[arg(long)]
        lane: Option<String>,
        /// The least data class of the key's requests (public, internal,
        /// regulated), whatever the prompt says.
        #[arg(long, value_name = "CLASS")]
        data_class_floor: Option<String>,
        /// A route the key may force (repeat); none: any its role may.
        #[arg(long = "route", value_name = "ROUTE")]
        routes: Vec<String>,
        /// A family the key may declare (repeat); none: any.
        #[arg(long = "family", value_name = "FAMILY")]
        families: Vec<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        at: DataDir,
    },
    /// List keys (ids, tenants, roles, bounds; never a secret).
    List {
        #[command(flatten)]
        at: DataDir,
    },
    /// Revoke a key by id.
    Revoke {
        id: String,
        #[command(flatten)]
        at: DataDir,
    },
    /// Replace a key: a new one with the same tenant, role and bounds, printed
    /// once; the old one revoked.
    Rotate {
        id: String,
        #[command(flatten)]
        at: DataDir,
    },
}

/// Limits of a key or a tenant; each left out is no limit.
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Requests per minute (a burst of as many).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    requests_per_minute: Option<u32>,
    /// Prompt and completion tokens per minute (a burst of as many).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    tokens_per_minute: Option<u64>,
    /// Prompt and completion tokens per UTC day.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    tokens_per_day: Option<u64>,
    /// Dollars per UTC day, at the answering route's [prices].
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    cost_per_day_usd: Option<f64>,
    /// Requests in flight at once (a stream counts until it ends).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    concurrent: Option<u32>,
}

impl LimitArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let limits = Limits {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            tokens_per_day: self.tokens_per_day,
            cost_per_day_usd: self.cost_per_day_usd,
            concurrent: self.concurrent,
        };
        match limits.invalid() {
            Some(key) => anyhow::bail!("--{} must be above 0; leave it out for no limit", key.replace('_', "-")),
            None => Ok(limits),
        }
    }
}

/// Limits as `name=value` words, for listings.
pub fn describe(l: &Limits) -> Vec<String> {
    [
        l.requests_per_minute.map(|n| format!("rpm={n}")),
        l.tokens_per_minute.map(|n| format!("tpm={n}")),
        l.tokens_per_day.map(|n| format!("tokens/day={n}")),
        l.cost_per_day_usd.map(|n| format!("usd/day={n}")),
        l.concurrent.map(|n| format!("concurrent={n}")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Records a change made from the command line before it is made: in the
/// hash chain (as actor `cli`), then as an audit line (whose key and
/// tenant are the actor's: here, none).
pub async fn audit(
    store: &Store,
    object: String,
    action: &str,
    after: Option<String>,
    detail: String,
) -> anyhow::Result<()> {
    let cli = Actor::named("cli".into());
    let verb = action.rsplit('.').next().unwrap_or(action);
    changing(store, &cli, object, verb, after, detail.clone()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    let line = AuditRecord {
        id: 0,
        created_ms: switchyard_wire::unix_ms(),
        key_id: None,
        tenant: None,
        action: action.to_string(),
        outcome: "done".into(),
        status: 200,
        detail: format!("{detail} (from the command line)"),
    };
    Ok(store.record_audit(&line).await?)
}

#[derive(clap::Args, Debug)]
pub struct DataDir {
    /// The server's data directory [default: data-dir from ./switchyard.toml, else ~/.local/share/switchyard]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The server's database instead (postgres://… in shared mode) [default: database from ./switchyard.toml]
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    database: Option<String>,
}

impl DataDir {
    pub async fn open(&self) -> anyhow::Result<Store> {
        let mut cfg = ServeConfig::load(std::path::Path::new("switchyard.toml"), false)?;
        if let Some(dir) = &self.data_dir {
            cfg.data_dir = Some(dir.clone());
            cfg.database = None;
        }
        if let Some(url) = &self.database {
            cfg.database = Some(url.clone());
        }
        cfg.open_store().await
    }
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run_async(cmd))
}

async fn run_async(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { tenant, role, lane, data_class_floor, routes, families, limits, at } => {
            let limits = limits.limits()?;
            let spec = KeySpec { tenant, role, lane, data_class_floor, routes, families, limits };
            create(&at.open().await?, &spec).await
        }
        KeysCommand::List { at } => {
            let keys = at.open().await?.keys().await?;
            println!("{:<10} {:<16} {:<9} {:<12} {:<10} bounds", "id", "tenant", "role", "lane", "status");
            for k in &keys {
                let status = if k.revoked_ms.is_some() { "revoked" } else { "active" };
                let bounds = [
                    k.data_class_floor.as_ref().map(|c| format!("floor={c}")),
                    (!k.routes.is_empty()).then(|| format!("routes={}", k.routes.join(","))),
                    (!k.families.is_empty()).then(|| format!("families={}", k.families.join(","))),
                ];
                let bounds: Vec<String> = bounds.into_iter().flatten().chain(describe(&k.limits)).collect();
                let lane = k.lane.as_deref().unwrap_or("-");
                println!(
                    "{:<10} {:<16} {:<9} {:<12} {:<10} {}",
                    k.id,
                    k.tenant,
                    k.role,
                    lane,
                    status,
                    bounds.join(" ")
                );
            }
            eprintln!("{} keys", keys.len());
            Ok(())
        }
        KeysCommand::Revoke { id, at } => {
            let store = at.open().await?;
            revoke(&store, &id, format!("key {id}")).await?;
            println!("revoked {id}");
            Ok(())
        }
        KeysCommand::Rotate { id, at } => {
            let store = at.open().await?;
            let old = store.keys().await?.into_iter().find(|k| k.id == id && k.revoked_ms.is_none());
            let old: KeyRecord = old.with_context(|| format!("no active key {id}"))?;
            let spec = KeySpec {
                tenant: old.tenant,
                role: old.role,
                lane: old.lane,
                data_class_floor: old.data_class_floor,
                routes: old.routes,
                families: old.families,
                limits: old.limits,
            };
            create(&store, &spec).await?;
            revoke(&store, &id, format!("key {id}, rotated")).await?;
            eprintln!("revoked {id}");
            Ok(())
        }
    }
}

async fn create(store: &Store, spec: &KeySpec) -> anyhow::Result<()> {
    let (record, key) = issue(spec, switchyard_wire::unix_ms()).map_err(|e| {
        let param = e.param.unwrap_or_default();
        anyhow::anyhow!("--{}: {}", param.trim_start_matches("limits.").replace('_', "-"), e.message)
    })?;
    let what = format!("key {} for tenant {} with role {}", record.id, record.tenant, record.role);
    audit(store, format!("key:{}", record.id), "keys.create", Some(state_hash(&record)), what).await?;
    store.create_key(&record).await?;
    eprintln!("key {} for tenant {} (role {}); it is shown this once, keep it:", record.id, record.tenant, record.role);
    println!("{key}");
    Ok(())
}

async fn revoke(store: &Store, id: &str, what: String) -> anyhow::Result<()> {
    let active = store.keys().await?.iter().any(|k| k.id == id && k.revoked_ms.is_none());
    anyhow::ensure!(active, "no active key {id}");
    let after = state_hash(&serde_json::json!({"id": id, "revoked": true}));
    audit(store, format!("key:{id}"), "keys.revoke", Some(after), what).await?;
    anyhow::ensure!(store.revoke_key(id, switchyard_wire::unix_ms()).await?, "no active key {id}");
    Ok(())
}
