//! Counters in this process: one account per key and per tenant.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ledger::{self, Standing};
use super::Subject;

#[derive(Default)]
pub struct Accounts(Mutex<HashMap<String, Account>>);

#[derive(Default)]
struct Account {
    /// GCRA's theoretical arrival time of the next request, and of the next token.
    requests: Option<Instant>,
    tokens: Option<Instant>,
    /// The UTC day the day counters are for.
    day: u64,
    day_tokens: u64,
    day_cost_usd: f64,
}

impl Account {
    fn standing(&self, now: Instant, today: u64) -> Standing {
        let backlog = |tat: Option<Instant>| tat.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let (day_tokens, day_cost_usd) =
            if self.day == today { (self.day_tokens, self.day_cost_usd) } else { (0, 0.0) };
        Standing { requests: backlog(self.requests), tokens: backlog(self.tokens), day_tokens, day_cost_usd }
    }

    fn roll(&mut self, today: u64) {
        if self.day != today {
            self.day = today;
            self.day_tokens = 0;
            self.day_cost_usd = 0.0;
        }
    }

    /// Moves the token schedule by `tokens` (back, for a refund, never before now).
    fn shift_tokens(&mut self, limit: Option<u64>, tokens: i64, now: Instant) {
        let Some(limit) = limit else { return };
        let tat = self.tokens.map_or(now, |t| t.max(now));
        let by = ledger::interval(limit).saturating_mul(u32::try_from(tokens.unsigned_abs()).unwrap_or(u32::MAX));
        self.tokens = Some(if tokens >= 0 { tat + by } else { tat.checked_sub(by).map_or(now, |t| t.max(now)) });
    }
}

impl Accounts {
    /// Each subject's standing; if `admit` says so given them, charges the
    /// request (one request, `tokens` tokens) to every subject, all under
    /// one lock, so two requests never both take the last place.
    pub fn check<T>(
        &self,
        subjects: &[Subject],
        tokens: u64,
        now: Instant,
        today: u64,
        admit: impl FnOnce(&[Standing]) -> (bool, T),
    ) -> T {
        let mut accounts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let standings: Vec<Standing> = subjects
            .iter()
            .map(|s| accounts.get(&s.id).map_or_else(Standing::default, |a| a.standing(now, today)))
            .collect();
        let (admitted, out) = admit(&standings);
        if admitted {
            for s in subjects {
                let a = accounts.entry(s.id.clone()).or_default();
                a.roll(today);
                if let Some(limit) = s.limits.requests_per_minute {
                    let tat = a.requests.map_or(now, |t| t.max(now));
                    a.requests = Some(tat + ledger::interval(u64::from(limit)));
                }
                a.shift_tokens(s.limits.tokens_per_minute, i64::try_from(tokens).unwrap_or(i64::MAX), now);
                a.day_tokens = a.day_tokens.saturating_add(tokens);
            }
        }
        out
    }

    /// Charges `tokens` more (or refunds, if negative) and `cost_usd`.
    pub fn charge(&self, subjects: &[Subject], tokens: i64, cost_usd: f64, now: Instant, today: u64) {
        let mut accounts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for s in subjects {
            let a = accounts.entry(s.id.clone()).or_default();
            a.roll(today);
            a.shift_tokens(s.limits.tokens_per_minute, tokens, now);
            a.day_tokens = a.day_tokens.saturating_add_signed(tokens);
            a.day_cost_usd += cost_usd;
        }
    }
}
