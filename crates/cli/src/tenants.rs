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
