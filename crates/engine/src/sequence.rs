//! One sequence in flight: its prompt progress, its sampler, the text it is
//! holding back for stop detection, and its latency record.

use std::time::Instant;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use switchyard_wire::{FinishReason, Timings, TokenLogprob, TopLogprob};

use crate::lookup::DraftLength;
use crate::request::{Event, Job, Output, Piece, Summary};
use crate::score::ScoreError;
use crate::stop::{StopMatcher, StopScan};

pub(crate) struct Sequence {
    /// llama.cpp sequence id; also the KV stream this sequence owns.
    pub slot: i32,
    pub job: Job,
    /// Prompt tokens already evaluated into the KV cache.
    pub prompt_done: usize,
    /// Position of the next token to evaluate.
    pub n_past: i32,
    /// Sampled token not yet evaluated; `Some` means the sequence is decoding.
    pub next: Option<LlamaToken>,
    /// Prompt tokens found in the slot's KV (the prefix cache), not evaluated.
    reused: usize,
    /// Generated tokens evaluated into the KV cache, in order.
    decoded: Vec<LlamaToken>,
    /// Drafting's length for this sequence; `None` when it does not draft
    /// (drafting is off, or the request samples: a sampled token is not an
    /// argmax to check a guess against).
    pub draft: Option<DraftLength>,
    /// Drafted tokens verified, and those kept.
    drafted: u32,
    draft_accepted: u32,
    generated: u32,
    decoder: encoding_rs::Decoder,
    stops: StopMatcher,
    held: Vec<Piece>,
    clock: Clock,
}

#[derive(Default)]
struct Clock {
    first_step: Option<Instant>,
    prefill_done: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    gaps_ms: Vec<f64>,
}

/// A sampled token and its logprobs, as the scheduler hands it over.
pub(crate) struct Sampled {
    pub token: LlamaToken,
    pub logprob: f32,
    pub top: Vec<(usize, f32)>,
}

impl Sequence {
    /// `reused`: the prompt's first tokens already in the slot's KV;
    /// `draft_max`: the most tokens a step may draft for it (0: none).
    pub fn new(slot: i32, job: Job, reused: usize, draft_max: usize) -> Self {
        let stops = StopMatcher::new(job.req.stop.clone());
        // Verification compares drafts with the argmax: greedy requests only.
        let generates = matches!(job.output, Output::Stream(_));
        let draft = (draft_max > 0 && generates && job.sampler.is_none()).then(|| DraftLength::new(draft_max));
        Self {
            slot,
            job,
            prompt_done: reused,
            n_past: i32::try_from(reused).unwrap_or(i32::MAX),
            next: None,
            reused,
            decoded: Vec::new(),
            draft,
            drafted: 0,
            draft_accepted: 0,
            generated: 0,
            decoder: encoding_rs::UTF_8.new_decoder_without_bom_handling(),
            stops,
            held: Vec::new(),
            clock: Clock::default(),
        }
    }

    pub fn prompt(&self) -> &[LlamaToken] {
        &self.job.req.prompt
    }

    /// The client went away: nothing will read this sequence's output.
    pub fn is_abandoned(&self) -> bool {
        self.job.is_abandoned()
    }

    /// Where a scoring job's continuation starts (`None`: it generates).
    pub fn scored_from(&self) -> Option<usize> {
        self.job.scored_from()
    }

    /// Logprobs of continuation tokens, in order, as their positions are
    /// evaluated.
    pub fn record_scores(&mut self, scores: impl IntoIterator<Item = f64>) {
        if let Output::Score { logprobs, .. } = &mut self.job.output {
            logprobs.extend(scores);
        }
    }

    pub fn mark_scheduled(&mut self, now: Instant) {
        self.clock.first_step.get_or_insert(now);
    }

    /// A sampled token goes into the batch: it is now in the KV cache.
    pub fn take_next(&mut self) -> Option<LlamaToken> {
        let token = self.next.take()?;
        self.decoded.push(token);
        Some(token)
    }

    /// Everything the sequence has seen, the sampled token not yet
    /// evaluated last: what prompt lookup searches.
    pub fn context(&self) -> Vec<LlamaToken> {
        let prompt = &self.job.req.prompt[..self.prompt_done];
        prompt.iter().chain(&self.decoded).chain(&self.next).copied().collect()
    }

    /// Tokens the sequence may still generate after the next one.
    pub fn tokens_left(&self) -> usize {
        self.job.max_tokens.saturating_sub(self.generated + 1) as usize
    }

    /// Positions of the KV stream that hold evaluated tokens.
    pub fn kv_len(&self) -> usize {
        self.prompt_done + self.decoded.len()
    }

    /// `drafted` guessed tokens were verified in one step, `accepted` kept.
    pub fn record_draft(&mut self, drafted: usize, accepted: usize) {
        self.drafted += drafted as u32;
        self.draft_accepted += accepted as u32;
        if let Some(d) = &mut self.draft {
            d.update(drafted, accepted);
        }
    }

    /// How many of `prompt`'s first tokens this sequence's KV holds.
    pub fn shared_prefix(&self, prompt: &[LlamaToken]) -> usize {
        crate::prefix_cache::common_prefix(self.job.req.prompt[..self.prompt_done].iter().chain(&self.decoded), prompt)
    }

    /// The tokens this sequence's KV holds, position by position.
    pub fn kv_tokens(&self) -> Vec<LlamaToken> {
        let prompt = &self.job.req.prompt[..self.prompt_done];
        prompt.iter().chain(&self.decoded).copied().collect()
    }

    pub fn mark_prefilled(&mut self, now: Instant) {
        self.clock.prefill_done = Some(now);
    }

    pub fn fail(self, message: String) {
        match self.job.output {
            Output::Stream(events) => {
                let _ = events.send(Event::Error(message));
            }
            Output::Score { reply, .. } => {
                let _ = reply.send(Err(ScoreError::Runtime(message)));
            }
        }
    }

    /// Takes one sampled token. Returns `Some` when the sequence has finished.
    pub fn accept(&mut self, model: &LlamaModel, s: Sampled, n_ctx_seq: u32, now: Instant) -> Option<FinishReason> {
        let vocab = model.vocab();
        if vocab.is_eog(s.token) {
            self.release_all();
            return Some(FinishReason::Stop);
        }
        self.generated += 1;
        if let Some(prev) = self.clock.last_token.replace(now) {
            self.clock.gaps_ms.push(ms(now - prev));
        }
        self.clock.first_token.get_or_insert(now);

        let bytes = vocab.token_to_piece(s.token, false, None);
        let mut text = String::with_capacity(bytes.len() + 4);
        let _ = self.decoder.decode_to_string(&bytes, &mut text, false);
        let top_logprobs = s
            .top
            .iter()
            .map(|&(id, lp)| {
                let b = vocab.token_to_piece(LlamaToken(id as i32), false, None);
                TopLogprob { token: String::from_utf8_lossy(&b).into_owned(), logprob: f64::from(lp), bytes: Some(b) }
            })
            .collect();
        let logprob = TokenLogprob {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            logprob: f64::from(s.logprob),
            bytes: Some(bytes),
            top_logprobs,
        };
        self.held.push(Piece { text, logprob });

        if self.stop_matched() {
            return Some(FinishReason::Stop);
        }
        let context_full = u32::try_from(self.n_past + 1).unwrap_or(u32::MAX) >= n_ctx_seq;
        if self.generated >= self.job.max_tokens || context_full {
            self.release_all();
            return Some(FinishReason::Length);
        }
        self.next = Some(s.token);
        None
    }

    /// Sends what can no longer start a stop sequence; true when one matched.
    fn stop_matched(&mut self) -> bool {
        if self.stops.is_empty() {
            self.release_all();
            return false;
        }
        let mut held = String::new();
        let mut ends = Vec::with_capacity(self.held.len());
        for p in &self.held {
            held.push_str(&p.text);
            ends.push(held.len());
        }
        match self.stops.scan(&held, &ends) {
            StopScan::Release(n) => {
                self.release(n);
                false
            }
            StopScan::Stopped { cut } => {
                let mut start = 0;
                let mut keep = 0;
                for (i, piece) in self.held.iter_mut().enumerate() {
                    if start >= cut {
                        break;
                    }
                    let end = ends[i];
                    if end > cut {
                        piece.text.truncate(cut - start);
                    }
                    keep = i + 1;
                    start = end;
                }
                self.held.truncate(keep);
                self.release_all();
                true
            }
        }
    }

    fn release_all(&mut self) {
        self.release(self.held.len());
    }

    fn release(&mut self, n: usize) {
        let Output::Stream(events) = &self.job.output else { return };
        for piece in self.held.drain(..n) {
            let _ = events.send(Event::Token(piece));
        }
    }

    /// Sends the closing summary, or a scoring job's logprobs; consumes the
    /// sequence.
    pub fn finish(mut self, reason: FinishReason, now: Instant) {
        let events = match self.job.output {
            Output::Stream(events) => events,
            Output::Score { logprobs, reply, .. } => {
                let _ = reply.send(Ok(logprobs));
                return;
            }
        };
        let c = &mut self.clock;
        let accepted = self.job.accepted;
        let first_step = c.first_step.unwrap_or(accepted);
        c.gaps_ms.sort_by(f64::total_cmp);
        let prompt_tokens = self.job.req.prompt.len() as u32;
        let cache_n = self.reused as u32;
        let timings = Timings {
            prompt_n: prompt_tokens - cache_n,
            cache_n,
            draft_n: self.drafted,
            draft_n_accepted: self.draft_accepted,
            prompt_ms: c.prefill_done.map_or(0.0, |t| ms(t - first_step)),
            predicted_n: self.generated,
            predicted_ms: match (c.first_token, c.last_token) {
                (Some(a), Some(b)) => ms(b - a),
                _ => 0.0,
            },
            queue_ms: ms(first_step - accepted),
            ttft_ms: c.first_token.map_or(0.0, |t| ms(t - accepted)),
            itl_p50_ms: c.gaps_ms.get(c.gaps_ms.len() / 2).copied().unwrap_or(0.0),
            itl_p99_ms: c.gaps_ms.get((c.gaps_ms.len().saturating_sub(1)) * 99 / 100).copied().unwrap_or(0.0),
            itl_max_ms: c.gaps_ms.last().copied().unwrap_or(0.0),
            total_ms: ms(now - accepted),
        };
        let _ = events.send(Event::Done(Summary {
            finish_reason: reason,
            prompt_tokens,
            completion_tokens: self.generated,
            timings,
        }));
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
