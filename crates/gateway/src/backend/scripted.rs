//! A backend that answers from a script instead of a model: so the routing
//! state machine (cascades, fallbacks, breakers, retries, limits) is tested
//! in milliseconds, beside the tests that run a real model. Compiled only
//! with the `scripted` feature, which the gateway's own tests turn on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use switchyard_engine::{Event, Piece, Summary};
use switchyard_wire::{FinishReason, Timings, TokenLogprob};

use super::{Backend, ChatRequest, Generation, Limits};
use crate::error::ApiError;

/// What one call does.
#[derive(Debug, Clone)]
pub enum Script {
    /// Sends `tokens` (text, logprob): the first after `first_after`, then
    /// one every `gap`, then the end.
    Answer { tokens: Vec<(String, f64)>, first_after: Duration, gap: Duration },
    /// Fails at once, before any token.
    Fail(ApiError),
    /// Never sends anything.
    Hang,
    /// Panics, as a bug in a handler would.
    Panic,
}

impl Script {
    /// `text` as one token per word, each with `logprob`, sent at once.
    pub fn answer(text: &str, logprob: f64) -> Self {
        let tokens = text.split_inclusive(' ').map(|w| (w.to_string(), logprob)).collect();
        Self::Answer { tokens, first_after: Duration::ZERO, gap: Duration::ZERO }
    }

    /// The same answer paced: first token after `first_after`, then one per `gap`.
    pub fn paced(self, first_after: Duration, gap: Duration) -> Self {
        match self {
            Self::Answer { tokens, .. } => Self::Answer { tokens, first_after, gap },
            other => other,
        }
    }
}

type Plan = dyn Fn(usize) -> Script + Send + Sync;
type Scorer = dyn Fn(&str) -> (Duration, Result<f64, ApiError>) + Send + Sync;

/// A scripted backend: `plan(n)` says what its `n`th call (from 0) does;
/// `score` says how long scoring an answer takes and the logprob each of
/// its tokens gets.
pub struct Scripted {
    plan: Box<Plan>,
    scorer: Box<Scorer>,
    calls: AtomicUsize,
    scoring: Arc<AtomicUsize>,
    scoring_peak: Arc<AtomicUsize>,
}

impl Scripted {
    pub fn new(plan: impl Fn(usize) -> Script + Send + Sync + 'static) -> Self {
        Self {
            plan: Box::new(plan),
            scorer: Box::new(|_| (Duration::ZERO, Err(ApiError::internal("this scripted backend does not score")))),
            calls: AtomicUsize::new(0),
            scoring: Arc::default(),
            scoring_peak: Arc::default(),
        }
    }

    /// Every call does the same.
    pub fn always(script: Script) -> Self {
        Self::new(move |_| script.clone())
    }

    pub fn scoring(
        mut self,
        scorer: impl Fn(&str) -> (Duration, Result<f64, ApiError>) + Send + Sync + 'static,
    ) -> Self {
        self.scorer = Box::new(scorer);
        self
    }

    /// Calls to `generate` so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most `score` calls that ran at once.
    pub fn scoring_peak(&self) -> usize {
        self.scoring_peak.load(Ordering::SeqCst)
    }
}

impl Backend for Scripted {
    fn generate<'a>(&'a self, _req: &'a ChatRequest, _limits: Limits) -> BoxFuture<'a, Result<Generation, ApiError>> {
        let script = (self.plan)(self.calls.fetch_add(1, Ordering::SeqCst));
        async move {
            let (tokens, first_after, gap) = match script {
                Script::Answer { tokens, first_after, gap } => (tokens, first_after, gap),
                Script::Fail(e) => return Err(e),
                Script::Hang => return std::future::pending().await,
                Script::Panic => panic!("scripted backend: panic on purpose"),
            };
            let n = tokens.len() as u32;
            let summary = Summary {
                finish_reason: FinishReason::Stop,
                prompt_tokens: 1,
                completion_tokens: n,
                timings: Timings { prompt_n: 1, predicted_n: n, ..Timings::default() },
            };
            let tokens = stream::iter(tokens.into_iter().enumerate()).then(move |(i, (text, logprob))| async move {
                tokio::time::sleep(if i == 0 { first_after } else { gap }).await;
                Event::Token(Piece {
                    logprob: TokenLogprob { token: text.clone(), logprob, bytes: None, top_logprobs: Vec::new() },
                    text,
                })
            });
            let events = tokens.chain(stream::once(async move { Event::Done(summary) }));
            Ok(Generation::Tokens { fingerprint: "scripted".into(), events: Box::pin(events) })
        }
        .boxed()
    }

    fn score<'a>(&'a self, _req: &'a ChatRequest, answer: String) -> BoxFuture<'a, Result<Vec<f64>, ApiError>> {
        let (delay, logprob) = (self.scorer)(&answer);
        let (scoring, peak) = (self.scoring.clone(), self.scoring_peak.clone());
        async move {
            let now = scoring.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            scoring.fetch_sub(1, Ordering::SeqCst);
            logprob.map(|lp| answer.split_inclusive(' ').map(|_| lp).collect())
        }
        .boxed()
    }
}
