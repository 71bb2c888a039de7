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
//! Invariants:
//! - `resident[slot]` is exactly the tokens at positions `0..len` of that
//!   slot's KV stream: every change to one is made to the other in the same
//!   call, and a failed KV operation empties both;
//! - only free slots are placed into, so nothing here touches the KV of a
//!   running sequence;
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

/// What a slot's KV stream holds.
#[derive(Default)]
struct Resident {
    tokens: Vec<LlamaToken>,
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
    /// The reused tokens came back from host memory.
    pub restored: bool,
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
    /// whole prompt, and nothing after it.
    pub fn place(
        &mut self,
        ctx: &mut LlamaContext,
        free: &[i32],
        prompt: &[LlamaToken],
        usable: usize,
    ) -> Option<Placed> {
        self.clock += 1;
        if !self.enabled {
            // Free slots are sorted highest first: the lowest keeps the
            // decoders in one run of sequence ids (see the scheduler).
            return free.last().map(|&slot| Placed { slot, reused: 0, restored: false });
        }
        let usable = usable.min(prompt.len().saturating_sub(1));
        let (slot, in_slot) = self.best_slot(free, prompt, usable)?;
        let best_saved = self
            .saved
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common_prefix(&s.tokens, prompt).min(usable)))
            .max_by_key(|&(i, n)| (n, self.saved[i].used));
        let restored = match best_saved {
            Some((i, n)) if n >= MIN_REUSE && n > in_slot => {
                let victim = self.victim(free)?;
                self.restore(ctx, i, victim).then_some((victim, n))
            }
            _ => None,
        };
        let (slot, keep) = restored.unwrap_or((slot, in_slot));
        let reused = self.truncate(ctx, slot, keep);
        self.touch(slot);
        Some(Placed { slot, reused, restored: restored.is_some() && reused > 0 })
    }

    /// The slot's sequence has left it; its KV holds `tokens`.
    pub fn release(&mut self, ctx: &mut LlamaContext, slot: i32, tokens: Vec<LlamaToken>) {
        if !self.enabled {
            self.clear(ctx, slot);
            return;
        }
        if let Some(r) = self.resident_mut(slot) {
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
    /// slot, then the least recently used, then the lowest id.
    fn best_slot(&self, free: &[i32], prompt: &[LlamaToken], usable: usize) -> Option<(i32, usize)> {
        free.iter()
            .map(|&slot| {
                let r = self.resident(slot);
                let n = r.map_or(0, |r| common_prefix(&r.tokens, prompt).min(usable));
                (slot, n, r)
            })
            .max_by_key(|&(slot, n, r)| {
                let useful = if n >= MIN_REUSE { n } else { 0 };
                let empty = r.is_none_or(|r| r.tokens.is_empty());
                (useful, empty, std::cmp::Reverse(r.map_or(0, |r| r.used)), std::cmp::Reverse(slot))
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
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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
        assert_eq!(c.best_slot(&[2, 1, 0], &prompt, prompt.len() - 1), Some((1, 39)));
    }

    #[test]
    fn a_template_header_match_does_not_outrank_an_empty_slot() {
        // Slot 0 shares only 3 tokens (a chat header) with the prompt.
        let c = with(&[(&[7, 8, 9, 10, 11], 3), (&[], 0)]);
        let prompt = toks(&[7, 8, 9, 50, 51, 52]);
        assert_eq!(c.best_slot(&[1, 0], &prompt, 5), Some((1, 0)));
    }

    #[test]
    fn without_a_match_the_least_recently_used_slot_is_taken() {
        let c = with(&[(&[1; 20], 9), (&[2; 20], 4), (&[3; 20], 7)]);
        assert_eq!(c.best_slot(&[2, 1, 0], &toks(&[5; 30]), 29), Some((1, 0)));
        assert_eq!(c.victim(&[2, 0]), Some(2));
    }
}
