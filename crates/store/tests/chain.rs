//! The audit chain on real databases (SQLite, and PostgreSQL at
//! 127.0.0.1:5432): replicas appending at once never fork it, and each way
//! of tampering with its rows (edit, delete, reorder, truncate) is found.

use switchyard_store::chain::{verify, ChainFilter, Change};
use switchyard_store::testing::fresh_postgres;
use switchyard_store::Store;

fn change(i: usize) -> Change {
    Change {
        actor: format!("key-{}", i % 3),
        tenant: Some("acme".into()),
        object: format!("key:k{i}"),
        action: "create".into(),
        before_sha256: None,
        after_sha256: Some(format!("{i:064x}")),
        reason: format!("change {i}"),
    }
}

/// A database URL for a fresh store of each kind available here.
async fn urls(dir: &tempfile::TempDir, name: &str) -> Vec<String> {
    let mut urls = vec![format!("sqlite://{}", dir.path().join(format!("{name}.db")).display())];
    urls.extend(fresh_postgres().await);
    urls
}

async fn raw(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

async fn chain_of(store: &Store) -> Vec<switchyard_store::chain::ChainEntry> {
    store.chain(&ChainFilter::default()).await.unwrap()
}

#[tokio::test]
async fn two_replicas_appending_at_once_build_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    for url in urls(&dir, "race").await {
        let (a, b) = (Store::connect(&url).await.unwrap(), Store::connect(&url).await.unwrap());
        let writes = (0..20).map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { store.append_change(&change(i)).await.unwrap() })
        });
        for w in writes {
            w.await.unwrap();
        }
        let entries = chain_of(&a).await;
        let (n, head) = verify(&entries, None).unwrap();
        assert_eq!(n, 20, "{url}");
        assert_eq!(head, entries.last().unwrap().hash);
        let keys = a.chain(&ChainFilter { object: Some("key:k1".into()), ..Default::default() }).await.unwrap();
        assert_eq!(keys.len(), 11, "k1 and k10..k19, by prefix");
        assert_eq!(a.last_change("key:k7").await.unwrap().unwrap().change, change(7));
    }
}

#[tokio::test]
async fn every_kind_of_tampering_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let tampering: [(&str, &[&str], Option<i64>); 4] = [
        ("edit", &["UPDATE audit_chain SET reason = 'nothing happened' WHERE id = 3"], Some(3)),
        ("delete", &["DELETE FROM audit_chain WHERE id = 3"], Some(4)),
        (
            "reorder",
            &[
                "UPDATE audit_chain SET id = 100 WHERE id = 2",
                "UPDATE audit_chain SET id = 2 WHERE id = 3",
                "UPDATE audit_chain SET id = 3 WHERE id = 100",
            ],
            Some(2),
        ),
        ("truncate", &["DELETE FROM audit_chain WHERE id >= 4"], None),
    ];
    for (name, statements, broken_at) in tampering {
        for url in urls(&dir, name).await {
            let store = Store::connect(&url).await.unwrap();
            for i in 0..5 {
                store.append_change(&change(i)).await.unwrap();
            }
            let (_, head) = verify(&chain_of(&store).await, None).unwrap();
            let pool = raw(&url).await;
            for sql in statements {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            let entries = chain_of(&store).await;
            match broken_at {
                Some(id) => {
                    let e = verify(&entries, None).unwrap_err();
                    assert_eq!(e.id, id, "{name} on {url}: {e}");
                }
                None => {
                    // What is left is a valid, shorter chain: only the head
                    // recorded before tells.
                    assert!(verify(&entries, None).is_ok());
                    let e = verify(&entries, Some(&head)).unwrap_err();
                    assert!(e.why.contains(&head), "{name} on {url}: {e}");
                }
            }
        }
    }
}
