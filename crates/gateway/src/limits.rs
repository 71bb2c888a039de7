//! Per-key rate limits in this process: requests per minute (GCRA, a burst
//! of a minute's worth) and requests in flight. Over a limit: 429 with
//! `Retry-After` and OpenAI's `x-ratelimit-*-requests` headers, so the
//! official clients back off by themselves.
//!
//! Invariant: a refused request changes no state (it does not push the
//! key's schedule further out), so retrying after `Retry-After` succeeds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::auth::{Caller, Principal};
use crate::error::ApiError;

const MINUTE: Duration = Duration::from_secs(60);
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");

#[derive(Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, KeyState>>,
}

#[derive(Default)]
struct KeyState {
    /// GCRA's theoretical arrival time of the next request.
    tat: Option<Instant>,
    in_flight: Arc<AtomicU32>,
}

/// A request let through: the headers to answer with, and its place among
/// the key's requests in flight, held until the answer's body is dropped.
pub struct Admitted {
    pub headers: HeaderMap,
    pub slot: Option<Slot>,
}

/// One request in flight; dropping it frees the place.
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request refused: the error and the headers to answer with.
pub struct Refused {
    pub error: ApiError,
    pub headers: HeaderMap,
}

impl Limiter {
    pub fn admit(&self, caller: &Caller, now: Instant) -> Result<Admitted, Box<Refused>> {
        let Caller::Key(key) = caller else { return Ok(Admitted { headers: HeaderMap::new(), slot: None }) };
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let state = keys.entry(key.key_id.clone()).or_default();
        let mut headers = HeaderMap::new();
        if let Some(limit) = key.limits.requests_per_minute {
            let rate = Rate::of(limit, state.tat, now);
            rate.headers(&mut headers);
            if let Some(wait) = rate.wait {
                return Err(refused(key, format!("more than {limit} requests per minute"), wait, headers));
            }
            state.tat = Some(rate.next_tat);
        }
        let slot = match key.limits.concurrent {
            None => None,
            Some(most) => {
                if state.in_flight.fetch_add(1, Ordering::SeqCst) >= most {
                    state.in_flight.fetch_sub(1, Ordering::SeqCst);
                    return Err(refused(
                        key,
                        format!("more than {most} requests at once"),
                        Duration::from_secs(1),
                        headers,
                    ));
                }
                Some(Slot(state.in_flight.clone()))
            }
        };
        Ok(Admitted { headers, slot })
    }
}

/// One GCRA step for a limit of `limit` per minute, burst `limit`.
struct Rate {
    limit: u32,
    /// `Some`: refused, and how long until a request would pass.
    wait: Option<Duration>,
    /// The schedule if admitted.
    next_tat: Instant,
    remaining: u32,
    /// Until the key's allowance is whole again.
    reset: Duration,
}

impl Rate {
    fn of(limit: u32, tat: Option<Instant>, now: Instant) -> Self {
        let interval = MINUTE / limit;
        let tat = tat.map_or(now, |t| t.max(now));
        let next_tat = tat + interval;
        let ahead = next_tat - now;
        if ahead > MINUTE {
            let backlog = tat - now;
            return Self { limit, wait: Some(ahead - MINUTE), next_tat, remaining: 0, reset: backlog };
        }
        let remaining = ((MINUTE - ahead).as_nanos() / interval.as_nanos()) as u32;
        Self { limit, wait: None, next_tat, remaining, reset: ahead }
    }

    fn headers(&self, h: &mut HeaderMap) {
        h.insert(LIMIT, HeaderValue::from(self.limit));
        h.insert(REMAINING, HeaderValue::from(self.remaining));
        if let Ok(v) = HeaderValue::from_str(&format!("{:.3}s", self.reset.as_secs_f64())) {
            h.insert(RESET, v);
        }
    }
}

fn refused(key: &Principal, what: String, wait: Duration, headers: HeaderMap) -> Box<Refused> {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
    tracing::info!(key_id = %key.key_id, tenant = %key.tenant, "rate limited: {what}");
    let error = ApiError {
        kind: "rate_limit_error",
        retry_after: Some(secs),
        ..ApiError::invalid(None, format!("Rate limit reached for key {}: {what}. Try again in {secs} s.", key.key_id))
    }
    .with_status(StatusCode::TOO_MANY_REQUESTS)
    .with_code("rate_limit_exceeded");
    Box::new(Refused { error, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_of_the_limit_then_one_per_interval() {
        let t0 = Instant::now();
        let mut tat = None;
        for i in 0..6 {
            let r = Rate::of(6, tat, t0);
            assert!(r.wait.is_none(), "request {i} of the burst");
            assert_eq!(r.remaining, 5 - i);
            tat = Some(r.next_tat);
        }
        let r = Rate::of(6, tat, t0);
        assert_eq!(r.wait, Some(Duration::from_secs(10)), "one more every 10 s");
        let r = Rate::of(6, tat, t0 + Duration::from_secs(10));
        assert!(r.wait.is_none() && r.remaining == 0);
        let r = Rate::of(6, tat, t0 + Duration::from_secs(120));
        assert!(r.wait.is_none() && r.remaining == 5, "a quiet period refills, up to the burst");
    }
}
