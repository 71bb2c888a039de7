//! `eval run`: every item (× repeats) against one OpenAI-compatible target,
//! with bounded concurrency, a progress bar, and a cache so reruns only ask
//! what they have not asked before.
//!
//! Items are asked as streams with logprobs, so one request gives the
//! client-side TTFT and the router's confidence signals. A target that
//! fails, times out or sends garbage yields an `error` record with the
//! reason; the run goes on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_router::{Confidence, DifficultyModel, Features, Price};
use switchyard_wire::sse::SseDecoder;
use tokio::sync::Semaphore;

use crate::dataset::{Dataset, Item};
use crate::expect::{Answer, Judgements, Verdict};
use crate::record::{EvalRecord, RecordConfidence, RecordUsage};
use crate::refusal::is_refusal;
use crate::sandbox::Sandbox;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct Target {
    /// How records name it: the URL, the model id, or `route:NAME`.
    pub label: String,
    /// OpenAI base URL (the part before `/chat/completions`).
    pub base_url: String,
    pub model: String,
    /// Extra request headers (e.g. forcing a switchyard route).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub concurrency: usize,
    pub repeats: u32,
    /// Repeat `r` is sampled with seed `seed + r`.
    pub seed: Option<u64>,
    pub temperature: f64,
    /// Per item, whole answer.
    pub timeout: Duration,
    /// Ask for token logprobs (the cascade's signal); off for servers that reject them.
    pub logprobs: bool,
    pub cache_dir: Option<PathBuf>,
    /// The policy's prompt-feature model, to record `prompt_score`.
    pub difficulty: Option<DifficultyModel>,
    pub price: Option<Price>,
    /// Grades `judge` checks; without one they are skipped (never an item's only check).
    pub judge: Option<Target>,
    pub progress: bool,
}

/// What a target sent back for one item; the cache keeps exactly this.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Reply {
    text: String,
    refusal: Option<String>,
    logprobs: Vec<f64>,
    usage: Option<RecordUsage>,
    timings: Option<Value>,
    ttft_ms: Option<f64>,
    total_ms: f64,
    route: Option<String>,
    model: Option<String>,
}

pub async fn run(dataset: &Dataset, target: &Target, opts: &RunOptions, sandbox: Sandbox) -> Vec<EvalRecord> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(opts.concurrency).build().expect("an HTTP client");
    if let Some(dir) = &opts.cache_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("warning: cannot create the answer cache {}: {e}", dir.display());
        }
    }
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(dataset.items.len() as u64 * u64::from(opts.repeats));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(target.label.clone());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let passed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let jobs = dataset.items.iter().flat_map(|item| (0..opts.repeats).map(move |r| (item, r)));
    let records = futures::stream::iter(jobs)
        .map(|(item, repeat)| {
            let (client, gate, bar, sandbox, passed) = (client.clone(), gate.clone(), bar.clone(), sandbox.clone(), passed.clone());
            async move {
                let _permit = gate.acquire_owned().await.expect("never closed");
                let record = one(&client, dataset, item, repeat, target, opts, sandbox).await;
                let ok = passed.fetch_add(usize::from(record.correct), std::sync::atomic::Ordering::Relaxed) + usize::from(record.correct);
                bar.inc(1);
                bar.set_message(format!("{ok} passed"));
                record
            }
        })
        .buffered(opts.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    bar.finish();
    records
}

async fn one(client: &reqwest::Client, dataset: &Dataset, item: &Item, repeat: u32, target: &Target, opts: &RunOptions, sandbox: Sandbox) -> EvalRecord {
    let seed = opts.seed.map(|s| s + u64::from(repeat));
    let key = cache_key(item, target, opts, seed, repeat);
    let cached = opts.cache_dir.as_ref().and_then(|dir| std::fs::read(dir.join(&key)).ok()).and_then(|b| serde_json::from_slice::<Reply>(&b).ok());
    let was_cached = cached.is_some();
    let reply = match cached {
        Some(r) => Ok(r),
        None => match tokio::time::timeout(opts.timeout, ask(client, target, item, opts, seed)).await {
            Err(_) => Err(format!("no complete answer within {} s", opts.timeout.as_secs())),
            Ok(r) => r,
        },
    };
    if let (Ok(r), Some(dir), false) = (&reply, &opts.cache_dir, was_cached) {
        let tmp = dir.join(format!("{key}.tmp"));
        if std::fs::write(&tmp, serde_json::to_vec(r).expect("replies serialize")).and_then(|_| std::fs::rename(&tmp, dir.join(&key))).is_err() {
            eprintln!("warning: could not cache the answer to {}", item.id);
        }
    }
    let texts: Vec<String> = item.messages.iter().map(|m| m.content.clone()).collect();
    let features = Features::of(&texts);
    let mut record = EvalRecord {
        item_id: item.id.clone(),
        dataset: dataset.manifest.name.clone(),
        dataset_version: dataset.manifest.version,
        family: item.family.clone(),
        difficulty: item.difficulty.clone(),
        data_class: item.data_class.clone(),
        target: target.label.clone(),
        route: None,
        model: None,
        repeat,
        seed,
        output: String::new(),
        refusal: None,
        correct: false,
        label: "error".into(),
        scorer: String::new(),
        expects_refusal: item.expect.wants_refusal(),
        refused: false,
        review: item.review,
        confidence: RecordConfidence { prompt_score: opts.difficulty.as_ref().map(|m| m.score(&features)), features: Some(features), ..Default::default() },
        ttft_ms: None,
        total_ms: None,
        timings: None,
        usage: None,
        cost: None,
        error: None,
        cached: was_cached,
    };
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(e.clone());
            record.scorer = format!("not scored: {e}");
            return record;
        }
    };
    let answer = Answer { text: reply.text.clone(), refusal: reply.refusal.clone() };
    let mut judged = Judgements::new();
    if let Some(judge) = &opts.judge {
        for rubric in item.expect.rubrics() {
            judged.insert(rubric.to_string(), grade(client, judge, item, &answer.text, rubric).await);
        }
    }
    let expect = item.expect.clone();
    let verdict = tokio::task::spawn_blocking(move || expect.score(&answer, &sandbox, &judged)).await.expect("scoring does not panic");
    let confidence = Confidence::of(&reply.logprobs);
    record.refused = is_refusal(&reply.text, reply.refusal.as_deref());
    record.correct = verdict.pass;
    record.label = if reply.route.as_deref() == Some("handoff") {
        "human-escalated"
    } else if record.refused {
        "refused"
    } else if verdict.pass {
        "pass"
    } else {
        "fail"
    }
    .into();
    record.scorer = verdict.detail;
    record.confidence.mean_logprob = confidence.map(|c| c.mean_logprob);
    record.confidence.min_window_logprob = confidence.map(|c| c.min_window_logprob);
    record.cost = opts.price.as_ref().zip(reply.usage.as_ref()).map(|(p, u)| p.cost(u.prompt_tokens, u.completion_tokens, reply.total_ms).usd);
    record.output = reply.text;
    record.refusal = reply.refusal;
    record.route = reply.route;
    record.model = reply.model;
    record.ttft_ms = reply.ttft_ms;
    record.total_ms = Some(reply.total_ms);
    record.timings = reply.timings;
    record.usage = reply.usage;
    record
}

/// The same item, target, parameters and seed give the same key.
fn cache_key(item: &Item, target: &Target, opts: &RunOptions, seed: Option<u64>, repeat: u32) -> String {
    let parts = json!([item.hash(), target.label, target.base_url, target.model, target.headers, opts.temperature, seed, repeat, opts.logprobs]);
    hex::encode(Sha256::digest(parts.to_string().as_bytes()))
}

/// Asks the judge whether `answer` meets `rubric`. A judge that fails to
/// answer PASS or FAIL fails the check, with the reason.
async fn grade(client: &reqwest::Client, judge: &Target, item: &Item, answer: &str, rubric: &str) -> Verdict {
    let question = item.messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
    let body = json!({
        "model": judge.model,
        "temperature": 0,
        "max_tokens": 4,
        "messages": [
            {"role": "system", "content": "You grade answers strictly against a rubric. Reply with exactly one word: PASS or FAIL."},
            {"role": "user", "content": format!("Question:\n{question}\n\nAnswer:\n{answer}\n\nRubric:\n{rubric}\n\nDoes the answer meet the rubric? Reply PASS or FAIL.")},
        ],
    });
    let mut req = client.post(format!("{}/chat/completions", judge.base_url.trim_end_matches('/'))).json(&body);
    for (k, v) in &judge.headers {
        req = req.header(k, v);
    }
    let said = match req.send().await.and_then(reqwest::Response::error_for_status) {
        Ok(resp) => resp.json::<Value>().await.ok().and_then(|v| v["choices"][0]["message"]["content"].as_str().map(str::to_string)),
        Err(e) => return Verdict { pass: false, detail: format!("judge {}: {e}", judge.label) },
    };
    let said = said.unwrap_or_default();
    let word = said.trim().to_ascii_uppercase();
    let pass = word.starts_with("PASS");
    let detail = if pass || word.starts_with("FAIL") {
        format!("judge {}: {}", judge.label, &word[..4])
    } else {
        format!("judge {} gave no verdict: {said:?}", judge.label)
    };
    Verdict { pass, detail }
}

/// One streamed chat completion: the text, refusal, logprobs, usage and
/// timings, measured from the request being sent.
async fn ask(client: &reqwest::Client, target: &Target, item: &Item, opts: &RunOptions, seed: Option<u64>) -> Result<Reply, String> {
    let mut body = json!({
        "model": target.model,
        "messages": item.messages,
        "max_tokens": item.max_tokens,
        "temperature": opts.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if opts.logprobs {
        body["logprobs"] = json!(true);
    }
    if let Some(seed) = seed {
        body["seed"] = json!(seed);
    }
    let mut req = client.post(format!("{}/chat/completions", target.base_url.trim_end_matches('/'))).json(&body);
    for (k, v) in &target.headers {
        req = req.header(k, v);
    }
    let began = Instant::now();
    let resp = req.send().await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let route = header("x-switchyard-route");
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["error"]["message"].as_str().map(str::to_string)).unwrap_or(text);
        return Err(format!("HTTP {status}: {}", message.chars().take(300).collect::<String>()));
    }
    let mut reply = Reply { route, ..Default::default() };
    let mut sse = SseDecoder::default();
    let mut chunks = resp.bytes_stream();
    let mut done = false;
    while let Some(chunk) = chunks.next().await {
        for data in sse.push(&chunk.map_err(|e| format!("stream broke: {e}"))?) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(&data).map_err(|e| format!("malformed chunk ({e}): {}", data.chars().take(120).collect::<String>()))?;
            absorb(&mut reply, &v, &began)?;
        }
    }
    if !done {
        // A plain JSON answer (a server that ignores `stream`) is still an answer.
        let v: Value = serde_json::from_slice(sse.rest()).map_err(|_| "the stream ended without [DONE]".to_string())?;
        absorb(&mut reply, &v, &began)?;
    }
    reply.total_ms = began.elapsed().as_secs_f64() * 1e3;
    Ok(reply)
}

/// Folds one chunk (or a whole completion) into the reply.
fn absorb(reply: &mut Reply, v: &Value, began: &Instant) -> Result<(), String> {
    if let Some(message) = v.get("error").map(|e| e["message"].as_str().unwrap_or("unknown error").to_string()) {
        return Err(format!("the target reported an error mid-answer: {message}"));
    }
    let choice = &v["choices"][0];
    let part = if choice["delta"].is_object() { &choice["delta"] } else { &choice["message"] };
    if let Some(text) = part["content"].as_str().filter(|t| !t.is_empty()) {
        reply.ttft_ms.get_or_insert_with(|| began.elapsed().as_secs_f64() * 1e3);
        reply.text.push_str(text);
    }
    if let Some(r) = part["refusal"].as_str() {
        reply.refusal.get_or_insert_with(String::new).push_str(r);
    }
    if let Some(lps) = choice["logprobs"]["content"].as_array() {
        reply.logprobs.extend(lps.iter().filter_map(|t| t["logprob"].as_f64()));
    }
    if let Some(m) = v["model"].as_str() {
        reply.model = Some(m.to_string());
    }
    if let (Some(p), Some(c)) = (v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()) {
        reply.usage = Some(RecordUsage { prompt_tokens: p as u32, completion_tokens: c as u32 });
    }
    if v["timings"].is_object() {
        reply.timings = Some(v["timings"].clone());
    }
    Ok(())
}
