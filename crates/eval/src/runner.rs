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
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_router::{Confidence, DifficultyModel, Features, Price};
use switchyard_wire::client::{post_chat, ReadError};
use switchyard_wire::headers::ROUTE_HANDOFF;
use switchyard_wire::reply::ReplyUsage;
use switchyard_wire::{ChatReply, ResultLabel};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::dataset::{Dataset, Item};
use crate::expect::{Answer, Judgements, Verdict};
use crate::record::{EvalRecord, RecordConfidence, RecordUsage, FAIL, PASS};
use crate::sandbox::Sandbox;
use switchyard_router::is_refusal;

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
            let (client, gate, bar, sandbox, passed) =
                (client.clone(), gate.clone(), bar.clone(), sandbox.clone(), passed.clone());
            async move {
                let _permit = gate.acquire_owned().await.expect("never closed");
                let record = one(&client, dataset, item, repeat, target, opts, sandbox).await;
                let ok = passed.fetch_add(usize::from(record.correct), std::sync::atomic::Ordering::Relaxed)
                    + usize::from(record.correct);
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

async fn one(
    client: &reqwest::Client,
    dataset: &Dataset,
    item: &Item,
    repeat: u32,
    target: &Target,
    opts: &RunOptions,
    sandbox: Sandbox,
) -> EvalRecord {
    let seed = opts.seed.map(|s| s + u64::from(repeat));
    let key = cache_key(item, target, opts, seed, repeat);
    let cached = opts
        .cache_dir
        .as_ref()
        .and_then(|dir| std::fs::read(dir.join(&key)).ok())
        .and_then(|b| serde_json::from_slice::<Reply>(&b).ok());
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
        if std::fs::write(&tmp, serde_json::to_vec(r).expect("replies serialize"))
            .and_then(|_| std::fs::rename(&tmp, dir.join(&key)))
            .is_err()
        {
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
        label: ResultLabel::Error.to_string(),
        scorer: String::new(),
        expects_refusal: item.expect.wants_refusal(),
        refused: false,
        review: item.review,
        confidence: RecordConfidence {
            prompt_score: opts.difficulty.as_ref().map(|m| m.score(&features)),
            features: Some(features),
            ..Default::default()
        },
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
    let verdict = tokio::task::spawn_blocking(move || expect.score(&answer, &sandbox, &judged))
        .await
        .expect("scoring does not panic");
    let confidence = Confidence::of(&reply.logprobs);
    record.refused = is_refusal(&reply.text, reply.refusal.as_deref());
    record.correct = verdict.pass;
    record.label = if reply.route.as_deref() == Some(ROUTE_HANDOFF) {
        ResultLabel::HumanEscalated.as_str()
    } else if record.refused {
        ResultLabel::Refused.as_str()
    } else if verdict.pass {
        PASS
    } else {
        FAIL
    }
    .into();
    record.scorer = verdict.detail;
    record.confidence.mean_logprob = confidence.map(|c| c.mean_logprob);
    record.confidence.min_window_logprob = confidence.map(|c| c.min_window_logprob);
    record.cost = opts
        .price
        .as_ref()
        .zip(reply.usage.as_ref())
        .map(|(p, u)| p.cost(u.prompt_tokens, u.completion_tokens, reply.total_ms).usd);
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
    let parts = json!([
        item.hash(),
        target.label,
        target.base_url,
        target.model,
        target.headers,
        opts.temperature,
        seed,
        repeat,
        opts.logprobs
    ]);
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
    let said = match post_chat(client, &judge.base_url, &judge.headers, &body).await {
        Ok(resp) if resp.status.is_success() => {
            resp.completion().await.ok().and_then(|r| r.content().map(str::to_string))
        }
        Ok(resp) => return Verdict { pass: false, detail: format!("judge {}: HTTP {}", judge.label, resp.status) },
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
async fn ask(
    client: &reqwest::Client,
    target: &Target,
    item: &Item,
    opts: &RunOptions,
    seed: Option<u64>,
) -> Result<Reply, String> {
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
    let began = Instant::now();
    let resp = post_chat(client, &target.base_url, &target.headers, &body)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status;
    if !status.is_success() {
        let message = resp.error_message().await;
        return Err(format!("HTTP {status}: {}", message.chars().take(300).collect::<String>()));
    }
    let mut reply = Reply { route: resp.switchyard.route.clone(), ..Default::default() };
    let mut chunks = resp.chunks();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| match e {
            ReadError::Broken(e) => format!("stream broke: {e}"),
            ReadError::Malformed { text, error } => {
                format!("malformed chunk ({error}): {}", text.chars().take(120).collect::<String>())
            }
        })?;
        absorb(&mut reply, &chunk.reply, chunk.at.duration_since(began))?;
    }
    if !chunks.done() {
        // A plain JSON answer (a server that ignores `stream`) is still an answer.
        let whole = ChatReply::from_slice(chunks.rest()).map_err(|_| "the stream ended without [DONE]".to_string())?;
        absorb(&mut reply, &whole, began.elapsed())?;
    }
    reply.total_ms = began.elapsed().as_secs_f64() * 1e3;
    Ok(reply)
}

/// Folds one chunk (or a whole completion), which arrived `after` the
/// request was sent, into the reply.
fn absorb(reply: &mut Reply, r: &ChatReply, after: Duration) -> Result<(), String> {
    if let Some(e) = &r.error {
        return Err(format!(
            "the target reported an error mid-answer: {}",
            e.message.as_deref().unwrap_or("unknown error")
        ));
    }
    if let Some(text) = r.content().filter(|t| !t.is_empty()) {
        reply.ttft_ms.get_or_insert(after.as_secs_f64() * 1e3);
        reply.text.push_str(text);
    }
    if let Some(refusal) = r.refusal() {
        reply.refusal.get_or_insert_with(String::new).push_str(refusal);
    }
    reply.logprobs.extend(r.logprobs());
    if let Some(m) = &r.model {
        reply.model = Some(m.clone());
    }
    if let Some(ReplyUsage { prompt_tokens: Some(p), completion_tokens: Some(c) }) = r.usage {
        reply.usage = Some(RecordUsage { prompt_tokens: p, completion_tokens: c });
    }
    if let Some(t) = &r.timings {
        reply.timings = Some(t.clone());
    }
    Ok(())
}
