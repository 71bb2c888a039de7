//! Charging an admitted request's answer: completion tokens as they stream
//! (a few at a time), then, when the answer ends (or the client leaves), a
//! final charge that corrects the prompt estimate by the answer's `usage`
//! and adds its cost at the route's price. A stream cut short has no
//! `usage`: it is charged the estimate and what it produced. An answer that
//! failed without `usage` gives the estimate back.
//!
//! The answer itself is watched by `observe::answer`, which calls
//! [`Meter::progress`] and [`Meter::settle`].

use std::sync::Arc;

use switchyard_router::Price;

use super::{Limiter, Slot, Subject};

/// Completion tokens counted before they are charged: at most this many
/// are uncounted by other requests while a stream runs.
const CHARGE_EVERY: u64 = 8;

/// What to charge an admitted request's answer to.
pub struct Meter {
    limiter: Arc<Limiter>,
    subjects: Vec<Subject>,
    /// Prompt tokens charged at admission.
    estimate: u64,
    /// Completion tokens charged so far.
    charged: u64,
    /// The request's places in flight, held until the meter is dropped
    /// (with the answer's body: sent, or abandoned).
    _slots: Vec<Slot>,
}

/// How an answer ended, as far as charging it goes.
pub struct Settled<'a> {
    /// Prompt and completion tokens as the answer reported them.
    pub usage: Option<(u32, u32)>,
    /// Completion tokens seen streaming past.
    pub produced: u64,
    pub failed: bool,
    pub price: Option<&'a Price>,
    pub busy_ms: f64,
}

impl Meter {
    pub(super) fn new(limiter: Arc<Limiter>, subjects: Vec<Subject>, estimate: u64, slots: Vec<Slot>) -> Self {
        Self { limiter, subjects, estimate, charged: 0, _slots: slots }
    }

    /// `produced` completion tokens have streamed so far; charged a few at
    /// a time, since each charge takes the limiter's lock.
    pub fn progress(&mut self, produced: u64) {
        let uncharged = produced.saturating_sub(self.charged);
        if uncharged >= CHARGE_EVERY {
            self.charged = produced;
            self.limiter.charge(&self.subjects, uncharged as i64, 0.0);
        }
    }

    /// The final charge; what was seen but not yet charged goes with it.
    pub fn settle(&self, end: &Settled<'_>) {
        let estimate = i64::try_from(self.estimate).unwrap_or(i64::MAX);
        let produced = i64::try_from(end.produced).unwrap_or(i64::MAX);
        let charged = i64::try_from(self.charged).unwrap_or(i64::MAX);
        if end.usage.is_none() && end.failed && produced == 0 {
            self.limiter.charge(&self.subjects, -estimate, 0.0);
            return;
        }
        let as_u32 = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        // Never less than was visibly streamed, whatever the answer claims;
        // without `usage`, the estimate and what was streamed.
        let (prompt, completion) = match end.usage {
            Some((prompt, completion)) => (prompt, completion.max(as_u32(produced))),
            None => (as_u32(estimate), as_u32(produced)),
        };
        let cost = end.price.map_or(0.0, |p| p.cost(prompt, completion, end.busy_ms).usd);
        let tokens = i64::from(prompt) - estimate + i64::from(completion) - charged;
        self.limiter.charge(&self.subjects, tokens, cost);
    }
}
