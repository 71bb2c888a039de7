//! Durable records on SQLite (one file in the data dir), through sqlx so the
//! same queries can later run on PostgreSQL: routing decisions, the human
//! handoff queue, shadow comparisons, API keys and tenants, the audit trail.
//!
//! Invariant: a record is written in one statement, so a crash leaves it
//! either whole or absent, never half-written.

// A request-path crate: a failure is a typed error, never a panic (tests
// may unwrap: see clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod recorder;

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqliteConnection};

pub use recorder::{Completion, Recorder};

/// A JSON document kept as its text: serialized once where it is made
/// (the request path) and stored as is, yet shown as nested JSON (not a
/// string) wherever a record is serialized, e.g. by `/admin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// `value` as JSON, or `null` if it cannot be serialized (logged): a
    /// record is never lost over one of its fields.
    pub fn of_or_null<T: Serialize + ?Sized>(value: &T) -> Self {
        Self::of(value).unwrap_or_else(|e| {
            tracing::error!("a record field could not be serialized, so it is stored as null: {e}");
            Self(serde_json::value::RawValue::NULL.to_owned())
        })
    }

    /// Checks that `text` is JSON (a stored record may have been edited).
    pub fn parse(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(Self)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

/// How a stored column becomes a `JsonText`: checked, since a stored record
/// may have been edited.
impl TryFrom<String> for JsonText {
    type Error = serde_json::Error;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(text)
    }
}

/// Equal when the documents are equal, whatever their spacing.
impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
            || serde_json::from_str::<serde_json::Value>(self.as_str()).ok()
                == serde_json::from_str::<serde_json::Value>(other.as_str()).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a record's JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// How a routed request was decided and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
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
    #[sqlx(try_from = "String")]
    pub decision: JsonText,
    /// How it ended: `answered`, `refused`, `human-escalated` or `error`.
    pub label: String,
    /// What running the decision did: every route tried and how it went,
    /// retries, the cascade's confidence.
    #[sqlx(try_from = "String")]
    pub execution: JsonText,
    /// The calling key's tenant; `None` when the server has no keys.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Filled in after the answer was sent (see [`Completion`]).
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    #[serde(default)]
    pub completion_tokens: Option<u32>,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub energy_wh: Option<f64>,
}

/// An API key as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct KeyRecord {
    /// The public id (`sy-<id>_…`).
    pub id: String,
    /// SHA-256 of the secret, hex. Never serialized out.
    #[serde(skip_serializing, default)]
    pub hash: String,
    pub tenant: String,
    /// `admin`, `operator`, `auditor` or `tenant`.
    pub role: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub lane: Option<String>,
    pub data_class_floor: Option<String>,
    /// Routes the key may force (empty: any its role may).
    #[sqlx(json)]
    pub routes: Vec<String>,
    /// Families the key may declare (empty: any).
    #[sqlx(json)]
    pub families: Vec<String>,
    #[sqlx(json)]
    #[serde(default)]
    pub limits: Limits,
}

/// A key's or a tenant's limits; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute, with a burst of as many.
    pub requests_per_minute: Option<u32>,
    /// Prompt and completion tokens per minute, with a burst of as many.
    pub tokens_per_minute: Option<u64>,
    /// Prompt and completion tokens per UTC day.
    pub tokens_per_day: Option<u64>,
    /// Dollars per UTC day, at the answering route's `[prices]`.
    pub cost_per_day_usd: Option<f64>,
    /// Requests in flight at once (a stream counts until it ends).
    pub concurrent: Option<u32>,
}

impl Limits {
    /// The first limit that could never admit anything (zero, negative or
    /// not a number), by its name: a config or API error to report.
    pub fn invalid(&self) -> Option<&'static str> {
        let zero_u = |v: Option<u64>| v == Some(0);
        if zero_u(self.requests_per_minute.map(u64::from)) {
            Some("requests_per_minute")
        } else if zero_u(self.tokens_per_minute) {
            Some("tokens_per_minute")
        } else if zero_u(self.tokens_per_day) {
            Some("tokens_per_day")
        } else if self.cost_per_day_usd.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            Some("cost_per_day_usd")
        } else if zero_u(self.concurrent.map(u64::from)) {
            Some("concurrent")
        } else {
            None
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A tenant: limits shared by all its keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct TenantRecord {
    pub name: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[sqlx(json)]
    #[serde(default)]
    pub limits: Limits,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct AuditRecord {
    /// Assigned by the store, in the order lines were written.
    #[serde(default)]
    pub id: i64,
    pub created_ms: i64,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub action: String,
    /// `refused` or `done`.
    pub outcome: String,
    pub status: u16,
    pub detail: String,
}

/// A request a policy handed to a human; resolved once, by a reviewer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct HandoffRecord {
    pub id: String,
    pub request_id: String,
    pub created_ms: i64,
    pub policy_id: String,
    pub rule_id: String,
    /// The conversation as the client sent it (`[{role, content}]`).
    #[sqlx(json)]
    pub messages: serde_json::Value,
    /// `open` or `resolved`.
    pub status: String,
    pub answer: Option<String>,
    pub reviewer: Option<String>,
    pub resolved_ms: Option<i64>,
    /// The asking key's tenant; `None` when the server has no keys.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A shadow route's answer recorded beside the primary's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct ShadowRecord {
    pub request_id: String,
    pub created_ms: i64,
    pub policy_id: String,
    pub primary_route: String,
    pub primary_status: u16,
    pub primary_output: Option<String>,
    pub shadow_route: String,
    pub shadow_status: u16,
    pub shadow_output: Option<String>,
    pub shadow_ms: i64,
    pub same_output: bool,
}

/// Why a handoff could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no handoff with id {0}")]
    NotFound(String),
    #[error("handoff {0} is already resolved")]
    AlreadyResolved(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL never corrupts the database; a power cut may
            // lose the last transactions. FULL would fsync every batch.
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Opens an existing database to read: no migrations, no writes, so a
    /// tool reading a gateway's records (`bench trace record`) never changes
    /// them, whatever version wrote them.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?.read_only(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
        Ok(Self { pool })
    }

    pub async fn record_decision(&self, r: &DecisionRecord) -> Result<(), StoreError> {
        insert_decisions(&mut *self.pool.acquire().await?, &[r]).await
    }

    pub async fn decision(&self, request_id: &str) -> Result<Option<DecisionRecord>, StoreError> {
        let q = sqlx::query_as("SELECT * FROM decisions WHERE request_id = ?");
        Ok(q.bind(request_id).fetch_optional(&self.pool).await?)
    }

    /// Decisions recorded at or after `since_ms` (Unix ms), oldest first, at
    /// most `limit`: the traffic `bench trace record` turns into a trace.
    pub async fn decisions_since(&self, since_ms: i64, limit: i64) -> Result<Vec<DecisionRecord>, StoreError> {
        let q = sqlx::query_as("SELECT * FROM decisions WHERE created_ms >= ? ORDER BY created_ms, rowid LIMIT ?");
        Ok(q.bind(since_ms).bind(limit).fetch_all(&self.pool).await?)
    }

    pub async fn enqueue_handoff(&self, h: &HandoffRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO handoffs (id, request_id, created_ms, policy_id, rule_id, messages, status, tenant)
             VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
        )
        .bind(&h.id)
        .bind(&h.request_id)
        .bind(h.created_ms)
        .bind(&h.policy_id)
        .bind(&h.rule_id)
        .bind(serde_json::to_string(&h.messages)?)
        .bind(&h.tenant)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Handoffs, oldest first, optionally only those with `status`, and
    /// only `tenant`'s where one is given.
    pub async fn handoffs(
        &self,
        status: Option<&str>,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HandoffRecord>, StoreError> {
        let q = sqlx::query_as(
            "SELECT * FROM handoffs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR tenant = ?2)
             ORDER BY created_ms, id LIMIT ?3",
        );
        Ok(q.bind(status).bind(tenant).bind(i64::from(limit)).fetch_all(&self.pool).await?)
    }

    pub async fn handoff(&self, id: &str) -> Result<Option<HandoffRecord>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM handoffs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Resolves an open handoff. The `status = 'open'` guard makes this
    /// atomic: of two reviewers racing, exactly one wins.
    pub async fn resolve_handoff(
        &self,
        id: &str,
        answer: &str,
        reviewer: &str,
        now_ms: i64,
    ) -> Result<HandoffRecord, ResolveError> {
        let done = sqlx::query("UPDATE handoffs SET status = 'resolved', answer = ?, reviewer = ?, resolved_ms = ? WHERE id = ? AND status = 'open'")
            .bind(answer)
            .bind(reviewer)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        match self.handoff(id).await? {
            None => Err(ResolveError::NotFound(id.to_string())),
            Some(_) if done.rows_affected() == 0 => Err(ResolveError::AlreadyResolved(id.to_string())),
            Some(h) => Ok(h),
        }
    }

    pub async fn create_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, hash, tenant, role, created_ms, lane, data_class_floor, routes, families, limits)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&k.id)
        .bind(&k.hash)
        .bind(&k.tenant)
        .bind(&k.role)
        .bind(k.created_ms)
        .bind(&k.lane)
        .bind(&k.data_class_floor)
        .bind(serde_json::to_string(&k.routes)?)
        .bind(serde_json::to_string(&k.families)?)
        .bind(serde_json::to_string(&k.limits)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM api_keys ORDER BY created_ms, id").fetch_all(&self.pool).await?)
    }

    /// Revokes a key; `false` if there is no such key or it was revoked already.
    pub async fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_keys SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM tenants ORDER BY name").fetch_all(&self.pool).await?)
    }

    /// Creates the tenant or replaces its limits.
    pub async fn put_tenant(&self, name: &str, limits: &Limits, now_ms: i64) -> Result<TenantRecord, StoreError> {
        let q = sqlx::query_as(
            "INSERT INTO tenants (name, created_ms, updated_ms, limits) VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated_ms = excluded.updated_ms
             RETURNING *",
        );
        Ok(q.bind(name).bind(now_ms).bind(serde_json::to_string(limits)?).fetch_one(&self.pool).await?)
    }

    pub async fn record_audit(&self, a: &AuditRecord) -> Result<(), StoreError> {
        insert_audit(&mut *self.pool.acquire().await?, a).await
    }

    /// Audit lines with an id above `after`, oldest first, at most `limit`,
    /// only `tenant`'s where one is given.
    pub async fn audit(&self, after: i64, tenant: Option<&str>, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let q =
            sqlx::query_as("SELECT * FROM audit WHERE id > ?1 AND (?2 IS NULL OR tenant = ?2) ORDER BY id LIMIT ?3");
        Ok(q.bind(after).bind(tenant).bind(i64::from(limit)).fetch_all(&self.pool).await?)
    }

    pub async fn record_shadow(&self, s: &ShadowRecord) -> Result<(), StoreError> {
        insert_shadow(&mut *self.pool.acquire().await?, s).await
    }

    pub async fn shadow(&self, request_id: &str) -> Result<Option<ShadowRecord>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM shadows WHERE request_id = ?")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?)
    }
}

const DECISION_COLUMNS: &str = "INSERT INTO decisions (request_id, created_ms, policy_id, rule_id, route, status, reason, decision, label, execution, tenant,
                                                   prompt_tokens, completion_tokens, cost_usd, energy_wh) ";

/// Rows per INSERT: only these sizes, so each statement is prepared once
/// and then reused from sqlx's cache (a statement per batch length was
/// re-parsed by SQLite on every batch). 15 × 64 bound values is well under
/// SQLite's limit.
const ROWS_PER_INSERT: [usize; 3] = [64, 8, 1];

/// Inserts `records` with as few multi-row statements as the sizes allow.
async fn insert_decisions(conn: &mut SqliteConnection, records: &[&DecisionRecord]) -> Result<(), StoreError> {
    let mut rest = records;
    while !rest.is_empty() {
        // The sizes end with 1, so some size always fits a non-empty rest.
        let rows = ROWS_PER_INSERT.into_iter().find(|&n| n <= rest.len()).unwrap_or(1);
        let (chunk, tail) = rest.split_at(rows);
        rest = tail;
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(DECISION_COLUMNS);
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.request_id.clone())
                .push_bind(r.created_ms)
                .push_bind(r.policy_id.clone())
                .push_bind(r.rule_id.clone())
                .push_bind(r.route.clone())
                .push_bind(i64::from(r.status))
                .push_bind(r.reason.clone())
                .push_bind(r.decision.as_str().to_owned())
                .push_bind(r.label.clone())
                .push_bind(r.execution.as_str().to_owned())
                .push_bind(r.tenant.clone())
                .push_bind(r.prompt_tokens.map(i64::from))
                .push_bind(r.completion_tokens.map(i64::from))
                .push_bind(r.cost_usd)
                .push_bind(r.energy_wh);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_audit(conn: &mut SqliteConnection, a: &AuditRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (created_ms, key_id, tenant, action, outcome, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(a.created_ms)
    .bind(&a.key_id)
    .bind(&a.tenant)
    .bind(&a.action)
    .bind(&a.outcome)
    .bind(i64::from(a.status))
    .bind(&a.detail)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_shadow(conn: &mut SqliteConnection, s: &ShadowRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO shadows (request_id, created_ms, policy_id, primary_route, primary_status, primary_output,
                              shadow_route, shadow_status, shadow_output, shadow_ms, same_output)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&s.request_id)
    .bind(s.created_ms)
    .bind(&s.policy_id)
    .bind(&s.primary_route)
    .bind(i64::from(s.primary_status))
    .bind(&s.primary_output)
    .bind(&s.shadow_route)
    .bind(i64::from(s.shadow_status))
    .bind(&s.shadow_output)
    .bind(s.shadow_ms)
    .bind(s.same_output)
    .execute(conn)
    .await?;
    Ok(())
}
