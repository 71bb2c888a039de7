//! Operating a running server over real HTTP, with a real SQLite store:
//! policies applied and rolled back under load with no request dropped
//! (routes are upstreams on a loopback mock speaking OpenAI's wire
//! format, so an applied version builds its own backends), replicas that
//! follow the version in force, and faults injected into routes (scripted
//! backends, so an answer in flight can be cut where the test wants).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_gateway::auth::{issue, KeySpec, Keys};
use switchyard_gateway::backend::scripted::{Script, Scripted};
use switchyard_gateway::backend::Backend;
use switchyard_gateway::routing::{Routing, RoutingOptions};
use switchyard_gateway::{ops, router, AppState};
use switchyard_router::{Policy, Prices};
use switchyard_store::chain::ChainFilter;
use switchyard_store::Store;

/// Tokens per mock answer, and the gap between them: an answer is in
/// flight for about 300 ms.
const TOKENS: usize = 6;
const GAP: Duration = Duration::from_millis(50);

/// `/{name}/v1/chat/completions`: `TOKENS` tokens of `name`, `GAP` apart,
/// whole or streamed.
async fn upstream(Path(name): Path<String>, Json(body): Json<Value>) -> Response {
    let model = body["model"].clone();
    if name == "echo" {
        // What the route was sent: the first message's role and text, and how many there were.
        let m = &body["messages"];
        let text = format!(
            "{}: {} ({} messages)",
            m[0]["role"].as_str().unwrap_or(""),
            m[0]["content"].as_str().unwrap_or(""),
            m.as_array().map_or(0, Vec::len)
        );
        return Json(json!({"id": "c", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}))
        .into_response();
    }
    if name == "fail" {
        let error = json!({"error": {"message": "down", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
    }
    if body["stream"] != true {
        tokio::time::sleep(GAP * TOKENS as u32).await;
        let text = format!("{name} ").repeat(TOKENS);
        return Json(json!({"id": "c", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": TOKENS, "total_tokens": 5 + TOKENS}}))
        .into_response();
    }
    let chunk = move |delta: Value, finish: Value| {
        let c = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Ok::<_, std::io::Error>(Bytes::from(format!("data: {c}\n\n")))
    };
    let tokens = (0..TOKENS).map({
        let (chunk, name) = (chunk.clone(), name.clone());
        move |_| chunk(json!({"content": format!("{name} ")}), Value::Null)
    });
    let end = [chunk(json!({}), json!("stop")), Ok(Bytes::from_static(b"data: [DONE]\n\n"))];
    let paced = futures::stream::iter(tokens.chain(end)).then(|c| async move {
        tokio::time::sleep(GAP).await;
        c
    });
    ([("content-type", "text/event-stream")], Body::from_stream(paced)).into_response()
}

fn policy(mock: &str, version: &str, default_route: &str) -> String {
    format!(
        r#"
version = "{version}"
default_route = "{default_route}"

[[routes]]
name = "a"
backend = "upstream"
model = "m"
url = "{mock}/a/v1"
allowed_classes = ["public", "internal", "regulated"]

[[routes]]
name = "b"
backend = "upstream"
model = "m"
url = "{mock}/b/v1"
allowed_classes = ["public", "internal", "regulated"]

[[routes]]
name = "fail"
backend = "upstream"
model = "m"
url = "{mock}/fail/v1"
allowed_classes = ["public", "internal", "regulated"]
retry = {{ ratio = 0.0, min_per_second = 0.0 }}
breaker = {{ consecutive_failures = 1000, open_ms = 1 }}
"#
    )
}

struct Server {
    base: String,
    http: reqwest::Client,
    state: Arc<AppState>,
    store: Store,
}

/// Serves `state` on loopback with what `switchyard serve` adds: the
/// store's version in force settled at start, and replicas followed every
/// 100 ms.
async fn start(state: AppState, store: Store) -> Server {
    if let Some(live) = state.routing.clone() {
        live.at_start(&state, &store).await.unwrap();
    }
    let state = Arc::new(state);
    ops::policy::follow(state.clone(), Duration::from_millis(100));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone(), 1 << 20);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { base, http: reqwest::Client::new(), state, store }
}

async fn mock() -> String {
    let app = axum::Router::new().route("/{name}/v1/chat/completions", axum::routing::post(upstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn upstream_server(mock: &str, db: &std::path::Path) -> Server {
    let store = Store::open(db).await.unwrap();
    let p = Policy::from_toml(&policy(mock, "ops.1", "a")).unwrap();
    let state = AppState::new(vec![])
        .with_policy(p, Prices::default(), RoutingOptions::default())
        .unwrap()
        .with_store(store.clone());
    start(state, store).await
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> String {
        self.headers.get(name).map_or(String::new(), |v| v.to_str().unwrap().to_string())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> Reply {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    Reply { status, headers, body: resp.text().await.unwrap() }
}

async fn chat(http: &reqwest::Client, base: &str, stream: bool) -> Reply {
    let body = json!({"model": "auto", "stream": stream, "messages": [{"role": "user", "content": "hello"}]});
    send(http, base, reqwest::Method::POST, "/v1/chat/completions", None, Some(body.to_string())).await
}

impl Server {
    async fn call(&self, method: reqwest::Method, path: &str, key: Option<&str>, body: Option<String>) -> Reply {
        send(&self.http, &self.base, method, path, key, body).await
    }

    async fn chat(&self, stream: bool) -> Reply {
        chat(&self.http, &self.base, stream).await
    }

    async fn serving(&self) -> String {
        self.call(reqwest::Method::GET, "/admin/policy", None, None).await.json()["serving"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test]
async fn a_policy_applied_under_load_drops_nothing_and_each_record_names_the_version_that_answered() {
    let mock = mock().await;
    let data = tempfile::tempdir().unwrap();
    let s = upstream_server(&mock, &data.path().join("s.db")).await;
    let v1 = s.serving().await;
    let v2_text = policy(&mock, "ops.2", "b");
    let v2 = Policy::from_toml(&v2_text).unwrap().id;

    // Eight clients (half streaming) send back to back for 1.2 s; the new
    // version is applied 400 ms in.
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (base, http) = (s.base.clone(), s.http.clone());
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + Duration::from_millis(1200);
                let mut seen = Vec::new();
                while tokio::time::Instant::now() < until {
                    seen.push(chat(&http, &base, i % 2 == 0).await);
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let applied = s.call(reqwest::Method::PUT, "/admin/policy", None, Some(v2_text.clone())).await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
    assert_eq!(applied.json()["previous"], v1.as_str());
    assert_eq!(applied.json()["current"], v2.as_str());
    assert_eq!(s.serving().await, v2);

    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for client in clients {
        for reply in client.await.unwrap() {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            if reply.header("content-type").starts_with("text/event-stream") {
                assert!(reply.body.contains("[DONE]") && !reply.body.contains("\"error\""), "{}", reply.body);
            }
            let version = reply.header("x-switchyard-policy");
            // v1 routes to a, v2 to b: the answer came from the version its header names.
            let route = reply.header("x-switchyard-route");
            assert_eq!(route, if version == v1 { "a" } else { "b" }, "{version}");
            assert!(reply.body.contains(&format!("{route} ")), "{}", reply.body);
            let id = reply.header("x-switchyard-request-id");
            let record = s.store.decision(&id).await.unwrap().expect("every answered request has its record");
            assert_eq!(record.policy_id, version, "the record names the version that answered");
            *by_version.entry(version).or_default() += 1;
        }
    }
    assert!(
        by_version.get(&v1).is_some_and(|n| *n >= 4) && by_version.get(&v2).is_some_and(|n| *n >= 4),
        "{by_version:?}"
    );
    assert_eq!(by_version.len(), 2, "{by_version:?}");

    // Rolled back: v1 again, as a new version row, and the chain holds both changes.
    let back = s.call(reqwest::Method::POST, "/admin/policy/rollback", None, None).await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    assert_eq!(back.json()["current"], v1.as_str());
    assert_eq!(s.chat(false).await.header("x-switchyard-route"), "a");
    let history = s.call(reqwest::Method::GET, "/admin/policy", None, None).await.json();
    let sources: Vec<&str> =
        history["history"].as_array().unwrap().iter().map(|h| h["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["rollback", "apply", "start"]);
    let chain = s.store.chain(&ChainFilter { object: Some("policy".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<&str> = chain.iter().map(|e| e.change.action.as_str()).collect();
    assert_eq!(actions, ["apply", "rollback"]);
    assert!(chain[0].change.reason.contains(&format!("policy {v2} applied (was {v1})")), "{}", chain[0].change.reason);
    // A second rollback returns to v2: it undoes the rollback.
    let again = s.call(reqwest::Method::POST, "/admin/policy/rollback", None, None).await;
    assert_eq!(again.json()["current"], v2.as_str());
}

#[tokio::test]
async fn a_policy_that_cannot_serve_is_refused_with_the_reason_and_changes_nothing() {
    let mock = mock().await;
    let data = tempfile::tempdir().unwrap();
    let s = upstream_server(&mock, &data.path().join("s.db")).await;
    let before = s.serving().await;
    let put = |text: String| s.call(reqwest::Method::PUT, "/admin/policy", None, Some(text));

    let broken = put("version = \"x\"\ndefault_route = \"nowhere\"\nroutes = []\n".into()).await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST, "{}", broken.body);
    assert_eq!(broken.json()["error"]["code"], "invalid_policy");
    assert!(broken.json()["error"]["message"].as_str().unwrap().contains("`routes`"), "{}", broken.body);

    // Valid, but names a model this server does not run.
    let unloaded = "version = \"ops.3\"\ndefault_route = \"a\"\n[[routes]]\nname = \"a\"\nbackend = \"embedded\"\nmodel = \"not-here\"\nallowed_classes = [\"public\"]\n";
    let refused = put(unloaded.into()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(
        refused.json()["error"]["message"].as_str().unwrap().contains("`not-here` is not loaded"),
        "{}",
        refused.body
    );

    let garbage = put("\u{0}not toml".into()).await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);

    assert_eq!(s.serving().await, before);
    let history = s.call(reqwest::Method::GET, "/admin/policy", None, None).await.json();
    assert_eq!(history["history"].as_array().unwrap().len(), 1, "nothing refused was recorded: {history}");
    let nothing = s.call(reqwest::Method::POST, "/admin/policy/rollback", None, None).await;
    assert_eq!(nothing.status, StatusCode::CONFLICT, "{}", nothing.body);
    assert_eq!(nothing.json()["error"]["code"], "nothing_to_roll_back");
    assert_eq!(s.chat(false).await.status, StatusCode::OK);
}

#[tokio::test]
async fn replicas_follow_the_version_applied_on_another_and_a_restart_keeps_it() {
    let mock = mock().await;
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("shared.db");
    let one = upstream_server(&mock, &db).await;
    let two = upstream_server(&mock, &db).await;
    let v2_text = policy(&mock, "ops.2", "b");
    let v2 = Policy::from_toml(&v2_text).unwrap().id;
    assert_eq!(one.call(reqwest::Method::PUT, "/admin/policy", None, Some(v2_text)).await.status, StatusCode::OK);
    let mut followed = false;
    for _ in 0..50 {
        if two.serving().await == v2 {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(followed, "the second replica follows the version in force");
    assert_eq!(two.chat(false).await.header("x-switchyard-route"), "b");

    // A third replica started with the same file the others started with
    // serves what was applied since; one started with a new file makes
    // that file the version in force, for everyone.
    let three = upstream_server(&mock, &db).await;
    assert_eq!(three.serving().await, v2);
    let store = Store::open(&db).await.unwrap();
    let p4 = Policy::from_toml(&policy(&mock, "ops.4", "a")).unwrap();
    let v4 = p4.id.clone();
    let state = AppState::new(vec![])
        .with_policy(p4, Prices::default(), RoutingOptions::default())
        .unwrap()
        .with_store(store.clone());
    let four = start(state, store).await;
    assert_eq!(four.serving().await, v4);
    let mut all_followed = false;
    for _ in 0..50 {
        if one.serving().await == v4 && two.serving().await == v4 && three.serving().await == v4 {
            all_followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(all_followed);
    drop(four.state);
}

async fn rollout(s: &Server, candidate: String, plan: Value) -> Reply {
    let body = json!({"policy": candidate, "plan": plan}).to_string();
    s.call(reqwest::Method::POST, "/admin/rollout", None, Some(body)).await
}

/// Sends `n` requests, four at a time.
async fn traffic(s: &Server, n: usize) -> Vec<Reply> {
    futures::stream::iter(0..n).map(|i| s.chat(i % 3 == 0)).buffer_unordered(4).collect().await
}

async fn steps_of(s: &Server) -> Vec<Value> {
    s.call(reqwest::Method::GET, "/admin/rollout", None, None).await.json()["steps"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_rollout_sends_its_share_by_request_id_and_rolls_back_a_failing_candidate_by_itself() {
    let mock = mock().await;
    let data = tempfile::tempdir().unwrap();
    let s = upstream_server(&mock, &data.path().join("s.db")).await;
    let incumbent = s.serving().await;
    let bad = policy(&mock, "ops.bad", "fail");
    let bad_id = Policy::from_toml(&bad).unwrap().id;
    let plan = json!({"steps": [0.5, 1.0], "step_s": 60, "min_requests": 5, "judge_every_s": 0.2});
    let started = rollout(&s, bad, plan.clone()).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_string();
    // A second rollout, or an apply, while this one runs: refused.
    assert_eq!(rollout(&s, policy(&mock, "ops.other", "b"), plan).await.status, StatusCode::CONFLICT);
    let apply = s.call(reqwest::Method::PUT, "/admin/policy", None, Some(policy(&mock, "ops.x", "b"))).await;
    assert_eq!(apply.json()["error"]["code"], "rollout_conflict");

    let replies = traffic(&s, 40).await;
    let on_candidate: Vec<&Reply> = replies.iter().filter(|r| r.header("x-switchyard-policy") == bad_id).collect();
    assert!(on_candidate.len() >= 5 && on_candidate.len() <= 35, "about half: {}", on_candidate.len());
    for r in &replies {
        let id = r.header("x-switchyard-request-id");
        let version = if switchyard_gateway::ops::rollout::bucket(&id) < 0.5 { &bad_id } else { &incumbent };
        // Until the gate acts, the arm is a function of the request id.
        if r.header("x-switchyard-policy") != incumbent || version == &incumbent {
            assert_eq!(&r.header("x-switchyard-policy"), version, "{id}");
        }
    }
    assert!(on_candidate
        .iter()
        .all(|r| r.status == StatusCode::BAD_GATEWAY || r.status == StatusCode::INTERNAL_SERVER_ERROR));

    let mut rolled_back = false;
    for _ in 0..50 {
        if s.call(reqwest::Method::GET, "/admin/rollout", None, None).await.json()["active"].is_null() {
            rolled_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rolled_back, "the gate rolls a failing candidate back by itself");
    let steps = steps_of(&s).await;
    let actions: Vec<&str> = steps.iter().map(|st| st["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["start", "rollback"]);
    assert_eq!(steps[1]["rollout_id"], id.as_str());
    assert!(steps[1]["reason"].as_str().unwrap().contains("error rate 1.000 vs 0.000"), "{}", steps[1]);
    assert_eq!(steps[1]["figures"]["candidate"]["error_rate"], 1.0);
    assert!(steps[1]["figures"]["incumbent"]["requests"].as_u64().unwrap() >= 5);
    assert_eq!(s.serving().await, incumbent);
    assert!(traffic(&s, 8)
        .await
        .iter()
        .all(|r| r.status == StatusCode::OK && r.header("x-switchyard-policy") == incumbent));
    let chain = s.store.chain(&ChainFilter { object: Some("policy".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<&str> = chain.iter().map(|e| e.change.action.as_str()).collect();
    assert_eq!(actions, ["rollout-start", "rollout-rollback"]);
}

#[tokio::test]
async fn a_healthy_rollout_steps_up_and_is_promoted_and_a_failed_canary_eval_rolls_back() {
    let mock = mock().await;
    let data = tempfile::tempdir().unwrap();
    let s = upstream_server(&mock, &data.path().join("s.db")).await;
    let good = policy(&mock, "ops.good", "b");
    let good_id = Policy::from_toml(&good).unwrap().id;
    let plan = json!({"steps": [0.3, 0.6, 1.0], "step_s": 0.3, "min_requests": 3, "judge_every_s": 0.2});
    assert_eq!(rollout(&s, good, plan).await.status, StatusCode::OK);
    let mut promoted = false;
    for _ in 0..60 {
        traffic(&s, 8).await;
        if s.serving().await == good_id {
            promoted = true;
            break;
        }
    }
    assert!(promoted, "healthy at every step: promoted");
    let actions: Vec<String> = steps_of(&s).await.iter().map(|st| st["action"].as_str().unwrap().to_string()).collect();
    assert_eq!(actions, ["start", "step", "promote"]);
    let history = s.call(reqwest::Method::GET, "/admin/policy", None, None).await.json();
    assert_eq!(history["history"][0]["source"], "rollout");

    // A canary eval that fails the gate rolls the next rollout back.
    let next = policy(&mock, "ops.next", "a");
    let plan = json!({"steps": [0.2, 1.0], "step_s": 600, "min_requests": 1000});
    let id = rollout(&s, next, plan).await.json()["id"].as_str().unwrap().to_string();
    let verdict = json!({"rollout_id": id, "passed": false, "figures": {"incumbent": 0.8, "candidate": 0.4}, "detail": "all/all 80% -> 40%"});
    let r = s.call(reqwest::Method::POST, "/admin/rollout/eval", None, Some(verdict.to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["active"].is_null());
    let last = steps_of(&s).await.pop().unwrap();
    assert_eq!((last["action"].as_str(), last["rollout_id"].as_str()), (Some("rollback"), Some(id.as_str())));
    assert!(last["reason"].as_str().unwrap().contains("canary eval failed: all/all 80% -> 40%"));
    assert_eq!(last["figures"]["eval"]["candidate"], 0.4);
    assert_eq!(s.serving().await, good_id);
}

#[tokio::test]
async fn feedback_is_kept_for_answers_that_exist_and_pinning_an_arm_needs_an_operator() {
    let mock = mock().await;
    let data = tempfile::tempdir().unwrap();
    let s = upstream_server(&mock, &data.path().join("s.db")).await;
    let answered = s.chat(false).await.header("x-switchyard-request-id");
    let give = |body: Value| s.call(reqwest::Method::POST, "/v1/feedback", None, Some(body.to_string()));
    assert_eq!(
        give(json!({"request_id": answered, "verdict": "bad", "comment": "wrong"})).await.status,
        StatusCode::CREATED
    );
    assert_eq!(give(json!({"request_id": "chatcmpl-nope", "verdict": "bad"})).await.status, StatusCode::NOT_FOUND);
    let meh = give(json!({"request_id": answered, "verdict": "meh"})).await;
    assert_eq!(meh.status, StatusCode::BAD_REQUEST);
    assert!(meh.body.contains("`verdict` is `good` or `bad`"));
    // The same verdict again on the same answer does not count twice.
    assert_eq!(give(json!({"request_id": answered, "verdict": "bad"})).await.status, StatusCode::CREATED);
    let by = s.store.feedback_by_policy(0).await.unwrap();
    assert_eq!(by, vec![(s.serving().await, 0, 1)]);
    // This open server does not allow forcing routes, so no arm may be pinned.
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut req = s.http.post(format!("{}/v1/chat/completions", s.base)).header("content-type", "application/json");
    req = req.header("x-switchyard-canary", "candidate");
    let pinned = req.body(body).send().await.unwrap();
    assert_eq!(pinned.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_routes_system_prompt_is_versioned_with_the_policy_and_applied_with_no_restart() {
    let mock = mock().await;
    let data = tempfile::tempdir().unwrap();
    let s = upstream_server(&mock, &data.path().join("s.db")).await;
    let with_prompt = |version: &str, prompt: &str| {
        format!(
            "version = \"{version}\"\ndefault_route = \"echo\"\n[[routes]]\nname = \"echo\"\nbackend = \"upstream\"\nmodel = \"m\"\nurl = \"{mock}/echo/v1\"\nallowed_classes = [\"public\"]\nsystem_prompt = \"{prompt}\"\n"
        )
    };
    let ask = |system: Option<&str>| {
        let mut messages = vec![json!({"role": "user", "content": "hi"})];
        if let Some(sys) = system {
            messages.insert(0, json!({"role": "system", "content": sys}));
        }
        let body = json!({"model": "auto", "messages": messages}).to_string();
        s.call(reqwest::Method::POST, "/v1/chat/completions", None, Some(body))
    };
    let content = |r: Reply| r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let applied =
        s.call(reqwest::Method::PUT, "/admin/policy", None, Some(with_prompt("p.1", "Answer in French."))).await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
    assert_eq!(content(ask(None).await), "system: Answer in French. (2 messages)");
    // The client's own system message follows the route's, in one message.
    assert_eq!(content(ask(Some("Be brief.")).await), "system: Answer in French.\n\nBe brief. (2 messages)");
    s.call(reqwest::Method::PUT, "/admin/policy", None, Some(with_prompt("p.2", "Answer in Spanish."))).await;
    assert_eq!(content(ask(None).await), "system: Answer in Spanish. (2 messages)");
    s.call(reqwest::Method::POST, "/admin/policy/rollback", None, None).await;
    assert_eq!(content(ask(None).await), "system: Answer in French. (2 messages)", "rolled back with its policy");
}

// ---- Faults, on scripted backends --------------------------------------

const FAULT_POLICY: &str = r#"
version = "faults.1"
default_route = "local"

[[routes]]
name = "local"
backend = "embedded"
model = "l"
allowed_classes = ["public", "internal", "regulated"]
fallback = ["cloud"]
ttft_timeout_ms = 400
retry = { ratio = 0.0, min_per_second = 0.0 }
breaker = { consecutive_failures = 2, open_ms = 200 }

[[routes]]
name = "cloud"
backend = "embedded"
model = "c"
allowed_classes = ["public", "internal", "regulated"]
"#;

async fn scripted_server(keys: &[(&str, &str)]) -> (Server, Vec<String>) {
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    // Twenty tokens, 40 ms apart: an answer is in flight for 800 ms.
    let local = Script::answer(&"local ".repeat(20), -0.1).paced(Duration::ZERO, Duration::from_millis(40));
    backends.insert("local".into(), Arc::new(Scripted::always(local)));
    backends.insert("cloud".into(), Arc::new(Scripted::always(Script::answer("cloud answer", -0.1))));
    let routing = Routing::with_backends(
        Policy::from_toml(FAULT_POLICY).unwrap(),
        Prices::default(),
        backends,
        RoutingOptions::default(),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&data.path().join("s.db")).await.unwrap();
    let mut made = Vec::new();
    for (tenant, role) in keys {
        let spec: KeySpec = serde_json::from_value(json!({"tenant": tenant, "role": role})).unwrap();
        let (record, key) = issue(&spec, 1).unwrap();
        store.create_key(&record).await.unwrap();
        made.push(key);
    }
    let mut state = AppState::new(vec![]).with_routing(routing).with_store(store.clone());
    if !keys.is_empty() {
        state = state.with_keys(Keys::load(store.clone()).await.unwrap());
    }
    std::mem::forget(data);
    (start(state, store).await, made)
}

impl Server {
    async fn fault(&self, key: Option<&str>, route: &str, body: Value) -> Reply {
        self.call(reqwest::Method::PUT, &format!("/admin/faults/{route}"), key, Some(body.to_string())).await
    }
}

#[tokio::test]
async fn a_dead_route_sends_whole_answers_to_the_fallback_and_cuts_its_streams_with_an_error_event() {
    let (s, _) = scripted_server(&[]).await;
    // In flight on the local route when it dies: a stream and a whole answer.
    let (stream, whole) = (s.chat(true), s.chat(false));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let set = s.fault(None, "local", json!({"kind": "die", "for_s": 30})).await;
        assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    };
    let (stream, whole, ()) = tokio::join!(stream, whole, kill);
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.header("x-switchyard-route"), "local", "the stream was committed before the fault");
    assert!(stream.body.contains("local ") && stream.body.contains("injected fault: die"), "{}", stream.body);
    let error_event = stream.body.lines().find(|l| l.contains("\"error\"")).unwrap();
    assert!(error_event.starts_with("data: {\"error\""), "a clear error event: {error_event}");
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.body);
    assert_eq!(whole.header("x-switchyard-route"), "cloud", "the whole answer was not committed: the fallback took it");
    assert!(whole.header("x-switchyard-reason").contains("local failed"), "{}", whole.header("x-switchyard-reason"));

    // While it is dead: new requests go to the cloud, at once or past the open breaker.
    for _ in 0..4 {
        let r = s.chat(false).await;
        assert_eq!((r.status, r.header("x-switchyard-route").as_str()), (StatusCode::OK, "cloud"));
    }
    let listed = s.call(reqwest::Method::GET, "/admin/faults", None, None).await.json();
    assert_eq!(listed["faults"][0]["route"], "local");
    assert_eq!(listed["faults"][0]["kind"], "die");

    // Cleared: the local route answers again once its breaker lets a probe through.
    let cleared = s.call(reqwest::Method::DELETE, "/admin/faults/local", None, None).await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT, "{}", cleared.body);
    let mut back = false;
    for _ in 0..20 {
        if s.chat(false).await.header("x-switchyard-route") == "local" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the route recovers after the fault ends");
    let chain = s.store.chain(&ChainFilter { object: Some("fault:local".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<&str> = chain.iter().map(|e| e.change.action.as_str()).collect();
    assert_eq!(actions, ["set", "clear"], "faults are changes, and the chain records them");
}

#[tokio::test]
async fn each_kind_of_fault_fails_the_way_it_says() {
    let (s, _) = scripted_server(&[]).await;
    // An error status: the fallback answers.
    s.fault(None, "local", json!({"kind": "error", "status": 503})).await;
    let r = s.chat(false).await;
    assert_eq!(r.header("x-switchyard-route"), "cloud");
    assert!(
        r.header("x-switchyard-reason").contains("local failed (injected_fault)"),
        "{}",
        r.header("x-switchyard-reason")
    );

    // No first token within the route's 400 ms: timed out, then the fallback.
    s.call(reqwest::Method::DELETE, "/admin/faults/local", None, None).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.fault(None, "local", json!({"kind": "stall_first_token", "ms": 2000})).await;
    let r = s.chat(false).await;
    assert_eq!(r.header("x-switchyard-route"), "cloud");
    assert!(
        r.header("x-switchyard-reason").contains("local failed (backend_timeout)"),
        "{}",
        r.header("x-switchyard-reason")
    );

    // A stream cut after three tokens ends with an error event after them.
    s.call(reqwest::Method::DELETE, "/admin/faults/local", None, None).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.fault(None, "local", json!({"kind": "cut_stream", "after_tokens": 3})).await;
    let r = s.chat(true).await;
    assert_eq!(r.header("x-switchyard-route"), "local");
    assert_eq!(r.body.matches(r#""content":"local ""#).count(), 3, "{}", r.body);
    assert!(r.body.contains("cut the answer after 3 tokens"), "{}", r.body);

    // Slow: every token later, the answer whole and from the route.
    s.call(reqwest::Method::DELETE, "/admin/faults/local", None, None).await;
    s.fault(None, "local", json!({"kind": "slow", "ms": 5})).await;
    let r = s.chat(true).await;
    assert_eq!(r.header("x-switchyard-route"), "local");
    assert_eq!(r.body.matches(r#""content":"local ""#).count(), 20);
    assert!(r.body.contains("[DONE]") && !r.body.contains("\"error\""));

    // A fault with a length ends by itself.
    s.fault(None, "local", json!({"kind": "error", "for_s": 0.2})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.call(reqwest::Method::GET, "/admin/faults", None, None).await.json()["faults"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn only_operators_break_routes_or_change_the_policy_and_bad_faults_are_refused_by_name() {
    let (s, keys) = scripted_server(&[("ops", "operator"), ("acme", "tenant"), ("audit", "auditor")]).await;
    let (operator, tenant, auditor) = (keys[0].as_str(), keys[1].as_str(), keys[2].as_str());
    for key in [tenant, auditor] {
        let r = s.fault(Some(key), "local", json!({"kind": "die"})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        let p = s.call(reqwest::Method::PUT, "/admin/policy", Some(key), Some(FAULT_POLICY.into())).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
        let b = s.call(reqwest::Method::POST, "/admin/policy/rollback", Some(key), None).await;
        assert_eq!(b.status, StatusCode::FORBIDDEN, "{}", b.body);
    }
    assert_eq!(s.fault(None, "local", json!({"kind": "die"})).await.status, StatusCode::UNAUTHORIZED);
    let unknown = s.fault(Some(operator), "nowhere", json!({"kind": "die"})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("routes: "), "{}", unknown.body);
    let bad = s.fault(Some(operator), "local", json!({"kind": "explode"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("unknown variant `explode`"), "{}", bad.body);
    let extra = s.fault(Some(operator), "local", json!({"kind": "die", "sneaky": true})).await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST, "{}", extra.body);
    let not_5xx = s.fault(Some(operator), "local", json!({"kind": "error", "status": 404})).await;
    assert_eq!(not_5xx.status, StatusCode::BAD_REQUEST);
    let negative = s.fault(Some(operator), "local", json!({"kind": "die", "for_s": -1})).await;
    assert_eq!(negative.status, StatusCode::BAD_REQUEST);
    assert!(s.call(reqwest::Method::GET, "/admin/faults", Some(operator), None).await.json()["faults"]
        .as_array()
        .unwrap()
        .is_empty());
    // The tenant's own requests are untouched by all of that.
    let chat = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let r = s.call(reqwest::Method::POST, "/v1/chat/completions", Some(tenant), Some(chat)).await;
    assert_eq!((r.status, r.header("x-switchyard-route").as_str()), (StatusCode::OK, "local"));
    // Nor may a tenant pick a rollout's arm for itself.
    let pin = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(tenant)
        .header("x-switchyard-canary", "candidate")
        .json(&json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(pin.status(), StatusCode::FORBIDDEN);
    // The operator may.
    assert_eq!(s.fault(Some(operator), "local", json!({"kind": "die"})).await.status, StatusCode::OK);
}
