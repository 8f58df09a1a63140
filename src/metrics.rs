//! Process-wide counters, served as Prometheus text at `GET /metrics`.
//!
//! Plain atomics in a static: the hot paths add to them without locks or
//! allocation, and the endpoint reads them all.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engineio::CloseReason;

/// One counter.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric of the process.
pub struct Metrics {
    /// Engine.IO sessions opened.
    pub sessions_opened: Counter,
    /// Sessions closed, by reason (indexed as [`close_reason_index`]).
    pub sessions_closed: [Counter; 6],
    /// Channel actors started.
    pub channels_started: Counter,
    /// Channel actors retired.
    pub channels_retired: Counter,
    /// Messages accepted by a channel.
    pub messages_accepted: Counter,
    /// Messages delivered (stored, then sent to their audience).
    pub messages_delivered: Counter,
    /// Sum of the audiences of delivered messages: socket deliveries.
    pub socket_deliveries: Counter,
    /// Messages that could not be stored.
    pub messages_failed: Counter,
    /// Publishes refused by the rate or backlog limits.
    pub publishes_rate_limited: Counter,
    /// Group-commit batches written.
    pub writer_batches: Counter,
    /// Rows written by those batches.
    pub writer_rows: Counter,
    /// Messages stored by SQL (PostgreSQL) that the sequencer numbered and
    /// handed to channels and webhooks.
    pub sql_messages: Counter,
    /// Times the PostgreSQL listener connection was lost and made again.
    pub sql_listener_reconnects: Counter,
    /// Messages of ephemeral channels (delivered, never stored).
    pub messages_ephemeral: Counter,
    /// Ephemeral messages this node sent to every node through PostgreSQL.
    pub ephemeral_relayed: Counter,
    /// Ephemeral messages heard from PostgreSQL (of every node, this one
    /// included) for this node's live channels.
    pub ephemeral_received: Counter,
    /// Requests a limit refused, by limit (indexed as [`Limit`]).
    pub limit_refusals: [Counter; N_LIMITS],
    /// Connections that came back with a private session id, by outcome
    /// (indexed as [`RECOVERY_OUTCOMES`]).
    pub recoveries: [Counter; 2],
    /// Messages replayed to recovered sessions.
    pub recovery_replayed: Counter,
    /// Permission checks that went to the database, by decision (indexed
    /// as [`PERMISSION_DECISIONS`]).
    pub permission_checks: [Counter; 3],
    /// Policies that failed with an error (each denied its caller).
    pub permission_policy_errors: Counter,
    /// Webhook requests by outcome (indexed as [`WEBHOOK_OUTCOMES`]).
    pub webhook_requests: [Counter; 4],
    /// Webhook attempts that were retries.
    pub webhook_retries: Counter,
    /// Messages whose webhooks are held in memory now (set, not added).
    pub webhook_in_memory: Counter,
    /// 1 while the writer's writes fail (rendered as its opposite,
    /// `realtime_database_writable`, so the default is 0).
    pub database_unwritable: Counter,
    /// Messages refused while their write may have committed, waiting to
    /// be deleted.
    pub writer_in_doubt: Counter,
    /// Engine.IO requests for a session another node holds (no sticky
    /// sessions at the load balancer).
    pub engine_wrong_node: Counter,
    /// Live nodes sharing the database, this one included (set).
    pub cluster_nodes: Counter,
    /// Nodes this one found dead (silent past `cluster.node_timeout_ms`).
    pub cluster_nodes_expired: Counter,
    /// Messages in the durable webhook backlog: counted at start, then
    /// kept by the writer (adds) and the dispatcher (takes away).
    pub webhook_backlog: Counter,
    /// Deliveries left in the database because memory was full.
    pub webhook_deferred: Counter,
    /// Webhook request durations, in milliseconds.
    pub webhook_latency: Histogram,
    /// Open sessions by transport (indexed as [`TRANSPORTS`]).
    pub connections: [Counter; 2],
    /// Live subscriptions (a socket in a channel).
    pub subscriptions: Counter,
    /// From a channel accepting a message to delivering it (durable), in
    /// microseconds.
    pub publish_delivery: Histogram,
    /// Rows per group-commit batch.
    pub writer_batch_rows: Histogram,
    /// How long a batch took to commit, in microseconds.
    pub writer_commit: Histogram,
}

/// Transports of [`Metrics::connections`].
pub const TRANSPORTS: [&str; 2] = ["polling", "websocket"];

/// Decisions of database permission checks, for
/// [`Metrics::permission_checks`] (in `Decision`'s order).
pub const PERMISSION_DECISIONS: [&str; 3] = ["allow", "deny", "unavailable"];

/// The limits that refuse something, for [`Metrics::limit_refusals`].
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// `limits.publish_rate` / `publish_burst`.
    PublishRate = 0,
    /// `limits.max_pending_per_channel`.
    ChannelPending,
    /// `limits.max_channels_per_socket`.
    ChannelsPerSocket,
    /// `limits.max_payload_depth`.
    PayloadDepth,
    /// `limits.max_payload_keys`.
    PayloadKeys,
    /// History requests in flight per socket.
    HistoryInFlight,
    /// `limits.max_presence_members`.
    PresenceMembers,
    /// `limits.max_sockets_per_user`.
    SocketsPerUser,
    /// `limits.max_sockets_per_address`.
    SocketsPerAddress,
    /// `limits.connect_rate_per_address` / `connect_burst_per_address`.
    ConnectRate,
    /// `limits.polling_rate`.
    PollingRate,
}

/// How many [`Limit`]s there are.
const N_LIMITS: usize = Limit::PollingRate as usize + 1;

/// Names of [`Limit`]s, in order, as `/metrics` shows them.
pub const LIMIT_NAMES: [&str; N_LIMITS] = [
    "publish_rate",
    "max_pending_per_channel",
    "max_channels_per_socket",
    "max_payload_depth",
    "max_payload_keys",
    "history_in_flight",
    "max_presence_members",
    "max_sockets_per_user",
    "max_sockets_per_address",
    "connect_rate_per_address",
    "polling_rate",
];

/// How a recovery ended, for [`Metrics::recoveries`].
pub const RECOVERY_OUTCOMES: [&str; 2] = ["recovered", "fresh"];

/// How a webhook request ended, for [`Metrics::webhook_requests`].
pub const WEBHOOK_OUTCOMES: [&str; 4] = ["2xx", "http_error", "network_error", "timeout"];

/// Upper bounds of the webhook latency buckets, in milliseconds.
const WEBHOOK_BOUNDS_MS: &[u64] = &[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
/// Upper bounds of the pipeline's latency buckets, in microseconds.
const PIPELINE_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
/// Upper bounds of the writer's batch-size buckets, in rows.
const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000];
/// Most buckets a histogram has (bounds, then +Inf).
const MAX_BUCKETS: usize = 16;

/// A histogram with fixed buckets (cumulative when rendered), of values in
/// one unit (milliseconds, microseconds or rows).
pub struct Histogram {
    bounds: &'static [u64],
    buckets: [Counter; MAX_BUCKETS],
    sum: Counter,
}

impl Histogram {
    const fn new(bounds: &'static [u64]) -> Self {
        assert!(bounds.len() < MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { Counter::new() }; MAX_BUCKETS],
            sum: Counter::new(),
        }
    }

    /// Counts one value.
    pub fn observe_value(&self, value: u64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].inc();
        self.sum.add(value);
    }

    /// Counts one duration, in milliseconds (the webhook histogram).
    pub fn observe(&self, duration: std::time::Duration) {
        self.observe_value(duration.as_millis() as u64);
    }

    /// Counts one duration, in microseconds (the pipeline's histograms).
    pub fn observe_micros(&self, duration: std::time::Duration) {
        self.observe_value(duration.as_micros() as u64);
    }
}

impl Counter {
    /// Replaces the value (for gauges kept in a counter).
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Takes `n` away, stopping at 0 (for gauges kept in a counter).
    pub fn sub(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |value| {
                Some(value.saturating_sub(n))
            });
    }
}

impl Metrics {
    /// Counts a refusal by `limit`.
    pub fn refused(&self, limit: Limit) {
        self.limit_refusals[limit as usize].inc();
    }
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    sessions_opened: Counter::new(),
    sessions_closed: [
        Counter::new(),
        Counter::new(),
        Counter::new(),
        Counter::new(),
        Counter::new(),
        Counter::new(),
    ],
    channels_started: Counter::new(),
    channels_retired: Counter::new(),
    messages_accepted: Counter::new(),
    messages_delivered: Counter::new(),
    socket_deliveries: Counter::new(),
    messages_failed: Counter::new(),
    publishes_rate_limited: Counter::new(),
    writer_batches: Counter::new(),
    writer_rows: Counter::new(),
    sql_messages: Counter::new(),
    sql_listener_reconnects: Counter::new(),
    messages_ephemeral: Counter::new(),
    ephemeral_relayed: Counter::new(),
    ephemeral_received: Counter::new(),
    limit_refusals: [const { Counter::new() }; N_LIMITS],
    recoveries: [const { Counter::new() }; 2],
    recovery_replayed: Counter::new(),
    permission_checks: [const { Counter::new() }; 3],
    permission_policy_errors: Counter::new(),
    webhook_requests: [const { Counter::new() }; 4],
    webhook_retries: Counter::new(),
    webhook_in_memory: Counter::new(),
    database_unwritable: Counter::new(),
    writer_in_doubt: Counter::new(),
    engine_wrong_node: Counter::new(),
    cluster_nodes: Counter::new(),
    cluster_nodes_expired: Counter::new(),
    webhook_backlog: Counter::new(),
    webhook_deferred: Counter::new(),
    webhook_latency: Histogram::new(WEBHOOK_BOUNDS_MS),
    connections: [const { Counter::new() }; 2],
    subscriptions: Counter::new(),
    publish_delivery: Histogram::new(PIPELINE_BOUNDS_US),
    writer_batch_rows: Histogram::new(BATCH_BOUNDS),
    writer_commit: Histogram::new(PIPELINE_BOUNDS_US),
};

const CLOSE_REASONS: [CloseReason; 6] = [
    CloseReason::ClientClose,
    CloseReason::TransportClose,
    CloseReason::PingTimeout,
    CloseReason::ProtocolError,
    CloseReason::SlowClient,
    CloseReason::ServerClose,
];

/// Where a close reason is counted in [`Metrics::sessions_closed`].
pub fn close_reason_index(reason: CloseReason) -> usize {
    CLOSE_REASONS
        .iter()
        .position(|known| *known == reason)
        .unwrap_or(CLOSE_REASONS.len() - 1)
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// A histogram whose values are `scale` per exported unit (1000 for
/// milliseconds shown as seconds, 1 for counts).
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram, scale: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, count) in h.bounds.iter().zip(&h.buckets) {
        cumulative += count.get();
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / scale
        );
    }
    cumulative += h.buckets[h.bounds.len()].get();
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {}\n{name}_count {cumulative}",
        h.sum.get() as f64 / scale
    );
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(2048);
    let opened = m.sessions_opened.get();
    let closed: u64 = m.sessions_closed.iter().map(Counter::get).sum();
    gauge(
        &mut out,
        "realtime_sessions_open",
        "Engine.IO sessions open now.",
        opened.saturating_sub(closed),
    );
    counter(
        &mut out,
        "realtime_sessions_opened_total",
        "Engine.IO sessions opened.",
        opened,
    );
    let _ = writeln!(
        out,
        "# HELP realtime_sessions_closed_total Engine.IO sessions closed, by reason.\n# TYPE realtime_sessions_closed_total counter"
    );
    for (reason, count) in CLOSE_REASONS.iter().zip(&m.sessions_closed) {
        let _ = writeln!(
            out,
            "realtime_sessions_closed_total{{reason=\"{}\"}} {}",
            reason.as_str().replace(' ', "_"),
            count.get()
        );
    }
    let started = m.channels_started.get();
    gauge(
        &mut out,
        "realtime_channels_live",
        "Channel actors alive now.",
        started.saturating_sub(m.channels_retired.get()),
    );
    counter(
        &mut out,
        "realtime_messages_accepted_total",
        "Messages accepted by a channel.",
        m.messages_accepted.get(),
    );
    counter(
        &mut out,
        "realtime_messages_delivered_total",
        "Messages stored and delivered.",
        m.messages_delivered.get(),
    );
    counter(
        &mut out,
        "realtime_socket_deliveries_total",
        "Messages sent to sockets (sum of audiences).",
        m.socket_deliveries.get(),
    );
    counter(
        &mut out,
        "realtime_messages_failed_total",
        "Messages that could not be stored.",
        m.messages_failed.get(),
    );
    counter(
        &mut out,
        "realtime_publishes_rate_limited_total",
        "Publishes refused by the rate or backlog limits.",
        m.publishes_rate_limited.get(),
    );
    counter(
        &mut out,
        "realtime_writer_batches_total",
        "Group-commit batches written.",
        m.writer_batches.get(),
    );
    counter(
        &mut out,
        "realtime_writer_rows_total",
        "Message rows written.",
        m.writer_rows.get(),
    );
    counter(
        &mut out,
        "realtime_sql_messages_total",
        "Messages stored by SQL (realtime.publish, INSERT) handed to channels and webhooks.",
        m.sql_messages.get(),
    );
    counter(
        &mut out,
        "realtime_sql_listener_reconnects_total",
        "Times the PostgreSQL listener connection was lost and made again.",
        m.sql_listener_reconnects.get(),
    );
    counter(
        &mut out,
        "realtime_messages_ephemeral_total",
        "Messages of ephemeral channels: delivered live, never stored.",
        m.messages_ephemeral.get(),
    );
    counter(
        &mut out,
        "realtime_ephemeral_relayed_total",
        "Ephemeral messages this node sent to every node through PostgreSQL.",
        m.ephemeral_relayed.get(),
    );
    counter(
        &mut out,
        "realtime_ephemeral_received_total",
        "Ephemeral messages heard from PostgreSQL for this node's live channels (every node's, this one's included).",
        m.ephemeral_received.get(),
    );
    let _ = writeln!(
        out,
        "# HELP realtime_limit_refusals_total Requests a configured limit refused, by limit.\n# TYPE realtime_limit_refusals_total counter"
    );
    for (limit, count) in LIMIT_NAMES.iter().zip(&m.limit_refusals) {
        let _ = writeln!(
            out,
            "realtime_limit_refusals_total{{limit=\"{limit}\"}} {}",
            count.get()
        );
    }
    let _ = writeln!(
        out,
        "# HELP realtime_recoveries_total Connections that came back with a private session id, by outcome.\n# TYPE realtime_recoveries_total counter"
    );
    for (outcome, count) in RECOVERY_OUTCOMES.iter().zip(&m.recoveries) {
        let _ = writeln!(
            out,
            "realtime_recoveries_total{{outcome=\"{outcome}\"}} {}",
            count.get()
        );
    }
    counter(
        &mut out,
        "realtime_recovery_replayed_total",
        "Messages replayed to recovered sessions.",
        m.recovery_replayed.get(),
    );
    let _ = writeln!(
        out,
        "# HELP realtime_permission_checks_total Permission checks evaluated in the database, by decision.\n# TYPE realtime_permission_checks_total counter"
    );
    for (decision, count) in PERMISSION_DECISIONS.iter().zip(&m.permission_checks) {
        let _ = writeln!(
            out,
            "realtime_permission_checks_total{{decision=\"{decision}\"}} {}",
            count.get()
        );
    }
    counter(
        &mut out,
        "realtime_permission_policy_errors_total",
        "Policies that failed with an error (each denied its caller).",
        m.permission_policy_errors.get(),
    );
    let _ = writeln!(
        out,
        "# HELP realtime_webhook_requests_total Webhook requests, by outcome.\n# TYPE realtime_webhook_requests_total counter"
    );
    for (outcome, count) in WEBHOOK_OUTCOMES.iter().zip(&m.webhook_requests) {
        let _ = writeln!(
            out,
            "realtime_webhook_requests_total{{outcome=\"{outcome}\"}} {}",
            count.get()
        );
    }
    counter(
        &mut out,
        "realtime_webhook_retries_total",
        "Webhook requests that were retries.",
        m.webhook_retries.get(),
    );
    counter(
        &mut out,
        "realtime_webhook_deferred_total",
        "Webhook deliveries left in the database because memory was full.",
        m.webhook_deferred.get(),
    );
    gauge(
        &mut out,
        "realtime_database_writable",
        "1 while message writes commit, 0 while they fail (publishes get DATABASE_UNAVAILABLE).",
        1 - m.database_unwritable.get().min(1),
    );
    gauge(
        &mut out,
        "realtime_writer_in_doubt",
        "Refused messages whose write may have committed, waiting to be deleted.",
        m.writer_in_doubt.get(),
    );
    counter(
        &mut out,
        "realtime_engine_wrong_node_requests_total",
        "Engine.IO requests for a session another node holds (the load balancer is not sticky).",
        m.engine_wrong_node.get(),
    );
    gauge(
        &mut out,
        "realtime_cluster_nodes",
        "Live server processes sharing the database, this one included.",
        m.cluster_nodes.get(),
    );
    counter(
        &mut out,
        "realtime_cluster_nodes_expired_total",
        "Nodes this one found silent past cluster.node_timeout_ms and removed.",
        m.cluster_nodes_expired.get(),
    );
    gauge(
        &mut out,
        "realtime_webhook_in_memory",
        "Messages whose webhooks are being sent from memory now.",
        m.webhook_in_memory.get(),
    );
    gauge(
        &mut out,
        "realtime_webhook_backlog",
        "Messages whose webhooks have not finished (the durable backlog).",
        m.webhook_backlog.get(),
    );
    histogram(
        &mut out,
        "realtime_webhook_request_seconds",
        "Webhook request durations.",
        &m.webhook_latency,
        1000.0,
    );
    let _ = writeln!(
        out,
        "# HELP realtime_connections Open connections, by transport.\n# TYPE realtime_connections gauge"
    );
    for (transport, count) in TRANSPORTS.iter().zip(&m.connections) {
        let _ = writeln!(
            out,
            "realtime_connections{{transport=\"{transport}\"}} {}",
            count.get()
        );
    }
    gauge(
        &mut out,
        "realtime_subscriptions",
        "Live subscriptions (a socket in a channel).",
        m.subscriptions.get(),
    );
    histogram(
        &mut out,
        "realtime_publish_delivery_seconds",
        "From a channel accepting a message to delivering it, storage included.",
        &m.publish_delivery,
        1e6,
    );
    histogram(
        &mut out,
        "realtime_writer_batch_rows",
        "Rows per group-commit batch.",
        &m.writer_batch_rows,
        1.0,
    );
    histogram(
        &mut out,
        "realtime_writer_commit_seconds",
        "How long a group-commit batch took to write.",
        &m.writer_commit,
        1e6,
    );
    crate::api::http_metrics::render(&mut out);
    out
}
