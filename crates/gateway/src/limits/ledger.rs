//! The arithmetic of limits, apart from where the counters live: given
//! what a subject's counters stood at, does a request pass, and what do the
//! `x-ratelimit-*` headers say. The Redis script does the same sums on
//! Redis's clock; the tests here pin them down.

use std::time::Duration;

use switchyard_store::Limits;

pub const MINUTE: Duration = Duration::from_secs(60);
pub const DAY_SECS: u64 = 86_400;

/// What one subject's counters stood at, before the request being admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Standing {
    /// How far the per-minute request schedule is ahead of now (GCRA).
    pub requests: Duration,
    /// How far the per-minute token schedule is ahead of now.
    pub tokens: Duration,
    /// Tokens charged today (UTC).
    pub day_tokens: u64,
    /// Dollars charged today (UTC).
    pub day_cost_usd: f64,
}

/// One per-minute allowance as the `x-ratelimit-*` headers report it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub limit: u64,
    /// What could still be asked for now, after this request.
    pub remaining: u64,
    /// Until the allowance is whole again.
    pub reset: Duration,
    /// `Some`: this request does not fit, and how long until it would.
    pub wait: Option<Duration>,
}

/// The gap GCRA keeps between units at `limit` per minute: at least a
/// nanosecond, so a limit above 60 billion a minute acts as 60 billion.
pub fn interval(limit: u64) -> Duration {
    Duration::from_nanos(((MINUTE.as_nanos() / u128::from(limit.max(1))) as u64).max(1))
}

/// GCRA with a burst of a minute's worth: `units` more at `limit` per
/// minute fit if the schedule, advanced by them, stays within a minute.
pub fn per_minute(limit: u64, units: u64, backlog: Duration) -> Window {
    let step = interval(limit).as_nanos();
    let ahead = backlog.as_nanos() + u128::from(units) * step;
    let window = MINUTE.as_nanos();
    let nanos = |n: u128| Duration::from_nanos(n.min(u128::from(u64::MAX)) as u64);
    if ahead > window {
        let remaining = (window.saturating_sub(backlog.as_nanos()) / step) as u64;
        return Window { limit, remaining, reset: backlog, wait: Some(nanos(ahead - window)) };
    }
    Window { limit, remaining: ((window - ahead) / step) as u64, reset: nanos(ahead), wait: None }
}

/// A subject's verdict on one request: its windows, for the headers, and
/// the first limit it would break.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
    /// `Some`: refused, why, and how long until it would pass.
    pub refusal: Option<(String, Duration)>,
}

/// Would a request with `tokens` prompt tokens (estimated) pass `limits`,
/// given the `standing` counters and the time left in the UTC day?
pub fn verdict(limits: &Limits, standing: &Standing, tokens: u64, until_midnight: Duration) -> Verdict {
    let requests = limits.requests_per_minute.map(|l| per_minute(u64::from(l), 1, standing.requests));
    let per_min = limits.tokens_per_minute.map(|l| per_minute(l, tokens, standing.tokens));
    let refusal = if let Some(w) = requests.filter(|w| w.wait.is_some()) {
        Some((format!("more than {} requests per minute", w.limit), w.wait.unwrap_or_default()))
    } else if let Some(w) = per_min.filter(|w| w.wait.is_some()) {
        Some((format!("more than {} tokens per minute", w.limit), w.wait.unwrap_or_default()))
    } else if let Some(l) = limits.tokens_per_day.filter(|&l| standing.day_tokens.saturating_add(tokens) > l) {
        Some((format!("more than {l} tokens per day (UTC)"), until_midnight))
    } else {
        limits
            .cost_per_day_usd
            .filter(|&l| standing.day_cost_usd >= l)
            .map(|l| (format!("the day's budget of ${l} is spent (UTC)"), until_midnight))
    };
    Verdict { requests, tokens: per_min, refusal }
}

/// Why a request of `tokens` prompt tokens could never pass `limits`,
/// however long it waited.
pub fn never_fits(limits: &Limits, tokens: u64) -> Option<String> {
    let over = |limit: Option<u64>| limit.filter(|&l| tokens > l);
    if let Some(l) = over(limits.tokens_per_minute) {
        Some(format!("its ~{tokens} prompt tokens are more than the {l} tokens per minute allowed"))
    } else {
        over(limits.tokens_per_day)
            .map(|l| format!("its ~{tokens} prompt tokens are more than the {l} tokens per day allowed"))
    }
}

/// The day number (days since the Unix epoch, UTC) and the time left in it.
pub fn day(unix_ms: i64) -> (u64, Duration) {
    let ms = u64::try_from(unix_ms).unwrap_or(0);
    let day_ms = DAY_SECS * 1000;
    (ms / day_ms, Duration::from_millis(day_ms - ms % day_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_of_the_limit_then_one_per_interval() {
        let mut backlog = Duration::ZERO;
        for i in 0..6 {
            let w = per_minute(6, 1, backlog);
            assert_eq!((w.wait, w.remaining), (None, 5 - i), "request {i} of the burst");
            backlog += interval(6);
        }
        assert_eq!(per_minute(6, 1, backlog).wait, Some(Duration::from_secs(10)), "then one every 10 s");
        assert_eq!(per_minute(6, 1, backlog - Duration::from_secs(10)).wait, None);
    }

    #[test]
    fn a_limit_too_large_to_reach_still_counts() {
        let w = per_minute(1_000_000_000_000, 1000, Duration::ZERO);
        assert_eq!(w.wait, None);
        assert!(interval(1_000_000_000_000) > Duration::ZERO);
    }

    #[test]
    fn tokens_are_units_of_the_same_schedule() {
        let w = per_minute(1000, 600, Duration::ZERO);
        assert_eq!((w.wait, w.remaining), (None, 400));
        let w = per_minute(1000, 600, interval(1000) * 600);
        assert_eq!(w.wait, Some(Duration::from_secs(12)), "200 tokens' worth over");
        assert_eq!(w.remaining, 400, "nothing is charged for a refusal");
    }

    #[test]
    fn each_limit_refuses_with_its_own_reason() {
        let midnight = Duration::from_secs(3600);
        let limits = Limits { tokens_per_day: Some(100), cost_per_day_usd: Some(1.0), ..Limits::default() };
        let ok = Standing { day_tokens: 50, day_cost_usd: 0.5, ..Standing::default() };
        assert_eq!(verdict(&limits, &ok, 50, midnight).refusal, None);
        let r = verdict(&limits, &ok, 51, midnight).refusal.unwrap();
        assert!(r.0.contains("100 tokens per day") && r.1 == midnight, "{r:?}");
        let spent = Standing { day_cost_usd: 1.0, ..ok };
        assert!(verdict(&limits, &spent, 1, midnight).refusal.unwrap().0.contains("budget of $1"));
        let small = Limits { tokens_per_minute: Some(10), ..Limits::default() };
        assert!(never_fits(&small, 11).unwrap().contains("~11 prompt tokens"));
        assert_eq!(never_fits(&small, 10), None);
    }

    #[test]
    fn days_are_utc() {
        assert_eq!(day(0), (0, Duration::from_secs(DAY_SECS)));
        assert_eq!(day(86_400_000 + 1000), (1, Duration::from_secs(DAY_SECS - 1)));
    }
}
