//! Durable records: routing decisions, the human handoff queue, shadow
//! comparisons, API keys and tenants, the audit trail. On SQLite (one file
//! in the data dir, the embedded default) or PostgreSQL (shared by
//! replicas), through sqlx's `Any` driver: one set of queries, written with
//! `$N` parameters (both databases read them), and one migration directory
//! per database under `migrations/`.
//!
//! Invariant: a record is written in one statement, so a crash leaves it
//! either whole or absent, never half-written.

// A request-path crate: a failure is a typed error, never a panic (tests
// may unwrap: see clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod chain;
pub mod payload;
mod recorder;
pub mod rollouts;
mod rows;
pub mod versions;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool};

pub use recorder::{Dropped, Recorder};

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
    #[error("the database is unreachable (an outage injected by a game day)")]
    InjectedOutage,
}

/// Which records [`Store::telemetry`] returns; `None` matches any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryFilter {
    /// Unix ms, inclusive.
    pub since_ms: i64,
    /// Unix ms, exclusive.
    pub until_ms: Option<i64>,
    pub route: Option<String>,
    pub tenant: Option<String>,
    pub label: Option<String>,
    pub status: Option<u16>,
    pub limit: u32,
    /// The newest `limit` records, newest first (else the oldest, oldest first).
    pub newest_first: bool,
}

impl Default for TelemetryFilter {
    fn default() -> Self {
        Self {
            since_ms: 0,
            until_ms: None,
            route: None,
            tenant: None,
            label: None,
            status: None,
            limit: 1000,
            newest_first: false,
        }
    }
}

/// A record's outcome, as [`Store::outcomes`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub created_ms: i64,
    /// As [`DecisionRecord::route`].
    pub route: String,
    pub status: u16,
    pub label: String,
    pub measured_ms: Option<i64>,
    pub ttft_ms: Option<f64>,
    pub total_ms: Option<f64>,
    /// The decision's workload family, if it had one.
    pub family: Option<String>,
    /// The route the decision chose (for a request every route failed).
    pub chosen: Option<String>,
}

/// One chat request: how it was decided (by a policy, or by the `model`
/// it named), how it ended, and what it measured.
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
    pub decision: JsonText,
    /// How it ended: `answered`, `refused`, `human-escalated` or `error`.
    pub label: String,
    /// What running the decision did: every route tried and how it went,
    /// retries, the cascade's confidence.
    pub execution: JsonText,
    /// The calling key's tenant; `None` when the server has no keys.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The model that answered (`None` if none did).
    #[serde(default)]
    pub model: Option<String>,
    /// What ran it: the embedded llama.cpp build, or `upstream`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// The switchyard replica that served it (`node-id`).
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub stream: bool,
    /// Attempts repeated on the same route.
    #[serde(default)]
    pub retries: u32,
    /// Routes given up on (failed or skipped) before the one that answered.
    #[serde(default)]
    pub fallbacks: u32,
    /// `kept` or `escalated` where a cascade judged the fast answer.
    #[serde(default)]
    pub cascade: Option<String>,
    /// Known once the answer has ended; all `None` until then.
    #[serde(flatten)]
    pub measured: Measured,
    /// When [`DecisionRecord::measured`] was written; `Some(0)`: never will
    /// be (the process stopped first); `Some(-1)`: never measured
    /// (telemetry was off).
    #[serde(default)]
    pub measured_ms: Option<i64>,
}

impl DecisionRecord {
    /// A record of what every request has, made now; the rest empty, for
    /// the caller to fill in.
    pub fn new(request_id: String, policy_id: String, route: String, status: u16, label: String) -> Self {
        Self {
            request_id,
            created_ms: now_ms(),
            policy_id,
            rule_id: None,
            route,
            status,
            reason: String::new(),
            decision: JsonText(serde_json::value::RawValue::NULL.to_owned()),
            label,
            execution: JsonText(serde_json::value::RawValue::NULL.to_owned()),
            tenant: None,
            model: None,
            runtime: None,
            node: None,
            stream: false,
            retries: 0,
            fallbacks: 0,
            cascade: None,
            measured: Measured::default(),
            measured_ms: None,
        }
    }
}

/// What an answer turned out to use, cost and take, known once it ended.
/// Times are milliseconds: queue, prefill and decode as the engine measured
/// them (`None` from an upstream that does not say); TTFT, inter-token
/// latency and total on the gateway's clock, as the client saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Measured {
    pub prompt_tokens: Option<u32>,
    /// Of the prompt tokens, those found in the engine's KV cache.
    pub cached_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub cost_usd: Option<f64>,
    pub energy_wh: Option<f64>,
    pub queue_ms: Option<f64>,
    pub prefill_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    pub itl_max_ms: Option<f64>,
    pub total_ms: Option<f64>,
    /// The client left before the answer ended.
    pub disconnected: Option<bool>,
}

/// An API key as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub routes: Vec<String>,
    /// Families the key may declare (empty: any).
    pub families: Vec<String>,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub protect: TenantProtect,
}

/// A tenant's own data protection, on top of the policy's `[protect]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantProtect {
    /// Detectors of the tenant's own, scanned on its requests only.
    #[serde(default)]
    pub custom: Vec<TenantList>,
    /// Its kept payloads are deleted after at most this many days, even
    /// where the policy keeps them longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_retention_days: Option<f64>,
}

/// One of a tenant's detectors: as a policy's `[[protect.custom]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantList {
    pub name: String,
    /// `public`, `internal` or `regulated`.
    pub class: String,
    #[serde(default)]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffRecord {
    pub id: String,
    pub request_id: String,
    pub created_ms: i64,
    pub policy_id: String,
    pub rule_id: String,
    /// The conversation as the client sent it (`[{role, content}]`).
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pool: AnyPool,
    /// How the large multi-row statements name their parameters.
    params: Params,
    /// Until when (Unix ms) the recorder's writes fail as if the database
    /// were unreachable: a game day's injected outage (0: none).
    outage_until_ms: Arc<AtomicI64>,
}

/// SQLite binds `$N` parameters by looking each name up in a list, so a
/// statement of n of them costs O(n²) to bind: a 64-row insert of 32
/// columns spent more time there than writing. Plain `?` binds by
/// position. PostgreSQL knows only `$N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Params {
    Numbered,
    Positional,
}

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a URL names, by its scheme.
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Store {
    /// Until `until_ms` (Unix ms; `i64::MAX`: until set again, 0: now), the
    /// recorder's writes fail as they would with the database unreachable:
    /// how a game day rehearses a shared-state outage. Reads and the other
    /// writes are untouched.
    pub fn inject_outage(&self, until_ms: i64) {
        self.outage_until_ms.store(until_ms, Ordering::Relaxed);
    }

    /// Whether an injected outage is on at `now_ms`.
    pub fn outage(&self, now_ms: i64) -> bool {
        now_ms < self.outage_until_ms.load(Ordering::Relaxed)
    }

    /// Opens (creating if needed) the SQLite database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        Self::connect(&format!("sqlite://{}", path.display())).await
    }

    /// Connects to `sqlite://FILE` or `postgres://…` and applies that
    /// database's migrations (on PostgreSQL under an advisory lock, so
    /// replicas starting together migrate once).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let postgres = is_postgres(url);
        // A SQLite file is created if missing, unless the URL says otherwise.
        let url = match url.contains("mode=") || postgres {
            true => url.to_string(),
            false => format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' }),
        };
        let url = url.as_str();
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 8 } else { 4 })
            // A database that cannot be reached fails start-up in seconds,
            // not after the pool's default half minute of retries.
            .acquire_timeout(std::time::Duration::from_secs(if postgres { 5 } else { 30 }))
            // A PostgreSQL connection can die between uses; a SQLite one is
            // a file handle, and pinging it before each use was a round
            // trip to sqlx's SQLite thread per query.
            .test_before_acquire(postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !postgres {
                        // With WAL, NORMAL never corrupts the database; a power
                        // cut may lose the last transactions. FULL would fsync
                        // every batch.
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        if postgres {
            POSTGRES.run(&pool).await?;
        } else {
            // Persistent in the file: readers never block the writer.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            SQLITE.run(&pool).await?;
        }
        Ok(Self {
            pool,
            params: if postgres { Params::Numbered } else { Params::Positional },
            outage_until_ms: Arc::default(),
        })
    }

    /// Opens an existing SQLite database to read: no migrations, no writes,
    /// so a tool reading a gateway's records (`bench trace record`) never
    /// changes them, whatever version wrote them.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=ro", path.display());
        let pool = AnyPoolOptions::new().max_connections(1).connect(&url).await?;
        Ok(Self { pool, params: Params::Positional, outage_until_ms: Arc::default() })
    }

    pub async fn record_decision(&self, r: &DecisionRecord) -> Result<(), StoreError> {
        insert_decisions(&mut *self.pool.acquire().await?, self.params, &[r]).await
    }

    pub async fn decision(&self, request_id: &str) -> Result<Option<DecisionRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM decisions WHERE request_id = $1").bind(request_id);
        row.fetch_optional(&self.pool).await?.map(|r| rows::decision(&r)).transpose()
    }

    /// Decisions recorded at or after `since_ms` (Unix ms), oldest first, at
    /// most `limit`: the traffic `bench trace record` turns into a trace.
    pub async fn decisions_since(&self, since_ms: i64, limit: i64) -> Result<Vec<DecisionRecord>, StoreError> {
        // Request ids are time-ordered (UUIDv7), so they break ties in arrival order.
        let q = sqlx::query("SELECT * FROM decisions WHERE created_ms >= $1 ORDER BY created_ms, request_id LIMIT $2");
        q.bind(since_ms).bind(limit).fetch_all(&self.pool).await?.iter().map(rows::decision).collect()
    }

    /// Records matching `filter`, in its order.
    pub async fn telemetry(&self, filter: &TelemetryFilter) -> Result<Vec<DecisionRecord>, StoreError> {
        const WHERE: &str = "SELECT * FROM decisions
             WHERE created_ms >= $1 AND created_ms < $2
               AND ($3 IS NULL OR route = $3) AND ($4 IS NULL OR tenant = $4)
               AND ($5 IS NULL OR label = $5) AND ($6 IS NULL OR status = $6)";
        static SQL: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
        let [oldest, newest] = SQL.get_or_init(|| {
            [
                format!("{WHERE} ORDER BY created_ms, request_id LIMIT $7"),
                format!("{WHERE} ORDER BY created_ms DESC, request_id DESC LIMIT $7"),
            ]
        });
        let q = sqlx::query(if filter.newest_first { newest } else { oldest });
        let found = q
            .bind(filter.since_ms)
            .bind(filter.until_ms.unwrap_or(i64::MAX))
            .bind(filter.route.clone())
            .bind(filter.tenant.clone())
            .bind(filter.label.clone())
            .bind(filter.status.map(i64::from))
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        found.iter().map(rows::decision).collect()
    }

    /// What SLA compliance needs of the records created in
    /// `[since_ms, until_ms)`, newest first, at most `limit`: their outcome,
    /// times and the family and route their decision chose, extracted from
    /// the decision's JSON by the database. Decoding whole records cost
    /// about 25 µs each, and a window holds up to 100,000.
    pub async fn outcomes(&self, since_ms: i64, until_ms: i64, limit: u32) -> Result<Vec<Outcome>, StoreError> {
        const SQLITE: &str = "SELECT created_ms, route, status, label, measured_ms, ttft_ms, total_ms,
                json_extract(decision, '$.family') AS family, json_extract(decision, '$.route') AS chosen
             FROM decisions WHERE created_ms >= $1 AND created_ms < $2
             ORDER BY created_ms DESC, request_id DESC LIMIT $3";
        const POSTGRES: &str = "SELECT created_ms, route, status, label, measured_ms, ttft_ms, total_ms,
                (decision::jsonb ->> 'family') AS family, (decision::jsonb ->> 'route') AS chosen
             FROM decisions WHERE created_ms >= $1 AND created_ms < $2
             ORDER BY created_ms DESC, request_id DESC LIMIT $3";
        let sql = match self.params {
            Params::Numbered => POSTGRES,
            Params::Positional => SQLITE,
        };
        let found = sqlx::query(sql).bind(since_ms).bind(until_ms).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        found.iter().map(rows::outcome).collect()
    }

    /// Marks `node`'s records from before `before_ms` that never got their
    /// measurements as lost (`measured_ms = 0`), and says how many there
    /// were: what a killed process had not yet written.
    pub async fn mark_unmeasured(&self, node: &str, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE decisions SET measured_ms = 0 WHERE node = $1 AND measured_ms IS NULL AND created_ms < $2",
        )
        .bind(node)
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn enqueue_handoff(&self, h: &HandoffRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO handoffs (id, request_id, created_ms, policy_id, rule_id, messages, status, tenant)
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7)",
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
        let q = sqlx::query(
            "SELECT * FROM handoffs WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR tenant = $2)
             ORDER BY created_ms, id LIMIT $3",
        );
        let found = q.bind(status).bind(tenant).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        found.iter().map(rows::handoff).collect()
    }

    pub async fn handoff(&self, id: &str) -> Result<Option<HandoffRecord>, StoreError> {
        let q = sqlx::query("SELECT * FROM handoffs WHERE id = $1").bind(id);
        q.fetch_optional(&self.pool).await?.map(|r| rows::handoff(&r)).transpose()
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
        let done = sqlx::query(
            "UPDATE handoffs SET status = 'resolved', answer = $1, reviewer = $2, resolved_ms = $3
             WHERE id = $4 AND status = 'open'",
        )
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        let found = sqlx::query("SELECT * FROM api_keys ORDER BY created_ms, id").fetch_all(&self.pool).await?;
        found.iter().map(rows::key).collect()
    }

    /// Revokes a key; `false` if there is no such key or it was revoked already.
    pub async fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let found = sqlx::query("SELECT * FROM tenants ORDER BY name").fetch_all(&self.pool).await?;
        found.iter().map(rows::tenant).collect()
    }

    /// Creates the tenant or replaces its limits.
    pub async fn put_tenant(&self, name: &str, limits: &Limits, now_ms: i64) -> Result<TenantRecord, StoreError> {
        let q = sqlx::query(
            "INSERT INTO tenants (name, created_ms, updated_ms, limits) VALUES ($1, $2, $2, $3)
             ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated_ms = excluded.updated_ms
             RETURNING *",
        );
        rows::tenant(&q.bind(name).bind(now_ms).bind(serde_json::to_string(limits)?).fetch_one(&self.pool).await?)
    }

    /// Sets a tenant's own data protection (replacing any before).
    pub async fn put_tenant_protect(
        &self,
        name: &str,
        protect: &TenantProtect,
        now_ms: i64,
    ) -> Result<TenantRecord, StoreError> {
        let q = sqlx::query(
            "INSERT INTO tenants (name, created_ms, updated_ms, protect) VALUES ($1, $2, $2, $3)
             ON CONFLICT (name) DO UPDATE SET protect = excluded.protect, updated_ms = excluded.updated_ms
             RETURNING *",
        );
        rows::tenant(&q.bind(name).bind(now_ms).bind(serde_json::to_string(protect)?).fetch_one(&self.pool).await?)
    }

    pub async fn record_audit(&self, a: &AuditRecord) -> Result<(), StoreError> {
        insert_audit(&mut *self.pool.acquire().await?, a).await
    }

    /// Audit lines with an id above `after`, oldest first, at most `limit`,
    /// only `tenant`'s where one is given.
    pub async fn audit(&self, after: i64, tenant: Option<&str>, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let q = sqlx::query("SELECT * FROM audit WHERE id > $1 AND ($2 IS NULL OR tenant = $2) ORDER BY id LIMIT $3");
        let found = q.bind(after).bind(tenant).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        found.iter().map(rows::audit).collect()
    }

    pub async fn record_shadow(&self, s: &ShadowRecord) -> Result<(), StoreError> {
        insert_shadow(&mut *self.pool.acquire().await?, s).await
    }

    pub async fn shadow(&self, request_id: &str) -> Result<Option<ShadowRecord>, StoreError> {
        let q = sqlx::query("SELECT * FROM shadows WHERE request_id = $1").bind(request_id);
        q.fetch_optional(&self.pool).await?.map(|r| rows::shadow(&r)).transpose()
    }
}

/// The decision part's columns; an insert writes these, then
/// [`MEASURED_COLUMNS`].
const DECISION_COLUMNS: [&str; 18] = [
    "request_id",
    "created_ms",
    "policy_id",
    "rule_id",
    "route",
    "status",
    "reason",
    "decision",
    "label",
    "execution",
    "tenant",
    "model",
    "runtime",
    "node",
    "stream",
    "retries",
    "fallbacks",
    "cascade",
];

/// Rows per statement at most. 33 × 64 bound values is well under either
/// database's limit.
pub(crate) const MAX_ROWS_PER_STATEMENT: usize = 64;

/// Statement sizes, largest first, each made once and then reused from
/// sqlx's cache of prepared statements (100 per connection: a statement
/// pushed out of it is parsed again). Decisions, which a request waits on,
/// have every size, so up to 64 are one statement: one round trip, and a
/// transaction of its own. Measured parts, written every 100 ms with
/// nobody waiting, have three sizes, so the writer's connection keeps
/// 64 + 3 + a few statements, all cached.
const EVERY_SIZE: [usize; MAX_ROWS_PER_STATEMENT] = {
    let mut sizes = [0; MAX_ROWS_PER_STATEMENT];
    let mut i = 0;
    while i < MAX_ROWS_PER_STATEMENT {
        sizes[i] = MAX_ROWS_PER_STATEMENT - i;
        i += 1;
    }
    sizes
};
const FEW_SIZES: [usize; 3] = [MAX_ROWS_PER_STATEMENT, 8, 1];

/// `($1, …), (…)` (or `(?, …)`): `rows` groups of `width` parameters.
fn values(params: Params, rows: usize, width: usize) -> String {
    let param = |i: usize| match params {
        Params::Numbered => format!("${i}"),
        Params::Positional => "?".to_string(),
    };
    let row = |r: usize| format!("({})", (1..=width).map(|c| param(r * width + c)).collect::<Vec<_>>().join(", "));
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// Statements made once, for each parameter style, one per size.
type Statements = [std::sync::OnceLock<Vec<String>>; 2];

/// One of `statements` (made by `make(params, n)` once for each of
/// `sizes`) for `rows` rows, which must be one of `sizes`.
fn sized(
    statements: &'static Statements,
    sizes: &[usize],
    make: fn(Params, usize) -> String,
    params: Params,
    rows: usize,
) -> &'static str {
    let all = statements[params as usize].get_or_init(|| sizes.iter().map(|&n| make(params, n)).collect());
    let i = sizes.iter().position(|&n| n == rows).unwrap_or(sizes.len() - 1);
    all[i].as_str()
}

/// Runs `write` over `items` in chunks of `sizes` (largest first, ending
/// with 1), each chunk the largest that fits what is left.
async fn in_chunks<T>(
    conn: &mut AnyConnection,
    sizes: &[usize],
    items: &[T],
    write: impl for<'c> Fn(&'c [T], usize) -> Query<'c>,
) -> Result<(), StoreError> {
    let mut rest = items;
    while !rest.is_empty() {
        // The sizes end with 1, so some size always fits a non-empty rest.
        let rows = sizes.iter().copied().find(|&n| n <= rest.len()).unwrap_or(1);
        let (chunk, tail) = rest.split_at(rows);
        rest = tail;
        write(chunk, rows).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts `records` with as few multi-row statements as the sizes allow.
async fn insert_decisions(
    conn: &mut AnyConnection,
    params: Params,
    records: &[&DecisionRecord],
) -> Result<(), StoreError> {
    static SQL: Statements = [const { std::sync::OnceLock::new() }; 2];
    let make = |params, rows| {
        let columns: Vec<&str> = DECISION_COLUMNS.iter().chain(&MEASURED_COLUMNS).copied().collect();
        let values = values(params, rows, columns.len());
        format!("INSERT INTO decisions ({}) VALUES {values}", columns.join(", "))
    };
    in_chunks(conn, &EVERY_SIZE, records, |chunk, rows| {
        let mut q = sqlx::query(sized(&SQL, &EVERY_SIZE, make, params, rows));
        for r in chunk {
            q = q
                .bind(r.request_id.clone())
                .bind(r.created_ms)
                .bind(r.policy_id.clone())
                .bind(r.rule_id.clone())
                .bind(r.route.clone())
                .bind(i64::from(r.status))
                .bind(r.reason.clone())
                .bind(r.decision.as_str().to_owned())
                .bind(r.label.clone())
                .bind(r.execution.as_str().to_owned())
                .bind(r.tenant.clone())
                .bind(r.model.clone())
                .bind(r.runtime.clone())
                .bind(r.node.clone())
                .bind(r.stream)
                .bind(i64::from(r.retries))
                .bind(i64::from(r.fallbacks))
                .bind(r.cascade.clone());
            q = bind_measured(q, &r.measured).bind(r.measured_ms);
        }
        q
    })
    .await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Fills in the measured part of records already written: one
/// `UPDATE … FROM (VALUES …)` per chunk (both databases name a VALUES
/// list's columns `column1`, `column2`, …), not a statement per record.
async fn update_measured(
    conn: &mut AnyConnection,
    params: Params,
    measured: &[(&str, &Measured)],
) -> Result<(), StoreError> {
    static SQL: Statements = [const { std::sync::OnceLock::new() }; 2];
    let make = |params, rows| {
        let set: Vec<String> =
            MEASURED_COLUMNS.iter().enumerate().map(|(i, c)| format!("{c} = m.column{}", i + 2)).collect();
        format!(
            "UPDATE decisions SET {} FROM (VALUES {}) AS m WHERE decisions.request_id = m.column1",
            set.join(", "),
            values(params, rows, MEASURED_COLUMNS.len() + 1)
        )
    };
    let now = now_ms();
    in_chunks(conn, &FEW_SIZES, measured, |chunk, rows| {
        let mut q = sqlx::query(sized(&SQL, &FEW_SIZES, make, params, rows));
        for (id, m) in chunk {
            q = bind_measured(q.bind(id.to_string()), m).bind(now);
        }
        q
    })
    .await
}

/// The measured part's columns, in [`bind_measured`]'s order, then when.
const MEASURED_COLUMNS: [&str; 15] = [
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "energy_wh",
    "queue_ms",
    "prefill_ms",
    "decode_ms",
    "ttft_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "itl_max_ms",
    "total_ms",
    "disconnected",
    "measured_ms",
];

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds `m`'s 14 fields, in [`MEASURED_COLUMNS`]' order.
fn bind_measured<'q>(q: Query<'q>, m: &Measured) -> Query<'q> {
    q.bind(m.prompt_tokens.map(i64::from))
        .bind(m.cached_tokens.map(i64::from))
        .bind(m.completion_tokens.map(i64::from))
        .bind(m.cost_usd)
        .bind(m.energy_wh)
        .bind(m.queue_ms)
        .bind(m.prefill_ms)
        .bind(m.decode_ms)
        .bind(m.ttft_ms)
        .bind(m.itl_p50_ms)
        .bind(m.itl_p99_ms)
        .bind(m.itl_max_ms)
        .bind(m.total_ms)
        .bind(m.disconnected)
}

async fn insert_audit(conn: &mut AnyConnection, a: &AuditRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (created_ms, key_id, tenant, action, outcome, status, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
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

async fn insert_shadow(conn: &mut AnyConnection, s: &ShadowRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO shadows (request_id, created_ms, policy_id, primary_route, primary_status, primary_output,
                              shadow_route, shadow_status, shadow_output, shadow_ms, same_output)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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

/// For tests: PostgreSQL schemas of their own, so tests running at once on
/// one server never see each other's rows.
#[cfg(feature = "testing")]
pub mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The server tests use: `SWITCHYARD_TEST_POSTGRES`, else the one these
    /// machines run (127.0.0.1:5432, trust auth, database `test`).
    pub fn postgres_url() -> String {
        std::env::var("SWITCHYARD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into())
    }

    /// Creates a new, empty schema and returns a URL whose connections use
    /// it; `None` (and a message saying so) when no server answers.
    pub async fn fresh_postgres() -> Option<String> {
        static N: AtomicU64 = AtomicU64::new(0);
        sqlx::any::install_default_drivers();
        let url = postgres_url();
        let pool = match sqlx::AnyPool::connect(&url).await {
            Ok(pool) => pool,
            Err(e) => {
                eprintln!("skipped the PostgreSQL half: no server at {url} ({e})");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let schema = format!("t_{}_{}_{}", std::process::id(), nanos, N.fetch_add(1, Ordering::Relaxed));
        if let Err(e) = sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await {
            eprintln!("skipped the PostgreSQL half: cannot create a schema at {url} ({e})");
            return None;
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(format!("{url}{sep}options=-csearch_path%3D{schema}"))
    }
}
