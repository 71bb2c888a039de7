//! Replicas sharing state: keys' and tenants' limits through a real Redis
//! (127.0.0.1:6379), and what a replica does when its Redis goes away;
//! keys and records through a real PostgreSQL (127.0.0.1:5432). Each test
//! uses its own Redis key prefix and PostgreSQL schema, so tests can run at
//! once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use switchyard_gateway::auth::{issue, KeySpec, Keys};
use switchyard_gateway::backend::scripted::{Script, Scripted};
use switchyard_gateway::backend::Backend;
use switchyard_gateway::limits::{FailMode, Limiter};
use switchyard_gateway::routing::{Routing, RoutingOptions};
use switchyard_gateway::AppState;
use switchyard_router::{Policy, Prices};
use switchyard_store::{Limits, Store};

const POLICY: &str = "version = \"r.1\"\ndefault_route = \"local\"\n[[routes]]\nname = \"local\"\nbackend = \"embedded\"\nmodel = \"m\"\nallowed_classes = [\"public\"]\n";

/// A replica: its own server and limiter, the store (the same SQLite file) shared.
async fn replica(db: &std::path::Path, limiter: Limiter) -> String {
    replica_on(Store::open(db).await.unwrap(), limiter).await
}

async fn replica_on(store: Store, limiter: Limiter) -> String {
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    backends.insert("local".into(), Arc::new(Scripted::always(Script::answer("ok", -0.1))));
    let routing = Routing::with_backends(
        Policy::from_toml(POLICY).unwrap(),
        Prices::default(),
        backends,
        RoutingOptions::default(),
    )
    .unwrap();
    let keys = Keys::load(store.clone()).await.unwrap();
    keys.watch();
    let state = AppState::new(vec![]).with_routing(routing).with_store(store).with_keys(keys).with_limiter(limiter);
    common::listen(state).await
}

async fn key(db: &std::path::Path, requests_per_minute: u32) -> String {
    key_with(db, Limits { requests_per_minute: Some(requests_per_minute), ..Limits::default() }).await
}

async fn key_with(db: &std::path::Path, limits: Limits) -> String {
    let spec = KeySpec { tenant: "acme".into(), role: "tenant".into(), limits, ..Default::default() };
    let (record, key) = issue(&spec, 1).unwrap();
    Store::open(db).await.unwrap().create_key(&record).await.unwrap();
    key
}

async fn ask(base: &str, key: &str) -> reqwest::Response {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `N` replicas' limiters on the Redis at 127.0.0.1:6379, under one key
/// prefix of their own (failing closed); `None` (said so) without a Redis.
async fn shared_limiters<const N: usize>() -> Option<[Limiter; N]> {
    let (url, prefix) = ("redis://127.0.0.1:6379", prefix());
    let mut limiters = Vec::new();
    for _ in 0..N {
        match Limiter::shared(url, &prefix, FailMode::Closed).await {
            Ok(l) => limiters.push(l),
            Err(e) => {
                eprintln!("skipped: no Redis at {url} ({e})");
                return None;
            }
        }
    }
    limiters.try_into().ok()
}

fn prefix() -> String {
    format!("switchyard-test:{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn two_replicas_sharing_redis_share_a_keys_limit() {
    let Some([a, b]) = shared_limiters().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let key = key(&db, 3).await;
    let (a, b) = (replica(&db, a).await, replica(&db, b).await);
    let remaining = |r: &reqwest::Response| r.headers()["x-ratelimit-remaining-requests"].to_str().unwrap().to_string();
    let r = ask(&a, &key).await;
    assert_eq!((r.status(), remaining(&r)), (StatusCode::OK, "2".into()));
    let r = ask(&b, &key).await;
    assert_eq!((r.status(), remaining(&r)), (StatusCode::OK, "1".into()), "the other replica counts the same schedule");
    assert_eq!(ask(&a, &key).await.status(), StatusCode::OK);
    for base in [&a, &b] {
        let r = ask(base, &key).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "3 a minute across both replicas");
        assert_eq!(r.headers()["retry-after"], "20");
    }
}

/// A tenant's day of tokens, shared by its keys on two replicas: each
/// request is charged its prompt estimate (4) at admission and corrected to
/// its usage (2) by a later charge, which reaches Redis within a flush.
#[tokio::test]
async fn a_tenants_tokens_are_counted_across_replicas_including_later_charges() {
    let Some([a, b]) = shared_limiters().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (one, two) = (key_with(&db, Limits::default()).await, key_with(&db, Limits::default()).await);
    let day = Limits { tokens_per_day: Some(10), ..Limits::default() };
    Store::open(&db).await.unwrap().put_tenant("acme", &day, 1).await.unwrap();
    let (a, b) = (replica(&db, a).await, replica(&db, b).await);
    // 0 → 2 → 4 → 6 → 8 tokens used; then 8 + 4 > 10.
    for (i, (base, key)) in [(&a, &one), (&b, &two), (&a, &two), (&b, &one)].into_iter().enumerate() {
        let r = ask(base, key).await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = ask(&a, &one).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("tenant acme: more than 10 tokens per day"), "{body}");
}

/// A throwaway Redis on a free loopback port, killed on drop.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { port, child: Some(child) });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn without_redis_a_replica_fails_open_or_closed_as_configured_and_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(mut redis) = OwnRedis::start(port) else {
        eprintln!("skipped: no redis-server binary to start a Redis of this test's own");
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let key = key(&db, 100).await;
    let open = replica(&db, Limiter::shared(&url, &prefix(), FailMode::Open).await.unwrap()).await;
    let closed = replica(&db, Limiter::shared(&url, &prefix(), FailMode::Closed).await.unwrap()).await;
    assert_eq!(ask(&open, &key).await.status(), StatusCode::OK);
    assert_eq!(ask(&closed, &key).await.status(), StatusCode::OK);

    redis.stop();
    let r = ask(&open, &key).await;
    assert_eq!(r.status(), StatusCode::OK, "fail open admits");
    assert_eq!(r.headers()["x-switchyard-ratelimit"], "unavailable; fail-open");
    let r = ask(&closed, &key).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "fail closed refuses");
    assert_eq!(r.headers()["x-switchyard-ratelimit"], "unavailable; fail-closed");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");

    let _back = OwnRedis::start(port).expect("the same port again");
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = ask(&closed, &key).await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, StatusCode::OK, "the closed replica admits again once Redis is back");
}

/// Two replicas on one PostgreSQL: a key made through one serves on the
/// other, a revocation on one is refused by the other within a second, and
/// each replica's decisions are readable from the other.
#[tokio::test]
async fn replicas_sharing_postgres_share_keys_revocations_and_records() {
    let Some(url) = switchyard_store::testing::fresh_postgres().await else { return };
    let store = Store::connect(&url).await.unwrap();
    let admin = KeySpec { tenant: "ops".into(), role: "admin".into(), ..Default::default() };
    let (record, admin) = issue(&admin, 1).unwrap();
    store.create_key(&record).await.unwrap();
    let a = replica_on(store, Limiter::default()).await;
    let b = replica_on(Store::connect(&url).await.unwrap(), Limiter::default()).await;
    let http = reqwest::Client::new();
    let made: serde_json::Value = http
        .post(format!("{a}/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"tenant": "acme", "role": "tenant"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    let mut on_b = ask(&b, &key).await;
    for _ in 0..20 {
        if on_b.status() == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        on_b = ask(&b, &key).await;
    }
    assert_eq!(on_b.status(), StatusCode::OK, "a key made on one replica serves on the other");
    let request_id = on_b.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();
    let seen = http.get(format!("{a}/admin/decisions/{request_id}")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(seen.status(), StatusCode::OK, "b's decision is read through a");

    let revoked = http.delete(format!("{a}/admin/keys/{}", made["id"].as_str().unwrap())).bearer_auth(&admin).send();
    assert_eq!(revoked.await.unwrap().status(), StatusCode::OK);
    let at = std::time::Instant::now();
    while ask(&b, &key).await.status() == StatusCode::OK {
        assert!(at.elapsed() < Duration::from_millis(1500), "b still serves a key revoked on a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("revocation reached the other replica in {} ms", at.elapsed().as_millis());
    assert!(at.elapsed() <= Duration::from_secs(1));
}

/// Three replicas sharing one Redis, offered three times a key's 600
/// requests a minute for 30 s, admit what the limit allows in total: GCRA
/// with a burst of a minute's worth, so once the burst is spent, one
/// request per 100 ms across all replicas, 300 in 30 s, within 1%.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_offered_three_times_the_limit_admit_the_limit_within_one_percent() {
    let Some(limiters) = shared_limiters::<3>().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let key = key(&db, 600).await;
    let mut replicas = Vec::new();
    for limiter in limiters {
        replicas.push(replica(&db, limiter).await);
    }
    // Spend the burst, so the run measures the steady rate.
    let (mut burst, spending) = (0, std::time::Instant::now());
    while ask(&replicas[burst % 3], &key).await.status() == StatusCode::OK {
        burst += 1;
    }
    // A minute's worth, plus what refilled (one per 100 ms) while it was spent.
    let refilled = (spending.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!((600..=600 + refilled).contains(&burst), "burst {burst}, refilled up to {refilled}");

    let run = Duration::from_secs(30);
    let began = tokio::time::Instant::now();
    let clients = replicas.iter().map(|base| {
        let (base, key) = (base.clone(), key.clone());
        tokio::spawn(async move {
            // 10 a second at each replica: 30 a second in all, three times the limit.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let (mut offered, mut admitted) = (0, 0);
            while began.elapsed() < run {
                tick.tick().await;
                offered += 1;
                let status = ask(&base, &key).await.status();
                assert!([StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(&status), "{status}");
                admitted += usize::from(status == StatusCode::OK);
            }
            (offered, admitted)
        })
    });
    let (mut offered, mut admitted) = (0, 0);
    for c in futures::future::join_all(clients).await {
        let (o, a) = c.unwrap();
        offered += o;
        admitted += a;
    }
    let expected = run.as_secs_f64() * 600.0 / 60.0;
    eprintln!("3 replicas, {} s: offered {offered}, admitted {admitted}, expected {expected}", run.as_secs());
    assert!(offered as f64 >= 2.5 * expected, "the load was about three times the limit: {offered}");
    assert!((admitted as f64 - expected).abs() <= expected * 0.01, "admitted {admitted}, expected {expected} ± 1%");
}

/// A game day's shared-state outages, injected through `/admin/faults`:
/// `@redis` fails admissions as an unreachable Redis would (and
/// `redis-fail` decides), `@database` fails the recorder's writes; both
/// end when cleared.
#[tokio::test]
async fn injected_redis_and_database_outages_act_as_real_ones_and_end_when_cleared() {
    let Some([limiter]) = shared_limiters::<1>().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let tenant = key(&db, 1000).await;
    let spec = KeySpec { tenant: "ops".into(), role: "operator".into(), ..Default::default() };
    let (record, operator) = issue(&spec, 1).unwrap();
    Store::open(&db).await.unwrap().create_key(&record).await.unwrap();
    let base = replica(&db, limiter).await;
    let http = reqwest::Client::new();
    let fault = |target: &'static str, body: serde_json::Value| {
        http.put(format!("{base}/admin/faults/{target}")).bearer_auth(&operator).json(&body).send()
    };
    let clear =
        |target: &'static str| http.delete(format!("{base}/admin/faults/{target}")).bearer_auth(&operator).send();

    assert_eq!(fault("@redis", json!({"kind": "die"})).await.unwrap().status(), StatusCode::OK);
    let r = ask(&base, &tenant).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "this replica fails closed");
    assert_eq!(r.headers()["x-switchyard-ratelimit"], "unavailable; fail-closed");
    assert_eq!(clear("@redis").await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(ask(&base, &tenant).await.status(), StatusCode::OK);

    let store = Store::open(&db).await.unwrap();
    assert_eq!(fault("@database", json!({"kind": "die", "for_s": 30})).await.unwrap().status(), StatusCode::OK);
    let r = ask(&base, &tenant).await;
    assert_eq!(r.status(), StatusCode::OK, "answers go on while records cannot be written");
    let lost = r.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();
    assert!(store.decision(&lost).await.unwrap().is_none());
    assert_eq!(clear("@database").await.unwrap().status(), StatusCode::NO_CONTENT);
    let r = ask(&base, &tenant).await;
    let kept = r.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();
    assert!(store.decision(&kept).await.unwrap().is_some(), "written again once the outage ends");

    assert_eq!(fault("@nowhere", json!({"kind": "die"})).await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(fault("@redis", json!({"kind": "slow", "ms": 5})).await.unwrap().status(), StatusCode::BAD_REQUEST);
}
