use serde_json::json;
use switchyard_store::{DecisionRecord, Store};

fn record(id: &str) -> DecisionRecord {
    DecisionRecord {
        request_id: id.into(),
        created_ms: 1_764_000_000_000,
        policy_id: "p+abc".into(),
        rule_id: Some("difficulty".into()),
        route: "local".into(),
        status: 200,
        reason: "rule difficulty: 0.2 < 0.6 -> local".into(),
        decision: json!({"score": 0.2, "threshold": 0.6}),
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
}
