mod common;

use serde_json::json;
use switchyard_store::{
    DecisionRecord, HandoffRecord, JsonText, Measured, Recorder, ResolveError, ShadowRecord, Store,
};

fn record(id: &str) -> DecisionRecord {
    DecisionRecord {
        request_id: id.into(),
        created_ms: 1_764_000_000_000,
        policy_id: "p+abc".into(),
        rule_id: Some("difficulty".into()),
        route: "local".into(),
        status: 200,
        reason: "rule difficulty: 0.2 < 0.6 -> local".into(),
        decision: JsonText::of(&json!({"score": 0.2, "threshold": 0.6})).unwrap(),
        label: "answered".into(),
        execution: JsonText::of(&json!({"steps": [{"route": "local", "outcome": "ok"}]})).unwrap(),
        tenant: Some("acme".into()),
        model: Some("smollm2-135m".into()),
        runtime: Some("llama.cpp".into()),
        node: Some("node-a".into()),
        stream: true,
        retries: 1,
        fallbacks: 0,
        cascade: Some("kept".into()),
        measured: Measured::default(),
        measured_ms: None,
    }
}

#[tokio::test]
async fn decisions_survive_a_reopen_and_ids_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/switchyard.db");
    {
        let store = Store::open(&path).await.unwrap();
        store.record_decision(&record("r1")).await.unwrap();
        assert!(store.record_decision(&record("r1")).await.is_err(), "a request id is recorded once");
        assert_eq!(store.decision("nope").await.unwrap(), None);
    }
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.decision("r1").await.unwrap(), Some(record("r1")));
    drop(store);

    let reader = Store::open_read_only(&path).await.unwrap();
    assert_eq!(reader.decisions_since(0, 10).await.unwrap(), [record("r1")]);
    assert!(reader.record_decision(&record("r2")).await.is_err(), "a reader cannot write");
    assert!(Store::open_read_only(&dir.path().join("missing.db")).await.is_err(), "nor create a database");
    assert!(!dir.path().join("missing.db").exists());
}

fn handoff(id: &str, created_ms: i64) -> HandoffRecord {
    HandoffRecord {
        id: id.into(),
        request_id: format!("req-{id}"),
        created_ms,
        policy_id: "p+abc".into(),
        rule_id: "handoff-self-harm".into(),
        messages: json!([{"role": "user", "content": "help"}]),
        status: "open".into(),
        answer: None,
        reviewer: None,
        resolved_ms: None,
        tenant: Some(if id == "h1" { "acme" } else { "globex" }.into()),
    }
}

#[tokio::test]
async fn a_handoff_is_queued_listed_and_resolved_exactly_once() {
    for db in common::databases().await {
        let store = db.store.clone();
        eprintln!("on {}", db.name);
        store.enqueue_handoff(&handoff("h2", 20)).await.unwrap();
        store.enqueue_handoff(&handoff("h1", 10)).await.unwrap();
        let open = store.handoffs(Some("open"), None, 10).await.unwrap();
        assert_eq!(open.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["h1", "h2"], "oldest first");

        let done = store.resolve_handoff("h1", "We called them.", "ana", 30).await.unwrap();
        assert_eq!(
            (done.status.as_str(), done.answer.as_deref(), done.reviewer.as_deref(), done.resolved_ms),
            ("resolved", Some("We called them."), Some("ana"), Some(30))
        );
        assert!(matches!(store.resolve_handoff("h1", "again", "bo", 40).await, Err(ResolveError::AlreadyResolved(_))));
        assert_eq!(
            store.handoff("h1").await.unwrap().unwrap().reviewer.as_deref(),
            Some("ana"),
            "the second reviewer changed nothing"
        );
        assert!(matches!(store.resolve_handoff("nope", "x", "y", 1).await, Err(ResolveError::NotFound(_))));
        assert_eq!(store.handoffs(Some("open"), None, 10).await.unwrap().len(), 1);
        assert_eq!(store.handoffs(None, None, 10).await.unwrap().len(), 2);
        let acme = store.handoffs(None, Some("acme"), 10).await.unwrap();
        assert_eq!(acme.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["h1"], "one tenant's only");
    }
}

#[tokio::test]
async fn shadow_records_round_trip() {
    for db in common::databases().await {
        let store = db.store.clone();
        eprintln!("on {}", db.name);
        let s = ShadowRecord {
            request_id: "r1".into(),
            created_ms: 5,
            policy_id: "p+abc".into(),
            primary_route: "local".into(),
            primary_status: 200,
            primary_output: Some("4".into()),
            shadow_route: "candidate".into(),
            shadow_status: 502,
            shadow_output: None,
            shadow_ms: 12,
            same_output: false,
        };
        store.record_shadow(&s).await.unwrap();
        assert_eq!(store.shadow("r1").await.unwrap(), Some(s));
        assert_eq!(store.shadow("r2").await.unwrap(), None);
    }
}

/// Group commit: once `decision` returns, the record is committed, so a
/// server that waits for it before answering never answers without it. A
/// second connection (another process, in effect) sees it with no flush.
#[tokio::test]
async fn a_decision_is_committed_when_recording_returns() {
    for db in common::databases().await {
        let recorder = Recorder::start(db.store.clone());
        let reader = db.another().await;
        let ids: Vec<String> = (0..200).map(|i| format!("g{i}")).collect();
        let written = futures::future::join_all(ids.iter().map(|id| recorder.decision(record(id)))).await;
        assert!(written.iter().all(|w| *w));
        for id in &ids {
            assert!(
                reader.decision(id).await.unwrap().is_some(),
                "{}: {id} was acknowledged but not committed",
                db.name
            );
        }
    }
}

#[tokio::test]
async fn the_recorder_writes_in_order_and_flush_makes_records_visible() {
    for db in common::databases().await {
        let store = db.store.clone();
        eprintln!("on {}", db.name);
        let recorder = Recorder::start(store.clone());
        for i in 0..1000 {
            recorder.decision(record(&format!("r{i}"))).await;
            // Queued right behind its decision, as the gateway does once the answer is sent.
            recorder.measured(
                format!("r{i}"),
                Measured {
                    prompt_tokens: Some(i),
                    completion_tokens: Some(2),
                    cost_usd: Some(0.5),
                    ttft_ms: Some(12.5),
                    disconnected: Some(false),
                    ..Measured::default()
                },
            );
        }
        recorder.flush().await;
        for i in [0u32, 517, 999] {
            let r = store.decision(&format!("r{i}")).await.unwrap().expect("written");
            let m = &r.measured;
            assert_eq!(
                (m.prompt_tokens, m.completion_tokens, m.cost_usd, m.energy_wh, m.ttft_ms, m.disconnected),
                (Some(i), Some(2), Some(0.5), None, Some(12.5), Some(false))
            );
            assert!(r.measured_ms.is_some_and(|t| t > 0), "stamped when measured");
        }
        // A record the database refuses (a duplicate id) loses no other record
        // of its batch.
        assert!(recorder.decision(record("dup")).await);
        let (refused, after) = tokio::join!(recorder.decision(record("dup")), recorder.decision(record("after-dup")));
        assert!(!refused, "the duplicate is reported as not written");
        assert!(after, "its batch-mate is written");
        assert!(store.decision("dup").await.unwrap().is_some());
        assert!(store.decision("after-dup").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn keys_are_stored_as_hashes_listed_and_revoked_once() {
    for db in common::databases().await {
        let store = db.store.clone();
        eprintln!("on {}", db.name);
        let key = switchyard_store::KeyRecord {
            id: "0a1b2c3d".into(),
            hash: "ab".repeat(32),
            tenant: "acme".into(),
            role: "tenant".into(),
            created_ms: 1,
            revoked_ms: None,
            lane: Some("batch".into()),
            data_class_floor: Some("regulated".into()),
            routes: vec!["local".into()],
            families: vec![],
            limits: switchyard_store::Limits { requests_per_minute: Some(60), ..Default::default() },
        };
        store.create_key(&key).await.unwrap();
        assert!(store.create_key(&key).await.is_err(), "ids are unique");
        assert_eq!(store.keys().await.unwrap(), std::slice::from_ref(&key));
        let listed = serde_json::to_value(&store.keys().await.unwrap()[0]).unwrap();
        assert!(listed.get("hash").is_none(), "a listing never carries the hash: {listed}");
        assert!(store.revoke_key("0a1b2c3d", 5).await.unwrap());
        assert!(!store.revoke_key("0a1b2c3d", 6).await.unwrap(), "revoked once");
        assert!(!store.revoke_key("nope", 6).await.unwrap());
        assert_eq!(store.keys().await.unwrap()[0].revoked_ms, Some(5));
    }
}

#[tokio::test]
async fn tenants_and_the_audit_trail_round_trip() {
    for db in common::databases().await {
        let store = db.store.clone();
        let limits =
            switchyard_store::Limits { tokens_per_day: Some(5000), cost_per_day_usd: Some(2.5), ..Default::default() };
        let made = store.put_tenant("acme", &limits, 10).await.unwrap();
        assert_eq!((made.created_ms, made.updated_ms, made.limits), (10, 10, limits));
        let changed = store.put_tenant("acme", &switchyard_store::Limits::default(), 20).await.unwrap();
        assert_eq!((changed.created_ms, changed.updated_ms), (10, 20), "{}: replaced, not added", db.name);
        assert_eq!(store.tenants().await.unwrap(), [changed]);

        let line = |tenant: &str, status: u16| switchyard_store::AuditRecord {
            id: 0,
            created_ms: 1,
            key_id: Some("0a1b2c3d".into()),
            tenant: Some(tenant.into()),
            action: "POST /v1/chat/completions".into(),
            outcome: "refused".into(),
            status,
            detail: "why".into(),
        };
        let recorder = Recorder::start(store.clone());
        recorder.audit(line("acme", 429));
        recorder.audit(line("globex", 403));
        recorder.flush().await;
        store.record_audit(&line("acme", 401)).await.unwrap();
        let all = store.audit(0, None, 10).await.unwrap();
        assert_eq!(all.iter().map(|a| a.status).collect::<Vec<_>>(), [429, 403, 401], "{}: in order", db.name);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        let acme = store.audit(0, Some("acme"), 10).await.unwrap();
        assert_eq!(acme.len(), 2);
        assert_eq!(store.audit(all[1].id, None, 10).await.unwrap().len(), 1, "paged by id");
        assert_eq!(recorder.dropped().audit.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}

/// SLA compliance reads outcomes, not whole records: the same fields, with
/// the family and chosen route taken from the decision's JSON by the
/// database itself, newest first, within the window and the limit.
#[tokio::test]
async fn outcomes_carry_what_the_decision_chose_on_every_database() {
    for db in common::databases().await {
        let mut chat = record("o1");
        chat.decision = JsonText::of(&json!({"family": "chat", "route": "local", "score": 0.2})).unwrap();
        chat.measured = Measured { ttft_ms: Some(120.5), total_ms: Some(900.0), ..Measured::default() };
        chat.measured_ms = Some(chat.created_ms + 950);
        let mut failed = record("o2");
        failed.created_ms += 10;
        failed.route = "failed".into();
        failed.status = 502;
        failed.label = "error".into();
        failed.decision = JsonText::of(&json!({"route": "vendor"})).unwrap();
        let mut outside = record("o3");
        outside.created_ms += 60_000;
        for r in [&chat, &failed, &outside] {
            db.store.record_decision(r).await.unwrap();
        }
        let since = chat.created_ms;
        let got = db.store.outcomes(since, since + 60_000, 10).await.unwrap();
        let name = db.name;
        assert_eq!(got.len(), 2, "{name}: the window ends before o3");
        let (newest, oldest) = (&got[0], &got[1]);
        assert_eq!((newest.route.as_str(), newest.status, newest.label.as_str()), ("failed", 502, "error"), "{name}");
        assert_eq!((newest.family.as_deref(), newest.chosen.as_deref()), (None, Some("vendor")), "{name}");
        assert_eq!((newest.measured_ms, newest.total_ms), (None, None), "{name}");
        assert_eq!((oldest.family.as_deref(), oldest.chosen.as_deref()), (Some("chat"), Some("local")), "{name}");
        assert_eq!((oldest.ttft_ms, oldest.total_ms, oldest.measured_ms), (Some(120.5), Some(900.0), chat.measured_ms));
        assert_eq!(
            db.store.outcomes(since, since + 60_000, 1).await.unwrap()[0].route,
            "failed",
            "{name}: newest first"
        );
    }
}
