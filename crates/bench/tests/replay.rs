//! Replay against a local mock speaking OpenAI's streaming format, with
//! faults: every failure is counted, nothing is retried, nothing crashes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use switchyard_bench::replay::{replay, replay_watched, summarize, Limits, Load, Target, TokenCounter};
use switchyard_bench::trace::Scenario;

const CHUNKS: usize = 5;

async fn mock(State(hits): State<Arc<AtomicUsize>>, Json(body): Json<Value>) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let chunk = |c: &str| {
        Ok::<_, std::io::Error>(Bytes::from(format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": c}}]})
        )))
    };
    // A router answers with switchyard's `timings` beside the usage.
    let timings = (model == "routed")
        .then(|| json!({"prompt_n": 3, "prompt_ms": 4.5, "predicted_n": CHUNKS, "predicted_ms": 8.0, "queue_ms": 0.5, "ttft_ms": 5.0, "total_ms": 13.0}));
    let usage = Ok(Bytes::from(format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": CHUNKS}, "timings": timings})
    )));
    let done = Ok(Bytes::from("data: [DONE]\n\n"));
    let parts: Vec<Result<Bytes, std::io::Error>> = match model.as_str() {
        "busy" => {
            return (axum::http::StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": {"message": "queue full"}})))
                .into_response()
        }
        "fail" => return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "cut" => vec![chunk("a"), Err(std::io::Error::other("cut"))],
        "garbage" => vec![chunk("a"), Ok(Bytes::from("data: {oops\n\n"))],
        "nousage" => (0..CHUNKS).map(|_| chunk("w")).chain([done]).collect(),
        _ => (0..CHUNKS).map(|_| chunk("w")).chain([usage, done]).collect(),
    };
    // A short pause between chunks, so timings and a cut stream are realistic.
    let s = futures::stream::iter(parts).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        p
    });
    // "routed" answers like a switchyard router, naming the route it took.
    let route = if model == "routed" { "local" } else { "" };
    let mut resp = ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response();
    if !route.is_empty() {
        resp.headers_mut().insert(switchyard_wire::headers::ROUTE, route.parse().unwrap());
    }
    resp
}

async fn serve() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route("/v1/chat/completions", post(mock)).with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}

fn trace() -> switchyard_bench::trace::Trace {
    Scenario::Single { requests: 10, think_ms: 5.0, input_tokens: 20, max_tokens: 8 }.generate(1)
}

fn target(base: &str, model: &str) -> Target {
    Target {
        base_url: base.into(),
        model: model.into(),
        headers: vec![],
        stream: true,
        tokenizer: None,
        prompt_salt: 0,
    }
}

#[tokio::test]
async fn a_healthy_target_gives_full_timings() {
    let (base, hits) = serve().await;
    let results = replay(&trace(), &target(&base, "ok"), Load::Open { time_scale: 1.0 }, Duration::from_secs(10)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 10);
    for r in &results {
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.output_tokens, r.tokens_from.as_deref()), (Some(CHUNKS as u32), Some("usage")));
        assert_eq!(r.itl_ms.len(), CHUNKS - 1);
        assert!(r.ttft_ms.unwrap() <= r.e2e_ms.unwrap() && r.lag_ms >= 0.0);
    }
    let s = summarize(&results, 1.0, 0.0, 1_000.0, 1_000.0);
    assert_eq!((s.ok, s.failed, s.tokens_from.as_str()), (10, 0, "usage"));
    assert_eq!(s.ttft_ms.as_ref().unwrap().count, 10);
    assert_eq!(s.itl_ms.as_ref().unwrap().count, 10 * (CHUNKS as u64 - 1));
    assert_eq!(s.goodput_per_s, 10.0, "all within generous SLOs");
    assert_eq!(summarize(&results, 1.0, 0.0, 0.0001, 1_000.0).goodput_per_s, 0.0, "none within an impossible TTFT SLO");

    // A warm-up longer than the run leaves nothing to measure, and says so.
    let warm = summarize(&results, 1.0, 60_000.0, 1_000.0, 1_000.0);
    assert_eq!((warm.requests, warm.warmup_excluded, warm.ttft_ms), (0, 10, None));
    assert!(s.per_route.is_empty(), "the mock is not a router");

    let routed = replay(
        &trace(),
        &target(&base, "routed"),
        Load::Closed { concurrency: 4, ramp_up: Duration::ZERO },
        Duration::from_secs(10),
    )
    .await;
    let routed_summary = summarize(&routed, 1.0, 0.0, 1_000.0, 1_000.0);
    // The server's own queue / prefill / decode split, where it reports one.
    let (queue, prefill, decode) = (
        routed_summary.server_queue_ms.unwrap(),
        routed_summary.server_prefill_ms.unwrap(),
        routed_summary.server_decode_ms.unwrap(),
    );
    assert_eq!(queue.count, 10);
    for (got, want) in [(queue.p50, 0.5), (prefill.p50, 4.5), (decode.p99, 8.0)] {
        assert!((got - want).abs() < 0.01, "{got} vs {want} (HDR keeps 3 significant digits)");
    }
    assert_eq!(s.server_queue_ms, None, "no timings from the plain mock");
    let by_route = routed_summary.per_route;
    assert_eq!(by_route.keys().collect::<Vec<_>>(), ["local"]);
    assert_eq!((by_route["local"].requests, by_route["local"].ttft_ms.as_ref().unwrap().count), (10, 10));

    let closed = replay(
        &trace(),
        &target(&base, "nousage"),
        Load::Closed { concurrency: 3, ramp_up: Duration::ZERO },
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(closed.len(), 10);
    assert!(closed
        .iter()
        .all(|r| r.ok() && r.tokens_from.as_deref() == Some("chunks") && r.output_tokens == Some(CHUNKS as u32)));

    // With a tokenizer, the answer's text is counted instead of its chunks...
    let letters = TokenCounter::new("letters", |text| 2 * text.chars().count() as u32);
    let counted = Target { tokenizer: Some(letters), ..target(&base, "nousage") };
    let results =
        replay(&trace(), &counted, Load::Closed { concurrency: 3, ramp_up: Duration::ZERO }, Duration::from_secs(10))
            .await;
    assert!(results.iter().all(|r| r.ok()
        && r.tokens_from.as_deref() == Some("tokenizer:letters")
        && r.output_tokens == Some(2 * CHUNKS as u32)));
    assert_eq!(summarize(&results, 1.0, 0.0, 1_000.0, 1_000.0).tokens_from, "tokenizer:letters");
    // ...but never instead of the server's own count.
    let results = replay(
        &trace(),
        &Target { model: "ok".into(), ..counted },
        Load::Closed { concurrency: 3, ramp_up: Duration::ZERO },
        Duration::from_secs(10),
    )
    .await;
    assert!(results.iter().all(|r| r.tokens_from.as_deref() == Some("usage")), "{results:?}");
}

#[tokio::test]
async fn a_closed_loop_ramps_up_its_first_requests_evenly() {
    let (base, _) = serve().await;
    let ramp_up = Duration::from_millis(60);
    let results =
        replay(&trace(), &target(&base, "ok"), Load::Closed { concurrency: 4, ramp_up }, Duration::from_secs(10)).await;
    assert!(results.iter().all(|r| r.ok()));
    // Request i of the first four waits i/4 of the ramp-up; none goes early.
    for r in &results[..4] {
        assert!(r.sent_ms >= 15.0 * r.index as f64, "{} sent at {} ms", r.index, r.sent_ms);
    }
    assert!(results[0].sent_ms < 15.0, "the first goes at once");
    // Later requests take a free slot: after an answer, not on a schedule.
    let first_free = results[..4].iter().map(|r| r.sent_ms + r.e2e_ms.unwrap()).fold(f64::INFINITY, f64::min);
    assert!(results[4..].iter().all(|r| r.sent_ms >= first_free));
}

#[tokio::test]
async fn a_duration_limit_stops_sending_and_lets_requests_in_flight_finish() {
    let (base, hits) = serve().await;
    // Ten requests 5 ms apart (answers take ~12 ms): open loop sends those due
    // in the first 22 ms, 0..=20, and every one it sent is answered.
    let limits = Limits { timeout: Duration::from_secs(10), duration: Some(Duration::from_millis(22)) };
    let watch = Arc::new(|_: &switchyard_bench::replay::RequestResult| {});
    let open =
        replay_watched(&trace(), &target(&base, "ok"), Load::Open { time_scale: 1.0 }, limits, watch.clone()).await;
    assert_eq!(open.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert!(open.iter().all(|r| r.ok()));
    let by_session =
        replay_watched(&trace(), &target(&base, "ok"), Load::Sessions { time_scale: 1.0 }, limits, watch.clone()).await;
    assert!(
        !by_session.is_empty() && by_session.len() < 10 && by_session.iter().all(|r| r.ok()),
        "{}",
        by_session.len()
    );
    // Closed loop: two slots; once the time is up, a freed slot stays empty.
    let before = hits.load(Ordering::SeqCst);
    let closed = replay_watched(
        &trace(),
        &target(&base, "ok"),
        Load::Closed { concurrency: 2, ramp_up: Duration::ZERO },
        limits,
        watch,
    )
    .await;
    assert!(closed.len() >= 2 && closed.len() < 10 && closed.iter().all(|r| r.ok()), "{}", closed.len());
    assert_eq!(hits.load(Ordering::SeqCst) - before, closed.len(), "nothing sent that is not in the results");
    // A ramp-up longer than the run: the starts it would put after the end never go.
    let ramp_up = Duration::from_millis(200);
    let ramped = replay_watched(
        &trace(),
        &target(&base, "ok"),
        Load::Closed { concurrency: 4, ramp_up },
        limits,
        Arc::new(|_: &switchyard_bench::replay::RequestResult| {}),
    )
    .await;
    assert!(
        ramped.iter().all(|r| ![1, 2, 3].contains(&r.index)),
        "{:?}",
        ramped.iter().map(|r| r.index).collect::<Vec<_>>()
    );
    let unlimited = replay(
        &trace(),
        &target(&base, "ok"),
        Load::Closed { concurrency: 2, ramp_up: Duration::ZERO },
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(unlimited.len(), 10);
}

#[tokio::test]
async fn failures_are_counted_and_never_retried() {
    let (base, hits) = serve().await;
    for (model, reason) in [
        ("busy", "HTTP 429 Too Many Requests"),
        ("fail", "HTTP 500 Internal Server Error"),
        ("cut", "stream broke"),
        ("garbage", "malformed chunk"),
    ] {
        let before = hits.load(Ordering::SeqCst);
        let results =
            replay(&trace(), &target(&base, model), Load::Open { time_scale: 1.0 }, Duration::from_secs(10)).await;
        assert_eq!(hits.load(Ordering::SeqCst) - before, 10, "{model}: one attempt per request");
        let s = summarize(&results, 1.0, 0.0, 1_000.0, 1_000.0);
        assert_eq!((s.ok, s.failed), (0, 10), "{model}");
        assert_eq!(s.failures.get(reason.split(':').next().unwrap()), Some(&10), "{model}: {:?}", s.failures);
    }
    let dead = replay(
        &trace(),
        &target("http://127.0.0.1:9/v1", "x"),
        Load::Closed { concurrency: 2, ramp_up: Duration::ZERO },
        Duration::from_secs(10),
    )
    .await;
    assert!(dead.iter().all(|r| r.error.as_deref().unwrap().starts_with("request failed")));
}

/// `switchyard bench mock` on a free port: the first chunk after `ttft_ms`,
/// then one every `itl_ms`. Returns its base URL.
async fn delay_mock(ttft_ms: u64, itl_ms: u64, chunks: u32) -> String {
    let delays = switchyard_bench::mock::Delays {
        ttft: Duration::from_millis(ttft_ms),
        itl: Duration::from_millis(itl_ms),
        chunks,
        usage: true,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(switchyard_bench::mock::serve(listener, delays));
    base
}

#[tokio::test]
async fn the_delay_mock_answers_after_its_injected_delays() {
    let base = delay_mock(20, 5, 4).await;
    let results = replay(
        &trace(),
        &target(&base, "mock"),
        Load::Closed { concurrency: 5, ramp_up: Duration::ZERO },
        Duration::from_secs(10),
    )
    .await;
    for r in &results {
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.output_tokens, r.itl_ms.len()), (Some(4), 3));
        // The mock sleeps at least this long, so no measurement can be shorter.
        assert!(r.ttft_ms.unwrap() >= 20.0 && r.e2e_ms.unwrap() >= 35.0, "{r:?}");
    }
    let whole = Target { stream: false, ..target(&base, "mock") };
    let results =
        replay(&trace(), &whole, Load::Closed { concurrency: 5, ramp_up: Duration::ZERO }, Duration::from_secs(10))
            .await;
    for r in &results {
        assert!(r.ok() && r.output_tokens == Some(4) && r.itl_ms.is_empty(), "{r:?}");
        assert!(r.ttft_ms == r.e2e_ms && r.e2e_ms.unwrap() >= 35.0, "non-streaming: TTFT is the whole answer: {r:?}");
    }
}

/// Nagle's algorithm, tested by its effect: on a kept-alive connection the
/// mock's first chunk follows the response headers by the injected TTFT.
/// Without `TCP_NODELAY` it waited for the client's delayed ACK of the
/// headers, so every TTFT under ~40 ms read as ~40 ms.
#[tokio::test]
async fn a_short_injected_ttft_reads_as_injected_on_a_pooled_connection() {
    const TTFT_MS: f64 = 15.0;
    let base = delay_mock(TTFT_MS as u64, 5, 3).await;
    // One slot: each request goes on the connection the previous one used.
    let trace = Scenario::Single { requests: 7, think_ms: 0.0, input_tokens: 8, max_tokens: 3 }.generate(1);
    let results = replay(
        &trace,
        &target(&base, "mock"),
        Load::Closed { concurrency: 1, ramp_up: Duration::ZERO },
        Duration::from_secs(10),
    )
    .await;
    let mut ttfts: Vec<f64> = results.iter().map(|r| r.ttft_ms.unwrap_or_else(|| panic!("{r:?}"))).collect();
    ttfts.sort_by(f64::total_cmp);
    let median = ttfts[ttfts.len() / 2];
    assert!(
        (TTFT_MS..TTFT_MS + 15.0).contains(&median),
        "median TTFT {median:.1} ms for {TTFT_MS} ms injected: {ttfts:?}"
    );
}

#[tokio::test]
async fn by_session_a_turn_waits_for_the_previous_answer_plus_its_think_time() {
    let base = delay_mock(40, 5, 3).await;
    // Two sessions of three turns, 10 ms of think time between turns.
    let turn = |session: &str, turn: u32| switchyard_bench::trace::TraceRequest {
        at_us: u64::from(turn) * 10_000,
        session: session.into(),
        turn,
        messages: None,
        input_tokens: Some(8),
        max_tokens: 4,
        headers: Default::default(),
    };
    let trace = switchyard_bench::trace::Trace {
        requests: ["a", "b"].iter().flat_map(|s| (0..3).map(move |t| turn(s, t))).collect(),
    };
    let by_session =
        replay(&trace, &target(&base, "mock"), Load::Sessions { time_scale: 1.0 }, Duration::from_secs(10)).await;
    assert_eq!(by_session.len(), 6);
    for pair in by_session.windows(2).filter(|w| w[0].session == w[1].session) {
        let (prev, next) = (&pair[0], &pair[1]);
        assert!(prev.ok() && next.ok(), "{prev:?} {next:?}");
        // Sent no earlier than the previous answer's end plus the think time.
        assert!(next.sent_ms >= prev.sent_ms + prev.e2e_ms.unwrap() + 10.0, "{prev:?} {next:?}");
    }
    // The plain open loop sends at the offsets, answers or not: the second turn overlaps the first.
    let open = replay(&trace, &target(&base, "mock"), Load::Open { time_scale: 1.0 }, Duration::from_secs(10)).await;
    assert!(open[1].sent_ms < open[0].sent_ms + open[0].e2e_ms.unwrap(), "{:?}", &open[..2]);
}

/// A trace request's own headers (a lane, a family, a tenant's key) are
/// sent with it, beside the target's, and win where both name one.
#[tokio::test]
async fn each_requests_own_headers_go_with_it() {
    async fn echo(headers: axum::http::HeaderMap) -> Response {
        let lane = headers.get("x-switchyard-lane").map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
        let auth = headers.get_all("authorization").iter().count();
        let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]});
        let mut resp = Json(body).into_response();
        resp.headers_mut().insert(switchyard_wire::headers::ROUTE, format!("{lane}/{auth}").parse().unwrap());
        resp
    }
    let app = Router::new().route("/v1/chat/completions", post(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut t = Scenario::Single { requests: 2, think_ms: 1.0, input_tokens: 4, max_tokens: 2 }.generate(1);
    t.requests[0].headers.insert("x-switchyard-lane".into(), "batch".into());
    t.requests[0].headers.insert("Authorization".into(), "Bearer own".into());
    let target =
        Target { headers: vec![("authorization".into(), "Bearer shared".into())], stream: false, ..target(&base, "m") };
    let results =
        replay(&t, &target, Load::Closed { concurrency: 1, ramp_up: Duration::ZERO }, Duration::from_secs(5)).await;
    let routes: Vec<_> = results.iter().map(|r| r.route.clone().unwrap()).collect();
    assert_eq!(routes, ["batch/1", "none/1"]);
}

/// By session, a length-only trace becomes a conversation: each turn sends
/// every earlier question and the answer the server gave to it, then a new
/// question, as a chat client does (and as a server's prompt cache expects).
#[tokio::test]
async fn by_session_each_turn_sends_the_conversation_so_far_with_the_answers_given() {
    type Seen = Arc<std::sync::Mutex<Vec<Value>>>;
    async fn chat(State(seen): State<Seen>, Json(body): Json<Value>) -> Response {
        let messages = body["messages"].clone();
        let n = messages.as_array().unwrap().len();
        seen.lock().unwrap().push(messages);
        let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer after {n}")}, "finish_reason": "stop"}]});
        Json(body).into_response()
    }
    let seen: Seen = Arc::default();
    let app = Router::new().route("/v1/chat/completions", post(chat)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // One session of three turns whose context grows by 4 answer + 6 question tokens.
    let trace =
        Scenario::Team { sessions: 1, turns: 3, mean_think_ms: 1.0, input_tokens: 6, max_tokens: 4 }.generate(3);
    let mut t = target(&base, "m");
    t.stream = false;
    let results = replay(&trace, &t, Load::Sessions { time_scale: 1.0 }, Duration::from_secs(10)).await;
    assert!(results.iter().all(|r| r.ok()), "{results:?}");
    assert_eq!(results.iter().map(|r| r.turn).collect::<Vec<_>>(), [0, 1, 2]);
    let seen = seen.lock().unwrap();
    let roles =
        |m: &Value| m.as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(roles(&seen[0]), ["user"]);
    assert_eq!(roles(&seen[2]), ["user", "assistant", "user", "assistant", "user"]);
    // The history is what was sent and answered, unchanged.
    assert_eq!(seen[2][0], seen[0][0]);
    assert_eq!(seen[2][1]["content"], "answer after 1");
    assert_eq!(seen[2][3]["content"], "answer after 3");
    // Each question is the new part only, named by session and turn.
    for (turn, messages) in seen.iter().enumerate() {
        let question = messages.as_array().unwrap().last().unwrap()["content"].as_str().unwrap();
        assert!(question.starts_with(&format!("[s0 turn {turn}] ")), "{question}");
        assert_eq!(question.split(' ').count(), 3 + 6, "{question}");
    }
}
