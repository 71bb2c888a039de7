//! A route's (or one backend's) health as this process sees it: its circuit breaker and retry
//! budget, and the one way a request passes the breaker, a [`Ticket`].
//! Process-local: each replica judges the routes it talks to.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use switchyard_router::Route;

use crate::error::Fault;
use crate::resilience::{Admission, CircuitBreaker, RetryBucket};

pub struct Health {
    breaker: Mutex<CircuitBreaker>,
    retries: Mutex<RetryBucket>,
}

/// Both locks guard plain counters: a panic while holding one cannot leave
/// them half-updated in a way worse than a lost update, so a poisoned lock
/// is used as is rather than failing every later request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    pub fn new(route: &Route, now: Instant) -> Self {
        Self {
            breaker: Mutex::new(CircuitBreaker::new(route.breaker.clone())),
            retries: Mutex::new(RetryBucket::new(route.retry.clone(), now)),
        }
    }

    /// Is the breaker open (or half-open, probing)?
    pub fn is_open(&self) -> bool {
        lock(&self.breaker).is_open()
    }

    /// Passes the breaker, or `None` while it is open. Every request sent to
    /// the route deposits into its retry budget.
    pub fn admit(&self, now: Instant) -> Option<Ticket<'_>> {
        let admission = lock(&self.breaker).admit(now)?;
        lock(&self.retries).deposit(now);
        Some(Ticket { health: self, probe: admission == Admission::Probe, settled: false })
    }
}

/// A request's pass through a route's breaker.
///
/// Invariant: every ticket ends in exactly one verdict. [`Ticket::settle`]
/// gives it from the attempt's outcome; a ticket dropped unsettled (its
/// request's future was dropped: a client that hung up, a bench timeout)
/// releases a half-open probe, so the route is probed again instead of
/// staying skipped until restart.
pub struct Ticket<'a> {
    health: &'a Health,
    probe: bool,
    settled: bool,
}

impl Ticket<'_> {
    /// May the failed attempt be retried on this route? Only a route's own
    /// fault, and only within its retry budget (which this withdraws from).
    pub fn may_retry(&self, fault: Fault) -> bool {
        fault == Fault::Route && lock(&self.health.retries).try_withdraw(Instant::now())
    }

    /// Records the attempt's outcome: `None` (success), or the fault of its
    /// error. Only the route's own fault counts against it; a request's
    /// fault says nothing about the route, so a probe is released instead.
    pub fn settle(mut self, fault: Option<Fault>) {
        self.settled = true;
        let now = Instant::now();
        let mut breaker = lock(&self.health.breaker);
        match fault {
            None => breaker.record(true, now),
            Some(Fault::Route) => breaker.record(false, now),
            Some(Fault::Request | Fault::TooLongForRoute) if self.probe => breaker.release_probe(now),
            Some(Fault::Request | Fault::TooLongForRoute) => {}
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            lock(&self.health.breaker).release_probe(Instant::now());
        }
    }
}
