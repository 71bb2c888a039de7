//! The hash-chained audit log of changes (`audit_chain`): policies and
//! models loaded, keys created and revoked, tenants' limits set, payloads
//! purged. Each entry's hash is the sha256 of its fields and the previous
//! entry's hash, so [`verify`] finds the first entry that was edited,
//! deleted or moved. A truncation of the newest entries leaves a valid
//! shorter chain: it is caught against a head recorded elsewhere (each
//! append logs the new head, `switchyard audit head` prints it, and
//! `audit verify --head` checks the chain still holds it).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Store, StoreError};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A change, as its author describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// A key id, `cli`, or `server:NODE`.
    pub actor: String,
    pub tenant: Option<String>,
    /// `policy`, `model:NAME`, `key:ID`, `tenant:NAME`, `retention`, …
    pub object: String,
    pub action: String,
    pub before_sha256: Option<String>,
    pub after_sha256: Option<String>,
    pub reason: String,
}

/// A change as the chain holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainEntry {
    pub id: i64,
    pub created_ms: i64,
    #[serde(flatten)]
    pub change: Change,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of an entry: its fields, in a fixed order, and the previous hash.
pub fn entry_hash(created_ms: i64, c: &Change, prev_hash: &str) -> String {
    let fields = serde_json::json!([
        created_ms,
        c.actor,
        c.tenant,
        c.object,
        c.action,
        c.before_sha256,
        c.after_sha256,
        c.reason,
        prev_hash
    ]);
    hex::encode(Sha256::digest(fields.to_string().as_bytes()))
}

/// The sha256 of an object's state, as a change's `before` or `after`.
pub fn state_hash<T: Serialize>(state: &T) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(state).unwrap_or_default()))
}

/// Where a chain stops holding.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("audit chain broken at entry {id}: {why}")]
pub struct Break {
    /// The first entry that does not verify (0: none is to blame, e.g. a
    /// missing head).
    pub id: i64,
    pub why: String,
}

/// Checks `entries` (the whole chain, oldest first) link and hash as
/// written; with `head`, that the chain still holds that entry hash.
/// Returns the number of entries and the newest hash.
pub fn verify(entries: &[ChainEntry], head: Option<&str>) -> Result<(usize, String), Break> {
    let mut prev = GENESIS.to_string();
    let mut last_id = 0;
    for e in entries {
        if e.id <= last_id {
            return Err(Break { id: e.id, why: format!("out of order after entry {last_id}") });
        }
        if e.prev_hash != prev {
            return Err(Break {
                id: e.id,
                why: "its previous hash is not the hash of the entry before it (an entry before it was deleted, \
                      moved or changed)"
                    .into(),
            });
        }
        let hash = entry_hash(e.created_ms, &e.change, &e.prev_hash);
        if e.hash != hash {
            return Err(Break { id: e.id, why: "its fields do not match its hash (it was edited)".into() });
        }
        prev = hash;
        last_id = e.id;
    }
    if let Some(head) = head {
        if !entries.iter().any(|e| e.hash == head) {
            return Err(Break {
                id: 0,
                why: format!("the chain no longer holds head {head}: entries up to it were removed or rewritten"),
            });
        }
    }
    Ok((entries.len(), prev))
}

/// Which entries [`Store::chain`] returns.
#[derive(Debug, Clone, Default)]
pub struct ChainFilter {
    /// Objects starting with this (`key:` for every key).
    pub object: Option<String>,
    pub actor: Option<String>,
    pub since_ms: i64,
    pub limit: Option<u32>,
}

fn entry(row: &sqlx::any::AnyRow) -> Result<ChainEntry, StoreError> {
    Ok(ChainEntry {
        id: row.try_get("id")?,
        created_ms: row.try_get("created_ms")?,
        change: Change {
            actor: row.try_get("actor")?,
            tenant: row.try_get("tenant")?,
            object: row.try_get("object")?,
            action: row.try_get("action")?,
            before_sha256: row.try_get("before_sha256")?,
            after_sha256: row.try_get("after_sha256")?,
            reason: row.try_get("reason")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl Store {
    /// Appends `change` to the chain and returns it as written. Replicas
    /// appending at once cannot fork the chain: `prev_hash` is unique, so
    /// the loser of a race reads the new head and tries again.
    pub async fn append_change(&self, change: &Change) -> Result<ChainEntry, StoreError> {
        let mut tries = 0;
        loop {
            let prev: Option<String> = sqlx::query("SELECT hash FROM audit_chain ORDER BY id DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("hash"))
                .transpose()?;
            let prev = prev.unwrap_or_else(|| GENESIS.to_string());
            let created_ms = crate::now_ms();
            let hash = entry_hash(created_ms, change, &prev);
            let inserted = sqlx::query(
                "INSERT INTO audit_chain (created_ms, actor, tenant, object, action, before_sha256, after_sha256, \
                 reason, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(created_ms)
            .bind(change.actor.clone())
            .bind(change.tenant.clone())
            .bind(change.object.clone())
            .bind(change.action.clone())
            .bind(change.before_sha256.clone())
            .bind(change.after_sha256.clone())
            .bind(change.reason.clone())
            .bind(prev.clone())
            .bind(hash.clone())
            .fetch_one(&self.pool)
            .await;
            match inserted {
                Ok(row) => {
                    let id = row.try_get("id")?;
                    tracing::info!(audit_id = id, object = %change.object, action = %change.action, head = %hash, "audit chain: change recorded");
                    return Ok(ChainEntry { id, created_ms, change: change.clone(), prev_hash: prev, hash });
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && tries < 8 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Appends `change`, its `before` taken from the newest entry about the
    /// same object when not given: what to call before making a change.
    pub async fn record_change(&self, mut change: Change) -> Result<ChainEntry, StoreError> {
        if change.before_sha256.is_none() {
            change.before_sha256 = self.last_change(&change.object).await?.and_then(|e| e.change.after_sha256);
        }
        self.append_change(&change).await
    }

    /// Chain entries matching `filter`, oldest first.
    pub async fn chain(&self, filter: &ChainFilter) -> Result<Vec<ChainEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_chain WHERE created_ms >= $1 AND ($2 IS NULL OR object LIKE $2 ESCAPE '\\') \
             AND ($3 IS NULL OR actor = $3) ORDER BY id LIMIT $4",
        )
        .bind(filter.since_ms)
        .bind(
            filter
                .object
                .as_ref()
                .map(|o| format!("{}%", o.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))),
        )
        .bind(filter.actor.clone())
        .bind(i64::from(filter.limit.unwrap_or(u32::MAX)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry).collect()
    }

    /// The newest entry about `object`, if any: its state's hash is the
    /// `before` of the next change to it.
    pub async fn last_change(&self, object: &str) -> Result<Option<ChainEntry>, StoreError> {
        let row = sqlx::query("SELECT * FROM audit_chain WHERE object = $1 ORDER BY id DESC LIMIT 1")
            .bind(object.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entry).transpose()
    }
}
