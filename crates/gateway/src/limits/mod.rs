//! Limits per key and per tenant: requests and tokens per minute (GCRA, a
//! burst of a minute's worth), tokens and dollars per UTC day, requests in
//! flight. Over a limit: 429 with `Retry-After` and OpenAI's
//! `x-ratelimit-*-requests` / `-tokens` headers, so the official clients
//! back off by themselves.
//!
//! A request counts against its key's limits and its tenant's (the tenant's
//! are shared by all its keys). Prompt tokens are charged at admission (an
//! estimate from the text, corrected by the answer's `usage`), completion
//! tokens as they stream ([`meter`]), and the answer's cost at the route's
//! `[prices]` when it ends; a stream cut short is charged what it produced.
//!
//! The counters live in this process ([`local`]) or in Redis ([`shared`]),
//! where every replica using that Redis shares them. When Redis cannot be
//! reached, `redis-fail` decides: `open` admits (and says so in
//! `x-switchyard-ratelimit`), `closed` answers 503. Requests in flight are
//! counted per process.
//!
//! Invariant: a refused request changes no counter (it does not push a
//! schedule further out), so retrying after `Retry-After` succeeds.

mod ledger;
mod local;
pub mod meter;
mod shared;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use switchyard_store::Limits;

use crate::auth::Caller;
use crate::error::ApiError;
use ledger::{Verdict, Window};

const DEGRADED: HeaderName = HeaderName::from_static("x-switchyard-ratelimit");
/// The code of the 400 for a prompt over a token limit by itself.
pub const OVER_LIMIT: &str = "request_over_limit";

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

/// Whose limits a request counts against: `key:<id>` or `tenant:<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub id: String,
    pub limits: Limits,
}

#[derive(Default)]
pub struct Limiter {
    local: local::Accounts,
    shared: Option<shared::Shared>,
    in_flight: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

/// A request let through: the headers to answer with, and what to charge
/// its answer to (which also holds its places in flight).
pub struct Admitted {
    pub headers: HeaderMap,
    pub meter: Option<meter::Meter>,
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
    /// Counters in the Redis at `url`, under `prefix`; connected here, so a
    /// wrong address fails at start.
    pub async fn shared(url: &str, prefix: &str, fail: FailMode) -> Result<Self, redis::RedisError> {
        let shared = shared::Shared::connect(url, prefix, fail).await?;
        Ok(Self { shared: Some(shared), ..Self::default() })
    }

    /// Whether limits are counted in Redis, shared by replicas.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Until `until_ms` (Unix ms; 0: end it now), admissions fail as with
    /// Redis unreachable, and `redis-fail` decides; false when limits are
    /// not shared through Redis.
    pub fn inject_redis_outage(&self, until_ms: i64) -> bool {
        self.shared.as_ref().is_some_and(|s| {
            s.outage_until_ms.store(until_ms, Ordering::Relaxed);
            true
        })
    }

    /// Admits a request from `caller` whose prompt is about `tokens` tokens,
    /// charging it to every subject, or refuses it and charges nothing.
    pub async fn admit(self: &Arc<Self>, caller: &Caller, tokens: u64) -> Result<Admitted, Box<Refused>> {
        let subjects = subjects(caller);
        if subjects.is_empty() {
            return Ok(Admitted { headers: HeaderMap::new(), meter: None });
        }
        if let Some((subject, why)) =
            subjects.iter().find_map(|s| ledger::never_fits(&s.limits, tokens).map(|w| (s, w)))
        {
            return Err(too_large(subject, why));
        }
        // Places in flight first: if a counter then refuses, dropping them
        // frees them, and no counter has been charged.
        let slots = self.take_slots(caller, &subjects)?;
        let mut headers = HeaderMap::new();
        let (today, until_midnight) = ledger::day(switchyard_wire::unix_ms());
        let judge = |standings: &[ledger::Standing]| {
            let verdicts: Vec<Verdict> = subjects
                .iter()
                .zip(standings)
                .map(|(s, st)| ledger::verdict(&s.limits, st, tokens, until_midnight))
                .collect();
            (verdicts.iter().all(|v| v.refusal.is_none()), verdicts)
        };
        let counted = match &self.shared {
            None => Some(self.local.check(&subjects, tokens, Instant::now(), today, judge)),
            Some(shared) => match shared.check(&subjects, tokens, today).await {
                // Redis decided, atomically; the verdicts only explain it.
                Ok((admitted, standings)) => {
                    let (_, mut verdicts) = judge(&standings);
                    if !admitted && verdicts.iter().all(|v| v.refusal.is_none()) {
                        if let Some(v) = verdicts.first_mut() {
                            v.refusal = Some(("a limit was reached".into(), Duration::from_secs(1)));
                        }
                    }
                    Some(verdicts)
                }
                Err(e) => {
                    unreachable_redis(shared.fail, caller, &e, &mut headers)?;
                    None
                }
            },
        };
        if let Some(verdicts) = &counted {
            write_headers(verdicts, &mut headers);
            if let Some((subject, (why, wait))) =
                subjects.iter().zip(verdicts).find_map(|(s, v)| v.refusal.clone().map(|r| (s, r)))
            {
                return Err(refused(caller, subject, why, wait, headers));
            }
        }
        let meter = meter::Meter::new(self.clone(), subjects, tokens, slots);
        Ok(Admitted { headers, meter: Some(meter) })
    }

    /// A place among each subject's requests in flight, or a refusal.
    fn take_slots(&self, caller: &Caller, subjects: &[Subject]) -> Result<Vec<Slot>, Box<Refused>> {
        let mut slots = Vec::new();
        for s in subjects {
            let Some(most) = s.limits.concurrent else { continue };
            let counter = {
                let mut map = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                map.entry(s.id.clone()).or_default().clone()
            };
            if counter.fetch_add(1, Ordering::SeqCst) >= most {
                counter.fetch_sub(1, Ordering::SeqCst);
                // Places taken for earlier subjects are freed as `slots` drops.
                let why = format!("more than {most} requests at once");
                return Err(refused(caller, s, why, Duration::from_secs(1), HeaderMap::new()));
            }
            slots.push(Slot(counter));
        }
        Ok(slots)
    }

    /// Charges `tokens` more (negative: refunds) and `cost_usd` to `subjects`.
    fn charge(&self, subjects: &[Subject], tokens: i64, cost_usd: f64) {
        if tokens == 0 && cost_usd <= 0.0 {
            return;
        }
        let (today, _) = ledger::day(switchyard_wire::unix_ms());
        match &self.shared {
            None => self.local.charge(subjects, tokens, cost_usd, Instant::now(), today),
            Some(shared) => shared.charge(subjects, tokens, cost_usd, today),
        }
    }
}

/// The caller's key and tenant, where either has a limit.
fn subjects(caller: &Caller) -> Vec<Subject> {
    let Caller::Key(key) = caller else { return Vec::new() };
    let key_subject = Subject { id: format!("key:{}", key.key_id), limits: key.limits };
    let tenant_subject = Subject { id: format!("tenant:{}", key.tenant), limits: key.tenant_limits };
    [key_subject, tenant_subject].into_iter().filter(|s| !s.limits.is_empty()).collect()
}

/// The tightest per-minute windows of all subjects, as OpenAI's headers.
fn write_headers(verdicts: &[Verdict], h: &mut HeaderMap) {
    let tightest = |pick: fn(&Verdict) -> Option<Window>| {
        verdicts.iter().filter_map(pick).min_by_key(|w| (w.wait.is_none(), w.remaining))
    };
    for (kind, window) in [("requests", tightest(|v| v.requests)), ("tokens", tightest(|v| v.tokens))] {
        let Some(w) = window else { continue };
        let mut put = |name: String, value: String| {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                h.insert(n, v);
            }
        };
        put(format!("x-ratelimit-limit-{kind}"), w.limit.to_string());
        put(format!("x-ratelimit-remaining-{kind}"), w.remaining.to_string());
        put(format!("x-ratelimit-reset-{kind}"), format!("{:.3}s", w.reset.as_secs_f64()));
    }
}

/// Redis is unreachable: `Ok` (noted in `headers`) when failing open.
fn unreachable_redis(
    fail: FailMode,
    caller: &Caller,
    e: &redis::RedisError,
    headers: &mut HeaderMap,
) -> Result<(), Box<Refused>> {
    let key_id = match caller {
        Caller::Key(k) => k.key_id.as_str(),
        Caller::Open => "",
    };
    if fail == FailMode::Open {
        tracing::warn!(key_id, "rate limiter unreachable, admitting (redis-fail = open): {e}");
        headers.insert(DEGRADED, HeaderValue::from_static("unavailable; fail-open"));
        return Ok(());
    }
    tracing::warn!(key_id, "rate limiter unreachable, refusing (redis-fail = closed): {e}");
    headers.insert(DEGRADED, HeaderValue::from_static("unavailable; fail-closed"));
    let error =
        ApiError { retry_after: Some(1), ..ApiError::internal("the rate limiter is unreachable; try again shortly") }
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_code("rate_limiter_unavailable");
    Err(Box::new(Refused { error, headers: std::mem::take(headers) }))
}

/// A request no wait would let through: a 400, so clients do not retry it.
fn too_large(subject: &Subject, why: String) -> Box<Refused> {
    let whose = subject.id.replacen(':', " ", 1);
    tracing::info!(subject = %subject.id, "refused, over a limit by itself: {why}");
    let error = ApiError::invalid(Some("messages".into()), format!("Request too large for {whose}: {why}."))
        .with_code(OVER_LIMIT);
    Box::new(Refused { error, headers: HeaderMap::new() })
}

fn refused(caller: &Caller, subject: &Subject, what: String, wait: Duration, headers: HeaderMap) -> Box<Refused> {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
    let tenant = caller.tenant().unwrap_or_default();
    tracing::info!(subject = %subject.id, tenant, "rate limited: {what}");
    let whose = subject.id.replacen(':', " ", 1);
    let error = ApiError {
        kind: "rate_limit_error",
        retry_after: Some(secs),
        ..ApiError::invalid(None, format!("Rate limit reached for {whose}: {what}. Try again in {secs} s."))
    }
    .with_status(StatusCode::TOO_MANY_REQUESTS)
    .with_code("rate_limit_exceeded");
    Box::new(Refused { error, headers })
}
