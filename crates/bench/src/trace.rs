//! Traffic traces: one JSON line per request, ordered by arrival offset.
//!
//! A request carries either its messages or token lengths (a published trace
//! has no text; the replayer then synthesises a prompt of that many tokens).
//! Generation is deterministic per seed (ChaCha8, whose stream is fixed
//! across platforms and versions), so a trace can be regenerated instead of
//! stored, and the file's sha256 names exactly what was replayed.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Microseconds after the start of the replay when this request is sent
    /// (an integer, so a trace round-trips through JSON exactly).
    pub at_us: u64,
    /// Requests of one session are one user's conversation, in order.
    pub session: String,
    /// Turn number within the session, from 0.
    #[serde(default)]
    pub turn: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// Prompt length to synthesise when there are no messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u32>,
    pub max_tokens: u32,
    /// Extra request headers, e.g. `x-switchyard-lane` or a tenant key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    pub requests: Vec<TraceRequest>,
}

impl Trace {
    pub fn to_jsonl(&self) -> String {
        self.requests.iter().map(|r| serde_json::to_string(r).expect("trace requests serialize") + "\n").collect()
    }

    pub fn from_jsonl(text: &str) -> anyhow::Result<Self> {
        let requests: Vec<TraceRequest> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("trace line {}: {e}", n + 1)))
            .collect::<anyhow::Result<_>>()?;
        if let Some(w) = requests.windows(2).position(|w| w[1].at_us < w[0].at_us) {
            anyhow::bail!("trace line {}: at_us goes backwards; requests must be ordered by arrival", w + 2);
        }
        if let Some(n) = requests.iter().position(|r| r.messages.is_none() && r.input_tokens.is_none()) {
            anyhow::bail!("trace line {}: give `messages` or `input_tokens`", n + 1);
        }
        Ok(Self { requests })
    }

    /// sha256 of the JSONL form: what a bench run records as "the trace".
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.to_jsonl().as_bytes()))
    }

    pub fn duration_ms(&self) -> f64 {
        self.requests.last().map_or(0.0, |r| r.at_us as f64 / 1000.0)
    }
}

/// A named, parameterised traffic shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// One user, one request after another, `think_ms` apart.
    Single { requests: u32, think_ms: f64, input_tokens: u32, max_tokens: u32 },
    /// `sessions` users holding multi-turn chats; each turn's prompt grows by
    /// the previous answer and a new question; think time is exponential.
    Team { sessions: u32, turns: u32, mean_think_ms: f64, input_tokens: u32, max_tokens: u32 },
    /// Poisson arrivals at `rate_per_s`, multiplied by `factor` during
    /// `spike_ms` every `every_ms`.
    Burst {
        duration_ms: f64,
        rate_per_s: f64,
        factor: f64,
        every_ms: f64,
        spike_ms: f64,
        input_tokens: u32,
        max_tokens: u32,
    },
    /// Poisson arrivals of long prompts (uniform in `input_range`) with mixed
    /// answer lengths (uniform in `output_range`).
    LongContext { requests: u32, rate_per_s: f64, input_range: (u32, u32), output_range: (u32, u32) },
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    // 1 - u is in (0, 1], so the log is finite.
    -mean * (1.0 - rng.gen::<f64>()).ln()
}

fn request(at_ms: f64, session: String, turn: u32, input_tokens: u32, max_tokens: u32) -> TraceRequest {
    TraceRequest {
        at_us: (at_ms * 1000.0).round() as u64,
        session,
        turn,
        messages: None,
        input_tokens: Some(input_tokens),
        max_tokens,
        headers: BTreeMap::new(),
    }
}

impl Scenario {
    pub fn generate(&self, seed: u64) -> Trace {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut requests = Vec::new();
        match *self {
            Scenario::Single { requests: n, think_ms, input_tokens, max_tokens } => {
                requests
                    .extend((0..n).map(|i| request(f64::from(i) * think_ms, "s0".into(), i, input_tokens, max_tokens)));
            }
            Scenario::Team { sessions, turns, mean_think_ms, input_tokens, max_tokens } => {
                for s in 0..sessions {
                    // Sessions start spread over the first think time.
                    let mut at = rng.gen::<f64>() * mean_think_ms;
                    let mut context = input_tokens;
                    for t in 0..turns {
                        requests.push(request(at, format!("s{s}"), t, context, max_tokens));
                        context += max_tokens + input_tokens;
                        at += exponential(&mut rng, mean_think_ms);
                    }
                }
            }
            Scenario::Burst { duration_ms, rate_per_s, factor, every_ms, spike_ms, input_tokens, max_tokens } => {
                // Thinning: draw at the peak rate, keep with probability rate(t) / peak.
                let peak = rate_per_s * factor.max(1.0);
                let mut at = 0.0;
                let mut i = 0;
                loop {
                    at += exponential(&mut rng, 1000.0 / peak);
                    if at >= duration_ms {
                        break;
                    }
                    let in_spike = at % every_ms < spike_ms;
                    let rate = if in_spike { peak } else { rate_per_s };
                    if rng.gen::<f64>() < rate / peak {
                        requests.push(request(at, format!("s{i}"), 0, input_tokens, max_tokens));
                        i += 1;
                    }
                }
            }
            Scenario::LongContext { requests: n, rate_per_s, input_range, output_range } => {
                let mut at = 0.0;
                for i in 0..n {
                    let input = rng.gen_range(input_range.0..=input_range.1);
                    let output = rng.gen_range(output_range.0..=output_range.1);
                    requests.push(request(at, format!("s{i}"), 0, input, output));
                    at += exponential(&mut rng, 1000.0 / rate_per_s);
                }
            }
        }
        requests.sort_by(|a, b| a.at_us.cmp(&b.at_us).then_with(|| a.session.cmp(&b.session)));
        Trace { requests }
    }
}

/// One request as a switchyard gateway recorded it: when it came, the
/// token counts it was answered with (when the route was priced, so they
/// were counted), and the request headers that steered its routing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    pub created_ms: i64,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// `x-switchyard-*` headers to send again (lane, family, data class).
    pub headers: BTreeMap<String, String>,
}

/// A trace from recorded traffic: offsets from the first arrival, one
/// session per request, lengths as recorded (prompts are synthesised: a
/// record keeps no prompt text). Requests with no recorded counts get the
/// defaults; returns how many did.
pub fn from_recorded(records: &[Recorded], default_input_tokens: u32, default_max_tokens: u32) -> (Trace, usize) {
    let first = records.iter().map(|r| r.created_ms).min().unwrap_or(0);
    let mut defaulted = 0;
    let requests = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (input, output) = match (r.prompt_tokens, r.completion_tokens) {
                (Some(p), Some(c)) => (p, c.max(1)),
                _ => {
                    defaulted += 1;
                    (default_input_tokens, default_max_tokens)
                }
            };
            TraceRequest {
                headers: r.headers.clone(),
                ..request((r.created_ms - first) as f64, format!("r{i}"), 0, input, output)
            }
        })
        .collect::<Vec<_>>();
    let mut trace = Trace { requests };
    trace.requests.sort_by(|a, b| a.at_us.cmp(&b.at_us).then_with(|| a.session.cmp(&b.session)));
    (trace, defaulted)
}

/// Imports an Azure LLM inference trace (CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`,
/// timestamps like `2023-11-16 18:17:03.9799600`): offsets from the first
/// arrival, one session per request, prompt and answer lengths as recorded.
pub fn import_azure(csv: &str) -> anyhow::Result<Trace> {
    let mut lines = csv.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| anyhow::anyhow!("empty CSV"))?;
    if header.trim() != "TIMESTAMP,ContextTokens,GeneratedTokens" {
        anyhow::bail!("not an Azure LLM inference trace: header is {header:?}");
    }
    let mut first = None;
    let mut requests = Vec::new();
    for (n, line) in lines {
        let bad = |what: &str| anyhow::anyhow!("line {}: {what}: {line:?}", n + 1);
        let mut cols = line.split(',');
        let (Some(ts), Some(ctx), Some(gen), None) = (cols.next(), cols.next(), cols.next(), cols.next()) else {
            return Err(bad("expected 3 columns"));
        };
        let ms = timestamp_ms(ts.trim()).ok_or_else(|| bad("bad timestamp"))?;
        let start = *first.get_or_insert(ms);
        let input: u32 = ctx.trim().parse().map_err(|_| bad("bad ContextTokens"))?;
        let output: u32 = gen.trim().parse().map_err(|_| bad("bad GeneratedTokens"))?;
        requests.push(request(ms - start, format!("r{}", requests.len()), 0, input.max(1), output.max(1)));
    }
    requests.sort_by_key(|r| r.at_us);
    Ok(Trace { requests })
}

/// Milliseconds since 1970-01-01 of `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC).
fn timestamp_ms(ts: &str) -> Option<f64> {
    let (date, time) = ts.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) =
        (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + min * 60) as f64 + sec) * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert() {
        assert_eq!(timestamp_ms("1970-01-01 00:00:01.5"), Some(1500.0));
        assert_eq!(timestamp_ms("2023-11-16 18:17:03.9799600").map(|ms| (ms / 1000.0).floor()), Some(1_700_158_623.0));
        assert_eq!(timestamp_ms("yesterday"), None);
    }
}
