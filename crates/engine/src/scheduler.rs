//! The scheduler thread: owns the llama context and runs continuous batching.
//!
//! Split as in text-generation-inference's router: the *queue* is the bounded
//! job channel (admission happens before a job enters it), the *batcher* is
//! [`Scheduler::step`], which each iteration builds one llama batch from every
//! decoding sequence (one token each) and prompt chunks of newly admitted
//! ones. A new request therefore joins at the next step, never waiting for
//! the running ones to finish.
//!
//! Invariants:
//! - a sequence's slot id is its llama.cpp `seq_id` and owns one KV stream
//!   (`kv_unified = false`), so sequences never see each other's cache;
//! - a slot is freed the step a sequence finishes, fails, or its client goes
//!   away; its KV stays for the prefix cache ([`crate::prefix_cache`]),
//!   except after a failed decode, which empties it;
//! - jobs are pulled from the channel only when a slot is free, so the
//!   channel's capacity is the whole waiting queue;
//! - a new sequence takes the free slot with the longest cached prefix of
//!   its prompt, else the lowest free slot (with the prefix cache off, always
//!   the lowest), and batch entries are laid out in slot order. llama.cpp
//!   splits a multi-stream batch into one micro-batch per run of
//!   *consecutive* sequence ids, so this is what lets every decoding sequence
//!   share one pass over the weights.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::logprobs::LogitStats;
use crate::prefix_cache::PrefixCache;
use crate::request::Job;
use crate::sequence::{Sampled, Sequence};
use crate::settings::{EngineSettings, Priority};

pub(crate) struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    settings: EngineSettings,
    n_ctx_seq: u32,
    jobs: Receiver<Job>,
    /// Free slot ids, highest first, so `pop` gives the lowest.
    free_slots: Vec<i32>,
    active: Vec<Sequence>,
    cache: PrefixCache,
    batch: LlamaBatch<'static>,
    load: Arc<crate::Load>,
}

/// Why a token is in the batch, and where to find its logits.
struct Planned {
    seq: usize,
    /// Index of the token with logits in the batch, if this entry samples.
    logits_at: Option<i32>,
    /// The entry completes the prompt.
    prompt_complete: bool,
}

/// Clears the liveness flag however the thread ends (return or panic).
pub(crate) struct AliveGuard(pub Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl<'m> Scheduler<'m> {
    pub fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        settings: EngineSettings,
        jobs: Receiver<Job>,
        load: Arc<crate::Load>,
    ) -> Self {
        let n_ctx_seq = ctx.n_ctx() / settings.parallel;
        let batch = LlamaBatch::new(settings.batch_size as usize, 1);
        let host_bytes = usize::try_from(settings.host_cache_mib).unwrap_or(usize::MAX).saturating_mul(1 << 20);
        Self {
            cache: PrefixCache::new(settings.parallel, settings.prefix_cache, host_bytes),
            model,
            ctx,
            n_ctx_seq,
            jobs,
            free_slots: (0..settings.parallel as i32).rev().collect(),
            active: Vec::new(),
            batch,
            settings,
            load,
        }
    }

    pub fn n_ctx_seq(&self) -> u32 {
        self.n_ctx_seq
    }

    /// Runs until every `Engine` handle is dropped and the last sequence ends.
    pub fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            self.drop_abandoned();
            self.publish_load();
            if !self.active.is_empty() {
                self.step();
                // Before `admit` may block for a job with nothing running.
                self.publish_load();
            }
        }
    }

    /// The KV cache's fill before the sequence count: a reader that sees
    /// no sequence also sees an empty cache.
    fn publish_load(&self) {
        let kv: usize = self.active.iter().map(|s| usize::try_from(s.n_past).unwrap_or(0)).sum();
        self.load.kv_tokens.store(kv, Ordering::Relaxed);
        let saved = self.cache.stats();
        self.load.saved_bytes.store(saved.saved_bytes, Ordering::Relaxed);
        self.load.saved_sequences.store(saved.saved_sequences, Ordering::Relaxed);
        self.load.active.store(self.active.len(), Ordering::Release);
    }

    /// Moves queued jobs into free slots. Blocks only when nothing is running.
    /// Returns false once the engine is gone and no work remains.
    fn admit(&mut self) -> bool {
        while !self.free_slots.is_empty() {
            let job = if self.active.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                continue;
            }
            let Some(placed) = self.cache.place(&mut self.ctx, &self.free_slots, &job.req.prompt) else { break };
            self.free_slots.retain(|&s| s != placed.slot);
            if placed.reused > 0 {
                self.load.prefix_hits.fetch_add(1, Ordering::Relaxed);
                self.load.reused_tokens.fetch_add(placed.reused, Ordering::Relaxed);
            }
            if placed.restored {
                self.load.restored.fetch_add(1, Ordering::Relaxed);
            }
            let at = self.active.partition_point(|s| s.slot < placed.slot);
            self.active.insert(at, Sequence::new(placed.slot, job, placed.reused));
        }
        true
    }

    fn drop_abandoned(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].is_abandoned() {
                let seq = self.active.remove(i);
                tracing::debug!(slot = seq.slot, "client went away; freeing sequence");
                self.free(&seq);
            } else {
                i += 1;
            }
        }
    }

    /// Frees `seq`'s slot, its KV kept for the prefix cache.
    fn free(&mut self, seq: &Sequence) {
        self.cache.release(&mut self.ctx, seq.slot, seq.kv_tokens());
        self.return_slot(seq.slot);
    }

    fn return_slot(&mut self, slot: i32) {
        let at = self.free_slots.partition_point(|&s| s > slot);
        self.free_slots.insert(at, slot);
    }

    fn step(&mut self) {
        let plan = self.plan_batch();
        if plan.is_empty() {
            return;
        }
        let started = Instant::now();
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, "llama decode failed; failing the sequences in this batch");
            self.fail_planned(&plan, &format!("inference failed: {e}"));
            return;
        }
        let now = Instant::now();
        let decode_ms = (now - started).as_secs_f64() * 1e3;
        let model = self.model;
        let n_ctx_seq = self.n_ctx_seq;
        let mut done = Vec::new();
        for p in &plan {
            let seq = &mut self.active[p.seq];
            if p.prompt_complete {
                seq.mark_prefilled(now);
            }
            let Some(idx) = p.logits_at else { continue };
            let logits = self.ctx.get_logits_ith(idx);
            let stats = LogitStats::of(logits);
            // Plain greedy is the argmax we just computed (the same first
            // maximum llama.cpp's greedy sampler picks), so skip building
            // llama.cpp's 150k-entry candidate array for it.
            let token = match &mut seq.job.sampler {
                None => LlamaToken(stats.argmax as i32),
                Some(sampler) => sampler.sample(&self.ctx, idx),
            };
            let logprob = stats.logprob(logits, token.0 as usize);
            let top = stats.top(logits, seq.job.req.top_logprobs as usize);
            if let Some(reason) = seq.accept(model, Sampled { token, logprob, top }, n_ctx_seq, now) {
                done.push((p.seq, reason));
            }
        }
        tracing::trace!(
            tokens = self.batch.n_tokens(),
            sequences = plan.len(),
            decode_ms,
            sample_ms = now.elapsed().as_secs_f64() * 1e3,
            "step"
        );
        // Remove from the back so earlier indices stay valid; `remove` keeps
        // `active` in slot order.
        done.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in done {
            let seq = self.active.remove(i);
            self.free(&seq);
            seq.finish(reason, now);
        }
    }

    fn fail_planned(&mut self, plan: &[Planned], message: &str) {
        let mut idx: Vec<usize> = plan.iter().map(|p| p.seq).collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx.dedup();
        for i in idx {
            let seq = self.active.remove(i);
            seq.fail(message.to_string());
            // What the failed decode left in the KV is unknown.
            self.cache.clear(&mut self.ctx, seq.slot);
            self.return_slot(seq.slot);
        }
    }

    /// Fills `self.batch` for one step and says what each entry is for.
    ///
    /// The budget goes to decodes or prompt chunks first as `priority` says;
    /// the batch itself is then laid out in slot order (see the module doc).
    #[expect(clippy::expect_used, reason = "the batch holds batch_size tokens and the grants never exceed that budget")]
    fn plan_batch(&mut self) -> Vec<Planned> {
        // Tokens granted to each active sequence this step.
        let mut grant = vec![0usize; self.active.len()];
        let mut budget = self.settings.batch_size as usize;
        match self.settings.priority {
            Priority::Decode => {
                self.grant_decodes(&mut grant, &mut budget);
                self.grant_prefills(&mut grant, &mut budget);
            }
            Priority::Prefill => {
                self.grant_prefills(&mut grant, &mut budget);
                self.grant_decodes(&mut grant, &mut budget);
            }
        }

        self.batch.clear();
        let now = Instant::now();
        let mut plan = Vec::with_capacity(self.active.len());
        for (i, (seq, &n)) in self.active.iter_mut().zip(&grant).enumerate() {
            if n == 0 {
                continue;
            }
            seq.mark_scheduled(now);
            if let Some(token) = seq.take_next() {
                let at = self.batch.n_tokens();
                self.batch.add(token, seq.n_past, &[seq.slot], true).expect("batch sized to budget");
                seq.n_past += 1;
                plan.push(Planned { seq: i, logits_at: Some(at), prompt_complete: false });
                continue;
            }
            let start = seq.prompt_done;
            let completes = start + n == seq.job.req.prompt.len();
            for (k, &tok) in seq.job.req.prompt[start..start + n].iter().enumerate() {
                let last = completes && k + 1 == n;
                self.batch.add(tok, seq.n_past, &[seq.slot], last).expect("batch sized to budget");
                seq.n_past += 1;
            }
            seq.prompt_done += n;
            let at = self.batch.n_tokens() - 1;
            plan.push(Planned { seq: i, logits_at: completes.then_some(at), prompt_complete: completes });
        }
        plan
    }

    /// One token for each decoding sequence, while the budget lasts.
    fn grant_decodes(&self, grant: &mut [usize], budget: &mut usize) {
        for (g, seq) in grant.iter_mut().zip(&self.active) {
            if *budget > 0 && seq.next.is_some() {
                *g = 1;
                *budget -= 1;
            }
        }
    }

    /// Prompt chunks, lowest slot first, within the budget and `prefill_chunk`.
    fn grant_prefills(&self, grant: &mut [usize], budget: &mut usize) {
        let mut chunk_left = self.settings.prefill_chunk as usize;
        for (g, seq) in grant.iter_mut().zip(&self.active) {
            let take = (seq.prompt().len() - seq.prompt_done).min(*budget).min(chunk_left);
            *g += take;
            *budget -= take;
            chunk_left -= take;
        }
    }
}
