//! Sentence embeddings from the model's own hidden states. A linear head
//! trained on them (the safety classifier's) reads what the model makes of
//! a prompt before it writes a word.
//!
//! An [`Embedder`] keeps one embedding context warm on a thread of its own
//! (beside the scheduler's; the weights are shared, read-only), with the
//! rubric's tokens prefilled once: each prompt then costs only its own
//! tokens and the template's few closing ones, and no context is built per
//! request.

use std::num::NonZeroU32;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::score::ScoreError;
use crate::{llama_backend, Engine};

/// How the hidden states of a text's tokens become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The mean over the text's tokens.
    Mean,
    /// The last token's: after a question about the text, where a causal
    /// model has gathered what it makes of all of it.
    Last,
}

/// What [`Engine::embed`] embeds.
#[derive(Debug, Clone, Copy)]
pub struct EmbedInput<'a> {
    pub text: &'a str,
    /// The text's last tokens kept: an injected instruction or the actual
    /// ask sits at the end of a long prompt more often than at its start.
    pub max_tokens: usize,
    /// A system message asking about the text, in the model's chat
    /// template, the text as the user's turn: the embedding is then the
    /// model's state as it starts to answer that question.
    pub rubric: Option<&'a str>,
    pub pooling: Pooling,
}

/// Stands for the user's text while the template is rendered.
const MARK: &str = "\u{1}SWITCHYARD_TEXT\u{1}";

/// The settings an embedder's context is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmbedderKey {
    rubric: Option<String>,
    pooling: Pooling,
    max_tokens: usize,
}

type Reply = SyncSender<Result<Vec<f32>, ScoreError>>;

/// A warm embedding context on its own thread; dropping it ends the thread.
pub(crate) struct Embedder {
    key: EmbedderKey,
    jobs: SyncSender<(Vec<LlamaToken>, Reply)>,
}

impl Engine {
    /// The embedding (`n_embd` floats) of `input`. Blocking and CPU-heavy:
    /// call it off the async runtime. Calls are served one at a time, in
    /// order, by the engine's embedder (started on first use, and again
    /// when the settings change).
    pub fn embed(&self, input: EmbedInput<'_>) -> Result<Vec<f32>, ScoreError> {
        let mut text = self.model.vocab().tokenize(input.text.as_bytes(), false, false);
        if text.is_empty() || input.max_tokens == 0 {
            return Err(ScoreError::Empty);
        }
        text.drain(..text.len().saturating_sub(input.max_tokens));
        let key = EmbedderKey {
            rubric: input.rubric.map(str::to_string),
            pooling: input.pooling,
            max_tokens: input.max_tokens,
        };
        let jobs = {
            let mut slot =
                self.embedder.lock().map_err(|_| ScoreError::Runtime("the embedder lock is poisoned".into()))?;
            match slot.as_ref().filter(|e| e.key == key) {
                Some(e) => e.jobs.clone(),
                None => {
                    let e = Embedder::start(self, key)?;
                    let jobs = e.jobs.clone();
                    *slot = Some(e);
                    jobs
                }
            }
        };
        let (reply, answer) = sync_channel(1);
        let stopped = || ScoreError::Runtime("the embedder thread stopped".into());
        jobs.send((text, reply)).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

impl Embedder {
    fn start(engine: &Engine, key: EmbedderKey) -> Result<Self, ScoreError> {
        let runtime = |e: &dyn std::fmt::Display| ScoreError::Runtime(e.to_string());
        let (prefix, suffix) = match &key.rubric {
            None => (Vec::new(), Vec::new()),
            Some(rubric) => around_text(&engine.model, &engine.template, rubric)?,
        };
        let n = prefix.len() + key.max_tokens + suffix.len();
        let n_ctx = u32::try_from(n).map_err(|_| ScoreError::ContextExceeded { n_ctx: engine.n_ctx_seq, needed: n })?;
        let threads = engine.settings.effective_threads() as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_ubatch(n_ctx)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_embeddings(true)
            .with_pooling_type(match key.pooling {
                Pooling::Mean => LlamaPoolingType::Mean,
                Pooling::Last => LlamaPoolingType::Last,
            });
        let (jobs, rx) = sync_channel::<(Vec<LlamaToken>, Reply)>(64);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
        let model = Arc::clone(&engine.model);
        std::thread::Builder::new()
            .name(format!("embed-{}", engine.id))
            .spawn(move || {
                let mut ctx = match model.new_context(llama_backend(), params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if !prefix.is_empty() {
                    if let Err(e) = decode(&mut ctx, &prefix, 0) {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                serve(&mut ctx, &rx, prefix.len(), &suffix);
            })
            .map_err(|e| runtime(&e))?;
        ready_rx.recv().map_err(|e| runtime(&e))?.map_err(|e| runtime(&e))?;
        Ok(Self { key, jobs })
    }
}

/// The rubric's chat up to the user's text, and after it (the assistant's
/// turn opening), as tokens.
fn around_text(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    rubric: &str,
) -> Result<(Vec<LlamaToken>, Vec<LlamaToken>), ScoreError> {
    let runtime = |e: &dyn std::fmt::Display| ScoreError::Runtime(e.to_string());
    let chat = [("system", rubric), ("user", MARK)]
        .into_iter()
        .map(|(role, content)| LlamaChatMessage::new(role.into(), content.into()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| runtime(&e))?;
    let rendered = model.apply_chat_template(template, &chat, true).map_err(|e| runtime(&e))?;
    let (before, after) = rendered.split_once(MARK).ok_or_else(|| runtime(&"the chat template dropped the text"))?;
    let vocab = model.vocab();
    Ok((vocab.tokenize(before.as_bytes(), true, true), vocab.tokenize(after.as_bytes(), false, true)))
}

fn decode(ctx: &mut LlamaContext<'_>, tokens: &[LlamaToken], from: usize) -> Result<(), ScoreError> {
    let runtime = |e: &dyn std::fmt::Display| ScoreError::Runtime(e.to_string());
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, &token) in tokens.iter().enumerate() {
        batch.add(token, (from + i) as i32, &[0], false).map_err(|e| runtime(&e))?;
    }
    ctx.decode(&mut batch).map_err(|e| runtime(&e))
}

/// Each job: drop everything after the prefilled rubric, then decode the
/// text and the template's closing tokens after it. The pooled embedding
/// covers this batch (for `last`, its last token, which attends to the
/// rubric through the cache).
fn serve(ctx: &mut LlamaContext<'_>, jobs: &Receiver<(Vec<LlamaToken>, Reply)>, kept: usize, suffix: &[LlamaToken]) {
    while let Ok((mut tokens, reply)) = jobs.recv() {
        tokens.extend_from_slice(suffix);
        // A model whose cache cannot drop a suffix (recurrent ones) would
        // embed every text after the last: refuse instead.
        let result = ctx
            .clear_kv_cache_seq(Some(0), Some(kept as u32), None)
            .map_err(|e| ScoreError::Runtime(e.to_string()))
            .and_then(|removed| {
                if removed {
                    Ok(())
                } else {
                    Err(ScoreError::Runtime("this model's cache cannot drop the last text; it cannot classify".into()))
                }
            })
            .and_then(|()| decode(ctx, &tokens, kept))
            .and_then(|()| {
                ctx.embeddings_seq_ith(0).map(<[f32]>::to_vec).map_err(|e| ScoreError::Runtime(e.to_string()))
            });
        let _ = reply.send(result);
    }
}
