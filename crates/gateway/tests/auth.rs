//! Keys, roles and limits over real HTTP, with scripted backends (no model)
//! and a real SQLite store: who may call what, headers that try to widen a
//! key, quotas per key and per tenant, and the audit trail of refusals.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_gateway::auth::{issue, KeySpec, Keys};
use switchyard_gateway::backend::scripted::{Script, Scripted};
use switchyard_gateway::backend::Backend;
use switchyard_gateway::routing::{Routing, RoutingOptions};
use switchyard_gateway::AppState;
use switchyard_router::{Policy, Prices};
use switchyard_store::Store;

const POLICY: &str = r#"
version = "auth.1"
default_route = "local"

[[routes]]
name = "local"
backend = "embedded"
model = "m"
allowed_classes = ["public", "internal", "regulated"]

[[routes]]
name = "cloud"
backend = "embedded"
model = "c"
allowed_classes = ["public", "internal"]

[[routes]]
name = "long"
backend = "embedded"
model = "l"
allowed_classes = ["public", "internal"]

[[families]]
name = "code"
patterns = ['(?i)python']

[[families]]
name = "support"
patterns = ['(?i)refund']

[categories]
self_harm = ['(?i)hurt myself']

[[rules]]
id = "handoff-self-harm"
when = { categories = ["self_harm"] }
then = { action = "handoff", message = "A person will get back to you." }
"#;

const LONG_GAP: std::time::Duration = std::time::Duration::from_millis(50);

struct Server {
    base: String,
    http: reqwest::Client,
    store: Store,
    _data: tempfile::TempDir,
}

async fn serve() -> Server {
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    // Paced, so a stream stays in flight for a while (3 tokens, 100 ms apart).
    let paced = Script::answer("the local answer", -0.1)
        .paced(std::time::Duration::ZERO, std::time::Duration::from_millis(100));
    backends.insert("local".into(), Arc::new(Scripted::always(paced)));
    backends.insert("cloud".into(), Arc::new(Scripted::always(Script::answer("cloud answer", -0.1))));
    // A long answer, 50 ms a token, for streams cut short.
    let long = Script::answer(&"word ".repeat(40), -0.1).paced(std::time::Duration::ZERO, LONG_GAP);
    backends.insert("long".into(), Arc::new(Scripted::always(long)));
    // A dollar a token on the cloud route, so budgets run out in a few requests.
    let prices = Prices::from_toml("[prices.cloud]\ninput_per_1m = 1e6\noutput_per_1m = 1e6\n").unwrap();
    let routing =
        Routing::with_backends(Policy::from_toml(POLICY).unwrap(), prices, backends, RoutingOptions::default())
            .unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&data.path().join("s.db")).await.unwrap();
    let keys = Keys::load(store.clone()).await.unwrap();
    keys.watch();
    let state = AppState::new(vec![]).with_routing(routing).with_store(store.clone()).with_keys(keys);
    let base = common::listen(state).await;
    Server { base, http: reqwest::Client::new(), store, _data: data }
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Server {
    /// A key made straight in the store, as `switchyard keys create` does.
    async fn key(&self, spec: KeySpec) -> String {
        let (record, key) = issue(&spec, 1).unwrap();
        self.store.create_key(&record).await.unwrap();
        key
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        Reply { status, headers, body: resp.json().await.unwrap_or(Value::Null) }
    }

    async fn chat(&self, key: Option<&str>, prompt: &str, headers: &[(&str, &str)]) -> Reply {
        let body = json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]});
        self.send(reqwest::Method::POST, "/v1/chat/completions", key, headers, Some(body)).await
    }

    async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.send(reqwest::Method::GET, path, key, &[], None).await
    }
}

fn spec(tenant: &str, role: &str) -> KeySpec {
    KeySpec { tenant: tenant.into(), role: role.into(), ..Default::default() }
}

fn request_id(r: &Reply) -> String {
    r.headers["x-switchyard-request-id"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn an_open_server_serves_without_keys_but_never_hands_out_keys() {
    let s = serve().await;
    let r = s.chat(None, "hi", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r =
        s.send(reqwest::Method::POST, "/admin/keys", None, &[], Some(json!({"tenant": "x", "role": "admin"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "the first key is made offline: {}", r.body);
    let r = s.send(reqwest::Method::PUT, "/admin/tenants/acme", None, &[], Some(json!({"limits": {}}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "nor the limits that will hold once keys exist: {}", r.body);
    let r = s.chat(None, "hi", &[("x-switchyard-force-route", "cloud")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "forcing stays off on an open server by default");
}

#[tokio::test]
async fn once_a_key_exists_every_request_needs_a_valid_one() {
    let s = serve().await;
    let admin = s.key(spec("ops", "admin")).await;
    s.get("/healthz", None).await; // probes stay open
                                   // A key made by another process (here: straight in the store) counts within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let r = s.chat(None, "hi", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(
        (r.body["error"]["type"].as_str(), r.body["error"]["code"].as_str()),
        (Some("authentication_error"), Some("invalid_api_key"))
    );
    let (id, secret) = switchyard_auth::parse(&admin).unwrap();
    let flipped: String = secret
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    let unknown_id = format!("sy-{}_{secret}", if id.starts_with('0') { "10000000" } else { "00000000" });
    for bad in [format!("sy-{id}_{flipped}"), unknown_id, "sk-not-ours".into(), admin[..admin.len() - 2].to_string()] {
        let r = s.chat(Some(&bad), "hi", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}: {}", r.body);
        assert!(!r.body.to_string().contains(secret), "an error never echoes a secret");
    }
    assert_eq!(s.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(s.chat(Some(&admin), "hi", &[]).await.status, StatusCode::OK);

    // Made and revoked over the admin API: it works at once, then it stops at once.
    let made = s
        .send(
            reqwest::Method::POST,
            "/admin/keys",
            Some(&admin),
            &[],
            Some(json!({"tenant": "acme", "role": "tenant"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    let key = made.body["key"].as_str().unwrap().to_string();
    assert!(made.body.get("hash").is_none());
    assert_eq!(s.chat(Some(&key), "hi", &[]).await.status, StatusCode::OK);
    let listed = s.get("/admin/keys", Some(&admin)).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 2);
    assert!(!listed.body.to_string().contains(&key[12..]), "a listing has no secrets");
    let gone = s
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/keys/{}", made.body["id"].as_str().unwrap()),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    assert_eq!(s.chat(Some(&key), "hi", &[]).await.status, StatusCode::UNAUTHORIZED);
    let bad = s
        .send(reqwest::Method::POST, "/admin/keys", Some(&admin), &[], Some(json!({"tenant": "x", "role": "root"})))
        .await;
    assert_eq!((bad.status, bad.body["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("role")));
}

#[tokio::test]
async fn each_role_reaches_exactly_its_endpoints_and_tenants_see_only_their_own() {
    let s = serve().await;
    let keys: Vec<(&str, String)> = vec![
        ("admin", s.key(spec("ops", "admin")).await),
        ("operator", s.key(spec("ops", "operator")).await),
        ("auditor", s.key(spec("audit", "auditor")).await),
        ("tenant", s.key(spec("acme", "tenant")).await),
    ];
    let other = s.key(spec("globex", "tenant")).await;
    let keys_of = |role: &str| keys.iter().find(|(r, _)| *r == role).unwrap().1.clone();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let asked = s.chat(Some(&keys_of("tenant")), "hi", &[]).await;
    assert_eq!(asked.status, StatusCode::OK);
    let decision = format!("/admin/decisions/{}", request_id(&asked));
    let resolve = json!({"answer": "a", "reviewer": "r"});
    for (role, key) in &keys {
        let can = |roles: &[&str]| if roles.contains(role) { "ok" } else { "forbidden" };
        let code = |status: StatusCode| if status == StatusCode::FORBIDDEN { "forbidden" } else { "ok" };
        let chat = s.chat(Some(key), "hi", &[]).await.status;
        assert_eq!(code(chat), can(&["admin", "operator", "tenant"]), "{role} chat");
        assert_eq!(code(s.get("/admin/keys", Some(key)).await.status), can(&["admin"]), "{role} keys");
        let queue = s.get("/admin/handoffs", Some(key)).await.status;
        assert_eq!(code(queue), can(&["admin", "operator", "tenant"]), "{role} handoffs (a tenant: its own)");
        let r =
            s.send(reqwest::Method::POST, "/admin/handoffs/none", Some(key), &[], Some(resolve.clone())).await.status;
        assert_eq!(code(r), can(&["admin", "operator"]), "{role} resolve");
        assert_eq!(s.get(&decision, Some(key)).await.status, StatusCode::OK, "{role} reads acme's decision");
    }
    let record = s.get(&decision, Some(&keys_of("auditor"))).await.body;
    assert_eq!(record["tenant"], "acme", "{record}");
    assert_eq!(
        s.get(&decision, Some(&other)).await.status,
        StatusCode::NOT_FOUND,
        "another tenant's decision looks absent"
    );
    assert_eq!(s.get(&decision, None).await.status, StatusCode::UNAUTHORIZED);

    // Handoffs: a tenant follows its own, never another's, and cannot resolve them.
    let handed = s.chat(Some(&keys_of("tenant")), "I want to hurt myself", &[]).await;
    let id = handed.headers["x-switchyard-handoff-id"].to_str().unwrap().to_string();
    for (key, seen) in [(keys_of("tenant"), 1), (other.clone(), 0), (keys_of("operator"), 1)] {
        let listed = s.get("/admin/handoffs", Some(&key)).await.body;
        assert_eq!(listed["data"].as_array().unwrap().len(), seen, "{listed}");
    }
    let path = format!("/admin/handoffs/{id}");
    assert_eq!(s.get(&path, Some(&keys_of("tenant"))).await.body["tenant"], "acme");
    assert_eq!(s.get(&path, Some(&other)).await.status, StatusCode::NOT_FOUND, "another tenant's handoff looks absent");
    assert_eq!(
        s.get(&path, Some(&keys_of("auditor"))).await.status,
        StatusCode::FORBIDDEN,
        "handoffs hold conversations"
    );
    let r = s.send(reqwest::Method::POST, &path, Some(&keys_of("tenant")), &[], Some(resolve.clone())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn headers_can_narrow_a_key_but_never_widen_it() {
    let s = serve().await;
    let bounded = KeySpec {
        lane: Some("batch".into()),
        data_class_floor: Some("internal".into()),
        families: vec!["code".into()],
        ..spec("acme", "tenant")
    };
    let tenant = s.key(bounded).await;
    let operator = s.key(KeySpec { routes: vec!["local".into()], ..spec("ops", "operator") }).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let refused = |r: &Reply, header: &str| {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_eq!(r.body["error"]["param"].as_str(), Some(header), "{}", r.body);
    };
    refused(&s.chat(Some(&tenant), "hi", &[("x-switchyard-data-class", "public")]).await, "x-switchyard-data-class");
    refused(&s.chat(Some(&tenant), "hi", &[("x-switchyard-lane", "interactive")]).await, "x-switchyard-lane");
    refused(&s.chat(Some(&tenant), "hi", &[("x-switchyard-family", "support")]).await, "x-switchyard-family");
    refused(&s.chat(Some(&tenant), "hi", &[("x-switchyard-force-route", "local")]).await, "x-switchyard-force-route");
    refused(&s.chat(Some(&operator), "hi", &[("x-switchyard-force-route", "cloud")]).await, "x-switchyard-force-route");

    // Within its bounds: the floor and the lane apply without any header.
    let ok =
        s.chat(Some(&tenant), "hi", &[("x-switchyard-data-class", "regulated"), ("x-switchyard-family", "code")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let plain = s.chat(Some(&tenant), "hi", &[]).await;
    let admin = s.key(spec("ops", "admin")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let record = s.get(&format!("/admin/decisions/{}", request_id(&plain)), Some(&admin)).await.body;
    assert_eq!(
        (record["decision"]["data_class"].as_str(), record["decision"]["lane"].as_str()),
        (Some("internal"), Some("batch")),
        "{record}"
    );
    // An operator forces a route without the server-wide switch, within its routes.
    let forced = s.chat(Some(&operator), "hi", &[("x-switchyard-force-route", "local")]).await;
    assert_eq!((forced.status, forced.headers["x-switchyard-route"].to_str().unwrap()), (StatusCode::OK, "local"));
}

/// Over its requests per minute, a key gets 429 with `Retry-After` and
/// OpenAI's rate-limit headers; over its requests in flight, too, until a
/// stream ends. Other keys are untouched.
#[tokio::test]
async fn a_key_over_its_limits_gets_429_with_rate_limit_headers_and_others_do_not() {
    let s = serve().await;
    let limited = |rpm, concurrent| KeySpec {
        limits: switchyard_store::Limits { requests_per_minute: rpm, concurrent, ..Default::default() },
        ..spec("acme", "tenant")
    };
    let slow = s.key(limited(Some(3), None)).await;
    let narrow = s.key(limited(None, Some(1))).await;
    let free = s.key(spec("globex", "tenant")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let header = |r: &Reply, name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_string());

    for left in ["2", "1", "0"] {
        let r = s.chat(Some(&slow), "hi", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(header(&r, "x-ratelimit-remaining-requests").as_deref(), Some(left));
    }
    let r = s.chat(Some(&slow), "hi", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(
        (r.body["error"]["type"].as_str(), r.body["error"]["code"].as_str()),
        (Some("rate_limit_error"), Some("rate_limit_exceeded"))
    );
    assert_eq!(header(&r, "retry-after").as_deref(), Some("20"), "one request every 20 s at 3 a minute");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests").as_deref(), Some("0"));
    assert_eq!(s.chat(Some(&free), "hi", &[]).await.status, StatusCode::OK, "another key is untouched");

    // One stream in flight holds the key's only place until it ends.
    let body = json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let first =
        s.http.post(format!("{}/v1/chat/completions", s.base)).bearer_auth(&narrow).json(&body).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = s.chat(Some(&narrow), "hi", &[]).await;
    assert_eq!((second.status, header(&second, "retry-after").as_deref()), (StatusCode::TOO_MANY_REQUESTS, Some("1")));
    let text = first.text().await.unwrap();
    assert!(text.trim_end().ends_with("[DONE]"), "{text}");
    assert_eq!(
        s.chat(Some(&narrow), "hi", &[]).await.status,
        StatusCode::OK,
        "the place is free once the stream ended"
    );
    // A client that hangs up frees it too.
    let gone =
        s.http.post(format!("{}/v1/chat/completions", s.base)).bearer_auth(&narrow).json(&body).send().await.unwrap();
    drop(gone);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(s.chat(Some(&narrow), "hi", &[]).await.status, StatusCode::OK, "a dropped stream frees its place");
}

fn header(r: &Reply, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

/// How many "hi" requests (4 tokens each: the estimate, and what the
/// scripted answer's usage says) `key` gets before a 429.
async fn requests_until_refused(s: &Server, key: &str) -> usize {
    for n in 0..100 {
        let r = s.chat(Some(key), "hi", &[]).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            return n;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    panic!("never refused");
}

/// Tokens: the prompt is charged at admission, completion tokens as they
/// stream; a stream cut short is charged what it produced, a whole one its
/// usage. Per minute, the answers carry OpenAI's `-tokens` headers.
#[tokio::test]
async fn tokens_are_charged_as_produced_and_a_cut_stream_only_for_what_it_produced() {
    let s = serve().await;
    let limited = |limits| KeySpec { limits, ..spec("ops", "operator") };
    let per_day = switchyard_store::Limits { tokens_per_day: Some(100), ..Default::default() };
    let (cut, whole) = (s.key(limited(per_day)).await, s.key(limited(per_day)).await);
    let per_minute =
        s.key(limited(switchyard_store::Limits { tokens_per_minute: Some(60), ..Default::default() })).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let long = json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let send_long = |key: &str| {
        s.http
            .post(format!("{}/v1/chat/completions", s.base))
            .bearer_auth(key)
            .header("x-switchyard-force-route", "long")
            .json(&long)
            .send()
    };
    // Read a few tokens, then hang up.
    let mut stream = send_long(&cut).await.unwrap();
    let mut seen = 0;
    while seen < 5 {
        let chunk = stream.chunk().await.unwrap().unwrap();
        seen += String::from_utf8_lossy(&chunk).matches("word").count();
    }
    drop(stream);
    let text = send_long(&whole).await.unwrap().text().await.unwrap();
    assert_eq!(text.matches("word").count(), 40);
    tokio::time::sleep(LONG_GAP * 4).await;
    // The cut stream cost its 4-token prompt estimate and the 5 to 8 tokens
    // sent before the server saw the client go: (100 - 9..16) / 4 requests.
    let after_cut = requests_until_refused(&s, &cut).await;
    assert!((21..=22).contains(&after_cut), "{after_cut} requests after the cut stream");
    // The whole one its 40 completion tokens: (100 - 40..44) / 4.
    let after_whole = requests_until_refused(&s, &whole).await;
    assert!((14..=15).contains(&after_whole), "{after_whole} requests after the whole stream");
    let refused = s.chat(Some(&whole), "hi", &[]).await;
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("100 tokens per day"), "{}", refused.body);
    let wait: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!(wait <= 86_400, "until midnight UTC: {wait}");

    let first = s.chat(Some(&per_minute), "hi", &[]).await;
    assert_eq!(header(&first, "x-ratelimit-limit-tokens").as_deref(), Some("60"));
    assert_eq!(header(&first, "x-ratelimit-remaining-tokens").as_deref(), Some("56"));
    let second = s.chat(Some(&per_minute), "hi", &[]).await;
    assert_eq!(header(&second, "x-ratelimit-remaining-tokens").as_deref(), Some("52"));
    let big = s.chat(Some(&per_minute), &"many words here ".repeat(60), &[]).await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST, "no wait would let it through: {}", big.body);
    assert!(big.body["error"]["message"].as_str().unwrap().contains("prompt tokens are more than"), "{}", big.body);
    let after = s.chat(Some(&per_minute), "hi", &[]).await;
    assert_eq!(header(&after, "x-ratelimit-remaining-tokens").as_deref(), Some("48"), "the refusal charged nothing");
}

/// A tenant's limits hold for all its keys together; a day's budget in
/// dollars runs out at the answering route's prices.
#[tokio::test]
async fn tenant_limits_are_shared_by_its_keys_and_budgets_follow_route_prices() {
    let s = serve().await;
    let admin = s.key(spec("ops", "admin")).await;
    let (a, b) = (s.key(spec("acme", "tenant")).await, s.key(spec("acme", "tenant")).await);
    let other = s.key(spec("globex", "tenant")).await;
    let server = &s;
    let put = |who: &str, limits: Value| {
        let (admin, path) = (admin.clone(), format!("/admin/tenants/{who}"));
        async move { server.send(reqwest::Method::PUT, &path, Some(&admin), &[], Some(json!({"limits": limits}))).await }
    };
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = put("acme", json!({"requests_per_minute": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let bad = put("acme", json!({"tokens_per_day": 0})).await;
    assert_eq!(
        (bad.status, bad.body["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("limits.tokens_per_day"))
    );
    let bad = put("acme", json!({"requests_per_minute": -1})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let r = s.send(reqwest::Method::PUT, "/admin/tenants/acme", Some(&a), &[], Some(json!({"limits": {}}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a tenant does not set its own limits");

    for key in [&a, &b, &a] {
        assert_eq!(s.chat(Some(key), "hi", &[]).await.status, StatusCode::OK);
    }
    let r = s.chat(Some(&b), "hi", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("tenant acme"), "{}", r.body);
    assert_eq!(s.chat(Some(&other), "hi", &[]).await.status, StatusCode::OK, "another tenant is untouched");

    // $1 a token on the cloud route: a 1-token prompt and a 2-token answer
    // cost $3, so a $5 day admits two requests.
    let budget = KeySpec {
        limits: switchyard_store::Limits { cost_per_day_usd: Some(5.0), ..Default::default() },
        ..spec("ops", "operator")
    };
    let spender = s.key(budget).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let r = s.chat(Some(&spender), "hi", &[("x-switchyard-force-route", "cloud")]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = s.chat(Some(&spender), "hi", &[("x-switchyard-force-route", "cloud")]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("budget of $5"), "{}", r.body);
}

/// Every refusal (401, 403, 429) and every change to keys and tenants is
/// in the audit trail, which auditors and admins read and tenants do not.
#[tokio::test]
async fn refusals_and_changes_are_in_the_audit_trail() {
    let s = serve().await;
    let admin = s.key(spec("ops", "admin")).await;
    let auditor = s.key(spec("audit", "auditor")).await;
    let tenant = s
        .key(KeySpec {
            limits: switchyard_store::Limits { requests_per_minute: Some(1), ..Default::default() },
            ..spec("acme", "tenant")
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let (id, _) = switchyard_auth::parse(&tenant).unwrap();
    let guessed = format!("sy-{id}_{}", "0".repeat(64));
    assert_eq!(s.chat(Some(&guessed), "hi", &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/admin/keys", Some(&tenant)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.chat(Some(&tenant), "hi", &[]).await.status, StatusCode::OK);
    assert_eq!(s.chat(Some(&tenant), "hi", &[]).await.status, StatusCode::TOO_MANY_REQUESTS);
    let small = KeySpec {
        limits: switchyard_store::Limits { tokens_per_minute: Some(10), ..Default::default() },
        ..spec("acme", "tenant")
    };
    let small = s.key(small).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (small_id, _) = switchyard_auth::parse(&small).unwrap();
    let big = s.chat(Some(&small), &"many words here ".repeat(10), &[]).await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST);
    let r = s.send(reqwest::Method::PUT, "/admin/tenants/acme", Some(&admin), &[], Some(json!({"limits": {}}))).await;
    assert_eq!(r.status, StatusCode::OK);

    assert_eq!(s.get("/admin/audit", Some(&tenant)).await.status, StatusCode::FORBIDDEN);
    let trail = s.get("/admin/audit", Some(&auditor)).await.body;
    let lines: Vec<(String, String, u64, String)> = trail["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("-").to_string();
            (s("action"), s("key_id"), l["status"].as_u64().unwrap(), s("tenant"))
        })
        .collect();
    let chat = "POST /v1/chat/completions".to_string();
    let expected = [
        (chat.clone(), id.to_string(), 401, "-".to_string()),
        ("GET /admin/keys".into(), id.to_string(), 403, "acme".into()),
        (chat, id.to_string(), 429, "acme".into()),
    ];
    for line in &expected {
        assert!(lines.contains(line), "{line:?} in {lines:?}");
    }
    assert!(lines.iter().any(|l| l.0 == "tenants.put" && l.2 == 200), "{lines:?}");
    assert!(lines.iter().any(|l| l.1 == small_id && l.2 == 400), "a prompt over a limit by itself: {lines:?}");
    assert!(!trail.to_string().contains(&"0".repeat(64)), "never a presented secret");
    // The tenant's refused read of the trail is in it too.
    assert!(lines.iter().any(|l| l.0 == "GET /admin/audit" && l.2 == 403), "{lines:?}");
}
