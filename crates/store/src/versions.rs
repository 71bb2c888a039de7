//! Versions of what an operator changes while the server runs (`versions`):
//! the routing policy. The newest row of an object is the version in
//! force; replicas poll [`Store::current_version`] and follow it, so an
//! apply on one replica reaches every replica. Rows are never changed or
//! deleted: a rollback appends the older body again.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{Store, StoreError};

/// The object name of the routing policy.
pub const POLICY: &str = "policy";

/// One version of one object, as applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Order of application, across objects; 0 before it is stored.
    pub seq: i64,
    pub object: String,
    /// The object's own id (a policy's version label and content hash).
    pub version_id: String,
    pub sha256: String,
    /// The object itself (a policy's TOML).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub body: String,
    /// `start`, `apply` or `rollback`.
    pub source: String,
    pub actor: String,
    pub applied_ms: i64,
    pub reason: String,
}

fn version(row: &sqlx::any::AnyRow) -> Result<Version, StoreError> {
    Ok(Version {
        seq: row.try_get("seq")?,
        object: row.try_get("object")?,
        version_id: row.try_get("version_id")?,
        sha256: row.try_get("sha256")?,
        body: row.try_get("body")?,
        source: row.try_get("source")?,
        actor: row.try_get("actor")?,
        applied_ms: row.try_get("applied_ms")?,
        reason: row.try_get("reason")?,
    })
}

impl Store {
    /// Appends `v` as the version in force of its object; returns its `seq`.
    pub async fn put_version(&self, v: &Version) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO versions (object, version_id, sha256, body, source, actor, applied_ms, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
        )
        .bind(v.object.clone())
        .bind(v.version_id.clone())
        .bind(v.sha256.clone())
        .bind(v.body.clone())
        .bind(v.source.clone())
        .bind(v.actor.clone())
        .bind(v.applied_ms)
        .bind(v.reason.clone())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("seq")?)
    }

    /// The version of `object` in force: its newest row.
    pub async fn current_version(&self, object: &str) -> Result<Option<Version>, StoreError> {
        let row = sqlx::query("SELECT * FROM versions WHERE object = $1 ORDER BY seq DESC LIMIT 1")
            .bind(object.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(version).transpose()
    }

    /// `object`'s versions, newest first; bodies left out unless `bodies`.
    pub async fn versions(&self, object: &str, limit: u32, bodies: bool) -> Result<Vec<Version>, StoreError> {
        let rows = sqlx::query("SELECT * FROM versions WHERE object = $1 ORDER BY seq DESC LIMIT $2")
            .bind(object.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let mut v = version(r)?;
                if !bodies {
                    v.body.clear();
                }
                Ok(v)
            })
            .collect()
    }

    /// The newest version of `object` written from `source`.
    pub async fn last_version_from(&self, object: &str, source: &str) -> Result<Option<Version>, StoreError> {
        let row = sqlx::query("SELECT * FROM versions WHERE object = $1 AND source = $2 ORDER BY seq DESC LIMIT 1")
            .bind(object.to_string())
            .bind(source.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(version).transpose()
    }

    /// The version in force before the current one: the newest row whose
    /// id differs from the current row's (re-applying the same version
    /// twice leaves nothing to roll back to between them).
    pub async fn previous_version(&self, object: &str) -> Result<Option<Version>, StoreError> {
        let Some(current) = self.current_version(object).await? else { return Ok(None) };
        let row = sqlx::query(
            "SELECT * FROM versions WHERE object = $1 AND version_id <> $2 AND seq < $3 ORDER BY seq DESC LIMIT 1",
        )
        .bind(object.to_string())
        .bind(current.version_id)
        .bind(current.seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version).transpose()
    }
}
