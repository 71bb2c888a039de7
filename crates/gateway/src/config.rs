//! `switchyard.toml`: the same keys as `serve`'s flags, validated at load
//! with messages that name the key and the fix.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use switchyard_engine::EngineSettings;

use crate::limits::FailMode;
use crate::routing::RoutingOptions;

/// One flat table of keys: the server's own, and the engine's, which are
/// declared once, in [`EngineSettings`] (see [`ServeConfig::parse`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Catalog ids or GGUF paths; empty means the default model.
    pub models: Vec<String>,
    /// `threads`, `ctx-size`, `parallel`, `batch-size`, `prefill-chunk`,
    /// `priority`, `max-queue`: declared once, in the engine.
    #[serde(skip)]
    pub engine: EngineSettings,
    /// Model id → a draft model for it (`[drafts]`, a catalog id or a GGUF
    /// path, sharing its tokenizer): the draft guesses that model's greedy
    /// answers a few tokens ahead and the model verifies them in one batch.
    pub drafts: std::collections::BTreeMap<String, String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Routing policy file; without one, `model` picks a loaded engine.
    pub policy: Option<std::path::PathBuf>,
    /// Where the SQLite database lives; default `~/.local/share/switchyard`.
    pub data_dir: Option<std::path::PathBuf>,
    /// The store's database instead of SQLite in the data dir:
    /// `postgres://…` (shared by replicas) or `sqlite://FILE`.
    pub database: Option<String>,
    /// Honour `x-switchyard-force-route`: for operators and the eval
    /// runner, off by default so no client can skip the routing rules.
    pub allow_force_route: bool,
    /// Redis URL (`redis://host:port/db`): keys' and tenants' limits are
    /// shared by every replica using it. Without it, they count per process.
    pub redis: Option<String>,
    /// When Redis cannot be reached: `open` (admit) or `closed` (503).
    pub redis_fail: FailMode,
    /// Serve a non-loopback address with no API keys (open to anyone who
    /// reaches it). Off: such a server refuses to start.
    pub allow_unauthenticated: bool,
    /// Verify cascades scoring on one model at once (each takes one of the
    /// engine's sequences while it scores).
    pub max_verifies: usize,
    /// Route name or model id → price (`[prices.NAME]`); answers on priced
    /// routes get their cost recorded.
    pub prices: switchyard_router::Prices,
    /// This replica's name in every request's record; default
    /// `HOSTNAME:PORT`.
    pub node_id: Option<String>,
    /// Per-request telemetry and request metrics; off leaves routing
    /// decisions only.
    pub telemetry: bool,
    /// Export a trace per request to this OpenTelemetry collector (OTLP
    /// over HTTP, protobuf; spans go to `{url}/v1/traces`). Off by default.
    pub otlp_endpoint: Option<String>,
    /// AES-256 keys for payloads a policy keeps encrypted: one per line,
    /// 64 hex digits, optionally after an id; the first seals.
    pub payload_key_file: Option<std::path::PathBuf>,
    /// Drift and cost alerts (`[[alerts]]`), judged every
    /// `alert-every-s` over rolling windows of the records.
    pub alerts: Vec<crate::ops::alerts::Rule>,
    /// Where alerts are POSTed (JSON), firing and resolved; the log and
    /// the metrics get them either way.
    pub alert_webhook: Option<String>,
    pub alert_every_s: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            models: Vec::new(),
            engine: EngineSettings::default(),
            drafts: Default::default(),
            max_body_bytes: 4 << 20,
            policy: None,
            data_dir: None,
            database: None,
            allow_force_route: RoutingOptions::default().allow_force_route,
            max_verifies: RoutingOptions::default().max_verifies,
            allow_unauthenticated: false,
            redis: None,
            redis_fail: FailMode::default(),
            prices: Default::default(),
            node_id: None,
            telemetry: true,
            otlp_endpoint: None,
            payload_key_file: None,
            alerts: Vec::new(),
            alert_webhook: None,
            alert_every_s: 15,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ServeConfig {
    /// Reads `path`; a missing file at the default location means defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path: shown, source }),
        };
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: shown, message })
    }

    /// Reads a config file's text. The engine's keys are split off by name
    /// (the names [`EngineSettings`] serializes with) and read by it; the
    /// rest by this struct. Both refuse a key they do not know, so a typo is
    /// named, never ignored. (serde's `flatten` would accept any key.)
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut server: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let engine_keys = toml::Table::try_from(EngineSettings::default()).map_err(|e| e.to_string())?;
        let engine: toml::Table = engine_keys.keys().filter_map(|k| server.remove(k).map(|v| (k.clone(), v))).collect();
        let engine = EngineSettings::deserialize(engine).map_err(|e| e.to_string())?;
        let cfg = Self::deserialize(server).map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            match message.contains("unknown field") {
                true => format!(
                    "{message}, or an engine key: {}",
                    engine_keys.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                false => message,
            }
        })?;
        Ok(Self { engine, ..cfg })
    }

    /// The routing policy file, read and validated, if one is configured.
    pub fn load_policy(&self) -> anyhow::Result<Option<switchyard_router::Policy>> {
        let Some(path) = &self.policy else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("policy file {}: {e}", path.display()))?;
        let policy = switchyard_router::Policy::from_toml(&text)
            .map_err(|e| anyhow::anyhow!("policy file {}: {e}", path.display()))?;
        Ok(Some(policy))
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| std::path::PathBuf::from("."), std::path::PathBuf::from);
            home.join(".local").join("share").join("switchyard")
        })
    }

    /// Opens the store: `database`, else SQLite in the data dir. The
    /// database URL may hold a password, so an error names the key, not it.
    pub async fn open_store(&self) -> anyhow::Result<switchyard_store::Store> {
        match &self.database {
            Some(url) => switchyard_store::Store::connect(url)
                .await
                .map_err(|e| anyhow::anyhow!("`database`: cannot open the database it names: {e}")),
            None => {
                let db = self.data_dir().join("switchyard.db");
                switchyard_store::Store::open(&db).await.map_err(|e| anyhow::anyhow!("opening {}: {e}", db.display()))
            }
        }
    }

    /// Whether a PostgreSQL `database` answers on its port at all: checked
    /// before models load (minutes), so a wrong address fails at once.
    /// The full connection is made by [`ServeConfig::open_store`].
    pub fn check_database_reachable(&self) -> anyhow::Result<()> {
        let Some(url) = self.database.as_deref().filter(|u| u.starts_with("postgres")) else { return Ok(()) };
        let unreachable = |why: String| anyhow::anyhow!("`database`: cannot reach the server it names: {why}");
        let parsed = reqwest::Url::parse(url).map_err(|e| unreachable(e.to_string()))?;
        let host = parsed.host_str().unwrap_or("localhost");
        let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host, parsed.port().unwrap_or(5432)))
            .map_err(|e| unreachable(e.to_string()))?;
        let timeout = std::time::Duration::from_secs(3);
        let mut last = String::from("no address");
        for addr in addrs {
            match std::net::TcpStream::connect_timeout(&addr, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(unreachable(last))
    }

    /// What loads this server's models: its engine settings and drafts.
    pub fn loader(&self) -> crate::ops::models::Loader {
        crate::ops::models::Loader {
            settings: self.engine.clone(),
            drafts: self.drafts.clone(),
            cache: switchyard_models::cache_dir(),
        }
    }

    pub fn routing_options(&self) -> RoutingOptions {
        RoutingOptions { allow_force_route: self.allow_force_route, max_verifies: self.max_verifies }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.host.parse::<IpAddr>().is_err() && self.host != "localhost" {
            return bad("host", format!("`{}` is not an IP address; use e.g. 127.0.0.1 or 0.0.0.0", self.host));
        }
        self.engine.validate().map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        if self.max_verifies == 0 {
            return bad("max-verifies", "must be at least 1 (each verify cascade needs a slot to score in)".into());
        }
        if self.max_body_bytes < 1024 {
            return bad("max-body-bytes", "must be at least 1024".into());
        }
        self.prices.validate().map_err(|message| ConfigError::Invalid { key: "prices", message })?;
        for (i, rule) in self.alerts.iter().enumerate() {
            rule.check(i).map_err(|(key, message)| ConfigError::Parse {
                path: "switchyard.toml".into(),
                message: format!("`{key}`: {message}"),
            })?;
        }
        if self.alert_every_s == 0 {
            return bad("alert-every-s", "must be at least 1 second".into());
        }
        if let Some(url) = &self.alert_webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("alert-webhook", "an http:// or https:// URL".into());
            }
        }
        if let Some(url) = &self.database {
            let known = ["postgres://", "postgresql://", "sqlite://"];
            if !known.iter().any(|k| url.starts_with(k)) {
                return bad("database", "must start with postgres:// (shared mode) or sqlite:// (a file)".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_engine::Priority;

    fn parse(s: &str) -> Result<ServeConfig, String> {
        ServeConfig::parse(s)
    }

    #[test]
    fn prices_are_read_and_checked() {
        let c = parse("[prices.cloud]\ninput_per_1m = 0.15\noutput_per_1m = 0.6\n[prices.local]\nhardware_per_hour = 0.3\nidle_watts = 30\nbusy_watts = 90\n")
            .unwrap();
        assert_eq!(c.prices.0.len(), 2);
        c.validate().unwrap();
        let bad = parse("[prices.cloud]\ninput_per_1m = -0.15\noutput_per_1m = 0.6\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("prices.cloud.input_per_1m"));
    }

    #[test]
    fn drafts_name_a_draft_per_model_and_their_length_is_checked() {
        let c = parse("draft-max = 4\n[drafts]\n\"qwen2.5-coder-1.5b\" = \"qwen2.5-coder-0.5b\"\n").unwrap();
        assert_eq!(c.drafts.get("qwen2.5-coder-1.5b").map(String::as_str), Some("qwen2.5-coder-0.5b"));
        assert_eq!(c.engine.draft_max, 4);
        c.validate().unwrap();
        let err = parse("draft-max = 2\ndraft-min = 3\n").unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("draft-min") && err.contains("draft-max"), "{err}");
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), ServeConfig::default());
    }

    #[test]
    fn keys_match_the_flags() {
        let c =
            parse("port = 9000\nctx-size = 4096\nparallel = 2\npriority = \"prefill\"\nmodels = [\"smollm2-135m\"]")
                .unwrap();
        assert_eq!(
            (c.port, c.engine.ctx_size, c.engine.parallel, c.engine.priority),
            (9000, 4096, 2, Priority::Prefill)
        );
        c.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("ctx_size = 4096").unwrap_err();
        assert!(e.contains("ctx_size") && e.contains("ctx-size"), "{e}");
        let e = parse("port = 9000\nmax-verfies = 3").unwrap_err();
        assert!(e.contains("max-verfies"), "a server key misspelt is named too: {e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = ServeConfig { engine: EngineSettings { parallel: 0, ..Default::default() }, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("`parallel`"));
        let c = ServeConfig { host: "my host".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("`host`"));
        assert!(parse("port = \"eighty\"").unwrap_err().contains("port"));
        let c = parse("database = \"mysql://db/x\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`database`"));
        parse("database = \"postgres://127.0.0.1:5432/test\"").unwrap().validate().unwrap();
    }

    #[test]
    fn alert_rules_are_read_and_a_broken_one_names_its_key() {
        let ok = parse("alert-webhook = \"http://127.0.0.1:9/hook\"\n[[alerts]]\nname = \"errors\"\nmetric = \"error_rate\"\nabove = 0.1\n")
            .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.alerts.len(), 1);
        let half = parse("[[alerts]]\nname = \"spend\"\nmetric = \"cost_per_day_usd\"\nrise = 0.5\n").unwrap();
        assert!(half.validate().unwrap_err().to_string().contains("`alerts[0].baseline-s`"));
        assert!(parse("[[alerts]]\nname = \"x\"\nmetric = \"error_rate\"\nabove = 1\nwindow = 5\n")
            .unwrap_err()
            .contains("window"));
        let hook = parse("alert-webhook = \"ftp://x\"").unwrap();
        assert!(hook.validate().unwrap_err().to_string().contains("`alert-webhook`"));
    }
}
