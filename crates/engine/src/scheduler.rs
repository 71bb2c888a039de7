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
//!   the lowest), and starts from a copy of a busy slot's prefix when that
//!   one holds more of its prompt; batch entries are laid out in slot
//!   order. llama.cpp splits a multi-stream batch into one micro-batch per run of
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

use switchyard_wire::FinishReason;

use crate::draft::{Ask, Drafter};
use crate::logprobs::LogitStats;
use crate::lookup;
use crate::prefix_cache::{Donor, PrefixCache, Source};
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
    /// What a decode step costs, measured: what drafting trades against.
    step_cost: lookup::StepCost,
    /// The draft model, when the engine has one; otherwise drafting (if
    /// `lookup-draft` allows) is prompt lookup.
    drafter: Option<Drafter<'m>>,
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
    /// Guesses (prompt lookup's or the draft model's) placed right after
    /// the sampled token, each with logits, to be verified against the
    /// model's own choices.
    drafted: Vec<LlamaToken>,
    /// A scoring job's rows: the batch index of the first with logits, the
    /// prompt position it sits at, and how many follow it.
    scored: Option<(i32, usize, usize)>,
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
        drafter: Option<Drafter<'m>>,
        settings: EngineSettings,
        jobs: Receiver<Job>,
        load: Arc<crate::Load>,
    ) -> Self {
        let n_ctx_seq = ctx.n_ctx() / settings.parallel;
        let batch = LlamaBatch::new(settings.batch_size as usize, 1);
        let host_bytes = usize::try_from(settings.host_cache_mib).unwrap_or(usize::MAX).saturating_mul(1 << 20);
        Self {
            cache: PrefixCache::new(settings.parallel, settings.prefix_cache, host_bytes),
            step_cost: lookup::StepCost::default(),
            drafter,
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
            if job.is_abandoned() {
                continue;
            }
            let running: Vec<Donor> = self
                .active
                .iter()
                .map(|s| Donor { slot: s.slot, shared: s.shared_prefix(&job.req.prompt), len: s.kv_len() })
                .collect();
            let decoding = self.active.iter().any(|s| s.next.is_some());
            let Some(placed) =
                self.cache.place(&mut self.ctx, &self.free_slots, &running, decoding, &job.req.prompt, job.reusable())
            else {
                break;
            };
            self.free_slots.retain(|&s| s != placed.slot);
            if placed.reused > 0 {
                self.load.prefix_hits.fetch_add(1, Ordering::Relaxed);
                self.load.reused_tokens.fetch_add(placed.reused, Ordering::Relaxed);
            }
            match placed.source {
                Source::Own => {}
                Source::Restored => {
                    self.load.restored.fetch_add(1, Ordering::Relaxed);
                }
                Source::Copied => {
                    self.load.copied.fetch_add(1, Ordering::Relaxed);
                }
            }
            let at = self.active.partition_point(|s| s.slot < placed.slot);
            let draft_max = match self.drafter {
                Some(_) => self.settings.draft_max,
                None => self.settings.lookup_draft,
            };
            self.active.insert(at, Sequence::new(placed.slot, job, placed.reused, draft_max as usize));
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
        self.cache.release(&mut self.ctx, seq.slot, seq.kv_tokens(), seq.prompt_done);
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
        // Only steps of decodes and guesses say what a guess costs.
        if plan.iter().all(|p| p.logits_at.is_some() && !p.prompt_complete) {
            self.step_cost.observe(usize::try_from(self.batch.n_tokens()).unwrap_or(0), decode_ms);
        }
        let model = self.model;
        let n_ctx_seq = self.n_ctx_seq;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for p in &plan {
            let seq = &mut self.active[p.seq];
            if p.prompt_complete {
                seq.mark_prefilled(now);
            }
            if let Some((first, pos, rows)) = p.scored {
                // Row j's logits predict the token at position pos + j + 1.
                let prompt = &seq.job.req.prompt;
                let scores: Vec<f64> = (0..rows)
                    .map(|j| {
                        let logits = self.ctx.get_logits_ith(first + j as i32);
                        f64::from(LogitStats::of(logits).logprob(logits, prompt[pos + j + 1].0 as usize))
                    })
                    .collect();
                seq.record_scores(scores);
            }
            if p.prompt_complete && seq.scored_from().is_some() {
                done.push((p.seq, FinishReason::Stop));
                continue;
            }
            let Some(idx) = p.logits_at else { continue };
            // Entry j's logits choose the token after entry j. A guess is
            // kept while it equals the choice before it; the first choice
            // that differs is the step's last token, as in plain decoding.
            let mut accepted = 0;
            for j in 0..=p.drafted.len() {
                let at = idx + j as i32;
                let logits = self.ctx.get_logits_ith(at);
                let stats = LogitStats::of(logits);
                // Plain greedy is the argmax we just computed (the same first
                // maximum llama.cpp's greedy sampler picks), so skip building
                // llama.cpp's 150k-entry candidate array for it.
                let token = match &mut seq.job.sampler {
                    None => LlamaToken(stats.argmax as i32),
                    Some(sampler) => sampler.sample(&self.ctx, at),
                };
                let logprob = stats.logprob(logits, token.0 as usize);
                let top = stats.top(logits, seq.job.req.top_logprobs as usize);
                if let Some(reason) = seq.accept(model, Sampled { token, logprob, top }, n_ctx_seq, now) {
                    done.push((p.seq, reason));
                    break;
                }
                if p.drafted.get(j) != Some(&token) {
                    break;
                }
                // The guess is this token and already in the KV cache.
                seq.take_next();
                accepted += 1;
            }
            if !p.drafted.is_empty() {
                seq.record_draft(p.drafted.len(), accepted);
                self.load.drafted.fetch_add(p.drafted.len(), Ordering::Relaxed);
                self.load.draft_accepted.fetch_add(accepted, Ordering::Relaxed);
                // Rejected guesses leave the KV: it holds what the sequence kept.
                let keep = seq.kv_len();
                if usize::try_from(seq.n_past).unwrap_or(0) > keep {
                    let cut = u32::try_from(keep).ok();
                    if !matches!(self.ctx.clear_kv_cache_seq(u32::try_from(seq.slot).ok(), cut, None), Ok(true)) {
                        failed.push(p.seq);
                        continue;
                    }
                    seq.n_past = i32::try_from(keep).unwrap_or(i32::MAX);
                }
            }
        }
        // A sequence whose rejected guesses could not be removed cannot go on.
        done.retain(|(i, _)| !failed.contains(i));
        tracing::trace!(
            tokens = self.batch.n_tokens(),
            sequences = plan.len(),
            decode_ms,
            sample_ms = now.elapsed().as_secs_f64() * 1e3,
            "step"
        );
        // Remove from the back so earlier indices stay valid; `remove` keeps
        // `active` in slot order.
        let mut ended: Vec<(usize, Option<FinishReason>)> =
            done.into_iter().map(|(i, r)| (i, Some(r))).chain(failed.into_iter().map(|i| (i, None))).collect();
        ended.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in ended {
            let seq = self.active.remove(i);
            match reason {
                Some(reason) => {
                    self.free(&seq);
                    seq.finish(reason, now);
                }
                None => {
                    let slot = seq.slot;
                    seq.fail("inference failed: could not drop rejected draft tokens from the KV cache".into());
                    self.cache.clear(&mut self.ctx, slot);
                    self.return_slot(slot);
                }
            }
        }
    }

    fn fail_planned(&mut self, plan: &[Planned], message: &str) {
        let mut idx: Vec<usize> = plan.iter().map(|p| p.seq).collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx.dedup();
        for i in idx {
            let seq = self.active.remove(i);
            let slot = seq.slot;
            seq.fail(message.to_string());
            // What the failed decode left in the KV is unknown.
            self.cache.clear(&mut self.ctx, slot);
            self.return_slot(slot);
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
        let mut drafts = self.plan_drafts(&grant, &mut budget);

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
                let drafted = std::mem::take(&mut drafts[i]);
                for &tok in std::iter::once(&token).chain(&drafted) {
                    self.batch.add(tok, seq.n_past, &[seq.slot], true).expect("batch sized to budget");
                    seq.n_past += 1;
                }
                plan.push(Planned { seq: i, logits_at: Some(at), prompt_complete: false, drafted, scored: None });
                continue;
            }
            let (start, len) = (seq.prompt_done, seq.job.req.prompt.len());
            let completes = start + n == len;
            let scored_from = seq.scored_from();
            let mut scored = None;
            for (k, &tok) in seq.job.req.prompt[start..start + n].iter().enumerate() {
                let pos = start + k;
                let logits = match scored_from {
                    None => completes && k + 1 == n,
                    // Read where the next token is a continuation token.
                    Some(from) => pos + 1 >= from && pos + 1 < len,
                };
                if logits && scored_from.is_some() {
                    let (_, _, rows) = scored.get_or_insert((self.batch.n_tokens(), pos, 0));
                    *rows += 1;
                }
                self.batch.add(tok, seq.n_past, &[seq.slot], logits).expect("batch sized to budget");
                seq.n_past += 1;
            }
            seq.prompt_done += n;
            let at = self.batch.n_tokens() - 1;
            plan.push(Planned {
                seq: i,
                logits_at: (completes && scored_from.is_none()).then_some(at),
                prompt_complete: completes,
                drafted: Vec::new(),
                scored,
            });
        }
        plan
    }

    /// Guesses for the greedy sequences decoding this step, from the budget
    /// decodes and prompt chunks left: drafting never displaces either.
    /// There are none once more than a quarter of the slots decode (on a
    /// CPU every guessed token costs compute that the other sequences'
    /// tokens need). Prompt lookup's guesses share `lookup-draft` tokens
    /// among the decoding sequences; a draft model guesses up to
    /// `draft-max` for each.
    ///
    /// Each sequence drafts as many tokens as maximise its expected tokens
    /// per millisecond, from its own acceptance record, the measured step
    /// cost and, with a draft model, its measured step
    /// ([`lookup::DraftLength::choose`]); a draft model never fewer than
    /// `draft-min`.
    fn plan_drafts(&mut self, grant: &[usize], budget: &mut usize) -> Vec<Vec<LlamaToken>> {
        let none = vec![Vec::new(); self.active.len()];
        let decoding = self.active.iter().zip(grant).filter(|(s, g)| **g > 0 && s.next.is_some()).count();
        if decoding * 4 > self.settings.parallel as usize {
            return none;
        }
        let (share, per_guess_ms, floor) = match &self.drafter {
            Some(d) => (self.settings.draft_max as usize, d.per_guess_ms(), self.settings.draft_min as usize),
            None => ((self.settings.lookup_draft as usize).checked_div(decoding).unwrap_or(0), 0.0, 0),
        };
        let (n_ctx_seq, cost) = (self.n_ctx_seq as usize, self.step_cost);
        let mut asks = Vec::new();
        for (i, (seq, &g)) in self.active.iter_mut().zip(grant).enumerate() {
            if g == 0 || seq.next.is_none() || share == 0 {
                continue;
            }
            // Every guess's position stays clear of the context's end,
            // so no step ends a sequence early for want of room.
            let room = n_ctx_seq.saturating_sub(usize::try_from(seq.n_past).unwrap_or(0) + 3);
            let cap = share.min(*budget).min(room).min(seq.tokens_left());
            let Some(k) = seq.draft.as_mut().map(|d| d.choose(&cost, cap, per_guess_ms).max(floor.min(cap))) else {
                continue;
            };
            if k > 0 {
                *budget -= k;
                asks.push((i, Ask { slot: seq.slot, context: seq.context(), k }));
            }
        }
        let mut drafts = none;
        match &mut self.drafter {
            None => {
                for (i, ask) in asks {
                    drafts[i] = lookup::draft(&ask.context, ask.k);
                }
            }
            Some(drafter) => {
                let (at, asks): (Vec<usize>, Vec<Ask>) = asks.into_iter().unzip();
                for (i, guess) in at.into_iter().zip(drafter.draft(&asks)) {
                    drafts[i] = guess;
                }
            }
        }
        drafts
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

    /// Prompt chunks, lowest slot first (see [`prompt_chunks`]).
    fn grant_prefills(&self, grant: &mut [usize], budget: &mut usize) {
        let decoding = self.active.iter().any(|s| s.next.is_some());
        let left = self.active.iter().map(|s| s.prompt().len() - s.prompt_done);
        for (g, take) in
            grant.iter_mut().zip(prompt_chunks(left, decoding, self.settings.prefill_chunk as usize, budget))
        {
            *g += take;
        }
    }
}

/// Prompt tokens each sequence evaluates this step, lowest slot first, from
/// the tokens each has `left` to evaluate: within `budget` (lowered by what
/// is taken) and, while any sequence is `decoding`, at most `chunk` in all.
///
/// The chunk exists to bound how long a step holds the decoders' next
/// tokens; with no decoder to hold, a smaller chunk would only add steps to
/// a prompt's evaluation (a chat's later turns waited 1.4x llama-server's
/// time for their first token at 256 tokens a step, 0.93x at 2,048).
fn prompt_chunks(left: impl Iterator<Item = usize>, decoding: bool, chunk: usize, budget: &mut usize) -> Vec<usize> {
    let cap = if decoding { chunk.min(*budget) } else { *budget };
    let mut cap_left = cap;
    let takes = left
        .map(|n| {
            let take = n.min(cap_left);
            cap_left -= take;
            take
        })
        .collect();
    *budget -= cap - cap_left;
    takes
}

#[cfg(test)]
mod tests {
    use super::prompt_chunks;

    #[test]
    fn while_a_sequence_decodes_prompts_share_one_chunk_lowest_slot_first() {
        let mut budget = 510; // 512 less two decodes
        assert_eq!(prompt_chunks([300, 0, 700].into_iter(), true, 256, &mut budget), vec![256, 0, 0]);
        assert_eq!(budget, 254);
        let mut budget = 510;
        assert_eq!(prompt_chunks([100, 700].into_iter(), true, 256, &mut budget), vec![100, 156]);
        assert_eq!(budget, 254);
    }

    #[test]
    fn with_no_decoder_to_hold_a_step_takes_the_whole_budget() {
        let mut budget = 512;
        assert_eq!(prompt_chunks([300, 700].into_iter(), false, 256, &mut budget), vec![300, 212]);
        assert_eq!(budget, 0);
        let mut budget = 512;
        assert_eq!(prompt_chunks([40].into_iter(), false, 256, &mut budget), vec![40]);
        assert_eq!(budget, 472);
    }

    #[test]
    fn the_chunk_never_exceeds_the_budget() {
        let mut budget = 100;
        assert_eq!(prompt_chunks([300].into_iter(), true, 256, &mut budget), vec![100]);
        assert_eq!(budget, 0);
    }
}
