//! Kept payloads: sealed and opened with AES-256-GCM, keys rotated (old
//! rows still open), a wrong or missing key named in a clear error, and
//! the purge deleting by age on a clock the test controls, on SQLite and
//! PostgreSQL.

use switchyard_store::payload::{PayloadError, PayloadKeys, PayloadRecord};
use switchyard_store::testing::fresh_postgres;
use switchyard_store::{HandoffRecord, Store};

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn sealed(keys: &PayloadKeys, id: &str, created_ms: i64, expires_ms: i64) -> PayloadRecord {
    let (key_id, nonce, body) = keys.seal(format!("the prompt of {id}").as_bytes()).unwrap();
    PayloadRecord {
        request_id: id.into(),
        created_ms,
        route: "cloud".into(),
        data_class: "internal".into(),
        kind: "encrypted".into(),
        key_id: Some(key_id),
        nonce: Some(nonce),
        body,
        expires_ms,
    }
}

#[test]
fn keys_rotate_and_a_wrong_key_is_an_error_never_garbage() {
    let old = PayloadKeys::parse(&format!("2026-10 {K1}\n")).unwrap();
    let r = sealed(&old, "a", 0, 1);
    assert!(!r.body.contains("prompt"), "sealed");
    assert_eq!(old.open(&r).unwrap(), b"the prompt of a");

    // Rotated: a new key seals, the old one still opens what it sealed.
    let rotated = PayloadKeys::parse(&format!("# newest first\n2026-11 {K2}\n2026-10 {K1}\n")).unwrap();
    assert_eq!(rotated.current_id(), "2026-11");
    assert_eq!(rotated.open(&r).unwrap(), b"the prompt of a");
    assert_eq!(rotated.open(&sealed(&rotated, "b", 0, 1)).unwrap(), b"the prompt of b");

    // The same id, another key: GCM refuses to open it.
    let impostor = PayloadKeys::parse(&format!("2026-10 {K2}\n")).unwrap();
    assert!(matches!(impostor.open(&r), Err(PayloadError::WrongKey { key_id, .. }) if key_id == "2026-10"));
    let unknown = PayloadKeys::parse(K2).unwrap();
    let e = unknown.open(&r).unwrap_err();
    assert!(e.to_string().contains("`2026-10`, which is not among the keys given"), "{e}");
    let mut changed = r.clone();
    changed.body.replace_range(0..4, "AAAA");
    assert!(matches!(old.open(&changed), Err(PayloadError::WrongKey { .. })), "a changed row does not open");

    for bad in ["", "abc", &format!("x {K1}\nx {K2}")] {
        assert!(matches!(PayloadKeys::parse(bad), Err(PayloadError::Keys(_))), "{bad:?}");
    }
    assert!(!format!("{rotated:?}").contains("2222"), "Debug never shows a key");
}

#[tokio::test]
async fn the_purge_deletes_by_age_on_a_controlled_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!("sqlite://{}", dir.path().join("p.db").display())];
    urls.extend(fresh_postgres().await);
    let keys = PayloadKeys::parse(K1).unwrap();
    for url in urls {
        let store = Store::connect(&url).await.unwrap();
        store.put_payload(&sealed(&keys, "old", 1_000, 2_000)).await.unwrap();
        store.put_payload(&sealed(&keys, "new", 1_000, 9_000)).await.unwrap();
        for (id, status) in [("h-open", "open"), ("h-done", "answered")] {
            let h = HandoffRecord {
                id: id.into(),
                request_id: format!("r-{id}"),
                created_ms: 1_000,
                policy_id: "p".into(),
                rule_id: "r".into(),
                messages: serde_json::json!([]),
                status: "open".into(),
                answer: None,
                reviewer: None,
                resolved_ms: None,
                tenant: None,
            };
            store.enqueue_handoff(&h).await.unwrap();
            if status != "open" {
                store.resolve_handoff(id, "ok", "rev", 1_500).await.unwrap();
            }
        }
        let none = store.purge(1_999, Some(10_000), Some(10_000)).await.unwrap();
        assert_eq!((none.payloads, none.handoffs), (0, 0), "{url}: nothing has expired yet");
        let purged = store.purge(5_000, None, Some(3_000)).await.unwrap();
        assert_eq!((purged.payloads, purged.handoffs), (1, 1), "{url}");
        assert!(store.payload("old").await.unwrap().is_none() && store.payload("new").await.unwrap().is_some());
        assert!(store.handoff("h-open").await.unwrap().is_some(), "an open handoff waits for its person");
    }
}
