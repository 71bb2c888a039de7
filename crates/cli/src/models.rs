use std::io::Write;

use clap::Subcommand;
use switchyard_models::{cache_dir, cached_path, catalog, find, pull, Progress};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Show the catalog: ids, sizes, and whether each is in the local cache.
    List,
    /// Fetch a catalog model, verify its size and sha256, and install it in the cache.
    /// Prints the model's path when done; an already verified copy is kept unless --force.
    Pull {
        /// Catalog id, e.g. smollm2-135m
        id: String,
        /// Fetch and verify again even if the cache has it.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    let cache = cache_dir();
    match cmd {
        ModelsCommand::List => {
            // A closed pipe (`| head`) ends the listing with an error, not a panic.
            let mut out = std::io::stdout().lock();
            writeln!(out, "cache: {}", cache.display())?;
            writeln!(out, "{:<22} {:>10}  {:<8} description", "id", "size", "present")?;
            for e in catalog() {
                let present = if cached_path(&cache, e.id).is_file() { "yes" } else { "no" };
                writeln!(out, "{:<22} {:>7} MB  {:<8} {}", e.id, e.size / 1_000_000, present, e.description)?;
            }
        }
        ModelsCommand::Pull { id, force } => {
            let entry = find(&id).ok_or_else(|| {
                let ids: Vec<_> = catalog().iter().map(|e| e.id).collect();
                anyhow::anyhow!("unknown model `{id}`; known: {}", ids.join(", "))
            })?;
            let cached = cached_path(&cache, entry.id);
            let path = if cached.is_file() && !force {
                cached
            } else {
                let progress = Progress::for_stderr();
                pull(&entry, &cache, progress)?
            };
            println!("{}", path.display());
        }
    }
    Ok(())
}
