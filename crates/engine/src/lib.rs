//! Embedded llama.cpp engine.
//!
//! One [`Engine`] = one model file = one scheduler thread owning one llama
//! context with `parallel` sequences (see [`scheduler`] for the batching
//! invariants). Callers talk to it through [`Engine::submit`], which does all
//! admission checks synchronously, so a request that cannot run is refused
//! before it ever queues.

// A request-path crate: a failure is a typed error, never a panic (tests
// may unwrap: see clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod draft;
mod embed;
mod logprobs;
mod lookup;
mod prefix_cache;
mod request;
mod scheduler;
mod score;
mod sequence;
mod settings;
mod stop;
mod tokenizer;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;

use tokio::sync::mpsc;

pub use embed::{EmbedInput, Pooling};
pub use llama_cpp_2::token::LlamaToken;
pub use request::{Event, EventStream, GenerateRequest, OutputFormat, Piece, SamplingParams, Summary};
pub use score::{ScoreError, Scoring, MAX_SCORED_TOKENS};
pub use settings::{EngineSettings, Priority};
pub use tokenizer::Tokenizer;

use request::{Job, Output};
use scheduler::{AliveGuard, Scheduler};

/// The llama.cpp crate this engine is built on; part of `system_fingerprint`.
pub const RUNTIME: &str = "llama.cpp/llama-cpp-2-0.1.160";

const JSON_GRAMMAR: &str = include_str!("grammar/json.gbnf");

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid engine settings: {0}")]
    Settings(String),
    #[error("llama.cpp could not load {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("llama.cpp could not create a context for {path}: {reason}")]
    Context { path: PathBuf, reason: String },
    #[error("{draft} cannot draft for {target}: {reason}; a draft model must share the target's tokenizer")]
    DraftVocabulary { target: PathBuf, draft: PathBuf, reason: String },
}

/// Why a request was refused before queueing.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("this model's context is {n_ctx} tokens per sequence, but the request needs {needed} ({prompt} in the prompt + {max_tokens} to generate); shorten the messages or lower max_tokens")]
    ContextExceeded { n_ctx: u32, needed: u64, prompt: usize, max_tokens: u32 },
    #[error("the prompt is empty after applying the chat template")]
    EmptyPrompt,
    #[error("the request queue is full ({0} waiting); retry shortly")]
    QueueFull(usize),
    #[error("{0}")]
    InvalidFormat(String),
    #[error("the engine's scheduler has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot render the chat template: {0}")]
pub struct TemplateError(String);

/// A loaded model and the handle to its scheduler. Cheap to share behind an `Arc`.
/// How busy an engine is, as its scheduler last saw: for metrics.
#[derive(Debug, Default)]
pub struct Load {
    /// Requests accepted and not yet in a slot.
    queued: AtomicUsize,
    /// Sequences in slots (prefilling or decoding).
    active: AtomicUsize,
    /// Tokens held in the KV cache by those sequences.
    kv_tokens: AtomicUsize,
    /// Requests that found part of their prompt in the KV cache.
    prefix_hits: AtomicUsize,
    /// Prompt tokens those requests did not evaluate again.
    reused_tokens: AtomicUsize,
    /// Conversations brought back from host memory into a slot.
    restored: AtomicUsize,
    /// Requests that started from a copy of another slot's prefix.
    copied: AtomicUsize,
    /// Tokens guessed (by prompt lookup or the draft model) and verified,
    /// and those kept.
    drafted: AtomicUsize,
    draft_accepted: AtomicUsize,
    /// Conversations' KV held in host memory now, and its bytes.
    saved_sequences: AtomicUsize,
    saved_bytes: AtomicUsize,
}

impl Load {
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Acquire: pairs with the scheduler's release, so a cache fill read
    /// after this is at least as new.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Tokens in the KV cache now, of `n_ctx_seq × parallel`.
    pub fn kv_tokens(&self) -> usize {
        self.kv_tokens.load(Ordering::Relaxed)
    }

    /// The prefix cache's and prompt lookup's account so far.
    pub fn counters(&self) -> EngineCounters {
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        EngineCounters {
            hits: get(&self.prefix_hits),
            reused_tokens: get(&self.reused_tokens),
            restored: get(&self.restored),
            copied: get(&self.copied),
            drafted: get(&self.drafted),
            draft_accepted: get(&self.draft_accepted),
            saved_sequences: get(&self.saved_sequences),
            saved_bytes: get(&self.saved_bytes),
        }
    }
}

/// The prefix cache's and prompt lookup's counters since load, and the
/// host-memory cache's size now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Requests that found part of their prompt in the KV cache.
    pub hits: usize,
    /// Prompt tokens those requests did not evaluate again.
    pub reused_tokens: usize,
    /// Conversations restored from host memory into a slot.
    pub restored: usize,
    /// Requests that started from a copy of another slot's prefix.
    pub copied: usize,
    /// Tokens guessed (by prompt lookup or the draft model) and verified,
    /// and those kept.
    pub drafted: usize,
    pub draft_accepted: usize,
    /// Conversations whose KV is in host memory now.
    pub saved_sequences: usize,
    /// Bytes they take.
    pub saved_bytes: usize,
}

pub struct Engine {
    id: String,
    load: Arc<Load>,
    path: PathBuf,
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    jobs: SyncSender<Job>,
    alive: Arc<AtomicBool>,
    settings: EngineSettings,
    n_ctx_seq: u32,
    /// The warm embedding context, once [`Engine::embed`] is used.
    embedder: std::sync::Mutex<Option<embed::Embedder>>,
}

#[expect(clippy::expect_used, reason = "this OnceLock initialises llama.cpp once; it refuses only a second init")]
/// llama.cpp's process-wide state, initialised on first use with its log
/// sink silenced; anything else that calls into llama.cpp (the quantizer)
/// goes through here first.
pub fn llama_backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let mut backend = LlamaBackend::init().expect("llama backend is initialised once, here");
        backend.void_logs();
        backend
    })
}

impl Engine {
    /// Loads `path` and starts its scheduler thread. Blocks until the context
    /// exists, so a returned engine is ready to serve.
    pub fn load(id: &str, path: &Path, settings: EngineSettings) -> Result<Self, LoadError> {
        Self::load_with_draft(id, path, None, settings)
    }

    /// As [`Engine::load`], with `draft` guessing greedy requests' next
    /// tokens for the model to verify a batch at a time (speculative
    /// decoding). Refuses a draft whose vocabulary differs from the model's.
    pub fn load_with_draft(
        id: &str,
        path: &Path,
        draft: Option<&Path>,
        settings: EngineSettings,
    ) -> Result<Self, LoadError> {
        settings.validate().map_err(|(key, msg)| LoadError::Settings(format!("{key}: {msg}")))?;
        let model = Arc::new(load_model(path)?);
        let draft_model = match draft {
            None => None,
            Some(draft) => {
                let draft_model = load_model(draft)?;
                if let Some(reason) = draft::vocabulary_mismatch(&model, &draft_model) {
                    return Err(LoadError::DraftVocabulary {
                        target: path.to_path_buf(),
                        draft: draft.to_path_buf(),
                        reason,
                    });
                }
                Some(draft_model)
            }
        };
        // Models without a template (base models) get ChatML, which llama.cpp knows by name.
        let template = match model.chat_template(None) {
            Ok(t) => t,
            Err(_) => LlamaChatTemplate::new("chatml")
                .map_err(|e| LoadError::Model { path: path.to_path_buf(), reason: format!("no chat template: {e}") })?,
        };

        let (jobs, rx) = sync_channel::<Job>(settings.max_queue);
        let load = Arc::new(Load::default());
        let alive = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u32, String>>();
        let threads = settings.effective_threads() as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(settings.ctx_size))
            .with_n_batch(settings.batch_size)
            .with_n_ubatch(settings.batch_size)
            .with_n_seq_max(settings.parallel)
            // One KV stream per sequence: a sequence's attention never sees
            // another's cells, so its output does not depend on what else is
            // in the batch (a unified cache changes greedy output under load).
            .with_kv_unified(false)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        {
            let model = Arc::clone(&model);
            let alive = AliveGuard(Arc::clone(&alive));
            let sched_load = Arc::clone(&load);
            let settings = settings.clone();
            std::thread::Builder::new()
                .name(format!("sched-{id}"))
                .spawn(move || {
                    let _alive = alive;
                    let ctx = match model.new_context(llama_backend(), params.clone()) {
                        Ok(ctx) => ctx,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let drafter = match &draft_model {
                        None => None,
                        Some(draft) => match draft.new_context(llama_backend(), params) {
                            Ok(ctx) => Some(draft::Drafter::new(draft, ctx, settings.parallel, settings.batch_size)),
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("the draft model's context: {e}")));
                                return;
                            }
                        },
                    };
                    let scheduler = Scheduler::new(&model, ctx, drafter, settings.clone(), rx, sched_load);
                    let _ = ready_tx.send(Ok(scheduler.n_ctx_seq()));
                    scheduler.run();
                })
                .map_err(|e| LoadError::Context {
                    path: path.to_path_buf(),
                    reason: format!("starting the scheduler thread: {e}"),
                })?;
        }
        let n_ctx_seq = ready_rx
            .recv()
            .map_err(|_| "scheduler thread exited during start-up".to_string())
            .and_then(|r| r)
            .map_err(|reason| LoadError::Context { path: path.to_path_buf(), reason })?;
        let draft = draft.map(|d| d.display().to_string());
        tracing::info!(model = id, path = %path.display(), ?draft, threads, n_ctx_seq, parallel = settings.parallel, "model loaded");
        Ok(Self {
            id: id.to_string(),
            load,
            path: path.to_path_buf(),
            model,
            template,
            jobs,
            alive,
            settings,
            n_ctx_seq,
            embedder: std::sync::Mutex::new(None),
        })
    }

    pub fn busy(&self) -> &Load {
        &self.load
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Tokens in `text` (no special tokens added).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.model.vocab().tokenize(text.as_bytes(), false, false).len()
    }

    /// The size of the model's embeddings ([`Engine::embed`]).
    pub fn n_embd(&self) -> usize {
        usize::try_from(self.model.n_embd()).unwrap_or(0)
    }

    /// Context available to one request (prompt + output).
    pub fn n_ctx_seq(&self) -> u32 {
        self.n_ctx_seq
    }

    /// True while the scheduler thread runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Model and runtime, as OpenAI's `system_fingerprint`.
    pub fn fingerprint(&self) -> String {
        format!("fp_{}_{}", self.id, RUNTIME)
    }

    /// Renders `(role, content)` messages with the model's chat template and
    /// tokenizes the result, ready for [`Engine::submit`].
    pub fn chat_prompt(&self, messages: &[(&str, &str)]) -> Result<Vec<LlamaToken>, TemplateError> {
        let chat = messages
            .iter()
            .map(|(role, content)| {
                // Templates predating the `developer` role know it as `system`.
                let role = if *role == "developer" { "system" } else { role };
                LlamaChatMessage::new(role.to_string(), content.to_string())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TemplateError(e.to_string()))?;
        let text =
            self.model.apply_chat_template(&self.template, &chat, true).map_err(|e| TemplateError(e.to_string()))?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// Admits a request: checks it fits the context, builds its sampler, and
    /// queues it without blocking. Dropping the returned stream cancels it.
    pub fn submit(&self, req: GenerateRequest) -> Result<EventStream, SubmitError> {
        if !self.is_alive() {
            return Err(SubmitError::Stopped);
        }
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let prompt = req.prompt.len();
        let room = self.n_ctx_seq.saturating_sub(u32::try_from(prompt).unwrap_or(u32::MAX));
        let max_tokens = req.max_tokens.unwrap_or(room);
        let needed = prompt as u64 + u64::from(max_tokens.max(1));
        if needed > u64::from(self.n_ctx_seq) {
            return Err(SubmitError::ContextExceeded { n_ctx: self.n_ctx_seq, needed, prompt, max_tokens });
        }
        let sampler = self.sampler(&req)?;
        let (events, stream) = mpsc::unbounded_channel();
        self.enqueue(Job { req, max_tokens, sampler, output: Output::Stream(events), accepted: Instant::now() })?;
        Ok(stream)
    }

    /// Queues an admitted job without blocking.
    fn enqueue(&self, job: Job) -> Result<(), SubmitError> {
        // Counted before it is sent, so the scheduler never takes it first.
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs.try_send(job).map_err(|e| {
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => SubmitError::QueueFull(self.settings.max_queue),
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
    }

    /// The request's sampler chain; `None` when it would be plain greedy.
    fn sampler(&self, req: &GenerateRequest) -> Result<Option<LlamaSampler>, SubmitError> {
        let s = &req.sampling;
        let penalties = s.presence_penalty != 0.0 || s.frequency_penalty != 0.0;
        if s.temperature <= 0.0 && !penalties && req.format == OutputFormat::Text {
            return Ok(None);
        }
        let mut chain = Vec::new();
        let grammar = match &req.format {
            OutputFormat::Text => None,
            OutputFormat::JsonObject => Some(JSON_GRAMMAR.to_string()),
            OutputFormat::JsonSchema(schema) => Some(
                llama_cpp_2::json_schema_to_grammar(&schema.to_string())
                    .map_err(|e| SubmitError::InvalidFormat(format!("unsupported JSON schema: {e}")))?,
            ),
        };
        if let Some(gbnf) = grammar {
            chain.push(
                LlamaSampler::grammar(&self.model, &gbnf, "root")
                    .map_err(|e| SubmitError::InvalidFormat(format!("cannot build the output grammar: {e}")))?,
            );
        }
        if penalties {
            chain.push(LlamaSampler::penalties(self.model.n_vocab(), 64, 1.0, s.frequency_penalty, s.presence_penalty));
        }
        if s.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p, 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(seed32(s.seed)));
        }
        Ok(Some(LlamaSampler::chain_simple(chain)))
    }
}

fn load_model(path: &Path) -> Result<LlamaModel, LoadError> {
    if !path.is_file() {
        return Err(LoadError::Missing(path.to_path_buf()));
    }
    LlamaModel::load_from_file(llama_backend(), path, &LlamaModelParams::default())
        .map_err(|e| LoadError::Model { path: path.to_path_buf(), reason: e.to_string() })
}

/// Folds a 64-bit request seed into llama.cpp's 32 bits. `u32::MAX` is
/// llama.cpp's "pick a random seed", so an explicit seed never maps to it.
fn seed32(seed: Option<u64>) -> u32 {
    const RANDOM: u32 = u32::MAX;
    match seed {
        None => RANDOM,
        Some(s) => match (s ^ (s >> 32)) as u32 {
            RANDOM => RANDOM - 1,
            v => v,
        },
    }
}
