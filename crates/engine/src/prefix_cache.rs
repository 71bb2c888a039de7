//! KV reuse across requests: a prefix cache over the slots, and a second
//! tier in host memory.
//!
//! A finished sequence leaves its KV in its slot, and this cache remembers
//! which tokens that KV holds. A new request takes the free slot whose tokens
//! share the longest prefix with its prompt, drops the rest of that slot's KV
//! (llama.cpp's `seq_rm` from the first differing position) and evaluates
//! only what is new. A chat's next turn, or another user's request behind
//! the same system prompt, so prefills only its own tail.
//!
//! Slots are few (each holds a whole context), so a conversation that loses
//! its slot to another is first copied out with llama.cpp's per-sequence
//! state API into host memory, within a byte budget, least recently used out
//! first. A later request that matches a saved conversation better than any
//! slot restores it into a slot instead of prefilling it again: more
//! conversations stay warm than there are slots.
//!
//! A prefix also travels between slots: when another slot (running or
//! idle) holds more of the prompt than any free slot does, its KV is copied
//! into the free slot worth least and cut there. Users behind one system
//! prompt so share its prefill even while each holds a slot of their own,
//! and a conversation is not cut short for another's request while an
//! empty slot can take a copy instead.
//!
//! Invariants:
//! - `resident[slot]` is exactly the tokens at positions `0..len` of that
//!   slot's KV stream: every change to one is made to the other in the same
//!   call, and a failed KV operation empties both;
//! - only free slots are placed into, so nothing here changes the KV of a
//!   running sequence (a copy only reads it);
//! - a request always evaluates at least its last prompt token, which gives
//!   the logits its first token is sampled from;
//! - the saved states' bytes never exceed the budget.

use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;

/// A match shorter than this is a shared chat-template header, not a shared
/// conversation: it does not decide which slot a request takes.
const MIN_REUSE: usize = 16;

/// Tokens a slot must be about to lose before it is worth saving to host
/// memory. Copying a token's KV out and back costs far less than evaluating
/// it again, so only a tail too short to be chosen for reuse is let go.
const MIN_SAVE: usize = MIN_REUSE;

/// A copy moves the donor's whole sequence out of its slot and into
/// another, and pays when it saves evaluating at least one token per this
/// many moved: moving a token's KV is a memory copy of a few kilobytes, and
/// evaluating it is a pass over the weights (see `docs/performance.md`).
const COPY_PER_EVAL: usize = 64;

/// What a slot's KV stream holds.
#[derive(Default)]
struct Resident {
    tokens: Vec<LlamaToken>,
    /// How many of `tokens` were its last request's prompt; the rest were
    /// generated. A prompt that holds all of them continues that
    /// conversation (its answer may come back re-tokenized), one that
    /// parts inside them is another conversation.
    asked: usize,
    /// The cache's clock when last placed into or released.
    used: u64,
}

/// A conversation's KV, copied out of its slot.
struct Saved {
    tokens: Vec<LlamaToken>,
    state: SeqState,
    used: u64,
}

/// Where a new sequence goes and how much of its prompt it finds there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    pub slot: i32,
    /// Prompt tokens already in the slot's KV (positions `0..reused`).
    pub reused: usize,
    /// Where the reused tokens came from.
    pub source: Source,
}

/// Where a placement's reused tokens came from, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The slot's own KV (or nothing reused).
    Own,
    /// A conversation saved in host memory.
    Restored,
    /// Another slot's KV, running or idle.
    Copied,
}

/// A busy slot's KV as a source for a copy: it holds `len` tokens, the
/// first `shared` of them the new prompt's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Donor {
    pub slot: i32,
    pub shared: usize,
    pub len: usize,
}

/// A placement decided, before any KV is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Own { slot: i32, keep: usize },
    Restore { saved: usize, slot: i32, keep: usize },
    Copy { from: i32, slot: i32, keep: usize },
}

/// Counters for metrics, as of the last placement.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CacheStats {
    pub saved_bytes: usize,
    pub saved_sequences: usize,
}

pub(crate) struct PrefixCache {
    enabled: bool,
    /// By slot id.
    resident: Vec<Resident>,
    saved: Vec<Saved>,
    saved_bytes: usize,
    budget: usize,
    clock: u64,
}

impl PrefixCache {
    /// `budget` is host memory for saved conversations, in bytes (0: none
    /// saved, the cache lives in the slots only).
    pub fn new(slots: u32, enabled: bool, budget: usize) -> Self {
        Self {
            enabled,
            resident: (0..slots).map(|_| Resident::default()).collect(),
            saved: Vec::new(),
            saved_bytes: 0,
            budget,
            clock: 0,
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { saved_bytes: self.saved_bytes, saved_sequences: self.saved.len() }
    }

    /// Picks one of the `free` slots for `prompt` (non-empty) and leaves its
    /// KV holding the reusable prefix, at most `usable` tokens and never the
    /// whole prompt, and nothing after it. `running` says how much of the
    /// prompt each busy slot's KV holds, for a copy; `decoding`, whether a
    /// sequence waits on this step for its next token.
    pub fn place(
        &mut self,
        ctx: &mut LlamaContext,
        free: &[i32],
        running: &[Donor],
        decoding: bool,
        prompt: &[LlamaToken],
        usable: usize,
    ) -> Option<Placed> {
        self.clock += 1;
        if !self.enabled {
            // Free slots are sorted highest first: the lowest keeps the
            // decoders in one run of sequence ids (see the scheduler).
            return free.last().map(|&slot| Placed { slot, reused: 0, source: Source::Own });
        }
        let (slot, keep, source) = match self.plan(free, running, decoding, prompt, usable)? {
            Plan::Own { slot, keep } => (slot, keep, Source::Own),
            Plan::Restore { saved, slot, keep } => {
                if self.restore(ctx, saved, slot) {
                    (slot, keep, Source::Restored)
                } else {
                    (slot, 0, Source::Own)
                }
            }
            Plan::Copy { from, slot, keep } => (slot, self.copy(ctx, from, slot, &prompt[..keep]), Source::Copied),
        };
        let reused = self.truncate(ctx, slot, keep);
        self.touch(slot);
        let source = if reused == 0 { Source::Own } else { source };
        Some(Placed { slot, reused, source })
    }

    /// Where `prompt` goes and where its reused prefix comes from. Prefers,
    /// for the same tokens, the chosen slot's own KV, then a conversation
    /// saved in host memory, then a copy of another slot's. While a
    /// sequence is `decoding`, a copy holds its next token, so a copy must
    /// then bring a shared conversation, not a chat template's header.
    fn plan(
        &self,
        free: &[i32],
        running: &[Donor],
        decoding: bool,
        prompt: &[LlamaToken],
        usable: usize,
    ) -> Option<Plan> {
        let usable = usable.min(prompt.len().saturating_sub(1));
        let spare = free.iter().any(|&s| self.resident(s).is_none_or(|r| r.tokens.is_empty()));
        let (slot, in_slot) = self.best_slot(free, prompt, usable, spare)?;
        let mut plan = Plan::Own { slot, keep: in_slot };
        let mut best = in_slot;
        let target = self.victim(free)?;
        let saved = self
            .saved
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common_prefix(&s.tokens, prompt).min(usable)))
            .max_by_key(|&(i, n)| (n, self.saved[i].used));
        if let Some((i, n)) = saved {
            if n >= MIN_REUSE && n > best {
                plan = Plan::Restore { saved: i, slot: target, keep: n };
                best = n;
            }
        }
        let idle = free.iter().filter_map(|&s| {
            let r = self.resident(s)?;
            Some(Donor { slot: s, shared: common_prefix(&r.tokens, prompt), len: r.tokens.len() })
        });
        let donor = running
            .iter()
            .copied()
            .chain(idle)
            .filter(|d| d.slot != target)
            .map(|d| Donor { shared: d.shared.min(usable), ..d })
            .max_by_key(|d| (d.shared, std::cmp::Reverse(d.len)));
        if let Some(d) = donor {
            let least = if decoding { MIN_REUSE } else { 1 };
            let gain = d.shared.saturating_sub(best);
            if gain >= least && gain.saturating_mul(COPY_PER_EVAL) >= d.len {
                plan = Plan::Copy { from: d.slot, slot: target, keep: d.shared };
            }
        }
        Some(plan)
    }

    /// The slot's sequence has left it; its KV holds `tokens`, the first
    /// `asked` of them its prompt.
    pub fn release(&mut self, ctx: &mut LlamaContext, slot: i32, tokens: Vec<LlamaToken>, asked: usize) {
        if !self.enabled {
            self.clear(ctx, slot);
            return;
        }
        if let Some(r) = self.resident_mut(slot) {
            r.asked = asked.min(tokens.len());
            r.tokens = tokens;
        }
        self.touch(slot);
    }

    /// The slot's KV cannot be trusted (a failed decode): empty it.
    pub fn clear(&mut self, ctx: &mut LlamaContext, slot: i32) {
        // Removing a whole sequence's cells cannot fail for a valid seq_id.
        let _ = ctx.clear_kv_cache_seq(u32::try_from(slot).ok(), None, None);
        if let Some(r) = self.resident_mut(slot) {
            r.tokens.clear();
        }
    }

    /// The free slot with the longest useful match; among equals an empty
    /// slot, then the least recently used, then the lowest id. While a
    /// `spare` empty slot exists, a match that would cut another
    /// conversation short (the prompt parts inside that one's prompt) is
    /// not useful: the spare slot takes a copy instead, and the
    /// conversation stays.
    fn best_slot(&self, free: &[i32], prompt: &[LlamaToken], usable: usize, spare: bool) -> Option<(i32, usize)> {
        free.iter()
            .map(|&slot| {
                let r = self.resident(slot);
                let n = r.map_or(0, |r| common_prefix(&r.tokens, prompt).min(usable));
                (slot, n, r)
            })
            .max_by_key(|&(slot, n, r)| {
                let len = r.map_or(0, |r| r.tokens.len());
                let another = r.is_some_and(|r| n < r.asked);
                let cuts = spare && another && len >= n + MIN_SAVE;
                let useful = if n >= MIN_REUSE && !cuts { n } else { 0 };
                (useful, len == 0, std::cmp::Reverse(r.map_or(0, |r| r.used)), std::cmp::Reverse(slot))
            })
            .map(|(slot, n, _)| (slot, n))
    }

    /// The free slot whose contents are worth least: empty, else least
    /// recently used.
    fn victim(&self, free: &[i32]) -> Option<i32> {
        free.iter().copied().max_by_key(|&slot| {
            let r = self.resident(slot);
            (r.is_none_or(|r| r.tokens.is_empty()), std::cmp::Reverse(r.map_or(0, |r| r.used)), std::cmp::Reverse(slot))
        })
    }

    /// Copies the first `prefix.len()` tokens of `from`'s KV into `slot`,
    /// which loses what it held (saved first, if worth it). Returns the
    /// tokens `slot` then holds: all of `prefix`, or none when llama.cpp
    /// refuses.
    fn copy(&mut self, ctx: &mut LlamaContext, from: i32, slot: i32, prefix: &[LlamaToken]) -> usize {
        // Not `seq_cp`: between separate KV streams llama.cpp copies only a
        // whole stream (it asserts on a range), and only at the next decode,
        // after which an idle donor may already hold something else. The
        // state API copies the donor's cells now.
        let started = std::time::Instant::now();
        let state = match ctx.state_seq_get(from, LlamaStateSeqFlags::empty()) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(from, slot, error = %e, "copying a shared prefix failed; prefilling instead");
                return 0;
            }
        };
        self.save(ctx, slot, 0);
        self.clear(ctx, slot);
        if let Err(e) = ctx.state_seq_set(&state, slot) {
            tracing::warn!(from, slot, error = %e, "copying a shared prefix failed; prefilling instead");
            self.clear(ctx, slot);
            return 0;
        }
        let cut = u32::try_from(prefix.len()).ok();
        match ctx.clear_kv_cache_seq(u32::try_from(slot).ok(), cut, None) {
            Ok(true) => {
                if let Some(r) = self.resident_mut(slot) {
                    r.tokens = prefix.to_vec();
                    r.asked = prefix.len();
                }
                tracing::debug!(
                    from,
                    slot,
                    tokens = prefix.len(),
                    bytes = state.byte_len(),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "copied a shared prefix"
                );
                prefix.len()
            }
            _ => {
                self.clear(ctx, slot);
                0
            }
        }
    }

    /// Moves saved conversation `i` into `slot`, saving what `slot` held
    /// first. False (and `slot` empty) when llama.cpp refuses the state.
    fn restore(&mut self, ctx: &mut LlamaContext, i: usize, slot: i32) -> bool {
        // Taken out before `save` can reorder or evict the saved list.
        let saved = self.saved.swap_remove(i);
        self.saved_bytes -= saved.state.byte_len();
        self.save(ctx, slot, 0);
        self.clear(ctx, slot);
        match ctx.state_seq_set(&saved.state, slot) {
            Ok(()) => {
                if let Some(r) = self.resident_mut(slot) {
                    r.asked = saved.tokens.len();
                    r.tokens = saved.tokens;
                }
                true
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "restoring a saved conversation failed; prefilling instead");
                self.clear(ctx, slot);
                false
            }
        }
    }

    /// Cuts `slot`'s KV to its first `keep` tokens, saving the whole
    /// conversation to host memory first if it loses enough to be worth it.
    /// Returns the tokens kept.
    fn truncate(&mut self, ctx: &mut LlamaContext, slot: i32, keep: usize) -> usize {
        let len = self.resident(slot).map_or(0, |r| r.tokens.len());
        if keep >= len {
            return len;
        }
        self.save(ctx, slot, keep);
        let cut = u32::try_from(keep).ok();
        match ctx.clear_kv_cache_seq(u32::try_from(slot).ok(), cut, None) {
            Ok(true) => {
                if let Some(r) = self.resident_mut(slot) {
                    r.tokens.truncate(keep);
                    r.asked = r.asked.min(keep);
                }
                keep
            }
            // A model whose memory cannot drop a suffix (recurrent, SWA).
            _ => {
                self.clear(ctx, slot);
                0
            }
        }
    }

    /// Copies `slot`'s conversation to host memory when it is about to lose
    /// at least [`MIN_SAVE`] tokens past `keep` and fits the budget.
    fn save(&mut self, ctx: &mut LlamaContext, slot: i32, keep: usize) {
        let Some(r) = self.resident(slot) else { return };
        if self.budget == 0 || r.tokens.len() < keep + MIN_SAVE {
            return;
        }
        let state = match ctx.state_seq_get(slot, LlamaStateSeqFlags::empty()) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(slot, error = %e, "saving a conversation's KV failed; it will be prefilled again");
                return;
            }
        };
        let bytes = state.byte_len();
        if bytes > self.budget {
            return;
        }
        let tokens = r.tokens.clone();
        let used = r.used;
        // A saved prefix of this conversation is superseded by it.
        self.saved.retain(|s| {
            let superseded = tokens.starts_with(&s.tokens);
            if superseded {
                self.saved_bytes -= s.state.byte_len();
            }
            !superseded
        });
        while self.saved_bytes + bytes > self.budget {
            let Some(lru) = self.saved.iter().enumerate().min_by_key(|(_, s)| s.used).map(|(i, _)| i) else { break };
            let gone = self.saved.swap_remove(lru);
            self.saved_bytes -= gone.state.byte_len();
        }
        self.saved_bytes += bytes;
        self.saved.push(Saved { tokens, state, used });
    }

    fn touch(&mut self, slot: i32) {
        let now = self.clock;
        if let Some(r) = self.resident_mut(slot) {
            r.used = now;
        }
    }

    fn resident(&self, slot: i32) -> Option<&Resident> {
        usize::try_from(slot).ok().and_then(|s| self.resident.get(s))
    }

    fn resident_mut(&mut self, slot: i32) -> Option<&mut Resident> {
        usize::try_from(slot).ok().and_then(|s| self.resident.get_mut(s))
    }
}

/// Length of the longest common prefix.
pub(crate) fn common_prefix<'a>(a: impl IntoIterator<Item = &'a LlamaToken>, b: &[LlamaToken]) -> usize {
    a.into_iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[i32]) -> Vec<LlamaToken> {
        v.iter().map(|&t| LlamaToken(t)).collect()
    }

    fn with(resident: &[(&[i32], u64)]) -> PrefixCache {
        let mut c = PrefixCache::new(resident.len() as u32, true, 0);
        for (r, &(t, used)) in c.resident.iter_mut().zip(resident) {
            r.tokens = toks(t);
            r.asked = t.len();
            r.used = used;
        }
        c
    }

    #[test]
    fn common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&toks(&[1, 2, 3]), &toks(&[1, 2, 4, 5])), 2);
        assert_eq!(common_prefix(&toks(&[]), &toks(&[1])), 0);
        assert_eq!(common_prefix(&toks(&[1, 2]), &toks(&[1, 2])), 2);
    }

    #[test]
    fn the_longest_match_wins_and_leaves_one_token_to_evaluate() {
        let long: Vec<i32> = (0..40).collect();
        let other: Vec<i32> = (100..140).collect();
        let c = with(&[(&other, 5), (&long, 1), (&[], 0)]);
        let prompt = toks(&(0..40).collect::<Vec<_>>());
        // The whole prompt is cached, but its last token must be evaluated.
        assert_eq!(c.best_slot(&[2, 1, 0], &prompt, prompt.len() - 1, true), Some((1, 39)));
    }

    #[test]
    fn a_template_header_match_does_not_outrank_an_empty_slot() {
        // Slot 0 shares only 3 tokens (a chat header) with the prompt.
        let c = with(&[(&[7, 8, 9, 10, 11], 3), (&[], 0)]);
        let prompt = toks(&[7, 8, 9, 50, 51, 52]);
        assert_eq!(c.best_slot(&[1, 0], &prompt, 5, true), Some((1, 0)));
    }

    #[test]
    fn without_a_match_the_least_recently_used_slot_is_taken() {
        let c = with(&[(&[1; 20], 9), (&[2; 20], 4), (&[3; 20], 7)]);
        assert_eq!(c.best_slot(&[2, 1, 0], &toks(&[5; 30]), 29, false), Some((1, 0)));
        assert_eq!(c.victim(&[2, 0]), Some(2));
    }

    fn running(slot: i32, shared: usize, len: usize) -> Donor {
        Donor { slot, shared, len }
    }

    #[test]
    fn a_prompt_behind_a_running_sequence_starts_from_a_copy_of_its_prefix() {
        // Slot 0 is busy with a sequence whose first 40 tokens are the
        // prompt's (a shared system prompt); slots 1 and 2 are empty.
        let c = with(&[(&[], 0), (&[], 0), (&[], 0)]);
        let prompt = toks(&(0..60).collect::<Vec<_>>());
        let plan = c.plan(&[2, 1], &[running(0, 40, 90)], false, &prompt, 60);
        assert_eq!(plan, Some(Plan::Copy { from: 0, slot: 1, keep: 40 }));
        // Nothing shared: the lowest empty slot, nothing reused.
        let plan = c.plan(&[2, 1], &[running(0, 0, 90)], false, &prompt, 60);
        assert_eq!(plan, Some(Plan::Own { slot: 1, keep: 0 }));
    }

    #[test]
    fn an_idle_conversation_is_copied_from_rather_than_cut_while_a_slot_is_empty() {
        let conversation: Vec<i32> = (0..30).chain(500..540).collect();
        let prompt = toks(&(0..50).collect::<Vec<_>>());
        let c = with(&[(&conversation, 5), (&[], 0)]);
        assert_eq!(c.plan(&[1, 0], &[], false, &prompt, 49), Some(Plan::Copy { from: 0, slot: 1, keep: 30 }));
        // With no empty slot, cutting the conversation is the only way to
        // reuse its prefix: it is saved first (see `truncate`).
        let c = with(&[(&conversation, 5), (&[900; 40], 1)]);
        assert_eq!(c.plan(&[1, 0], &[], false, &prompt, 49), Some(Plan::Own { slot: 0, keep: 30 }));
    }

    #[test]
    fn a_next_turn_that_retokenizes_the_last_answer_continues_in_place() {
        // Slot 0 holds a 40-token prompt and its 30-token answer; the next
        // turn sends the prompt, the answer tokenized otherwise, and more.
        let held: Vec<i32> = (0..40).chain(900..930).collect();
        let mut c = with(&[(&held, 5), (&[], 0)]);
        c.resident[0].asked = 40;
        let prompt = toks(&(0..40).chain(950..1000).collect::<Vec<_>>());
        assert_eq!(c.plan(&[1, 0], &[], false, &prompt, 89), Some(Plan::Own { slot: 0, keep: 40 }));
    }

    #[test]
    fn a_slot_that_continues_its_own_conversation_keeps_it() {
        // The next turn of slot 0's conversation; a running sequence shares
        // as much (the same system prompt and first turn).
        let turn: Vec<i32> = (0..40).collect();
        let c = with(&[(&turn, 5), (&[], 0)]);
        let prompt = toks(&(0..70).collect::<Vec<_>>());
        assert_eq!(c.plan(&[1, 0], &[running(2, 40, 300)], false, &prompt, 69), Some(Plan::Own { slot: 0, keep: 40 }));
    }

    #[test]
    fn a_copy_must_save_more_evaluation_than_it_moves() {
        let c = with(&[(&[], 0), (&[], 0)]);
        let prompt = toks(&(0..30).collect::<Vec<_>>());
        // A 5-token chat header from a short sequence is worth copying ...
        let cheap = c.plan(&[1], &[running(0, 5, 150)], false, &prompt, 29);
        assert_eq!(cheap, Some(Plan::Copy { from: 0, slot: 1, keep: 5 }));
        // ... from a sequence of thousands of tokens it is not.
        let dear = c.plan(&[1], &[running(0, 5, 4000)], false, &prompt, 29);
        assert_eq!(dear, Some(Plan::Own { slot: 1, keep: 0 }));
        // ... nor while another sequence waits for its next token, which
        // a copy of a shared conversation is worth holding.
        let waiting = c.plan(&[1], &[running(0, 5, 150)], true, &prompt, 29);
        assert_eq!(waiting, Some(Plan::Own { slot: 1, keep: 0 }));
        let shared = c.plan(&[1], &[running(0, 20, 150)], true, &prompt, 29);
        assert_eq!(shared, Some(Plan::Copy { from: 0, slot: 1, keep: 20 }));
        // Never more than the request may reuse.
        let capped = c.plan(&[1], &[running(0, 25, 150)], false, &prompt, 10);
        assert_eq!(capped, Some(Plan::Copy { from: 0, slot: 1, keep: 10 }));
    }
}
