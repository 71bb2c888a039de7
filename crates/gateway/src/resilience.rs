//! Per-route circuit breaker and retry budget, and the stalled-stream guard.
//!
//! The breaker and the budget take the current time as an argument instead
//! of reading a clock, so their state machines are tested on a fake clock.

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
    /// One probe is in flight; everything else is refused until it reports.
    HalfOpen,
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
        Self { recent: std::collections::VecDeque::with_capacity(config.window as usize), config, state: BreakerState::Closed { failures: 0 } }
    }

    fn ratio_exceeded(&self) -> bool {
        let failed = self.recent.iter().filter(|f| **f).count();
        self.config.error_ratio > 0.0
            && self.recent.len() == self.config.window as usize
            && failed as f64 >= self.config.error_ratio * self.config.window as f64
    }

    /// May a request go to the route now? An open breaker past its wait lets
    /// exactly one probe through.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => false,
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
            (BreakerState::Closed { failures }, false) if failures + 1 < self.config.consecutive_failures && !self.ratio_exceeded() => {
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

/// Passes `s` through until it goes quiet for longer than `limit`; then
/// yields `on_stall()` once and ends (dropping `s`, which cancels whatever
/// feeds it).
pub fn gap_limited<S, T>(s: S, limit: Duration, on_stall: impl FnOnce() -> T + Send + 'static) -> impl Stream<Item = T> + Send
where
    S: Stream<Item = T> + Send + 'static,
    T: Send + 'static,
{
    stream::unfold((Box::pin(s), Some(on_stall)), move |(mut s, stall)| async move {
        let stall = stall?;
        match tokio::time::timeout(limit, s.next()).await {
            Ok(Some(item)) => Some((item, (s, Some(stall)))),
            Ok(None) => None,
            Err(_) => Some((stall(), (s, None))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_ends_with_one_error_item() {
        let gaps = [10u64, 20, 500, 10];
        let source = stream::iter(gaps).then(|g| async move {
            tokio::time::sleep(ms(g)).await;
            g.to_string()
        });
        let out: Vec<String> = gap_limited(source, ms(100), || "stalled".to_string()).collect().await;
        assert_eq!(out, ["10", "20", "stalled"]);
        let quick = stream::iter(["a", "b"]).map(String::from);
        assert_eq!(gap_limited(quick, ms(1), || "stalled".to_string()).collect::<Vec<_>>().await, ["a", "b"]);
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(Breaker { consecutive_failures: 3, open_ms: 1000, error_ratio: 0.0, window: 10 });
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.record(false, t0);
        }
        assert!(!b.is_open());
        b.record(false, t0);
        assert!(b.is_open());
        assert!(!b.allow(t0 + ms(999)), "open: refused");
        assert!(b.allow(t0 + ms(1000)), "after the wait: one probe");
        assert!(!b.allow(t0 + ms(1001)), "half-open: only one probe at a time");
        b.record(false, t0 + ms(1100));
        assert!(!b.allow(t0 + ms(1200)), "failed probe reopens");
        assert!(b.allow(t0 + ms(2100)));
        b.record(true, t0 + ms(2150));
        assert!(!b.is_open() && b.allow(t0 + ms(2151)), "successful probe closes");
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(Breaker { consecutive_failures: 2, open_ms: 1000, error_ratio: 0.0, window: 10 });
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        assert!(!b.is_open(), "failures were not consecutive");
    }

    #[test]
    fn an_error_ratio_opens_it_without_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(Breaker { consecutive_failures: 100, open_ms: 1000, error_ratio: 0.5, window: 10 });
        // Alternating failures: never two in a row, but half of all requests.
        for i in 0..9 {
            b.record(i % 2 == 1, t0);
            assert!(!b.is_open(), "the window is not full yet ({i})");
        }
        b.record(false, t0);
        assert!(b.is_open(), "5 of the last 10 failed");
        assert!(b.allow(t0 + ms(1000)));
        b.record(true, t0 + ms(1001));
        assert!(!b.is_open(), "a good probe closes it and clears the window");
        let mut calm = CircuitBreaker::new(Breaker { consecutive_failures: 100, open_ms: 1000, error_ratio: 0.5, window: 10 });
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
