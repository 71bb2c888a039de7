//! Replaying a trace against any OpenAI-compatible endpoint, recording what
//! each request saw from the client's side.
//!
//! Definitions (also written into every summary):
//! - TTFT: request sent → first chunk carrying content;
//! - ITL: gaps between consecutive content chunks;
//! - TPOT: (E2E − TTFT) / (output tokens − 1);
//! - E2E: request sent → end of the stream.
//!
//! Output tokens come from the server's `usage` when it sends it, otherwise
//! from a tokenizer when the run has one ([`TokenCounter`]), otherwise from
//! the number of content chunks; each record says which.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use switchyard_wire::client::{post_chat, Chunk, ReadError};
use switchyard_wire::ResultLabel;

use crate::trace::{Message, Trace, TraceRequest};

#[derive(Debug, Clone)]
pub struct Target {
    /// OpenAI base URL (the part before `/chat/completions`).
    pub base_url: String,
    pub model: String,
    pub headers: Vec<(String, String)>,
    /// Ask for streamed answers (TTFT and ITL measurable) or whole ones
    /// (then TTFT is the time to the complete answer).
    pub stream: bool,
    /// Counts output tokens when the server sends no `usage`.
    pub tokenizer: Option<TokenCounter>,
    /// Mixed into every synthetic prompt: runs against the same server with
    /// different salts (a sweep's levels) never meet each other's prompts
    /// in its prompt cache.
    pub prompt_salt: u64,
}

/// A named token count of answer text, e.g. the target model's own
/// tokenizer: the bench itself does not depend on any model runtime.
#[derive(Clone)]
pub struct TokenCounter {
    name: String,
    count: Arc<dyn Fn(&str) -> u32 + Send + Sync>,
}

impl TokenCounter {
    pub fn new(name: impl Into<String>, count: impl Fn(&str) -> u32 + Send + Sync + 'static) -> Self {
        Self { name: name.into(), count: Arc::new(count) }
    }

    /// The output-token count and its source, as [`RequestResult::tokens_from`] says it.
    fn count(&self, text: &str) -> (Option<u32>, Option<String>) {
        (Some((self.count)(text)), Some(format!("tokenizer:{}", self.name)))
    }
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter").field("name", &self.name).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Send each request at its arrival offset (× `time_scale`), whatever is in flight.
    Open { time_scale: f64 },
    /// Keep this many requests in flight, ignoring arrival offsets. The
    /// first `concurrency` start spread evenly over `ramp_up`: against a
    /// server whose answers all take the same time, starting together means
    /// arriving together in lock-step waves for the whole run.
    Closed { concurrency: usize, ramp_up: Duration },
    /// Open loop by conversation: a session's first turn goes at its
    /// offset, each later turn its think time (the gap between the two
    /// turns' offsets in the trace, × `time_scale`) after the previous
    /// answer ended, as a person waits for an answer before replying.
    /// Where the trace gives lengths, not messages, each turn sends the
    /// whole conversation so far (every earlier question and the answer the
    /// server actually gave) and a new question: what a chat client sends,
    /// and what a server's prompt cache can reuse.
    Sessions { time_scale: f64 },
}

/// What one request saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestResult {
    pub index: usize,
    pub session: String,
    /// The request's turn in its session, from 0.
    #[serde(default)]
    pub turn: u32,
    /// When the trace said to send it, and how late it actually went (open loop).
    pub scheduled_ms: f64,
    pub lag_ms: f64,
    /// When it was sent, from the start of the run (warm-up is judged on this).
    pub sent_ms: f64,
    pub status: Option<u16>,
    /// Why it failed: connection, HTTP status, timeout, broken or malformed stream.
    pub error: Option<String>,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub itl_ms: Vec<f64>,
    pub output_tokens: Option<u32>,
    /// From the server's `usage` only (what input is priced on).
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    /// `usage` (the server's count), `tokenizer:NAME` (the answer's text
    /// counted here by that tokenizer) or `chunks` (content chunks counted here).
    pub tokens_from: Option<String>,
    /// `x-switchyard-route`, when the target is a router.
    pub route: Option<String>,
    /// `x-switchyard-label`, when the target is a router: `answered`,
    /// `refused`, `human-escalated` or `error`.
    #[serde(default)]
    pub label: Option<String>,
    /// `x-switchyard-policy`: the policy version that routed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `x-switchyard-reason`: why that route, and each fallback taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The server's own account (queue, prefill, decode), when it sends
    /// `timings` as switchyard and llama-server do.
    #[serde(default)]
    pub server_timings: Option<switchyard_wire::Timings>,
    /// The answer's text, for the next turn of a conversation; not written out.
    #[serde(skip)]
    pub answer: Option<String>,
}

impl RequestResult {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// A successful task: answered without an error and, where the server
    /// labels its answers, labelled `answered` (a refusal or a handoff to a
    /// human is an answer, not a task done).
    pub fn succeeded(&self) -> bool {
        self.ok() && self.label.as_deref().is_none_or(|l| l == ResultLabel::Answered.as_str())
    }

    pub fn tpot_ms(&self) -> Option<f64> {
        let (ttft, e2e, n) = (self.ttft_ms?, self.e2e_ms?, self.output_tokens?);
        (n > 1).then(|| (e2e - ttft) / f64::from(n - 1))
    }
}

/// A prompt of about `tokens` tokens (one common word each for most
/// tokenizers). Each word is drawn from a hash of `seed` and its position,
/// so prompts of different seeds share no prefix a prompt cache could
/// reuse (a cycle of words would repeat every few seeds).
pub fn synthetic_prompt(tokens: u32, seed: u64) -> String {
    const WORDS: [&str; 16] = [
        "time", "data", "system", "value", "order", "model", "green", "river", "number", "light", "table", "window",
        "paper", "stone", "music", "field",
    ];
    let word = |i: u64| {
        // splitmix64's finaliser: every bit of seed and position reaches the index.
        let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_add(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        WORDS[((z ^ (z >> 31)) % WORDS.len() as u64) as usize]
    };
    (0..u64::from(tokens)).map(word).collect::<Vec<_>>().join(" ")
}

fn body(r: &TraceRequest, index: usize, target: &Target) -> Value {
    let (model, stream) = (&target.model, target.stream);
    let seed = (index as u64) ^ target.prompt_salt.rotate_left(32);
    let messages = match &r.messages {
        Some(m) => json!(m),
        None => json!([{"role": "user", "content": synthetic_prompt(r.input_tokens.unwrap_or(1), seed)}]),
    };
    if stream {
        json!({"model": model, "messages": messages, "max_tokens": r.max_tokens, "stream": true, "stream_options": {"include_usage": true}})
    } else {
        json!({"model": model, "messages": messages, "max_tokens": r.max_tokens})
    }
}

/// One session's chat as a client holds it: every message sent and
/// answered so far.
#[derive(Default)]
struct Conversation {
    messages: Vec<Message>,
    /// The previous turn's synthesised prompt length and answer budget.
    previous: Option<(u32, u32)>,
}

impl Conversation {
    /// Gives a turn that has only lengths the conversation so far and a new
    /// question. A length-only trace counts each turn's whole context, so
    /// the new question is what that adds beyond the previous turn's
    /// context and answer.
    fn fill(&mut self, r: &mut TraceRequest) {
        if r.messages.is_some() {
            return;
        }
        let context = r.input_tokens.unwrap_or(1);
        let new = match self.previous {
            None => context,
            Some((before, answer)) => context.saturating_sub(before.saturating_add(answer)).max(1),
        };
        self.previous = Some((context, r.max_tokens));
        // Named by session and turn, so no two conversations share more than
        // the template's header (the words alone repeat every 16 seeds).
        let question = format!("[{} turn {}] {}", r.session, r.turn, synthetic_prompt(new, u64::from(r.turn)));
        self.messages.push(Message { role: "user".into(), content: question });
        r.messages = Some(self.messages.clone());
    }

    /// The server's answer to the last question, if it gave one.
    fn answered(&mut self, answer: Option<&str>) {
        if let Some(a) = answer.filter(|_| self.previous.is_some()) {
            self.messages.push(Message { role: "assistant".into(), content: a.to_string() });
        }
    }
}

/// When a request is due and when the run began.
#[derive(Clone, Copy)]
struct Clock {
    scheduled: Instant,
    run_start: Instant,
}

/// Sends one request and follows its stream.
async fn one(
    client: &reqwest::Client,
    target: &Target,
    r: &TraceRequest,
    index: usize,
    clock: Clock,
    timeout: Duration,
) -> RequestResult {
    let sent = Instant::now();
    let scheduled = clock.scheduled;
    let mut out = RequestResult {
        index,
        session: r.session.clone(),
        turn: r.turn,
        scheduled_ms: r.at_us as f64 / 1000.0,
        lag_ms: sent.saturating_duration_since(scheduled).as_secs_f64() * 1e3,
        sent_ms: sent.duration_since(clock.run_start).as_secs_f64() * 1e3,
        status: None,
        error: None,
        ttft_ms: None,
        e2e_ms: None,
        itl_ms: Vec::new(),
        output_tokens: None,
        prompt_tokens: None,
        tokens_from: None,
        route: None,
        label: None,
        policy: None,
        reason: None,
        server_timings: None,
        answer: None,
    };
    let ms = |t: Instant| t.duration_since(sent).as_secs_f64() * 1e3;
    let run = async {
        let body = body(r, index, target);
        // The trace's own headers (a lane, a family, a tenant's key) go
        // with the target's; a request's own wins where both name one.
        let mut headers: Vec<(String, String)> = target
            .headers
            .iter()
            .filter(|(k, _)| !r.headers.keys().any(|h| h.eq_ignore_ascii_case(k)))
            .cloned()
            .collect();
        headers.extend(r.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let resp =
            post_chat(client, &target.base_url, &headers, &body).await.map_err(|e| format!("request failed: {e}"))?;
        out.status = Some(resp.status.as_u16());
        let said = &resp.switchyard;
        (out.route, out.label) = (said.route.clone(), said.label.clone());
        (out.policy, out.reason) = (said.policy.clone(), said.reason.clone());
        if !resp.status.is_success() {
            return Err(format!("HTTP {}", resp.status));
        }
        if !target.stream {
            let reply = resp.completion().await.map_err(|e| format!("malformed answer: {e}"))?;
            let now = ms(Instant::now());
            (out.ttft_ms, out.e2e_ms) = (Some(now), Some(now));
            let usage = reply.usage.unwrap_or_default();
            out.prompt_tokens = usage.prompt_tokens;
            out.server_timings = reply.timings();
            out.answer = reply.content().map(str::to_string);
            (out.output_tokens, out.tokens_from) = match (usage.completion_tokens, &target.tokenizer) {
                (Some(n), _) => (Some(n), Some("usage".into())),
                (None, Some(t)) => t.count(reply.content().unwrap_or_default()),
                (None, None) => (None, None),
            };
            return Ok(());
        }
        let (mut last, mut chunks, mut usage) = (None::<Instant>, 0u32, None);
        let mut text = String::new();
        let mut stream = resp.chunks();
        while let Some(chunk) = stream.next().await {
            let Chunk { reply, at: now } = chunk.map_err(|e| match e {
                ReadError::Broken(e) => format!("stream broke: {e}"),
                ReadError::Malformed { text, .. } => {
                    format!("malformed chunk: {}", text.chars().take(80).collect::<String>())
                }
            })?;
            if let Some(e) = &reply.error {
                return Err(format!("error event: {}", e.message.as_deref().unwrap_or("unknown")));
            }
            if let Some(content) = reply.content().filter(|c| !c.is_empty()) {
                chunks += 1;
                text.push_str(content);
                match last {
                    None => out.ttft_ms = Some(ms(now)),
                    Some(prev) => out.itl_ms.push(now.duration_since(prev).as_secs_f64() * 1e3),
                }
                last = Some(now);
            }
            if let Some(t) = reply.timings() {
                out.server_timings = Some(t);
            }
            if let Some(n) = reply.usage.and_then(|u| u.completion_tokens) {
                usage = Some(n);
                out.prompt_tokens = reply.usage.and_then(|u| u.prompt_tokens);
            }
        }
        if !stream.done() {
            return Err("stream ended without [DONE]".into());
        }
        out.e2e_ms = Some(ms(Instant::now()));
        (out.output_tokens, out.tokens_from) = match (usage, &target.tokenizer) {
            (Some(n), _) => (Some(n), Some("usage".into())),
            (None, Some(t)) => t.count(&text),
            (None, None) => (Some(chunks), Some("chunks".into())),
        };
        out.answer = Some(text);
        Ok(())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.error = Some(e),
        Err(_) => out.error = Some(format!("timed out after {} s", timeout.as_secs())),
    }
    out
}

/// How long a replay may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// For one request, from sending it to the end of its answer.
    pub timeout: Duration,
    /// For sending: no request goes out after this long from the start
    /// (open loop: those due later are left out; closed loop: no new
    /// request takes a freed slot). Requests in flight finish.
    pub duration: Option<Duration>,
}

/// Replays `trace` against `target`. Failures are results, never a crashed
/// run; nothing is retried (a 429 is counted as what it is).
pub async fn replay(trace: &Trace, target: &Target, load: Load, timeout: Duration) -> Vec<RequestResult> {
    replay_watched(trace, target, load, Limits { timeout, duration: None }, Arc::new(|_: &RequestResult| {})).await
}

/// Called with each request's result as it completes (a progress display).
pub type Watcher = Arc<dyn Fn(&RequestResult) + Send + Sync>;

/// [`replay`] within `limits`, telling `watch` about each request as it
/// completes. Results are in trace order; requests never sent have none.
pub async fn replay_watched(
    trace: &Trace,
    target: &Target,
    load: Load,
    limits: Limits,
    watch: Watcher,
) -> Vec<RequestResult> {
    let Limits { timeout, duration } = limits;
    let client = reqwest::Client::builder().build().expect("an HTTP client");
    // `one`, then the watcher, as a future a task can own.
    let send = move |client: reqwest::Client, target: Arc<Target>, r: TraceRequest, i: usize, clock: Clock| {
        let watch = watch.clone();
        async move {
            let result = one(&client, &target, &r, i, clock, timeout).await;
            watch(&result);
            result
        }
    };
    let target = Arc::new(target.clone());
    let start = Instant::now();
    let in_time = move |at: Instant| duration.is_none_or(|d| at.saturating_duration_since(start) <= d);
    let mut results = match load {
        Load::Open { time_scale } => {
            let tasks: Vec<_> = trace
                .requests
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, r)| {
                    let (client, target, send) = (client.clone(), target.clone(), send.clone());
                    let at = start + Duration::from_secs_f64(r.at_us as f64 / 1e6 * time_scale);
                    in_time(at).then(|| {
                        tokio::spawn(async move {
                            tokio::time::sleep_until(at).await;
                            send(client, target, r, i, Clock { scheduled: at, run_start: start }).await
                        })
                    })
                })
                .collect();
            futures::future::join_all(tasks.into_iter().flatten())
                .await
                .into_iter()
                .map(|r| r.expect("request tasks do not panic"))
                .collect::<Vec<_>>()
        }
        Load::Sessions { time_scale } => {
            let mut sessions: BTreeMap<&str, Vec<(usize, TraceRequest)>> = BTreeMap::new();
            for (i, r) in trace.requests.iter().enumerate() {
                sessions.entry(r.session.as_str()).or_default().push((i, r.clone()));
            }
            let scaled = move |us: u64| Duration::from_secs_f64(us as f64 / 1e6 * time_scale);
            let tasks: Vec<_> = sessions
                .into_values()
                .map(|mut turns| {
                    turns.sort_by_key(|(i, r)| (r.turn, r.at_us, *i));
                    let (client, target, send) = (client.clone(), target.clone(), send.clone());
                    tokio::spawn(async move {
                        let mut out = Vec::with_capacity(turns.len());
                        let mut previous: Option<(u64, Instant)> = None;
                        let mut chat = Conversation::default();
                        for (i, mut r) in turns {
                            chat.fill(&mut r);
                            let at = match previous {
                                None => start + scaled(r.at_us),
                                Some((prev_us, answered)) => answered + scaled(r.at_us.saturating_sub(prev_us)),
                            };
                            if !in_time(at) {
                                break;
                            }
                            tokio::time::sleep_until(at).await;
                            let at_us = r.at_us;
                            let result =
                                send(client.clone(), target.clone(), r, i, Clock { scheduled: at, run_start: start })
                                    .await;
                            chat.answered(result.answer.as_deref());
                            out.push(result);
                            previous = Some((at_us, Instant::now()));
                        }
                        out
                    })
                })
                .collect();
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .flat_map(|r| r.expect("session tasks do not panic"))
                .collect()
        }
        Load::Closed { concurrency, ramp_up } => {
            let slots = concurrency.max(1);
            futures::stream::iter(trace.requests.iter().enumerate())
                // Pulled when a slot frees: the end of the run is checked then.
                .take_while(|_| futures::future::ready(in_time(Instant::now())))
                .map(|(i, r)| {
                    let (client, target, send) = (client.clone(), target.clone(), send.clone());
                    let stagger = if i < slots { ramp_up.mul_f64(i as f64 / slots as f64) } else { Duration::ZERO };
                    async move {
                        if !stagger.is_zero() {
                            tokio::time::sleep(stagger).await;
                            // A ramp-up may outlast the run.
                            if !in_time(Instant::now()) {
                                return None;
                            }
                        }
                        Some(
                            send(client, target, r.clone(), i, Clock { scheduled: Instant::now(), run_start: start })
                                .await,
                        )
                    }
                })
                .buffer_unordered(slots)
                .filter_map(futures::future::ready)
                .collect::<Vec<_>>()
                .await
        }
    };
    results.sort_by_key(|r| r.index);
    results
}

/// Percentiles of one metric, from an HDR histogram (3 significant digits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Milliseconds in, milliseconds out; recorded in microseconds.
pub fn percentiles(values_ms: impl IntoIterator<Item = f64>) -> Option<Percentiles> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    for v in values_ms {
        h.saturating_record((v * 1000.0).round().max(1.0) as u64);
    }
    let at = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (!h.is_empty()).then(|| Percentiles {
        count: h.len(),
        p50: at(0.5),
        p90: at(0.9),
        p95: at(0.95),
        p99: at(0.99),
        max: h.max() as f64 / 1000.0,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub definitions: BTreeMap<String, String>,
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// Failure reasons and how often each occurred (HTTP 429 is its own reason).
    pub failures: BTreeMap<String, usize>,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Requests per second that met both SLOs.
    pub goodput_per_s: f64,
    pub slo_ttft_ms: f64,
    pub slo_tpot_ms: f64,
    pub ttft_ms: Option<Percentiles>,
    pub itl_ms: Option<Percentiles>,
    pub tpot_ms: Option<Percentiles>,
    pub e2e_ms: Option<Percentiles>,
    pub lag_ms: Option<Percentiles>,
    /// From the server's `timings`, over the requests that had them.
    #[serde(default)]
    pub server_queue_ms: Option<Percentiles>,
    #[serde(default)]
    pub server_prefill_ms: Option<Percentiles>,
    #[serde(default)]
    pub server_decode_ms: Option<Percentiles>,
    /// Token counts: from `usage`, from counted chunks, or mixed.
    pub tokens_from: String,
    /// Requests sent during the warm-up, left out of every figure above.
    pub warmup_excluded: usize,
    /// By `x-switchyard-route`, when the target is a router.
    pub per_route: BTreeMap<String, RouteSummary>,
}

impl Summary {
    /// Every latency figure with its name, in the order reports show them.
    pub fn latencies(&self) -> [(&'static str, &Option<Percentiles>); 8] {
        [
            ("TTFT", &self.ttft_ms),
            ("ITL", &self.itl_ms),
            ("TPOT", &self.tpot_ms),
            ("E2E", &self.e2e_ms),
            ("send lag", &self.lag_ms),
            ("server queue", &self.server_queue_ms),
            ("server prefill", &self.server_prefill_ms),
            ("server decode", &self.server_decode_ms),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSummary {
    pub requests: usize,
    pub ok: usize,
    pub ttft_ms: Option<Percentiles>,
    pub e2e_ms: Option<Percentiles>,
}

/// Figures over the requests sent after `warmup_ms`; rates are per second
/// of the measured part (`duration_s` minus the warm-up).
pub fn summarize(
    all: &[RequestResult],
    duration_s: f64,
    warmup_ms: f64,
    slo_ttft_ms: f64,
    slo_tpot_ms: f64,
) -> Summary {
    let results: Vec<RequestResult> = all.iter().filter(|r| r.sent_ms >= warmup_ms).cloned().collect();
    let duration_s = (duration_s - warmup_ms / 1000.0).max(0.0);
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok()).collect();
    let mut failures = BTreeMap::new();
    for e in results.iter().filter_map(|r| r.error.as_deref()) {
        let reason = e.split(':').next().unwrap_or(e).to_string();
        *failures.entry(reason).or_default() += 1;
    }
    // A refusal or handoff is quick and meets any SLO; it is no task done.
    let good = ok
        .iter()
        .filter(|r| {
            r.succeeded() && r.ttft_ms.is_some_and(|t| t <= slo_ttft_ms) && r.tpot_ms().is_none_or(|t| t <= slo_tpot_ms)
        })
        .count();
    let tokens: u64 = ok.iter().filter_map(|r| r.output_tokens).map(u64::from).sum();
    let mut sources: Vec<&str> = ok.iter().filter_map(|r| r.tokens_from.as_deref()).collect();
    sources.sort_unstable();
    sources.dedup();
    let definitions = [
        ("ttft", "request sent -> first chunk with content"),
        ("itl", "gap between consecutive content chunks"),
        ("tpot", "(e2e - ttft) / (output tokens - 1)"),
        ("e2e", "request sent -> end of stream"),
        ("lag", "actual send time - scheduled arrival (open loop)"),
        ("goodput", "successful requests (labelled answered, where the server labels) per second meeting ttft <= slo_ttft_ms and tpot <= slo_tpot_ms"),
        (
            "server queue / prefill / decode",
            "the server's own timings, where it reports them: accepted -> first scheduler step, prompt evaluation, first -> last generated token",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let per_s = |n: f64| if duration_s > 0.0 { n / duration_s } else { 0.0 };
    Summary {
        definitions,
        requests: results.len(),
        ok: ok.len(),
        failed: results.len() - ok.len(),
        failures,
        duration_s,
        requests_per_s: per_s(ok.len() as f64),
        output_tokens_per_s: per_s(tokens as f64),
        goodput_per_s: per_s(good as f64),
        slo_ttft_ms,
        slo_tpot_ms,
        ttft_ms: percentiles(ok.iter().filter_map(|r| r.ttft_ms)),
        itl_ms: percentiles(ok.iter().flat_map(|r| r.itl_ms.iter().copied())),
        tpot_ms: percentiles(ok.iter().filter_map(|r| r.tpot_ms())),
        e2e_ms: percentiles(ok.iter().filter_map(|r| r.e2e_ms)),
        lag_ms: percentiles(results.iter().map(|r| r.lag_ms)),
        server_queue_ms: percentiles(ok.iter().filter_map(|r| r.server_timings.as_ref().map(|t| t.queue_ms))),
        server_prefill_ms: percentiles(ok.iter().filter_map(|r| r.server_timings.as_ref().map(|t| t.prompt_ms))),
        server_decode_ms: percentiles(ok.iter().filter_map(|r| r.server_timings.as_ref().map(|t| t.predicted_ms))),
        tokens_from: match sources.as_slice() {
            [] => "none".into(),
            [one] => one.to_string(),
            _ => "mixed".into(),
        },
        warmup_excluded: all.len() - results.len(),
        per_route: per_route(&results),
    }
}

fn per_route(results: &[RequestResult]) -> BTreeMap<String, RouteSummary> {
    let mut groups: BTreeMap<String, Vec<&RequestResult>> = BTreeMap::new();
    for r in results {
        if let Some(route) = &r.route {
            groups.entry(route.clone()).or_default().push(r);
        }
    }
    groups
        .into_iter()
        .map(|(route, rs)| {
            let ok: Vec<&&RequestResult> = rs.iter().filter(|r| r.ok()).collect();
            let summary = RouteSummary {
                requests: rs.len(),
                ok: ok.len(),
                ttft_ms: percentiles(ok.iter().filter_map(|r| r.ttft_ms)),
                e2e_ms: percentiles(ok.iter().filter_map(|r| r.e2e_ms)),
            };
            (route, summary)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_a_known_distribution() {
        // 1..=1000 ms, uniform: the q-quantile is about 1000q.
        let p = percentiles((1..=1000).map(f64::from)).unwrap();
        assert_eq!(p.count, 1000);
        for (got, want) in [(p.p50, 500.0), (p.p90, 900.0), (p.p95, 950.0), (p.p99, 990.0), (p.max, 1000.0)] {
            assert!((got - want).abs() <= want * 0.002, "{got} vs {want}");
        }
        assert_eq!(percentiles(std::iter::empty()), None);
    }

    #[test]
    fn tpot_follows_its_definition() {
        let r = RequestResult {
            index: 0,
            session: "s".into(),
            scheduled_ms: 0.0,
            lag_ms: 0.0,
            sent_ms: 0.0,
            status: Some(200),
            error: None,
            ttft_ms: Some(100.0),
            e2e_ms: Some(1000.0),
            itl_ms: vec![],
            output_tokens: Some(10),
            prompt_tokens: None,
            tokens_from: Some("usage".into()),
            route: None,
            label: None,
            policy: None,
            reason: None,
            ..Default::default()
        };
        assert_eq!(r.tpot_ms(), Some(100.0));
        // Goodput counts tasks done: a quick refusal meets the SLOs but is none.
        let refused = RequestResult { label: Some(ResultLabel::Refused.to_string()), ..r.clone() };
        let answered = RequestResult { label: Some(ResultLabel::Answered.to_string()), ..r.clone() };
        assert_eq!(summarize(&[r.clone(), answered, refused], 1.0, 0.0, 1e6, 1e6).goodput_per_s, 2.0);
        assert_eq!(RequestResult { output_tokens: Some(1), ..r }.tpot_ms(), None);
    }
}
