//! Draft-model speculative decoding: a smaller model with the target's
//! vocabulary guesses a greedy sequence's next tokens, one cheap step per
//! token, and the target verifies them all in one batch. Verification is
//! the scheduler's, shared with prompt lookup ([`crate::lookup`]): a guess
//! is kept only while it equals the target's own argmax, so greedy output
//! stays the target's.
//!
//! Invariants:
//! - the draft context has one KV stream per target slot, under the same
//!   sequence id, so a slot's guesses only ever see its own conversation;
//! - `held[slot]` lists exactly the tokens in that stream, position by
//!   position. Before guessing, the stream is cut back to its longest
//!   common prefix with the sequence's context: rejected guesses and an
//!   earlier conversation's tokens never reach the next guess, and a
//!   conversation that comes back to its slot reuses what the draft kept;
//! - a failed draft decode guesses nothing more and empties the streams it
//!   touched: drafting may cost time, never a request.

use std::ffi::CStr;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::{logprobs, lookup};

pub(crate) struct Drafter<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    /// Per slot: the tokens the draft's KV stream holds.
    held: Vec<Vec<LlamaToken>>,
    batch: LlamaBatch<'static>,
    batch_size: usize,
    /// Smoothed milliseconds of drafting per guess made (catch-up and
    /// steps); `None` until a guess has been made.
    step_ms: Option<f64>,
}

/// One sequence's request for guesses.
pub(crate) struct Ask {
    pub slot: i32,
    /// Everything the sequence has seen, its sampled, not yet evaluated
    /// token last ([`crate::sequence::Sequence::context`]).
    pub context: Vec<LlamaToken>,
    /// Most tokens to guess.
    pub k: usize,
}

impl<'m> Drafter<'m> {
    /// `ctx` must have a KV stream for each of `parallel` slots and take
    /// batches of `batch_size` tokens.
    pub fn new(model: &'m LlamaModel, ctx: LlamaContext<'m>, parallel: u32, batch_size: u32) -> Self {
        Self {
            model,
            ctx,
            held: vec![Vec::new(); parallel as usize],
            batch: LlamaBatch::new(batch_size as usize, 1),
            batch_size: batch_size as usize,
            step_ms: None,
        }
    }

    /// What one guessed token costs, as measured. Zero until measured, so
    /// that drafting is tried and its cost learned.
    pub fn per_guess_ms(&self) -> f64 {
        self.step_ms.unwrap_or(0.0)
    }

    /// Up to `k` greedy guesses after each ask's context, in ask order.
    /// The call's whole time over the guesses it made is what a guess
    /// costs: a guess after a fully kept round pays a two-token catch-up,
    /// which on a CPU costs about two one-token steps.
    pub fn draft(&mut self, asks: &[Ask]) -> Vec<Vec<LlamaToken>> {
        let started = Instant::now();
        let guesses = self.guess(asks);
        let made = guesses.iter().map(Vec::len).sum::<usize>();
        if made > 0 {
            let ms = started.elapsed().as_secs_f64() * 1e3 / made as f64;
            self.step_ms = Some(lookup::smoothed(self.step_ms, ms));
        }
        guesses
    }

    /// One decode brings every stream up to its context (the last token
    /// with logits, for the first guess); then one decode per further guess
    /// serves every sequence still guessing.
    fn guess(&mut self, asks: &[Ask]) -> Vec<Vec<LlamaToken>> {
        let mut guesses = vec![Vec::new(); asks.len()];
        let mut feeds = Vec::with_capacity(asks.len());
        for (i, ask) in asks.iter().enumerate() {
            let Some(held) = self.held.get(slot_index(ask.slot)) else { continue };
            if ask.k == 0 || ask.context.is_empty() {
                continue;
            }
            // The last token is fed even when held: its logits are the first guess.
            let keep = common_prefix(held, &ask.context).min(ask.context.len() - 1);
            if self.cut(ask.slot, keep) {
                feeds.push((i, keep));
            }
        }
        self.catch_up(asks, feeds, &mut guesses);
        loop {
            let going: Vec<usize> = (0..asks.len())
                .filter(|&i| {
                    guesses[i].last().is_some_and(|&t| guesses[i].len() < asks[i].k && !self.model.vocab().is_eog(t))
                })
                .collect();
            if going.is_empty() {
                return guesses;
            }
            self.batch.clear();
            let mut added = true;
            for &i in &going {
                let (slot, token) = (asks[i].slot, guesses[i].last().copied().unwrap_or(LlamaToken(0)));
                let held = &mut self.held[slot_index(slot)];
                added &= self.batch.add(token, pos(held.len()), &[slot], true).is_ok();
                held.push(token);
            }
            let started = Instant::now();
            if !(added && self.decode()) {
                for &i in &going {
                    self.forget(asks[i].slot);
                }
                return guesses;
            }
            trace_step(started, self.batch.n_tokens());
            for (row, &i) in going.iter().enumerate() {
                guesses[i].push(self.argmax(pos(row)));
            }
        }
    }

    /// Feeds each stream what it lacks of its context, in batches of at
    /// most `batch_size` tokens, and takes each context's first guess.
    fn catch_up(&mut self, asks: &[Ask], mut feeds: Vec<(usize, usize)>, guesses: &mut [Vec<LlamaToken>]) {
        while !feeds.is_empty() {
            self.batch.clear();
            let mut room = self.batch_size;
            let mut rows = Vec::new();
            let mut fed = Vec::new();
            let mut added = true;
            for (i, from) in &mut feeds {
                let (ask, start) = (&asks[*i], *from);
                let n = (ask.context.len() - start).min(room);
                if n == 0 {
                    break;
                }
                let held = &mut self.held[slot_index(ask.slot)];
                for (pos_in_ctx, &token) in ask.context.iter().enumerate().skip(start).take(n) {
                    let last = pos_in_ctx + 1 == ask.context.len();
                    if last {
                        rows.push((*i, self.batch.n_tokens()));
                    }
                    added &= self.batch.add(token, pos(pos_in_ctx), &[ask.slot], last).is_ok();
                    held.push(token);
                }
                *from += n;
                room -= n;
                fed.push((*i, n));
            }
            let started = Instant::now();
            if !(added && self.decode()) {
                for &(i, _) in &fed {
                    self.forget(asks[i].slot);
                }
                feeds.retain(|(i, _)| !fed.iter().any(|(f, _)| f == i));
                continue;
            }
            trace_step(started, self.batch.n_tokens());
            for (i, row) in rows {
                guesses[i].push(self.argmax(row));
            }
            feeds.retain(|&(i, from)| from < asks[i].context.len());
        }
    }

    /// Runs the batch; false (and logged) when llama.cpp refuses it.
    fn decode(&mut self) -> bool {
        self.ctx.decode(&mut self.batch).map_err(|e| tracing::warn!(error = %e, "draft decode failed")).is_ok()
    }

    fn argmax(&self, row: i32) -> LlamaToken {
        LlamaToken(i32::try_from(logprobs::argmax(self.ctx.get_logits_ith(row))).unwrap_or(0))
    }

    /// Cuts `slot`'s stream to its first `keep` tokens. False when the
    /// stream could not be cut (it is then emptied, for the next step).
    fn cut(&mut self, slot: i32, keep: usize) -> bool {
        let held = &mut self.held[slot_index(slot)];
        if held.len() <= keep {
            return true;
        }
        let cut = self.ctx.clear_kv_cache_seq(u32::try_from(slot).ok(), u32::try_from(keep).ok(), None);
        if matches!(cut, Ok(true)) {
            held.truncate(keep);
            return true;
        }
        self.forget(slot);
        false
    }

    /// Empties `slot`'s stream.
    fn forget(&mut self, slot: i32) {
        let _ = self.ctx.clear_kv_cache_seq(u32::try_from(slot).ok(), None, None);
        if let Some(held) = self.held.get_mut(slot_index(slot)) {
            held.clear();
        }
    }
}

/// Every draft decode, for the benchmarks' cost model.
fn trace_step(started: Instant, tokens: i32) {
    tracing::trace!(ms = started.elapsed().as_secs_f64() * 1e3, tokens, "draft step");
}

/// Why `draft` cannot guess for `target`, if it cannot. A guess is a token
/// id, so both must give every id the same text.
pub(crate) fn vocabulary_mismatch(target: &LlamaModel, draft: &LlamaModel) -> Option<String> {
    let (t, d) = (target.vocab(), draft.vocab());
    mismatch(t.n_tokens(), d.n_tokens(), |id| t.text(LlamaToken(id)), |id| d.text(LlamaToken(id)))
}

fn mismatch<'a, 'b>(
    n_target: i32,
    n_draft: i32,
    target: impl Fn(i32) -> Option<&'a CStr>,
    draft: impl Fn(i32) -> Option<&'b CStr>,
) -> Option<String> {
    if n_target != n_draft {
        return Some(format!("the target's vocabulary has {n_target} tokens, the draft's {n_draft}"));
    }
    let id = (0..n_target).find(|&id| target(id) != draft(id))?;
    let show = |t: Option<&CStr>| t.map_or_else(|| "nothing".to_string(), |t| format!("{:?}", t.to_string_lossy()));
    Some(format!("token {id} is {} to the target and {} to the draft", show(target(id)), show(draft(id))))
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn slot_index(slot: i32) -> usize {
    usize::try_from(slot).unwrap_or(usize::MAX)
}

fn pos(at: usize) -> i32 {
    i32::try_from(at).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab<'w>(words: &'w [&'static CStr]) -> impl Fn(i32) -> Option<&'static CStr> + 'w {
        move |id| usize::try_from(id).ok().and_then(|i| words.get(i)).copied()
    }

    #[test]
    fn a_draft_must_name_every_token_as_the_target_does() {
        let target = [c"<s>", c"a", c"b"];
        assert_eq!(mismatch(3, 3, vocab(&target), vocab(&[c"<s>", c"a", c"b"])), None);
        let other = [c"<s>", c"a", c"c"];
        let why = mismatch(3, 3, vocab(&target), vocab(&other)).unwrap();
        assert!(why.contains("token 2") && why.contains("\"b\"") && why.contains("\"c\""), "{why}");
        let why = mismatch(3, 2, vocab(&target), vocab(&other)).unwrap();
        assert!(why.contains("3 tokens") && why.contains("2"), "{why}");
    }

    #[test]
    fn the_common_prefix_stops_at_the_first_difference() {
        let t = |v: &[i32]| v.iter().map(|&x| LlamaToken(x)).collect::<Vec<_>>();
        assert_eq!(common_prefix(&t(&[1, 2, 3]), &t(&[1, 2, 4, 5])), 2);
        assert_eq!(common_prefix(&t(&[]), &t(&[1])), 0);
        assert_eq!(common_prefix(&t(&[1, 2]), &t(&[1, 2, 3])), 2);
    }
}
