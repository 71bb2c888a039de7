//! `switchyard tenants`: limits shared by all of a tenant's keys, in the
//! data dir's store, offline (or `PUT /admin/tenants/{name}`). A running
//! server sees a change within a second.

use clap::Subcommand;

use crate::keys::{audit, describe, DataDir, LimitArgs};

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Set a tenant's limits, replacing any it had (a limit left out: none).
    Set {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        at: DataDir,
    },
    /// Set a tenant's own data protection from a TOML file, replacing any
    /// it had: `[[custom]]` detectors (name, class, patterns, keywords),
    /// scanned on its requests beside the policy's, and
    /// `payload_retention_days`, which shortens the policy's for its payloads.
    Protect {
        name: String,
        #[arg(long, value_name = "FILE")]
        file: std::path::PathBuf,
        #[command(flatten)]
        at: DataDir,
    },
    /// List tenants with limits.
    List {
        #[command(flatten)]
        at: DataDir,
    },
}

pub fn run(cmd: TenantsCommand) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        match cmd {
            TenantsCommand::Set { name, limits, at } => {
                anyhow::ensure!(!name.trim().is_empty(), "name the tenant");
                let limits = limits.limits()?;
                let store = at.open().await?;
                let words = describe(&limits).join(" ");
                let after = Some(switchyard_gateway::audit::state_hash(&limits));
                audit(&store, format!("tenant:{name}"), "tenants.put", after, format!("tenant {name} limits {words}"))
                    .await?;
                store.put_tenant(&name, &limits, switchyard_wire::unix_ms()).await?;
                println!("{name}: {}", if words.is_empty() { "no limits".into() } else { words });
                Ok(())
            }
            TenantsCommand::Protect { name, file, at } => {
                anyhow::ensure!(!name.trim().is_empty(), "name the tenant");
                let text =
                    std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
                let protect: switchyard_store::TenantProtect =
                    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                switchyard_gateway::auth::TenantProtection::check(&protect).map_err(|e| {
                    anyhow::anyhow!("{}: `{}`: {}", file.display(), e.param.unwrap_or_default(), e.message)
                })?;
                let store = at.open().await?;
                let after = Some(switchyard_gateway::audit::state_hash(&protect));
                let what = format!("tenant {name}: {} lists", protect.custom.len());
                audit(&store, format!("tenant:{name}:protect"), "tenants.protect", after, what).await?;
                store.put_tenant_protect(&name, &protect, switchyard_wire::unix_ms()).await?;
                println!(
                    "{name}: {} detector lists, payload retention {}",
                    protect.custom.len(),
                    protect.payload_retention_days.map_or("as the policy says".into(), |d| format!("at most {d} days"))
                );
                Ok(())
            }
            TenantsCommand::List { at } => {
                let tenants = at.open().await?.tenants().await?;
                for t in &tenants {
                    println!("{:<16} {}", t.name, describe(&t.limits).join(" "));
                }
                eprintln!("{} tenants", tenants.len());
                Ok(())
            }
        }
    })
}
