use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use switchyard_engine::Priority;
use switchyard_gateway::limits::FailMode;
use switchyard_gateway::ServeConfig;
use switchyard_models::Progress;

/// Flags override the config file; the config file overrides defaults.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config file (TOML, same keys as these flags). Default: ./switchyard.toml if present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1]
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 8080]
    #[arg(long)]
    port: Option<u16>,
    /// Model to serve: a catalog id (see `switchyard models list`) or a GGUF path.
    /// Repeat to serve several. [default: qwen2.5-coder-0.5b]
    #[arg(long = "model", short = 'm', value_name = "ID|PATH")]
    models: Vec<String>,
    /// Threads for llama.cpp; 0 = physical cores [default: 0]
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Total KV cache in tokens, split evenly across parallel sequences [default: 8192]
    #[arg(long, short = 'c')]
    ctx_size: Option<u32>,
    /// Sequences decoded together per model (continuous-batching slots) [default: 4]
    #[arg(long, short = 'p')]
    parallel: Option<u32>,
    /// Most tokens per llama.cpp decode call [default: 512]
    #[arg(long, short = 'b')]
    batch_size: Option<u32>,
    /// Most prompt tokens evaluated per scheduler step (chunked prefill) [default: 256]
    #[arg(long)]
    prefill_chunk: Option<u32>,
    /// What a step serves first when short of budget [default: decode]
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// Requests allowed to wait for a slot before new ones get 429 [default: 64]
    #[arg(long)]
    max_queue: Option<usize>,
    /// Evaluate every prompt in full: no KV reuse across requests (the
    /// prefix cache is on by default)
    #[arg(long)]
    no_prefix_cache: bool,
    /// Host memory (MiB) for conversations' KV moved out of their slots, so
    /// more conversations stay warm than there are slots; 0 keeps the prefix
    /// cache in the slots only [default: 2048]
    #[arg(long, value_name = "MIB")]
    host_cache_mib: Option<u32>,
    /// Most tokens a step guesses by prompt lookup (copying what followed
    /// the answer's last few tokens earlier in its context), verified in one
    /// batch, for greedy requests; 0 turns drafting off [default: 0]
    #[arg(long, value_name = "TOKENS")]
    lookup_draft: Option<u32>,
    /// Speculative decoding: MODEL's greedy answers are guessed a few tokens
    /// ahead by DRAFT (a catalog id or GGUF path with the same tokenizer,
    /// e.g. qwen2.5-coder-1.5b=qwen2.5-coder-0.5b) and verified in one batch.
    /// Repeatable; adds to the config file's [drafts]
    #[arg(long, value_name = "MODEL=DRAFT", value_parser = parse_draft)]
    draft: Vec<(String, String)>,
    /// Most tokens a draft model guesses a step for one sequence; how many
    /// it does follows the measured acceptance and step costs [default: 8]
    #[arg(long, value_name = "TOKENS")]
    draft_max: Option<u32>,
    /// Fewest tokens a draft model guesses a step; equal to --draft-max it
    /// pins the draft length (for measuring) [default: 0]
    #[arg(long, value_name = "TOKENS")]
    draft_min: Option<u32>,
    /// Largest request body, in bytes [default: 4194304]
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Route every request by this policy file (see `switchyard policy`).
    /// Without one, the request's `model` picks a loaded model.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Directory for the SQLite database [default: ~/.local/share/switchyard]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Honour the x-switchyard-force-route header (operators, `eval run`
    /// with route:NAME targets). Off by default: a forced route skips the
    /// routing rules, though never the safety rules or the data boundary.
    #[arg(long)]
    allow_force_route: bool,
    /// Serve a non-loopback --host with no API keys, open to anyone who can
    /// reach it. Without this, such a server refuses to start; create a key
    /// first (`switchyard keys create`).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Keep decisions, handoffs, shadows, keys, tenants and the audit trail
    /// in this database instead of SQLite in the data dir: postgres://…
    /// (shared by every replica that uses it) or sqlite://FILE
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Share keys' and tenants' limits through this Redis (redis://host:port/db)
    /// with every replica that uses it. Without it, limits count per process.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// When Redis cannot be reached: open (admit, and say so in a header) or
    /// closed (503) [default: open]
    #[arg(long, value_enum)]
    redis_fail: Option<FailArg>,
    /// Verify cascades scoring on one model at once; each takes one of the
    /// engine's sequences while it scores. Past it, a cascade escalates or
    /// answers 429, as its rule's `when_verifier_busy` says [default: 2]
    #[arg(long)]
    max_verifies: Option<usize>,
    /// This replica's name in every request's record [default: HOSTNAME:PORT]
    #[arg(long, value_name = "NAME")]
    node_id: Option<String>,
    /// Keep no per-request telemetry (the measured part of each record, the
    /// records of unrouted and refused requests) and no request metrics.
    /// Routing decisions are recorded still: routing promises them.
    #[arg(long)]
    no_telemetry: bool,
    /// Export a trace per request to this OpenTelemetry collector (OTLP over
    /// HTTP/protobuf, e.g. http://127.0.0.1:4318) [default: off]
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Keys for payloads the policy keeps encrypted ([[protect.payloads]]
    /// keep = "encrypted"): 64 hex digits per line, optionally after an
    /// id; the first line seals, the others still open older payloads
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_PAYLOAD_KEY_FILE")]
    payload_key_file: Option<PathBuf>,
}

/// `MODEL=DRAFT`, as `--draft` takes it.
fn parse_draft(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((model, draft)) if !model.is_empty() && !draft.is_empty() => Ok((model.to_string(), draft.to_string())),
        _ => Err(format!("`{arg}` is not MODEL=DRAFT (e.g. qwen2.5-coder-1.5b=qwen2.5-coder-0.5b)")),
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FailArg {
    Open,
    Closed,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PriorityArg {
    Decode,
    Prefill,
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<ServeConfig> {
        let (path, must_exist) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("switchyard.toml"), false),
        };
        let mut cfg = ServeConfig::load(&path, must_exist)?;
        macro_rules! set {
            ($into:expr => $($field:ident),*) => { $( if let Some(v) = self.$field { $into.$field = v; } )* };
        }
        set!(cfg => host, port, max_body_bytes, max_verifies);
        set!(cfg.engine => threads, ctx_size, parallel, batch_size, prefill_chunk, max_queue, host_cache_mib, lookup_draft, draft_max, draft_min);
        for (model, draft) in self.draft {
            let model = switchyard_models::ModelSpec::parse(&model)
                .map_err(|e| anyhow::anyhow!("--draft {model}={draft}: {e}"))?
                .id();
            cfg.drafts.insert(model, draft);
        }
        cfg.engine.prefix_cache &= !self.no_prefix_cache;
        cfg.allow_force_route |= self.allow_force_route;
        cfg.allow_unauthenticated |= self.allow_unauthenticated;
        if self.redis.is_some() {
            cfg.redis = self.redis;
        }
        if self.database.is_some() {
            cfg.database = self.database;
        }
        if self.node_id.is_some() {
            cfg.node_id = self.node_id;
        }
        cfg.telemetry &= !self.no_telemetry;
        if self.otlp_endpoint.is_some() {
            cfg.otlp_endpoint = self.otlp_endpoint;
        }
        if self.payload_key_file.is_some() {
            cfg.payload_key_file = self.payload_key_file;
        }
        if let Some(fail) = self.redis_fail {
            cfg.redis_fail = match fail {
                FailArg::Open => FailMode::Open,
                FailArg::Closed => FailMode::Closed,
            };
        }
        if let Some(p) = self.priority {
            cfg.engine.priority = match p {
                PriorityArg::Decode => Priority::Decode,
                PriorityArg::Prefill => Priority::Prefill,
            };
        }
        if self.policy.is_some() {
            cfg.policy = self.policy;
        }
        if self.data_dir.is_some() {
            cfg.data_dir = self.data_dir;
        }
        if !self.models.is_empty() {
            cfg.models = self.models;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let progress = Progress::for_stderr();
    // Read the policy first: a broken one should fail before minutes of model loading.
    let policy = cfg.load_policy()?;
    cfg.check_database_reachable()?;
    // And keys it needs, for the same reason.
    let payload_keys = switchyard_gateway::payload_keys(&cfg, policy.as_ref())?;
    let engines = switchyard_gateway::load_engines(&cfg, policy.as_ref(), progress).context("loading models")?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(switchyard_gateway::serve(
        cfg,
        policy,
        engines,
        payload_keys,
    ))
}
