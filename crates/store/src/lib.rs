//! Durable records on SQLite (one file in the data dir), through sqlx so the
//! same queries can later run on PostgreSQL.
//!
//! Invariant: a record is written in one statement, so a crash leaves it
//! either whole or absent, never half-written.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored decision is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// How a routed request was decided and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub request_id: String,
    pub created_ms: i64,
    pub policy_id: String,
    pub rule_id: Option<String>,
    /// The route that answered, or `refused` / `failed`.
    pub route: String,
    /// HTTP status returned to the client.
    pub status: u16,
    /// The decision's reason plus every fallback and retry taken.
    pub reason: String,
    /// The full decision (scores, thresholds, data class, chain, exclusions).
    pub decision: serde_json::Value,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| sqlx::Error::Io(e))?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn record_decision(&self, r: &DecisionRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO decisions (request_id, created_ms, policy_id, rule_id, route, status, reason, decision)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.request_id)
        .bind(r.created_ms)
        .bind(&r.policy_id)
        .bind(&r.rule_id)
        .bind(&r.route)
        .bind(i64::from(r.status))
        .bind(&r.reason)
        .bind(serde_json::to_string(&r.decision)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn decision(&self, request_id: &str) -> Result<Option<DecisionRecord>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM decisions WHERE request_id = ?").bind(request_id).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        Ok(Some(DecisionRecord {
            request_id: row.try_get("request_id")?,
            created_ms: row.try_get("created_ms")?,
            policy_id: row.try_get("policy_id")?,
            rule_id: row.try_get("rule_id")?,
            route: row.try_get("route")?,
            status: row.try_get::<i64, _>("status")? as u16,
            reason: row.try_get("reason")?,
            decision: serde_json::from_str(&row.try_get::<String, _>("decision")?)?,
        }))
    }
}
