//! A token answer received but not yet committed to: the first tokens held
//! back (a cascade judges them before anything is sent), then the rest
//! passed on under the route's limits.

use futures::stream::{self, StreamExt};
use switchyard_engine::Event;

use super::{Events, Limits};
use crate::envelope::{Envelope, Item};
use crate::error::ApiError;
use crate::resilience::{cut_off, Cut};

/// The tokens held so far: their text and the model's logprob of each.
pub struct Sample {
    pub text: String,
    pub logprobs: Vec<f64>,
}

pub struct Held {
    /// Who makes the tokens, for messages.
    model: String,
    held: Vec<Event>,
    rest: Events,
}

impl Held {
    /// Receives up to `tokens` tokens (`usize::MAX`: the whole answer),
    /// failing with a 504 if the first does not come within `limits.ttft`
    /// or the held ones take past the total limit. An answer that ends
    /// sooner is held whole.
    pub async fn take(model: &str, mut rest: Events, limits: &Limits, tokens: usize) -> Result<Self, ApiError> {
        let began = tokio::time::Instant::now();
        let deadline = limits.deadline();
        let first_by = limits.ttft.map(|ttft| deadline.map_or(began + ttft, |d| d.min(began + ttft)));
        let mut held = Vec::new();
        let mut n = 0;
        // With a TTFT limit, at least the first token is waited for here.
        while n < tokens.max(usize::from(limits.ttft.is_some())) {
            let by = if held.is_empty() { first_by.or(deadline) } else { deadline };
            let next = match by {
                None => rest.next().await,
                Some(by) => tokio::time::timeout_at(by, rest.next()).await.map_err(|_| match first_by {
                    Some(first_by) if held.is_empty() => ApiError::timeout(format!(
                        "no first token from {model} within {} ms",
                        first_by.duration_since(began).as_millis()
                    )),
                    _ => limits.past_total(model),
                })?,
            };
            let Some(event) = next else { break };
            let terminal = !matches!(event, Event::Token(_));
            n += usize::from(!terminal);
            held.push(event);
            if terminal {
                break;
            }
        }
        Ok(Self { model: model.to_string(), held, rest })
    }

    /// What has been held so far, for a cascade to judge.
    pub fn sample(&self) -> Sample {
        let tokens = || self.held.iter().filter_map(|e| if let Event::Token(p) = e { Some(p) } else { None });
        Sample {
            text: tokens().map(|p| p.text.as_str()).collect(),
            logprobs: tokens().map(|p| p.logprob.logprob).collect(),
        }
    }

    /// Commits to the answer: held events first, then the rest as it comes,
    /// wrapped by `envelope`. A stream that goes quiet past `limits.stall`
    /// or runs past the total limit ends with an error event naming it; a
    /// whole answer that does fails with that error instead.
    pub async fn answer(self, envelope: Envelope, limits: &Limits) -> Result<axum::response::Response, ApiError> {
        let Self { model, held, rest } = self;
        let stalled = format!(
            "{model} produced no token for {} ms; the answer was cut off",
            limits.stall.map_or(0, |s| s.as_millis())
        );
        let past_total = limits.past_total(&model);
        let rest = cut_off(rest.map(Item::Event), limits.stall, limits.deadline(), move |why| match why {
            Cut::Stalled => Item::Failed(ApiError::internal(stalled)),
            Cut::PastDeadline => Item::Failed(past_total),
        });
        envelope.answer(stream::iter(held).map(Item::Event).chain(rest)).await
    }
}
