//! `switchyard audit`: the hash-chained log of changes (policies and models
//! loaded, keys, tenants' limits, payload purges), read offline from the
//! data dir's store: list it, check it, print its head.

use clap::Subcommand;
use switchyard_store::chain::{verify, ChainFilter};

use crate::keys::DataDir;
use crate::telemetry::parse_age;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Changes, oldest first: who, what, when, the state's hash before and
    /// after, why, and the chain's hashes.
    Log {
        /// Objects starting with this: `policy`, `model:`, `key:`, `tenant:acme`
        #[arg(long)]
        object: Option<String>,
        /// A key id, `cli`, or `server:NODE`
        #[arg(long)]
        actor: Option<String>,
        /// Since this long ago (`90s`, `15m`, `2h`, `7d`) [default: all]
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        last: Option<i64>,
        #[arg(long)]
        limit: Option<u32>,
        /// One JSON object per line instead of a table
        #[arg(long)]
        jsonl: bool,
        #[command(flatten)]
        at: DataDir,
    },
    /// Recompute the whole chain; name the first entry that was edited,
    /// deleted or moved. Exits 1 if the chain is broken.
    Verify {
        /// A head printed earlier (`audit head`, or the server's log): the
        /// chain must still hold it, which catches the newest entries cut off.
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
        #[command(flatten)]
        at: DataDir,
    },
    /// The number of entries and the newest hash: keep it somewhere else to
    /// check later with `verify --head`.
    Head {
        #[command(flatten)]
        at: DataDir,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run_async(cmd))
}

async fn run_async(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Log { object, actor, last, limit, jsonl, at } => {
            let since_ms = last.map_or(0, |age| switchyard_wire::unix_ms() - age);
            let entries = at.open().await?.chain(&ChainFilter { object, actor, since_ms, limit }).await?;
            for e in &entries {
                if jsonl {
                    println!("{}", serde_json::to_string(e)?);
                    continue;
                }
                // A row edited by hand may hold anything: cut by characters.
                let cut = |h: &str| h.chars().take(12).collect::<String>();
                let short = |h: &Option<String>| h.as_deref().map_or("-".to_string(), cut);
                println!(
                    "{:>5} {} {:<22} {:<10} {:<24} {} -> {}  {}  [{}]",
                    e.id,
                    e.created_ms,
                    e.change.actor,
                    e.change.action,
                    e.change.object,
                    short(&e.change.before_sha256),
                    short(&e.change.after_sha256),
                    e.change.reason,
                    cut(&e.hash)
                );
            }
            eprintln!("{} changes", entries.len());
            Ok(())
        }
        AuditCommand::Verify { head, at } => {
            let entries = at.open().await?.chain(&ChainFilter::default()).await?;
            match verify(&entries, head.as_deref()) {
                Ok((n, head)) => {
                    println!("ok: {n} entries, head {head}");
                    Ok(())
                }
                Err(e) => anyhow::bail!("BROKEN: {e}"),
            }
        }
        AuditCommand::Head { at } => {
            let entries = at.open().await?.chain(&ChainFilter::default()).await?;
            let (n, head) = verify(&entries, None).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{n} {head}");
            Ok(())
        }
    }
}
