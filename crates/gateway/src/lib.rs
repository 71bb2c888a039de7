//! The HTTP front: OpenAI-compatible endpoints over the loaded engines.
//!
//! `/v1/chat/completions` ([`chat`]), `/v1/models`, `/healthz` (the process
//! answers) and `/readyz` (every model loaded and its scheduler alive).

// A request-path crate: a failure is a typed error, never a panic (tests
// may unwrap: see clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod capture;
pub mod chat;
pub mod config;
pub mod envelope;
pub mod error;
pub mod limits;
pub mod observe;
pub mod ops;
pub mod protect;
pub mod resilience;
pub mod routing;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use switchyard_engine::Engine;
use switchyard_models::{ModelSpec, Progress};
use switchyard_wire::{Model, ModelList};
use tokio::net::TcpListener;

pub use config::{ConfigError, ServeConfig};
pub use error::ApiError;

/// What handlers share: the loaded engines by model id, and the routing
/// policy if one is configured.
pub struct AppState {
    /// The embedded models by id; the set changes with the policy in force.
    pub models: Arc<ops::models::Models>,
    /// With a policy, every chat request is routed by the version in force
    /// when it arrives ([`ops::policy::Live`]); without one, `model` picks
    /// a loaded engine.
    pub routing: Option<Arc<ops::policy::Live>>,
    /// Routing records (decisions, handoffs, shadows), read by `/admin`.
    pub store: Option<switchyard_store::Store>,
    /// Writes records off the request path, in batches.
    pub recorder: Option<switchyard_store::Recorder>,
    /// API keys; `None`: no key store, so the server is open.
    pub keys: Option<Arc<auth::Keys>>,
    /// Keys' and tenants' limits and quotas (see [`limits`]).
    pub limiter: Arc<limits::Limiter>,
    /// Unix time the models were loaded, reported as `created`.
    pub created: i64,
    /// This replica's name in records (`node-id`).
    pub node: String,
    /// Per-request telemetry records and request metrics (`telemetry`).
    pub telemetry: bool,
    /// Exports a trace per request (`otlp-endpoint`); `None`: off.
    pub traces: Option<Arc<observe::trace::Tracing>>,
    /// Seals payloads a policy keeps encrypted (`payload-key-file`).
    pub payload_keys: Option<Arc<switchyard_store::payload::PayloadKeys>>,
}

impl AppState {
    pub fn new(engines: Vec<Engine>) -> Self {
        let created = switchyard_wire::unix_secs();
        Self {
            models: Arc::new(ops::models::Models::new(engines)),
            routing: None,
            store: None,
            recorder: None,
            keys: None,
            limiter: Arc::default(),
            created,
            node: hostname(),
            telemetry: true,
            traces: None,
            payload_keys: None,
        }
    }

    /// Routes every chat request by `policy`, checked against the loaded
    /// engines; answers on a priced route or model get their cost recorded.
    pub fn with_policy(
        self,
        policy: switchyard_router::Policy,
        prices: switchyard_router::Prices,
        options: routing::RoutingOptions,
    ) -> anyhow::Result<Self> {
        let routing = routing::Routing::new(policy, prices, &self.models.snapshot(), options)?;
        Ok(self.with_routing(routing))
    }

    /// Routes every chat request by `routing` (its backends already built:
    /// how tests put scripted backends behind a policy). A policy applied
    /// later gets backends built as [`Self::with_policy`] builds them.
    pub fn with_routing(mut self, routing: routing::Routing) -> Self {
        let (prices, options) = (routing.prices().clone(), routing.options());
        self.routing = Some(Arc::new(ops::policy::Live::new(routing, prices, options)));
        self
    }

    /// The routing in force now, if any; a request holds it to its end.
    pub fn routing(&self) -> Option<Arc<routing::Routing>> {
        self.routing.as_ref().map(|live| live.current())
    }

    /// Keeps records in `store`; starts its writer on the current runtime.
    pub fn with_store(mut self, store: switchyard_store::Store) -> Self {
        self.recorder = Some(switchyard_store::Recorder::start(store.clone()));
        self.store = Some(store);
        self
    }

    /// Counts each key's requests with `limiter` (e.g. one shared in Redis).
    pub fn with_limiter(mut self, limiter: limits::Limiter) -> Self {
        self.limiter = Arc::new(limiter);
        self
    }

    /// Checks every `/v1` and `/admin` request against `keys` (none active:
    /// open).
    pub fn with_keys(mut self, keys: Arc<auth::Keys>) -> Self {
        self.keys = Some(keys);
        self
    }

    pub fn model_ids(&self) -> Vec<String> {
        self.models.snapshot().keys().cloned().collect()
    }
}

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    // Before any request: what is recorded before the recorder exists is lost.
    observe::handle();
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(models))
        .route("/admin/decisions/{request_id}", get(admin::decision))
        .route("/admin/shadows/{request_id}", get(admin::shadow))
        .route("/admin/handoffs", get(admin::handoffs))
        .route("/admin/handoffs/{id}", get(admin::handoff).post(admin::resolve))
        .route("/admin/keys", get(admin::keys).post(admin::create_key))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/admin/tenants", get(admin::tenants))
        .route("/admin/tenants/{name}", axum::routing::put(admin::put_tenant))
        .route("/admin/tenants/{name}/protect", axum::routing::put(admin::put_tenant_protect))
        .route("/admin/audit", get(admin::audit))
        .route("/admin/telemetry", get(admin::telemetry))
        .route("/admin/sla", get(ops::sla::show))
        .route("/admin/policy", get(ops::policy::show).put(ops::policy::put))
        .route("/admin/policy/rollback", post(ops::policy::rollback))
        .route("/admin/rollout", get(ops::rollout::show).post(ops::rollout::start))
        .route("/admin/rollout/eval", post(ops::rollout::eval))
        .route("/admin/rollout/abort", post(ops::rollout::abort))
        .route("/admin/rollout/promote", post(ops::rollout::promote))
        .route("/v1/feedback", post(ops::rollout::feedback))
        .route("/admin/faults", get(ops::faults::list))
        .route("/admin/faults/{route}", axum::routing::put(ops::faults::put).delete(ops::faults::clear))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::refusals))
        // Probes answer anyone: they say nothing but "up" and "ready".
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(observe::render))
        // The dashboard's files hold no data; what it reads is checked per key.
        .route("/ui", get(observe::ui::index))
        .route("/ui/app.js", get(observe::ui::script))
        .route("/ui/app.css", get(observe::ui::style))
        .route("/ui/icon.svg", get(observe::ui::icon))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A panic in a handler is a bug; the client still gets an OpenAI-shaped
/// 500, and the server keeps serving everyone else.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!("a request handler panicked: {what}");
    ApiError::internal("The server hit an internal error while handling this request; it has been logged.")
        .with_code("internal_error")
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList::new(state.models.snapshot().keys().map(|id| Model::new(id, state.created, "switchyard")).collect()))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let loaded = state.models.snapshot();
    let models: serde_json::Map<_, _> = loaded
        .iter()
        .map(|(id, e)| {
            (id.clone(), json!({"alive": e.is_alive(), "n_ctx_per_request": e.n_ctx_seq(), "settings": e.settings()}))
        })
        .collect();
    let ready = !loaded.is_empty() && loaded.values().all(|e| e.is_alive());
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if ready { "ready" } else { "unavailable" }, "models": models}))).into_response()
}

/// Resolves, fetches (if needed) and loads every configured model. Call it
/// before starting other threads (it may set `OMP_WAIT_POLICY`).
/// Without `--model`, a policy's embedded routes name the models to load
/// (none, for a policy of upstreams only); without a policy, the default.
pub fn load_engines(
    cfg: &ServeConfig,
    policy: Option<&switchyard_router::Policy>,
    progress: Progress,
) -> anyhow::Result<Vec<Engine>> {
    let mut specs = cfg.models.clone();
    if specs.is_empty() {
        specs = match policy {
            Some(p) => p.embedded_models().into_iter().map(str::to_string).collect(),
            None => vec![switchyard_models::DEFAULT_MODEL.to_string()],
        };
        let mut seen = std::collections::HashSet::new();
        specs.retain(|m| seen.insert(m.clone()));
    }
    // OpenMP threads spin while they wait. Two engines busy at once on the
    // same cores then steal each other's time: a two-model cascade ran ~3x
    // slower on 2 cores until waiting threads slept (docs/eval.md).
    if specs.len() > 1 && std::env::var_os("OMP_WAIT_POLICY").is_none() {
        tracing::info!("several models: setting OMP_WAIT_POLICY=PASSIVE so idle engine threads sleep");
        // Before any engine (and so the OpenMP runtime) starts; the caller is still single-threaded.
        std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
    }
    let loader = cfg.loader();
    let mut engines = Vec::new();
    for spec in &specs {
        let id = ModelSpec::parse(spec)?.id();
        if engines.iter().any(|e: &Engine| e.id() == id) {
            anyhow::bail!("model `{id}` is listed twice; each model id must be unique");
        }
        engines.push(loader.load(spec, progress)?);
    }
    for target in cfg.drafts.keys().filter(|t| !engines.iter().any(|e| e.id() == t.as_str())) {
        tracing::warn!(model = %target, "`drafts` names a model this server has not loaded; it drafts once a policy loads it");
    }
    Ok(engines)
}

/// Binds, reports the address on stdout, and serves until SIGINT/SIGTERM.
/// `payload_keys`: as [`payload_keys`] read them, before the models loaded.
pub async fn serve(
    cfg: ServeConfig,
    policy: Option<switchyard_router::Policy>,
    engines: Vec<Engine>,
    payload_keys: Option<Arc<switchyard_store::payload::PayloadKeys>>,
) -> anyhow::Result<()> {
    let mut state = AppState::new(vec![]);
    // Models given by name stay loaded whatever policy is applied later.
    let pinned = cfg.models.iter().filter_map(|m| ModelSpec::parse(m).ok()).map(|spec| spec.id()).collect();
    let loader = cfg.loader();
    state.models = Arc::new(ops::models::Models::new(engines).with_loader(loader, pinned));
    let store = cfg.open_store().await?;
    let keys = auth::Keys::load(store.clone()).await.map_err(|e| anyhow::anyhow!("reading API keys: {e}"))?;
    check_exposure(&cfg, &keys)?;
    keys.watch();
    state = state.with_keys(keys);
    if let Some(url) = &cfg.redis {
        // The URL may hold a password: it is never printed.
        let limiter = limits::Limiter::shared(url, "switchyard:rate:", cfg.redis_fail)
            .await
            .map_err(|e| anyhow::anyhow!("`redis`: cannot reach the Redis server it names: {e}"))?;
        tracing::info!(fail = ?cfg.redis_fail, "rate limits shared through Redis");
        state = state.with_limiter(limiter);
    }
    if let Some(policy) = policy {
        tracing::info!(policy = %policy.id, "routing by policy");
        state = state.with_policy(policy, cfg.prices.clone(), cfg.routing_options())?;
        match &cfg.database {
            Some(_) => tracing::info!("recording routing decisions in the shared database"),
            None => tracing::info!(dir = %cfg.data_dir().display(), "recording routing decisions"),
        }
    }
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    state.node = cfg.node_id.clone().unwrap_or_else(|| format!("{}:{}", state.node, addr.port()));
    state.telemetry = cfg.telemetry;
    if let Some(endpoint) = &cfg.otlp_endpoint {
        tracing::info!(endpoint = %endpoint, "exporting a trace per request (OTLP over HTTP)");
        state.traces = Some(Arc::new(observe::trace::Tracing::otlp(endpoint, &state.node, Duration::from_secs(1))));
    }
    report_lost_measurements(&store, &state.node).await;
    state.payload_keys = payload_keys;
    if let Some(live) = state.routing.clone() {
        let serving = live
            .at_start(&state, &store)
            .await
            .map_err(|e| anyhow::anyhow!("reading the policy in force from the store: {e:#}"))?;
        tracing::info!(policy = %serving, "policy in force");
    }
    record_loads(&store, &state).await?;
    let state = Arc::new(state.with_store(store));
    purge_every(state.clone(), PURGE_EVERY);
    ops::policy::follow(state.clone(), ops::policy::FOLLOW_EVERY);
    if let (false, Some(store)) = (cfg.alerts.is_empty(), &state.store) {
        tracing::info!(rules = cfg.alerts.len(), webhook = cfg.alert_webhook.is_some(), "drift and cost alerts on");
        let alerts = Arc::new(ops::alerts::Alerts::new(cfg.alerts.clone(), cfg.alert_webhook.clone()));
        ops::alerts::every(alerts, store.clone(), state.node.clone(), Duration::from_secs(cfg.alert_every_s));
    }
    if let (Some(_), Some(store)) = (&state.routing, &state.store) {
        ops::sla::every(state.clone(), store.clone(), ops::sla::EVERY);
    }
    let app = router(state.clone(), cfg.max_body_bytes);
    // Streams are many small writes; with Nagle's algorithm on, each waits
    // for the client's delayed ACK of the previous one (~40 ms per event).
    let listener = switchyard_wire::net::no_delay(listener, |e| tracing::warn!("could not set TCP_NODELAY: {e}"));
    // Tests and scripts read this line to find a port chosen with --port 0.
    println!("switchyard listening on http://{addr} (models: {})", state.model_ids().join(", "));
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    // What answers finished with is still queued: written before exiting.
    if let Some(recorder) = &state.recorder {
        recorder.flush().await;
    }
    if let Some(traces) = state.traces.clone() {
        traces.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// The environment variable that may hold the payload keys themselves
/// (the key file's format, lines or `;`-separated), for deployments that
/// pass secrets by environment; `payload-key-file` wins when both are set.
pub const PAYLOAD_KEYS_ENV: &str = "SWITCHYARD_PAYLOAD_KEYS";

/// The payload keys from `file`, else from [`PAYLOAD_KEYS_ENV`]; `None`
/// when neither is set. Errors name the setting, never a key.
pub fn read_payload_keys(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<switchyard_store::payload::PayloadKeys>> {
    use switchyard_store::payload::PayloadKeys;
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("`payload-key-file` {}: {e}", path.display()))?;
        let keys =
            PayloadKeys::parse(&text).map_err(|e| anyhow::anyhow!("`payload-key-file` {}: {e}", path.display()))?;
        return Ok(Some(keys));
    }
    match std::env::var(PAYLOAD_KEYS_ENV) {
        Ok(text) => Ok(Some(
            PayloadKeys::parse(&text.replace(';', "\n")).map_err(|e| anyhow::anyhow!("{PAYLOAD_KEYS_ENV}: {e}"))?,
        )),
        Err(_) => Ok(None),
    }
}

/// The payload keys, read at start; a policy that keeps encrypted payloads
/// without them is a start-up error naming the setting.
pub fn payload_keys(
    cfg: &ServeConfig,
    policy: Option<&switchyard_router::Policy>,
) -> anyhow::Result<Option<Arc<switchyard_store::payload::PayloadKeys>>> {
    let keys = read_payload_keys(cfg.payload_key_file.as_deref())?.map(Arc::new);
    if let Some(k) = &keys {
        tracing::info!(key_id = %k.current_id(), "payload key loaded");
    }
    let encrypts = policy
        .and_then(|p| p.protect.as_ref())
        .is_some_and(|p| p.payloads.iter().any(|rule| rule.keep == switchyard_router::protect::Keep::Encrypted));
    if encrypts && keys.is_none() {
        anyhow::bail!(
            "`payload-key-file`: the policy keeps encrypted payloads ([[protect.payloads]] keep = \"encrypted\") but no key \
             is set; give a file with one key of 64 hex digits per line (e.g. from `openssl rand -hex 32`) with \
             --payload-key-file (or SWITCHYARD_PAYLOAD_KEY_FILE), or the keys themselves in SWITCHYARD_PAYLOAD_KEYS"
        );
    }
    Ok(keys)
}

/// How often expired payloads, shadow copies and handoffs are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Deletes what the policy's retention says has expired, every `period`.
fn purge_every(state: Arc<AppState>, period: Duration) {
    // Checked at each tick: a policy applied later may keep payloads.
    if state.routing.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if let Err(e) = purge(&state, switchyard_wire::unix_ms()).await {
                tracing::error!("purging expired payloads: {e}");
            }
        }
    });
}

/// Deletes, as of `now_ms`, the payloads, shadow copies and resolved
/// handoffs past the policy's retention; a purge that deleted anything is
/// recorded in the audit chain.
pub async fn purge(state: &AppState, now_ms: i64) -> anyhow::Result<switchyard_store::payload::Purged> {
    let (Some(protect), Some(store)) = (state.routing().and_then(|r| r.policy.protect.clone()), &state.store) else {
        return Ok(Default::default());
    };
    let days = |d: Option<f64>| d.map(switchyard_router::protect::days_ms);
    let purged =
        store.purge(now_ms, days(protect.retention.shadows_days), days(protect.retention.handoffs_days)).await?;
    if purged.payloads + purged.shadows + purged.handoffs > 0 {
        let reason = format!(
            "deleted {} payloads, {} shadow copies and {} resolved handoffs past their retention",
            purged.payloads, purged.shadows, purged.handoffs
        );
        tracing::info!("{reason}");
        audit::changing(
            store,
            &audit::Actor::named(format!("server:{}", state.node)),
            "retention".into(),
            "purge",
            None,
            reason,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    Ok(purged)
}

/// Writes what this server is about to serve (its policy, its models) to
/// the audit chain before it serves: a start the chain cannot record fails.
async fn record_loads(store: &switchyard_store::Store, state: &AppState) -> anyhow::Result<()> {
    let server = audit::Actor::named(format!("server:{}", state.node));
    let fail = |e: error::ApiError| anyhow::anyhow!("{}", e.message);
    if let Some(routing) = state.routing() {
        let p = &routing.policy;
        let reason = format!("policy {} loaded at start", p.id);
        audit::changing(store, &server, "policy".into(), "load", Some(p.sha256.clone()), reason).await.map_err(fail)?;
    }
    for (id, engine) in state.models.snapshot().iter() {
        let reason = format!("model {id} loaded at start from {}", engine.path().display());
        audit::changing(store, &server, format!("model:{id}"), "load", Some(model_state(id, engine)), reason)
            .await
            .map_err(fail)?;
    }
    Ok(())
}

/// The hash of what a loaded model is, for the audit chain: its file
/// (path, size, time), the catalog's sha256 and the engine's fingerprint.
pub(crate) fn model_state(id: &str, engine: &Engine) -> String {
    let file = std::fs::metadata(engine.path()).ok();
    let catalog = switchyard_models::find(id).map(|e| e.sha256);
    let model = serde_json::json!({
        "path": engine.path(),
        "bytes": file.as_ref().map(std::fs::Metadata::len),
        "modified": file.and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        "catalog_sha256": catalog,
        "fingerprint": engine.fingerprint(),
    });
    audit::state_hash(&model)
}

/// This machine's name, for records; `switchyard` if it has none.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".into())
}

/// A process killed under load takes its queued measurements with it (its
/// decisions are committed before their answers, so they survive). Its
/// records that never got them are marked and counted now, once.
async fn report_lost_measurements(store: &switchyard_store::Store, node: &str) {
    // Installed before counting, so the count is scraped too.
    observe::handle();
    match store.mark_unmeasured(node, switchyard_wire::unix_ms()).await {
        Ok(0) => {}
        Ok(lost) => {
            metrics::counter!("switchyard_telemetry_lost_at_start_total").increment(lost);
            tracing::warn!(lost, node, "records from this node's last run never got their measurements (it stopped before writing them); marked measured_ms = 0");
        }
        Err(e) => tracing::warn!("could not check for measurements lost by the last run: {e}"),
    }
}

/// Without keys the server is open to whoever reaches it: fine on loopback
/// (a fresh machine, the README's commands), refused on any other address
/// unless the operator says so.
fn check_exposure(cfg: &ServeConfig, keys: &auth::Keys) -> anyhow::Result<()> {
    if !keys.is_open() {
        tracing::info!("API keys are required (see `switchyard keys list`)");
        return Ok(());
    }
    let loopback = cfg.host == "localhost" || cfg.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback || cfg.allow_unauthenticated,
        "refusing to serve on {} with no API keys: anyone who can reach it could use it. Create one first \
         (`switchyard keys create --tenant NAME --role admin`), or pass --allow-unauthenticated (config key \
         allow-unauthenticated) to serve it open",
        cfg.host
    );
    tracing::warn!(host = %cfg.host, "no API keys exist, so this server is open: create one with `switchyard keys create`");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
