//! Settings: `config/default.toml` (built into the binary), overlaid by an
//! optional TOML file, overlaid by `REALTIME__SECTION__KEY` environment
//! variables. Every value is checked at start; a bad one stops the server
//! with one line naming its key.

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything the server can be configured with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listening socket and HTTP limits.
    pub server: ServerSettings,
    /// Where history and channels are stored.
    pub database: DatabaseSettings,
    /// Secrets and keys that admit clients.
    pub auth: AuthSettings,
    /// The Engine.IO / Socket.IO endpoint.
    pub engineio: EngineIoSettings,
    /// Deleting expired history.
    pub retention: RetentionSettings,
    /// The message pipeline.
    pub pipeline: PipelineSettings,
    /// Per-socket limits.
    pub limits: LimitSettings,
    /// Posting messages to channels' webhook URLs.
    pub webhooks: WebhookSettings,
    /// Subscribe and publish permissions (row-level security).
    pub permissions: PermissionSettings,
    /// Recovering what a dropped connection missed.
    pub recovery: RecoverySettings,
    /// Presence.
    pub presence: PresenceSettings,
    /// Several server processes on one database.
    pub cluster: ClusterSettings,
    /// Logging.
    pub log: LogSettings,
}

/// The `[server]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on. Defaults to `0.0.0.0`.
    pub host: String,
    /// TCP port. Defaults to 7130.
    pub port: u16,
    /// HTTP worker threads, 0 for one per core. Defaults to 0.
    pub workers: usize,
    /// Proxies (IPs or CIDR ranges) whose `X-Forwarded-For` names the
    /// client, for the per-address limits. Defaults to loopback.
    pub trusted_proxies: Vec<String>,
    /// Grace period of a graceful shutdown. Defaults to 10000 ms.
    pub shutdown_grace_ms: u64,
    /// Over how long a graceful shutdown closes the sockets, in batches.
    /// Defaults to 10000 ms; 0 closes them all at once.
    pub drain_ms: u64,
    /// How long a REST publish's `Idempotency-Key` is remembered. Defaults
    /// to 86400000 ms (a day).
    pub idempotency_window_ms: u64,
    /// Most idempotency keys remembered; the oldest go first. Defaults to
    /// 100000.
    pub idempotency_max_keys: usize,
    /// Largest REST request body. Defaults to 1 MiB.
    pub max_body_bytes: usize,
    /// How often freed memory is given back to the operating system.
    /// Defaults to 10000 ms; 0 never.
    pub memory_trim_interval_ms: u64,
    /// Linux: run the server's threads under `SCHED_BATCH`
    /// ([`crate::scheduling`]). Defaults to true.
    pub batch_scheduling: bool,
    /// Connections the kernel holds for the server before it accepts them
    /// (the kernel caps it at `net.core.somaxconn`). Defaults to 2048.
    pub listen_backlog: u32,
}

/// The `[database]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://…`. Defaults to `sqlite://data/realtime.db`.
    pub url: String,
    /// Connections in the pool. Defaults to 10.
    pub pool_size: u32,
    /// Wait for a pooled connection. Defaults to 5000 ms.
    pub acquire_timeout_ms: u64,
    /// Most messages per group-commit INSERT. Defaults to 256.
    pub batch_size: usize,
    /// Longest wait for a batch to fill. Defaults to 2 ms.
    pub batch_window_ms: u64,
    /// Longest wait for a message to be stored; past it the publish fails
    /// with `DATABASE_UNAVAILABLE` and the message is never stored.
    /// Defaults to 5000 ms.
    pub publish_timeout_ms: u64,
    /// PostgreSQL: deliver messages stored by SQL. Defaults to true.
    pub sql_publish: bool,
    /// PostgreSQL: look for messages stored by SQL this often even without
    /// a notification. Defaults to 1000 ms.
    pub sql_publish_poll_ms: u64,
}

/// The `[retention]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Time between sweeps. Defaults to 60000 ms.
    pub sweep_interval_ms: u64,
    /// Rows per DELETE. Defaults to 10000.
    pub sweep_batch_size: u64,
}

/// The `[pipeline]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Threads for channel actors, 0 for one per core. Defaults to 0.
    pub channel_threads: usize,
}

/// The `[limits]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Channels one socket may subscribe to. Defaults to 100.
    pub max_channels_per_socket: usize,
    /// Publishes per second per socket, 0 for no limit. Defaults to 100.
    pub publish_rate: u32,
    /// Publishes a socket may burst above the rate. Defaults to 200.
    pub publish_burst: u32,
    /// Messages a channel may hold while they wait to be stored; more are
    /// refused with `RATE_LIMITED`. Defaults to 100000.
    pub max_pending_per_channel: usize,
    /// Deepest nesting of objects and arrays in a payload. Defaults to 32.
    pub max_payload_depth: usize,
    /// Most object keys in a payload, counted at every depth. Defaults to
    /// 1000.
    pub max_payload_keys: usize,
    /// Most presence members one channel may have. Defaults to 10000.
    pub max_presence_members: usize,
    /// Most sockets one signed-in user may have open at once. Defaults to
    /// 100.
    pub max_sockets_per_user: usize,
    /// Most sessions open at once from one client address, 0 for no limit.
    /// Defaults to 1000.
    pub max_sockets_per_address: usize,
    /// New sessions per second from one client address, 0 for no limit.
    /// Defaults to 20.
    pub connect_rate_per_address: u32,
    /// New sessions one client address may open at once above the rate.
    /// Defaults to 200.
    pub connect_burst_per_address: u32,
    /// Long-polling requests per second per session (GET and POST), 0 for
    /// no limit; the burst is twice as many. Defaults to 50.
    pub polling_rate: u32,
}

impl LimitSettings {
    /// The per-address limits of new sessions, behind `trusted_proxies`.
    ///
    /// # Errors
    /// A `server.trusted_proxies` entry that is not an IP or CIDR range.
    pub fn addresses(
        &self,
        trusted_proxies: &[String],
    ) -> Result<crate::engineio::admission::AddressLimits, ConfigError> {
        let trusted_proxies = trusted_proxies
            .iter()
            .map(|net| crate::engineio::admission::IpNet::parse(net))
            .collect::<Result<_, _>>()
            .map_err(|err| ConfigError::new("server.trusted_proxies", err))?;
        Ok(crate::engineio::admission::AddressLimits {
            max_sessions: self.max_sockets_per_address,
            connect_rate: self.connect_rate_per_address,
            connect_burst: self.connect_burst_per_address,
            trusted_proxies,
        })
    }

    /// The payload limits a publish is checked against.
    pub fn payload(&self) -> crate::publish::PayloadLimits {
        crate::publish::PayloadLimits {
            max_depth: self.max_payload_depth,
            max_keys: self.max_payload_keys,
        }
    }
}

/// The `[auth]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret for JWTs. Defaults to a development-only value.
    pub jwt_secret: String,
    /// Admin API keys (`ik_…`). Defaults to one development-only key.
    pub api_keys: Vec<String>,
    /// Anonymous client keys (`anon_…`). Defaults to one development-only key.
    pub anon_keys: Vec<String>,
    /// Refuse JWTs without an `exp` claim. Defaults to false, as InsForge,
    /// whose own anon and project-admin tokens never expire.
    pub require_exp: bool,
    /// Clock skew allowed when checking `exp` and `nbf`. Defaults to 10 s.
    pub leeway_seconds: u64,
    /// Close a socket's transport when its JWT expires (the client
    /// reconnects with a fresh token). Defaults to false, as InsForge.
    pub disconnect_on_expiry: bool,
}

/// The `[engineio]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineIoSettings {
    /// Ping period. Defaults to 25000 ms.
    pub ping_interval_ms: u64,
    /// Pong deadline after a ping. Defaults to 20000 ms.
    pub ping_timeout_ms: u64,
    /// Largest message or polling body. Defaults to 1000000 bytes.
    pub max_payload: usize,
    /// Time allowed before the Socket.IO CONNECT. Defaults to 45000 ms.
    pub connect_timeout_ms: u64,
    /// Per-client outgoing queue bound. Defaults to 4096 packets.
    pub max_buffered_packets: usize,
    /// Allowed browser origins. Defaults to `["*"]`.
    pub cors_origins: Vec<String>,
}

impl EngineIoSettings {
    /// The Engine.IO endpoint settings.
    pub fn engine_config(&self) -> crate::engineio::EngineConfig {
        crate::engineio::EngineConfig {
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            ping_timeout: Duration::from_millis(self.ping_timeout_ms),
            max_payload: self.max_payload,
            max_buffered_packets: self.max_buffered_packets,
            cors_origins: self.cors_origins.clone(),
            // Set from `limits.polling_rate` by the server.
            polling_rate: 0,
            // Set from the node's id by the server.
            node_tag: None,
        }
    }

    /// The Socket.IO layer settings.
    pub fn socketio_config(&self) -> crate::socketio::SocketIoConfig {
        crate::socketio::SocketIoConfig {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_attachment_bytes: self.max_payload,
        }
    }
}

/// The `[permissions]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSettings {
    /// Connections that evaluate policies, apart from the pipeline's pool
    /// so a storm of subscribes cannot starve the writer. Defaults to 4.
    pub pool_size: u32,
    /// How long one socket's publish decision for one channel is reused.
    /// 0 checks every publish, as InsForge does. Defaults to 1000 ms.
    pub publish_cache_ms: u64,
    /// How long a check may take before it counts as unavailable.
    /// Defaults to 5000 ms.
    pub check_timeout_ms: u64,
    /// How often the policies' state is read again even without a
    /// notification of change. Defaults to 30000 ms.
    pub refresh_ms: u64,
}

/// The `[presence]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSettings {
    /// How long a member whose connection dropped (rather than left) stays
    /// present, so a reconnect within it shows the others no leave and no
    /// join. 0 turns it off. Defaults to 10000 ms.
    pub leave_grace_ms: u64,
    /// How long a channel gathers presence events before sending them (one
    /// write per member for all of them); never later than its next
    /// message. 0: at the end of each turn. Defaults to 100 ms.
    pub batch_ms: u64,
}

/// The `[cluster]` section: several server processes sharing one
/// PostgreSQL database (SPEC §10).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// How often a node tells the others it is alive. Defaults to 5000 ms.
    pub heartbeat_ms: u64,
    /// A node silent for this long is taken for dead: its presence members
    /// leave everywhere and its webhook deliveries move to another node.
    /// Defaults to 30000 ms.
    pub node_timeout_ms: u64,
    /// Where the other nodes reach this node's API, for inspection of the
    /// whole cluster (`scope=cluster`). Empty: `http://` and the address it
    /// listens on, or the host name when it listens on every address.
    pub advertise_url: String,
}

/// The `[recovery]` section: connection state recovery (SPEC §9b).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySettings {
    /// Give clients a private session id and delivered messages their
    /// offset, and restore sessions that come back. Defaults to true.
    pub enabled: bool,
    /// How long after a connection dropped it may still be recovered.
    /// Defaults to 600000 ms (10 minutes).
    pub window_ms: u64,
    /// Most missed messages one recovery replays; a session that missed
    /// more starts afresh. Defaults to 10000.
    pub max_messages: u64,
    /// Deliveries a session remembers until the client confirms them (by
    /// answering a ping); past it the oldest are forgotten, and count as
    /// received only if the client's offset proves it. Defaults to 1024.
    pub max_unconfirmed: usize,
}

/// The `[webhooks]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Whole-request deadline of one attempt. Defaults to 10000 ms.
    pub timeout_ms: u64,
    /// Waits before the retries of a connection failure or timeout; their
    /// count is the number of retries. Defaults to `[1000, 2000]`.
    pub retry_delays_ms: Vec<u64>,
    /// `whsec_<base64>` to sign requests the Standard Webhooks way; empty
    /// for unsigned requests. Defaults to empty.
    pub signing_secret: String,
    /// Requests in flight to one URL at a time. Defaults to 16.
    pub max_in_flight_per_url: usize,
    /// Open connections to all receivers. Defaults to 256.
    pub max_connections: usize,
    /// Deliveries held in memory (queued or in flight); past it, messages
    /// wait in the durable backlog. Defaults to 10000.
    pub max_queued: usize,
    /// Refuse to post to loopback, private, link-local and other
    /// non-public addresses. Defaults to false (turn it on in production).
    pub block_private_addresses: bool,
    /// URLs that take several messages per POST. Defaults to none: one
    /// message per request, as InsForge receivers expect.
    pub batch: Vec<WebhookBatch>,
}

/// One `[[webhooks.batch]]` entry: URLs starting with `url_prefix` get
/// `{"messages": [...]}` of up to `max_events` messages, sent when full or
/// `max_wait_ms` after the first one waited.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookBatch {
    /// URLs that start with this (the first matching entry counts).
    pub url_prefix: String,
    /// Most messages in one POST (2 to 1000).
    pub max_events: usize,
    /// Longest a message waits for its batch to fill, in milliseconds.
    pub max_wait_ms: u64,
}

impl WebhookSettings {
    /// The signing key: the bytes after `whsec_`, base64-decoded.
    ///
    /// # Errors
    /// A secret without the prefix or that is not base64.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine as _;
        if self.signing_secret.is_empty() {
            return Ok(None);
        }
        let encoded = self
            .signing_secret
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (make one with `realtime keys --kind webhook`)")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|err| format!("the part after whsec_ is not base64: {err}"))?;
        if key.len() < 16 {
            return Err("the key must be at least 16 bytes".into());
        }
        Ok(Some(key))
    }
}

/// The `[log]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// EnvFilter directives. Defaults to `info,sqlx=warn,sea_orm=warn`.
    pub level: String,
    /// `text` or `json`. Defaults to `text`.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration value that cannot be used, with the key it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {reason}")]
pub struct ConfigError {
    /// Dotted key, for example `server.port`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The development secrets shipped in `config/default.toml`.
const DEV_JWT_SECRET: &str = "dev-only-insecure-jwt-secret-change-me";

impl Settings {
    /// Loads the defaults, then `overlay` if given, then the environment.
    ///
    /// # Errors
    /// A missing overlay file, a value of the wrong type, an unknown key or a
    /// value that fails [`Settings::validate`].
    pub fn load(overlay: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = overlay {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("REALTIME__").split("__"));
        Self::from_figment(figment)
    }

    /// Loads the defaults overlaid by a TOML string, ignoring the environment.
    /// Tests use this to get settings that no stray variable can change.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_toml_overlay(overlay: &str) -> Result<Settings, ConfigError> {
        Self::from_toml_overlays(&[overlay])
    }

    /// Loads the defaults overlaid by several TOML strings in order.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_toml_overlays(overlays: &[&str]) -> Result<Settings, ConfigError> {
        let figment = overlays.iter().fold(
            Figment::from(Toml::string(DEFAULT_TOML)),
            |figment, overlay| figment.merge(Toml::string(overlay)),
        );
        Self::from_figment(figment)
    }

    fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment.extract().map_err(|err| {
            let key = err.path.join(".");
            let source = match err.metadata.as_ref() {
                Some(meta) if meta.name.contains("environment") => {
                    format!(
                        " (from environment variable REALTIME__{})",
                        err.path.join("__").to_uppercase()
                    )
                }
                Some(meta) => format!(" (from {})", meta.name),
                None => String::new(),
            };
            ConfigError::new(
                if key.is_empty() { "config".into() } else { key },
                format!("{}{source}", err.kind),
            )
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the values that types alone cannot.
    ///
    /// # Errors
    /// The first value that is out of range, with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.addresses(&self.server.trusted_proxies)?;
        if self.server.host.trim().is_empty() {
            return Err(ConfigError::new("server.host", "must not be empty"));
        }
        if !(1..=65535).contains(&self.server.listen_backlog) {
            return Err(ConfigError::new(
                "server.listen_backlog",
                "must be between 1 and 65535",
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.database.pool_size == 0 {
            return Err(ConfigError::new("database.pool_size", "must be at least 1"));
        }
        if self.database.acquire_timeout_ms == 0 {
            return Err(ConfigError::new(
                "database.acquire_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.database.publish_timeout_ms < 100
            || self.database.publish_timeout_ms <= self.database.batch_window_ms
        {
            return Err(ConfigError::new(
                "database.publish_timeout_ms",
                "must be at least 100 and longer than database.batch_window_ms",
            ));
        }
        if !(1..=1000).contains(&self.database.batch_size) {
            return Err(ConfigError::new(
                "database.batch_size",
                "must be from 1 to 1000",
            ));
        }
        if self.database.sql_publish_poll_ms < 10 {
            return Err(ConfigError::new(
                "database.sql_publish_poll_ms",
                "must be at least 10",
            ));
        }
        if self.retention.sweep_interval_ms < 10 {
            return Err(ConfigError::new(
                "retention.sweep_interval_ms",
                "must be at least 10",
            ));
        }
        if self.retention.sweep_batch_size == 0 {
            return Err(ConfigError::new(
                "retention.sweep_batch_size",
                "must be at least 1",
            ));
        }
        if self.limits.max_sockets_per_user == 0 {
            return Err(ConfigError::new(
                "limits.max_sockets_per_user",
                "must be at least 1",
            ));
        }
        if self.limits.max_presence_members == 0 {
            return Err(ConfigError::new(
                "limits.max_presence_members",
                "must be at least 1",
            ));
        }
        if self.limits.max_payload_depth == 0 || self.limits.max_payload_keys == 0 {
            return Err(ConfigError::new(
                "limits.max_payload_depth",
                "max_payload_depth and max_payload_keys must be at least 1",
            ));
        }
        if self.limits.max_pending_per_channel == 0 {
            return Err(ConfigError::new(
                "limits.max_pending_per_channel",
                "must be at least 1",
            ));
        }
        if self.limits.publish_rate > 0 && self.limits.publish_burst == 0 {
            return Err(ConfigError::new(
                "limits.publish_burst",
                "must be at least 1 when publish_rate is set",
            ));
        }
        let recovery = &self.recovery;
        if recovery.window_ms == 0 {
            return Err(ConfigError::new("recovery.window_ms", "must be at least 1"));
        }
        if recovery.max_unconfirmed < 16 {
            return Err(ConfigError::new(
                "recovery.max_unconfirmed",
                "must be at least 16",
            ));
        }
        if self.presence.batch_ms > 1000 {
            return Err(ConfigError::new(
                "presence.batch_ms",
                "must be at most 1000",
            ));
        }
        if self.presence.leave_grace_ms > recovery.window_ms {
            return Err(ConfigError::new(
                "presence.leave_grace_ms",
                "must be at most recovery.window_ms",
            ));
        }
        let cluster = &self.cluster;
        if cluster.heartbeat_ms < 100 {
            return Err(ConfigError::new(
                "cluster.heartbeat_ms",
                "must be at least 100",
            ));
        }
        if cluster.node_timeout_ms < cluster.heartbeat_ms.saturating_mul(3) {
            return Err(ConfigError::new(
                "cluster.node_timeout_ms",
                "must be at least three times cluster.heartbeat_ms",
            ));
        }
        let permissions = &self.permissions;
        if permissions.pool_size == 0 {
            return Err(ConfigError::new(
                "permissions.pool_size",
                "must be at least 1",
            ));
        }
        if permissions.check_timeout_ms == 0 {
            return Err(ConfigError::new(
                "permissions.check_timeout_ms",
                "must be at least 1",
            ));
        }
        if permissions.refresh_ms < 100 {
            return Err(ConfigError::new(
                "permissions.refresh_ms",
                "must be at least 100",
            ));
        }
        let webhooks = &self.webhooks;
        if webhooks.timeout_ms == 0 {
            return Err(ConfigError::new(
                "webhooks.timeout_ms",
                "must be at least 1",
            ));
        }
        if webhooks.retry_delays_ms.len() > 10 {
            return Err(ConfigError::new(
                "webhooks.retry_delays_ms",
                "at most 10 retries",
            ));
        }
        for (key, value) in [
            (
                "webhooks.max_in_flight_per_url",
                webhooks.max_in_flight_per_url,
            ),
            ("webhooks.max_connections", webhooks.max_connections),
            ("webhooks.max_queued", webhooks.max_queued),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        webhooks
            .signing_key()
            .map_err(|reason| ConfigError::new("webhooks.signing_secret", reason))?;
        for (index, batch) in webhooks.batch.iter().enumerate() {
            if batch.url_prefix.is_empty() {
                return Err(ConfigError::new(
                    format!("webhooks.batch[{index}].url_prefix"),
                    "must not be empty",
                ));
            }
            if !(2..=1000).contains(&batch.max_events) {
                return Err(ConfigError::new(
                    format!("webhooks.batch[{index}].max_events"),
                    "must be from 2 to 1000",
                ));
            }
        }
        if self.limits.max_channels_per_socket == 0 {
            return Err(ConfigError::new(
                "limits.max_channels_per_socket",
                "must be at least 1",
            ));
        }
        if self.auth.jwt_secret.len() < 32 {
            return Err(ConfigError::new(
                "auth.jwt_secret",
                "must be at least 32 characters",
            ));
        }
        check_keys("auth.api_keys", &self.auth.api_keys, "ik_")?;
        let engineio = &self.engineio;
        for (key, value) in [
            ("engineio.ping_interval_ms", engineio.ping_interval_ms),
            ("engineio.ping_timeout_ms", engineio.ping_timeout_ms),
            ("engineio.connect_timeout_ms", engineio.connect_timeout_ms),
        ] {
            if value < 10 {
                return Err(ConfigError::new(key, "must be at least 10"));
            }
        }
        if engineio.max_payload < 1024 {
            return Err(ConfigError::new(
                "engineio.max_payload",
                "must be at least 1024",
            ));
        }
        if engineio.max_buffered_packets < 16 {
            return Err(ConfigError::new(
                "engineio.max_buffered_packets",
                "must be at least 16",
            ));
        }
        check_keys("auth.anon_keys", &self.auth.anon_keys, "anon_")?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|err| ConfigError::new("log.level", err.to_string()))?;
        Ok(())
    }

    /// Whether the shipped development secret is still in use.
    pub fn uses_development_secrets(&self) -> bool {
        self.auth.jwt_secret == DEV_JWT_SECRET
            || self
                .auth
                .api_keys
                .iter()
                .any(|key| key.contains("dev_only_insecure"))
    }

    /// The grace period of a graceful shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_grace_ms)
    }
}

fn check_keys(key: &str, keys: &[String], prefix: &str) -> Result<(), ConfigError> {
    for (index, value) in keys.iter().enumerate() {
        if !value.starts_with(prefix) || value.len() < prefix.len() + 8 {
            return Err(ConfigError::new(
                format!("{key}[{index}]"),
                format!("must start with \"{prefix}\" followed by at least 8 characters"),
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                format!("{key}[{index}]"),
                "must not contain white space",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let settings = Settings::from_toml_overlay("").unwrap();
        assert_eq!(settings.server.port, 7130);
        assert_eq!(settings.database.url, "sqlite://data/realtime.db");
        assert!(settings.uses_development_secrets());
    }

    #[test]
    fn overlay_replaces_only_its_keys() {
        let settings = Settings::from_toml_overlay("[server]\nport = 9000").unwrap();
        assert_eq!(settings.server.port, 9000);
        assert_eq!(settings.server.host, "0.0.0.0");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Settings::from_toml_overlay("[server]\nport = \"abc\"").unwrap_err();
        assert_eq!(err.key, "server.port");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Settings::from_toml_overlay("[server]\nprot = 1").unwrap_err();
        assert!(err.reason.contains("prot"), "{err}");
    }

    #[test]
    fn bad_api_key_names_its_index() {
        let err = Settings::from_toml_overlay("[auth]\napi_keys = [\"ik_goodgoodgood\", \"nope\"]")
            .unwrap_err();
        assert_eq!(err.key, "auth.api_keys[1]");
    }

    #[test]
    fn short_secret_is_refused() {
        let err = Settings::from_toml_overlay("[auth]\njwt_secret = \"short\"").unwrap_err();
        assert_eq!(err.key, "auth.jwt_secret");
        assert_eq!(
            err.to_string(),
            "invalid configuration: auth.jwt_secret: must be at least 32 characters"
        );
    }

    #[test]
    fn unsupported_database_is_refused() {
        let err = Settings::from_toml_overlay("[database]\nurl = \"mysql://x\"").unwrap_err();
        assert_eq!(err.key, "database.url");
    }
}
