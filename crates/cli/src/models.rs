use std::io::Write;

use std::path::{Path, PathBuf};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use switchyard_models::{cache_dir, cached_path, catalog, find, pull, ModelSpec, Progress};
use switchyard_quantize::QuantType;

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
    /// Make another quantization path of a model with llama.cpp's own quantizer.
    ///
    /// SRC is a catalog id (pulled if missing) or a GGUF path. The result is
    /// written to --out (never over an existing file) and its size and
    /// sha256 are printed. The source's own type is read from its header:
    /// quantizing an already-quantized file (every catalog model is one) is
    /// a requantization, which carries the source's rounding errors, and
    /// the output says so.
    Quantize {
        src: String,
        /// Q3_K_M, Q4_0, Q4_1, Q4_K_S, Q4_K_M, IQ4_NL, Q5_0, Q5_K_S, Q5_K_M, Q6_K, Q8_0 or F16.
        #[arg(long = "type", value_parser = |s: &str| s.parse::<QuantType>())]
        quant: QuantType,
        #[arg(long)]
        out: PathBuf,
        /// Quantizer threads (default: the cores this machine has).
        #[arg(long)]
        threads: Option<u32>,
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
        ModelsCommand::Quantize { src, quant, out, threads } => quantize(&src, quant, &out, threads)?,
    }
    Ok(())
}

fn quantize(src: &str, quant: QuantType, out: &Path, threads: Option<u32>) -> anyhow::Result<()> {
    let spec = ModelSpec::parse(src)?;
    let path = spec.ensure(&cache_dir(), Progress::for_stderr())?;
    let source = switchyard_quantize::read_file_type(&path)?;
    let source_name = switchyard_quantize::file_type_name(source);
    // The bar's length is a guess from bits per weight; it ends at the real size.
    let source_bits = QuantType::ALL.iter().find(|t| t.name == source_name).map_or(16.0, |t| t.bits);
    let src_bytes = std::fs::metadata(&path)?.len();
    let guess = (src_bytes as f64 * f64::from(quant.bits) / f64::from(source_bits)) as u64;
    let bar = ProgressBar::new(guess.max(1)).with_style(
        ProgressStyle::with_template("quantizing {msg} [{bar:30}] {bytes}/~{total_bytes} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{source_name} -> {}", quant.name));
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let done =
        switchyard_quantize::quantize(&path, out, quant, threads, |written| bar.set_position(written.min(guess)))?;
    bar.finish_and_clear();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", done.path.display())?;
    writeln!(stdout, "type     {} (from {}: {})", done.quant.name, path.display(), done.source_type)?;
    writeln!(stdout, "size     {} bytes ({:.0} MB)", done.bytes, done.bytes as f64 / 1e6)?;
    writeln!(stdout, "sha256   {}", done.sha256)?;
    writeln!(stdout, "took     {:.1} s with {threads} threads", done.seconds)?;
    if done.requantized {
        writeln!(
            stdout,
            "note     requantized from {}: not the same experiment as quantizing full-precision weights",
            done.source_type
        )?;
    }
    Ok(())
}
