//! Per-key rate limits: requests per minute (GCRA, a burst of a minute's
//! worth) and requests in flight. Over a limit: 429 with `Retry-After` and
//! OpenAI's `x-ratelimit-*-requests` headers, so the official clients back
//! off by themselves.
//!
//! The per-minute schedule lives in this process, or (`redis`) in Redis,
//! where one atomic script per request checks and advances it on Redis's
//! own clock, so every replica sharing that Redis shares the limit. When
//! Redis cannot be reached, `redis-fail` decides: `open` admits (and says
//! so in `x-switchyard-ratelimit`), `closed` answers 503. Requests in flight
//! are counted per process.
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
const DEGRADED: HeaderName = HeaderName::from_static("x-switchyard-ratelimit");

/// GCRA on Redis's clock, in µs. KEYS[1]: the key's theoretical arrival
/// time; ARGV: the interval and the window (a minute). Returns {admitted,
/// ahead, backlog}: how far the schedule would be ahead of now with this
/// request, and how far it was without it.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat + interval - now
if ahead > window then return {0, ahead, tat - now} end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.floor(ahead / 1000) + 1)
return {1, ahead, tat - now}
";

#[derive(Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, KeyState>>,
    shared: Option<Shared>,
}

/// What a shared limiter does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Admit, unlimited, and say so in a header and the log.
    #[default]
    Open,
    /// Refuse with a 503 until Redis is back.
    Closed,
}

/// The per-minute schedules in Redis.
struct Shared {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    fail: FailMode,
    script: redis::Script,
}

#[derive(Default)]
struct KeyState {
    /// GCRA's theoretical arrival time of the next request (local schedules).
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
    /// Per-minute schedules in the Redis at `url`, under `prefix`; connected
    /// here, so a wrong address fails at start.
    pub async fn shared(url: &str, prefix: &str, fail: FailMode) -> Result<Self, redis::RedisError> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        let shared = Shared { conn, prefix: prefix.to_string(), fail, script: redis::Script::new(GCRA) };
        Ok(Self { keys: Mutex::default(), shared: Some(shared) })
    }

    pub async fn admit(&self, caller: &Caller, now: Instant) -> Result<Admitted, Box<Refused>> {
        let Caller::Key(key) = caller else { return Ok(Admitted { headers: HeaderMap::new(), slot: None }) };
        let mut headers = HeaderMap::new();
        if let Some(limit) = key.limits.requests_per_minute {
            let rate = match &self.shared {
                None => Some(self.local_rate(&key.key_id, limit, now)),
                Some(shared) => shared.rate(key, limit, &mut headers).await?,
            };
            if let Some(rate) = rate {
                rate.headers(&mut headers);
                if let Some(wait) = rate.wait {
                    return Err(refused(key, format!("more than {limit} requests per minute"), wait, headers));
                }
            }
        }
        let slot = match key.limits.concurrent {
            None => None,
            Some(most) => {
                let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
                let in_flight = keys.entry(key.key_id.clone()).or_default().in_flight.clone();
                drop(keys);
                if in_flight.fetch_add(1, Ordering::SeqCst) >= most {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    return Err(refused(
                        key,
                        format!("more than {most} requests at once"),
                        Duration::from_secs(1),
                        headers,
                    ));
                }
                Some(Slot(in_flight))
            }
        };
        Ok(Admitted { headers, slot })
    }

    /// One GCRA step on this process's schedule for the key, advanced if admitted.
    fn local_rate(&self, key_id: &str, limit: u32, now: Instant) -> Rate {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let state = keys.entry(key_id.to_string()).or_default();
        let tat = state.tat.map_or(now, |t| t.max(now));
        let rate = Rate::of(limit, tat.saturating_duration_since(now));
        if rate.wait.is_none() {
            state.tat = Some(tat + MINUTE / limit);
        }
        rate
    }
}

impl Shared {
    /// One GCRA step on the key's schedule in Redis. `Ok(None)`: Redis is
    /// unreachable and the limiter fails open (noted in `headers`).
    async fn rate(&self, key: &Principal, limit: u32, headers: &mut HeaderMap) -> Result<Option<Rate>, Box<Refused>> {
        let mut conn = self.conn.clone();
        let reply: Result<(u8, i64, i64), _> = self
            .script
            .key(format!("{}{}", self.prefix, key.key_id))
            .arg((MINUTE / limit).as_micros() as i64)
            .arg(MINUTE.as_micros() as i64)
            .invoke_async(&mut conn)
            .await;
        match reply {
            Ok((_, _, backlog)) => Ok(Some(Rate::of(limit, Duration::from_micros(backlog.max(0) as u64)))),
            Err(e) if self.fail == FailMode::Open => {
                tracing::warn!(key_id = %key.key_id, "rate limiter unreachable, admitting (redis-fail = open): {e}");
                headers.insert(DEGRADED, HeaderValue::from_static("unavailable; fail-open"));
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(key_id = %key.key_id, "rate limiter unreachable, refusing (redis-fail = closed): {e}");
                headers.insert(DEGRADED, HeaderValue::from_static("unavailable; fail-closed"));
                let error = ApiError {
                    retry_after: Some(1),
                    ..ApiError::internal("the rate limiter is unreachable; try again shortly")
                }
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .with_code("rate_limiter_unavailable");
                Err(Box::new(Refused { error, headers: std::mem::take(headers) }))
            }
        }
    }
}

/// One GCRA step for `limit` per minute (burst `limit`), given how far the
/// key's schedule is ahead of now: the same arithmetic the Redis script does.
struct Rate {
    limit: u32,
    /// `Some`: refused, and how long until a request would pass.
    wait: Option<Duration>,
    remaining: u32,
    /// Until the key's allowance is whole again.
    reset: Duration,
}

impl Rate {
    fn of(limit: u32, backlog: Duration) -> Self {
        let interval = MINUTE / limit;
        let ahead = backlog + interval;
        if ahead > MINUTE {
            return Self { limit, wait: Some(ahead - MINUTE), remaining: 0, reset: backlog };
        }
        let remaining = ((MINUTE - ahead).as_nanos() / interval.as_nanos()) as u32;
        Self { limit, wait: None, remaining, reset: ahead }
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
        let limiter = Limiter::default();
        let t0 = Instant::now();
        for i in 0..6 {
            let r = limiter.local_rate("k", 6, t0);
            assert!(r.wait.is_none(), "request {i} of the burst");
            assert_eq!(r.remaining, 5 - i);
        }
        assert_eq!(limiter.local_rate("k", 6, t0).wait, Some(Duration::from_secs(10)), "then one every 10 s");
        assert_eq!(limiter.local_rate("k", 6, t0).wait, Some(Duration::from_secs(10)), "a refusal moves nothing");
        let r = limiter.local_rate("k", 6, t0 + Duration::from_secs(10));
        assert!(r.wait.is_none() && r.remaining == 0);
        let r = limiter.local_rate("k", 6, t0 + Duration::from_secs(120));
        assert!(r.wait.is_none() && r.remaining == 5, "a quiet period refills, up to the burst");
        assert!(limiter.local_rate("other", 6, t0).wait.is_none(), "keys are apart");
    }
}
