//! Counters in Redis, shared by every replica that uses the same Redis:
//! one atomic script per admission checks and charges every subject of a
//! request on Redis's own clock. Charges known only later (completion
//! tokens, cost) are summed here and sent every [`FLUSH`] in one script
//! call for all subjects, so under load a request costs about one round
//! trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::ledger::{self, Standing};
use super::{FailMode, Subject};

/// How often charges made after admission are sent to Redis.
const FLUSH: Duration = Duration::from_millis(200);
/// Day counters outlive their day by one, for clocks that disagree a little.
const KEEP_DAY_SECS: u64 = 2 * ledger::DAY_SECS;

/// KEYS, per subject: the request schedule, the token schedule (both GCRA
/// theoretical arrival times, µs), the day's tokens, the day's cost (µ$).
/// ARGV: the window (µs), how long day counters live (s), then per
/// subject: request interval (µs, 0: no limit), token interval (µs, 0: no
/// limit), the request's tokens, tokens/day (0: none), µ$/day (0: none).
/// Returns {admitted, then per subject: request backlog, token backlog,
/// day tokens, day µ$}, the backlogs as they were before this request.
const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local ok = 1
local out = {}
local tats = {}
for i = 0, #KEYS / 4 - 1 do
  local a = 3 + i * 5
  local ri, ti, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local tpd, cpd = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local rt = math.max(tonumber(redis.call('GET', KEYS[i * 4 + 1])) or now, now)
  local tt = math.max(tonumber(redis.call('GET', KEYS[i * 4 + 2])) or now, now)
  local dt = tonumber(redis.call('GET', KEYS[i * 4 + 3])) or 0
  local dc = tonumber(redis.call('GET', KEYS[i * 4 + 4])) or 0
  if ri > 0 and rt + ri - now > window then ok = 0 end
  if ti > 0 and tt + n * ti - now > window then ok = 0 end
  if tpd > 0 and dt + n > tpd then ok = 0 end
  if cpd > 0 and dc >= cpd then ok = 0 end
  tats[i] = {rt, tt}
  for _, v in ipairs({rt - now, tt - now, dt, dc}) do table.insert(out, v) end
end
if ok == 1 then
  for i = 0, #KEYS / 4 - 1 do
    local a = 3 + i * 5
    local ri, ti, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    if ri > 0 then
      local v = tats[i][1] + ri
      redis.call('SET', KEYS[i * 4 + 1], v, 'PX', math.floor((v - now) / 1000) + 1)
    end
    if ti > 0 and n > 0 then
      local v = tats[i][2] + n * ti
      redis.call('SET', KEYS[i * 4 + 2], v, 'PX', math.floor((v - now) / 1000) + 1)
    end
    if n > 0 then
      redis.call('INCRBY', KEYS[i * 4 + 3], n)
      redis.call('EXPIRE', KEYS[i * 4 + 3], ARGV[2])
    end
  end
end
table.insert(out, 1, ok)
return out
";

/// KEYS, per subject: the token schedule, the day's tokens, the day's µ$.
/// ARGV: how long day counters live (s), then per subject: token interval
/// (µs, 0: no limit), tokens (negative: a refund), µ$.
const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 0, #KEYS / 3 - 1 do
  local a = 2 + i * 3
  local ti, n, c = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if ti > 0 and n ~= 0 then
    local v = math.max(tonumber(redis.call('GET', KEYS[i * 3 + 1])) or now, now) + n * ti
    if v > now then redis.call('SET', KEYS[i * 3 + 1], v, 'PX', math.floor((v - now) / 1000) + 1) end
  end
  if n ~= 0 then
    redis.call('INCRBY', KEYS[i * 3 + 2], n)
    redis.call('EXPIRE', KEYS[i * 3 + 2], ARGV[1])
  end
  if c > 0 then
    redis.call('INCRBY', KEYS[i * 3 + 3], c)
    redis.call('EXPIRE', KEYS[i * 3 + 3], ARGV[1])
  end
end
return 1
";

pub struct Shared {
    conn: redis::aio::ConnectionManager,
    /// Until when (Unix ms) admissions fail as with Redis unreachable: a
    /// game day's injected outage (0: none).
    pub outage_until_ms: std::sync::atomic::AtomicI64,
    prefix: String,
    pub fail: FailMode,
    check: redis::Script,
    pending: Arc<Mutex<HashMap<(String, u64), Pending>>>,
}

/// Charges for one subject and day not yet sent.
#[derive(Default)]
struct Pending {
    token_interval_us: f64,
    tokens: i64,
    cost_micro_usd: i64,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A GCRA interval for the scripts, in µs with its fraction: a limit of
/// more than 60 million a minute has a gap under a microsecond, and a
/// whole number would round it to 0, which the scripts read as no limit.
fn interval_us(limit: u64) -> f64 {
    ledger::interval(limit).as_nanos() as f64 / 1e3
}

impl Shared {
    /// Connects (so a wrong address fails at start) and starts the task
    /// that sends later charges.
    pub async fn connect(url: &str, prefix: &str, fail: FailMode) -> Result<Self, redis::RedisError> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        let shared = Self {
            conn,
            outage_until_ms: Default::default(),
            prefix: prefix.to_string(),
            fail,
            check: redis::Script::new(CHECK),
            pending: Arc::default(),
        };
        tokio::spawn(flush_loop(shared.conn.clone(), shared.prefix.clone(), Arc::downgrade(&shared.pending)));
        Ok(shared)
    }

    fn key(&self, subject: &Subject, what: &str) -> String {
        format!("{}{}:{what}", self.prefix, subject.id)
    }

    /// Checks and, if every subject admits it, charges one request of
    /// `tokens` tokens. Returns whether it was admitted and the standings
    /// before it.
    pub async fn check(
        &self,
        subjects: &[Subject],
        tokens: u64,
        today: u64,
    ) -> Result<(bool, Vec<Standing>), redis::RedisError> {
        if switchyard_wire::unix_ms() < self.outage_until_ms.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis is unreachable (an outage injected by a game day)",
            )));
        }
        let mut invocation = self.check.prepare_invoke();
        invocation.arg(micros(ledger::MINUTE)).arg(KEEP_DAY_SECS);
        for s in subjects {
            let l = &s.limits;
            invocation
                .key(self.key(s, "requests"))
                .key(self.key(s, "tokens"))
                .key(self.key(s, &format!("day:{today}:tokens")))
                .key(self.key(s, &format!("day:{today}:micro_usd")))
                .arg(l.requests_per_minute.map_or(0.0, |r| interval_us(u64::from(r))))
                .arg(l.tokens_per_minute.map_or(0.0, interval_us))
                .arg(tokens)
                .arg(l.tokens_per_day.unwrap_or(0))
                .arg(l.cost_per_day_usd.map_or(0, |c| (c * 1e6).ceil() as i64));
        }
        let reply: Vec<i64> = invocation.invoke_async(&mut self.conn.clone()).await?;
        let admitted = reply.first() == Some(&1);
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let standings = reply
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| Standing {
                requests: us(c[0]),
                tokens: us(c[1]),
                day_tokens: u64::try_from(c[2]).unwrap_or(0),
                day_cost_usd: c[3] as f64 / 1e6,
            })
            .collect();
        Ok((admitted, standings))
    }

    /// Adds a later charge to what the next flush sends.
    pub fn charge(&self, subjects: &[Subject], tokens: i64, cost_usd: f64, today: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for s in subjects {
            let p = pending.entry((s.id.clone(), today)).or_default();
            p.token_interval_us = s.limits.tokens_per_minute.map_or(0.0, interval_us);
            p.tokens += tokens;
            p.cost_micro_usd += (cost_usd * 1e6).round() as i64;
        }
    }
}

/// Sends the pending charges every [`FLUSH`], in one script call, until
/// the limiter is gone. A flush Redis refuses is logged and dropped: the
/// limits then undercount, as they would fail open.
async fn flush_loop(
    mut conn: redis::aio::ConnectionManager,
    prefix: String,
    pending: std::sync::Weak<Mutex<HashMap<(String, u64), Pending>>>,
) {
    let script = redis::Script::new(CHARGE);
    let mut tick = tokio::time::interval(FLUSH);
    loop {
        tick.tick().await;
        let Some(pending) = pending.upgrade() else { return };
        let batch = std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
        drop(pending);
        if batch.is_empty() {
            continue;
        }
        let mut invocation = script.prepare_invoke();
        invocation.arg(KEEP_DAY_SECS);
        for ((subject, day), p) in &batch {
            invocation
                .key(format!("{prefix}{subject}:tokens"))
                .key(format!("{prefix}{subject}:day:{day}:tokens"))
                .key(format!("{prefix}{subject}:day:{day}:micro_usd"))
                .arg(p.token_interval_us)
                .arg(p.tokens)
                .arg(p.cost_micro_usd);
        }
        if let Err(e) = invocation.invoke_async::<i64>(&mut conn).await {
            tracing::warn!(subjects = batch.len(), "could not send token and cost charges to the rate limiter: {e}");
        }
    }
}
