//! Per-route circuit breaker and retry budget, and the stalled-stream guard.
//! [`health`] puts a breaker and a budget together for a route or a backend.
//!
//! The breaker and the budget take the current time as an argument instead
//! of reading a clock, so their state machines are tested on a fake clock.

pub mod health;

use std::time::{Duration, Instant};

use futures::stream::{self, Stream, StreamExt};

use switchyard_router::{Breaker, RetryBudget};

#[derive(Debug, Clone, Copy, PartialEq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everything else is refused until it reports
    /// or is released (see [`CircuitBreaker::release_probe`]).
    HalfOpen,
}

/// How a request got past the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    /// The one request let through a half-open breaker: its outcome decides
    /// whether the route closes or opens again.
    Probe,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: Breaker,
    state: BreakerState,
    /// Outcomes of the last `config.window` requests (true = failed).
    recent: std::collections::VecDeque<bool>,
}

impl CircuitBreaker {
    pub fn new(config: Breaker) -> Self {
        Self {
            recent: std::collections::VecDeque::with_capacity(config.window as usize),
            config,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    fn ratio_exceeded(&self) -> bool {
        let failed = self.recent.iter().filter(|f| **f).count();
        self.config.error_ratio > 0.0
            && self.recent.len() == self.config.window as usize
            && failed as f64 >= self.config.error_ratio * self.config.window as f64
    }

    /// May a request go to the route now? An open breaker past its wait lets
    /// exactly one probe through.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.state {
            BreakerState::Closed { .. } => Some(Admission::Normal),
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Some(Admission::Probe)
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => None,
        }
    }

    /// The probe ended without a verdict on the route: its request was at
    /// fault, or it was dropped mid-flight (a client that hung up). The
    /// next request probes instead, so a breaker never stays half-open.
    pub fn release_probe(&mut self, now: Instant) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open { until: now };
        }
    }

    pub fn record(&mut self, success: bool, now: Instant) {
        if self.recent.len() == self.config.window as usize {
            self.recent.pop_front();
        }
        self.recent.push_back(!success);
        let open = BreakerState::Open { until: now + Duration::from_millis(self.config.open_ms) };
        self.state = match (self.state, success) {
            // A successful probe closes the breaker with a clean slate.
            (BreakerState::HalfOpen, true) => {
                self.recent.clear();
                BreakerState::Closed { failures: 0 }
            }
            (_, true) if self.ratio_exceeded() => open,
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false)
                if failures + 1 < self.config.consecutive_failures && !self.ratio_exceeded() =>
            {
                BreakerState::Closed { failures: failures + 1 }
            }
            (_, false) => open,
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed { .. })
    }
}

/// A token bucket: each request to the route deposits `ratio` tokens, time
/// deposits `min_per_second`, a retry withdraws one. Capped at ten seconds of
/// `min_per_second` plus ten retries, so a quiet period cannot bank a storm.
#[derive(Debug)]
pub struct RetryBucket {
    config: RetryBudget,
    tokens: f64,
    last: Instant,
}

impl RetryBucket {
    pub fn new(config: RetryBudget, now: Instant) -> Self {
        Self { config, tokens: 0.0, last: now }
    }

    fn cap(&self) -> f64 {
        10.0 * self.config.min_per_second + 10.0
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + secs * self.config.min_per_second).min(self.cap());
    }

    /// A request was sent to the route.
    pub fn deposit(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + self.config.ratio).min(self.cap());
    }

    /// Takes one retry if the budget has it.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why [`cut_off`] ended a stream early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing arrived for longer than the gap limit.
    Stalled,
    /// The deadline passed.
    PastDeadline,
}

/// Passes `s` through until it goes quiet for longer than `gap` or runs
/// past `deadline`; then yields `cut(why)` once and ends, dropping `s`,
/// which cancels whatever feeds it.
pub fn cut_off<S, T>(
    s: S,
    gap: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
    cut: impl FnOnce(Cut) -> T + Send + 'static,
) -> impl Stream<Item = T> + Send
where
    S: Stream<Item = T> + Send + 'static,
    T: Send + 'static,
{
    stream::unfold((Box::pin(s), Some(cut)), move |(mut s, cut)| async move {
        let cut = cut?;
        let next = async {
            match gap {
                Some(gap) => tokio::time::timeout(gap, s.next()).await.map_err(|_| Cut::Stalled),
                None => Ok(s.next().await),
            }
        };
        let next = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, next).await.unwrap_or(Err(Cut::PastDeadline)),
            None => next.await,
        };
        match next {
            Ok(Some(item)) => Some((item, (s, Some(cut)))),
            Ok(None) => None,
            Err(why) => Some((cut(why), (s, None))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn paced(gaps: &'static [u64]) -> impl Stream<Item = String> + Send + 'static {
        stream::iter(gaps).then(|g| async move {
            tokio::time::sleep(ms(*g)).await;
            g.to_string()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_ends_with_one_error_item() {
        let out: Vec<String> =
            cut_off(paced(&[10, 20, 500, 10]), Some(ms(100)), None, |why| format!("{why:?}")).collect().await;
        assert_eq!(out, ["10", "20", "Stalled"]);
        let quick = stream::iter(["a", "b"]).map(String::from);
        assert_eq!(cut_off(quick, Some(ms(1)), None, |_| "cut".to_string()).collect::<Vec<_>>().await, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_one_error_item() {
        // Never quiet for long, but 4 x 40 ms is past a 100 ms deadline.
        let deadline = tokio::time::Instant::now() + ms(100);
        let out: Vec<String> =
            cut_off(paced(&[40, 40, 40, 40]), Some(ms(50)), Some(deadline), |why| format!("{why:?}")).collect().await;
        assert_eq!(out, ["40", "40", "PastDeadline"]);
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b =
            CircuitBreaker::new(Breaker { consecutive_failures: 3, open_ms: 1000, error_ratio: 0.0, window: 10 });
        for _ in 0..2 {
            assert!(b.admit(t0).is_some());
            b.record(false, t0);
        }
        assert!(!b.is_open());
        b.record(false, t0);
        assert!(b.is_open());
        assert!(b.admit(t0 + ms(999)).is_none(), "open: refused");
        assert!(b.admit(t0 + ms(1000)).is_some(), "after the wait: one probe");
        assert!(b.admit(t0 + ms(1001)).is_none(), "half-open: only one probe at a time");
        b.record(false, t0 + ms(1100));
        assert!(b.admit(t0 + ms(1200)).is_none(), "failed probe reopens");
        assert!(b.admit(t0 + ms(2100)).is_some());
        b.record(true, t0 + ms(2150));
        assert!(!b.is_open() && b.admit(t0 + ms(2151)).is_some(), "successful probe closes");
    }

    #[test]
    fn a_probe_released_without_a_verdict_lets_the_next_request_probe() {
        let t0 = Instant::now();
        let mut b =
            CircuitBreaker::new(Breaker { consecutive_failures: 1, open_ms: 1000, error_ratio: 0.0, window: 10 });
        b.record(false, t0);
        assert_eq!(b.admit(t0 + ms(1000)), Some(Admission::Probe));
        assert_eq!(b.admit(t0 + ms(1001)), None, "half-open: the probe is in flight");
        b.release_probe(t0 + ms(1002));
        assert_eq!(b.admit(t0 + ms(1002)), Some(Admission::Probe), "the dropped probe no longer blocks the route");
        b.record(true, t0 + ms(1003));
        assert_eq!(b.admit(t0 + ms(1004)), Some(Admission::Normal));
        b.release_probe(t0 + ms(1005));
        assert_eq!(b.admit(t0 + ms(1005)), Some(Admission::Normal), "releasing outside half-open changes nothing");
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b =
            CircuitBreaker::new(Breaker { consecutive_failures: 2, open_ms: 1000, error_ratio: 0.0, window: 10 });
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        assert!(!b.is_open(), "failures were not consecutive");
    }

    #[test]
    fn an_error_ratio_opens_it_without_consecutive_failures() {
        let t0 = Instant::now();
        let mut b =
            CircuitBreaker::new(Breaker { consecutive_failures: 100, open_ms: 1000, error_ratio: 0.5, window: 10 });
        // Alternating failures: never two in a row, but half of all requests.
        for i in 0..9 {
            b.record(i % 2 == 1, t0);
            assert!(!b.is_open(), "the window is not full yet ({i})");
        }
        b.record(false, t0);
        assert!(b.is_open(), "5 of the last 10 failed");
        assert!(b.admit(t0 + ms(1000)).is_some());
        b.record(true, t0 + ms(1001));
        assert!(!b.is_open(), "a good probe closes it and clears the window");
        let mut calm =
            CircuitBreaker::new(Breaker { consecutive_failures: 100, open_ms: 1000, error_ratio: 0.5, window: 10 });
        for i in 0..30 {
            calm.record(i % 3 != 0, t0);
        }
        assert!(!calm.is_open(), "a third failing stays under a half");
    }

    #[test]
    fn retries_are_bounded_by_ratio_and_minimum() {
        let t0 = Instant::now();
        let mut r = RetryBucket::new(RetryBudget { ratio: 0.2, min_per_second: 0.0 }, t0);
        let mut granted = 0;
        for _ in 0..100 {
            r.deposit(t0);
            if r.try_withdraw(t0) {
                granted += 1;
            }
        }
        assert_eq!(granted, 20, "0.2 retries per request");

        let mut r = RetryBucket::new(RetryBudget { ratio: 0.0, min_per_second: 2.0 }, t0);
        assert!(!r.try_withdraw(t0));
        let granted = (1..=10).filter(|i| r.try_withdraw(t0 + ms(100 * i))).count();
        assert_eq!(granted, 2, "2 per second over one second");
    }
}
