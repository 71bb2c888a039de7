//! `switchyard bakeoff`: serve each variant in turn (or target it), run the
//! trace at each concurrency with `bench sweep` and the eval set with
//! `eval run` against it, then join everything into one table and page and
//! judge it against the SLAs given.
//!
//! Each step is this same binary run as a child process, writing into
//! `OUT/NAME/`, so what a bake-off ran is on disk as the bench and the eval
//! write it anywhere else. A step whose output exists is not run again: a
//! stopped bake-off resumes where it stopped, and `--render` re-makes the
//! page from the directory alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use switchyard_bakeoff::{judge, report, Kind, Outcome, Paths, Served, Sla, Variant};

/// Compare model variants (quantization paths, runtimes, endpoints) under
/// one trace and one eval set; name the cheapest that meets the SLAs.
///
/// For each --variant in turn: serve it (engine: `switchyard serve`;
/// llama-server: the binary at --llama-server), replay --trace closed-loop
/// at each --concurrency (`bench sweep`), run --dataset (`eval run`), stop
/// it, and record its file size and peak memory. Then write OUT/bakeoff.md,
/// OUT/bakeoff.html and OUT/bakeoff.json. Steps already done are skipped,
/// so running the same command again resumes a stopped bake-off.
#[derive(clap::Args, Debug)]
pub struct BakeoffArgs {
    /// NAME=engine:MODEL (catalog id or GGUF), NAME=llama-server:FILE, or
    /// NAME=url:BASE_URL[@MODEL]. Give two or more.
    #[arg(long = "variant", value_parser = |s: &str| Variant::parse(s))]
    variants: Vec<Variant>,
    /// The variant quality retention is measured against (default: the first).
    #[arg(long)]
    reference: Option<String>,
    /// A bench trace (`switchyard bench trace generate`).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// An eval set version directory, e.g. datasets/eval/core/v1.
    #[arg(long)]
    dataset: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_values_t = switchyard_bench::sweep::DEFAULT_LEVELS)]
    concurrency: Vec<usize>,
    /// Ask only this many eval items, spread evenly over the set.
    #[arg(long)]
    eval_limit: Option<usize>,
    #[arg(long, default_value_t = 4)]
    eval_concurrency: usize,
    /// SLA: TTFT p95 at --sla-concurrency, in ms.
    #[arg(long)]
    max_ttft_p95_ms: Option<f64>,
    /// SLA: overall eval success as a share of the reference's (e.g. 0.95).
    #[arg(long)]
    min_retention: Option<f64>,
    #[arg(long, default_value_t = 5)]
    sla_concurrency: usize,
    /// Threads, slots and total context of every served variant (the same
    /// for each, so only the variant differs).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    #[arg(long, default_value_t = 8)]
    parallel: u32,
    #[arg(long, default_value_t = 8192)]
    ctx_size: u32,
    /// The llama-server binary for llama-server variants (bench/llama-server.sh builds one).
    #[arg(long, env = "LLAMA_SERVER")]
    llama_server: Option<PathBuf>,
    /// A [prices] table for the bench (cost per successful task).
    #[arg(long)]
    prices: Option<PathBuf>,
    /// IDLE_W,W_PER_CORE: energy from each served process's CPU time where
    /// RAPL is not readable.
    #[arg(long)]
    power_model: Option<String>,
    /// Only re-make the table and page from OUT (its plan names the variants).
    #[arg(long)]
    render: bool,
    #[arg(long)]
    out: PathBuf,
}

/// What a bake-off was asked to run, kept as OUT/plan.json.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    variants: Vec<Variant>,
    reference: String,
    trace: PathBuf,
    dataset: PathBuf,
    concurrency: Vec<usize>,
    eval_limit: Option<usize>,
    /// How every engine and llama-server variant was served.
    threads: u32,
    parallel: u32,
    ctx_size: u32,
}

pub fn run(args: BakeoffArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let plan_file = args.out.join("plan.json");
    let plan = if args.render {
        let text = std::fs::read(&plan_file).with_context(|| format!("--render reads {}", plan_file.display()))?;
        serde_json::from_slice::<Plan>(&text)?
    } else {
        let plan = plan_of(&args)?;
        if let Ok(before) = std::fs::read(&plan_file) {
            let before: Plan = serde_json::from_slice(&before)?;
            anyhow::ensure!(
                before.trace == plan.trace
                    && before.dataset == plan.dataset
                    && before.concurrency == plan.concurrency
                    && before.eval_limit == plan.eval_limit,
                "{} holds a bake-off of another trace, eval set, levels or limit; choose another --out",
                args.out.display()
            );
        }
        std::fs::write(&plan_file, serde_json::to_vec_pretty(&plan)?)?;
        for (i, variant) in plan.variants.iter().enumerate() {
            eprintln!("bakeoff: [{}/{}] {}", i + 1, plan.variants.len(), variant.name);
            run_variant(&args, &plan, variant).with_context(|| format!("variant {}", variant.name))?;
        }
        plan
    };
    render(&args, &plan)
}

fn plan_of(args: &BakeoffArgs) -> anyhow::Result<Plan> {
    anyhow::ensure!(args.variants.len() >= 2, "give two or more --variant NAME=KIND:VALUE to compare");
    let mut names: Vec<&str> = args.variants.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    anyhow::ensure!(names.windows(2).all(|w| w[0] != w[1]), "two variants share a name; each names a folder");
    let reference = args.reference.clone().unwrap_or_else(|| args.variants[0].name.clone());
    anyhow::ensure!(names.contains(&reference.as_str()), "--reference {reference} is not one of the variants");
    let trace = args.trace.clone().context("--trace: the bench trace every variant replays")?;
    let dataset = args.dataset.clone().context("--dataset: the eval set every variant answers")?;
    anyhow::ensure!(!args.concurrency.is_empty(), "--concurrency: at least one level");
    Ok(Plan {
        variants: args.variants.clone(),
        reference,
        trace,
        dataset,
        concurrency: args.concurrency.clone(),
        eval_limit: args.eval_limit,
        threads: args.threads,
        parallel: args.parallel,
        ctx_size: args.ctx_size,
    })
}

fn render(args: &BakeoffArgs, plan: &Plan) -> anyhow::Result<()> {
    let mut outcomes = Vec::new();
    for v in &plan.variants {
        match Outcome::load(&args.out, &v.name)? {
            Some(o) => outcomes.push(o),
            None => eprintln!("bakeoff: {} has not run yet; left out", v.name),
        }
    }
    let sla = Sla {
        max_ttft_p95_ms: args.max_ttft_p95_ms,
        min_retention: args.min_retention,
        at_concurrency: args.sla_concurrency,
    };
    let verdict = judge(&outcomes, &plan.reference, sla);
    let about = format!(
        "trace {}, eval set {}{}, concurrency {}, each served with {} threads, {} slots, {} tokens of context",
        plan.trace.display(),
        plan.dataset.display(),
        plan.eval_limit.map_or_else(String::new, |n| format!(" ({n} items)")),
        plan.concurrency.iter().map(usize::to_string).collect::<Vec<_>>().join("/"),
        plan.threads,
        plan.parallel,
        plan.ctx_size
    );
    let table = report::table(&outcomes, &plan.concurrency, &verdict);
    let retention = report::retention_table(&outcomes, &plan.reference);
    let verdict_text = report::verdict_lines(&verdict);
    std::fs::write(
        args.out.join("bakeoff.md"),
        format!("# bake-off\n\n{about}\n\n{table}\n## Retention by slice\n\n{retention}\n{verdict_text}"),
    )?;
    std::fs::write(args.out.join("bakeoff.html"), report::html(&outcomes, &plan.concurrency, &verdict, &about))?;
    std::fs::write(args.out.join("bakeoff.json"), serde_json::to_vec_pretty(&verdict)?)?;
    print!("{table}\n{verdict_text}");
    println!("wrote {}/bakeoff.{{md,html,json}}", args.out.display());
    Ok(())
}

/// A variant's server while the bench and eval run against it.
struct Server {
    child: Option<Child>,
    base: String,
    model: String,
    file: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_variant(args: &BakeoffArgs, plan: &Plan, variant: &Variant) -> anyhow::Result<()> {
    let paths = Paths::new(&args.out, &variant.name);
    let done = |p: &Path| p.exists();
    if done(&paths.served()) && done(&paths.sweep()) && done(&paths.scorecard()) {
        eprintln!("bakeoff: {} already measured; kept", variant.name);
        return Ok(());
    }
    std::fs::create_dir_all(&paths.dir)?;
    let mut server = serve(args, variant, &paths)?;
    let pid = server.child.as_ref().map(Child::id);
    let exe = std::env::current_exe()?;
    if !done(&paths.sweep()) {
        let levels = plan.concurrency.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "sweep", "--target", &server.base, "--model", &server.model, "--concurrency", &levels]);
        cmd.arg("--trace").arg(&plan.trace).arg("--out").arg(paths.sweep_dir());
        if let Some(prices) = &args.prices {
            cmd.arg("--prices").arg(prices);
        }
        if let (Some(model), Some(pid)) = (&args.power_model, pid) {
            cmd.args(["--power-model", model, "--target-pid", &pid.to_string()]);
        }
        step(cmd, "bench sweep")?;
    }
    if !done(&paths.scorecard()) {
        let mut cmd = Command::new(&exe);
        cmd.args(["eval", "run", "--target", &server.base, "--model", &server.model, "--no-cache"]);
        cmd.args(["--concurrency", &args.eval_concurrency.to_string()]);
        cmd.arg("--dataset").arg(&plan.dataset).arg("--out").arg(paths.eval_dir());
        if let Some(n) = plan.eval_limit {
            cmd.args(["--limit", &n.to_string()]);
        }
        step(cmd, "eval run")?;
    }
    let peak_rss_bytes = pid.and_then(peak_rss);
    let (file_bytes, file_type) = match &server.file {
        Some(f) => (
            std::fs::metadata(f).ok().map(|m| m.len()),
            switchyard_quantize::read_file_type(f).ok().map(|t| switchyard_quantize::file_type_name(t).to_string()),
        ),
        None => (None, None),
    };
    if let Some(mut child) = server.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let served = Served { variant: variant.clone(), file_bytes, file_type, peak_rss_bytes };
    std::fs::write(paths.served(), serde_json::to_vec_pretty(&served)?)?;
    Ok(())
}

/// Runs one step to its end; its output goes to the terminal.
fn step(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    anyhow::ensure!(status.success(), "{what} failed ({status}); run the bake-off again to resume from this step");
    Ok(())
}

/// Starts (or finds) the variant's server and waits until it lists a model.
fn serve(args: &BakeoffArgs, variant: &Variant, paths: &Paths) -> anyhow::Result<Server> {
    let (t, p, c) = (args.threads.to_string(), args.parallel.to_string(), args.ctx_size.to_string());
    let (child, base, file) = match &variant.kind {
        Kind::Url { base, model } => {
            return Ok(Server { child: None, base: base.clone(), model: model.clone(), file: None });
        }
        Kind::Engine { model } => {
            let file = switchyard_models::ModelSpec::parse(model)?
                .ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::for_stderr())?;
            let port = free_port()?;
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.arg("serve").arg("--model").arg(&file);
            cmd.args(["--threads", &t, "--parallel", &p, "--ctx-size", &c, "--port", &port.to_string()]);
            cmd.arg("--data-dir").arg(paths.dir.join("serve"));
            (spawn(cmd, &paths.dir.join("server.log"))?, format!("http://127.0.0.1:{port}/v1"), file)
        }
        Kind::LlamaServer { model } => {
            let bin = args
                .llama_server
                .as_ref()
                .context("a llama-server variant needs --llama-server BIN (bench/llama-server.sh prints one)")?;
            let port = free_port()?;
            let mut cmd = Command::new(bin);
            cmd.arg("-m").arg(model);
            cmd.args(["-t", &t, "-tb", &t, "-np", &p, "-c", &c, "--host", "127.0.0.1", "--port", &port.to_string()]);
            cmd.arg("--no-webui");
            if let Some(dir) = bin.parent() {
                cmd.env("LD_LIBRARY_PATH", dir);
            }
            (spawn(cmd, &paths.dir.join("server.log"))?, format!("http://127.0.0.1:{port}/v1"), model.clone())
        }
    };
    let mut server = Server { child: Some(child), base, model: String::new(), file: Some(file) };
    server.model = wait_ready(&mut server, &paths.dir.join("server.log"))?;
    Ok(server)
}

fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// A port free now; the server binds it a moment later.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `GET /models` until it lists a model (llama-server answers 503
/// while loading); returns that model's id.
fn wait_ready(server: &mut Server, log: &Path) -> anyhow::Result<String> {
    let began = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let listed = |url: String| {
        rt.block_on(async {
            let body: serde_json::Value =
                http.get(url).send().await.ok()?.error_for_status().ok()?.json().await.ok()?;
            body["data"][0]["id"].as_str().map(str::to_string)
        })
    };
    loop {
        if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            anyhow::bail!("the server exited ({status}) before it was ready; see {}", log.display());
        }
        if let Some(id) = listed(format!("{}/models", server.base)) {
            return Ok(id);
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "the server was not ready within 10 minutes; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `VmHWM` of a live process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
