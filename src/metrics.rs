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
    /// Messages in the durable webhook backlog: counted at start, then
    /// kept by the writer (adds) and the dispatcher (takes away).
    pub webhook_backlog: Counter,
    /// Deliveries left in the database because memory was full.
    pub webhook_deferred: Counter,
    /// Webhook request durations.
    pub webhook_latency: Histogram,
}

/// Decisions of database permission checks, for
/// [`Metrics::permission_checks`] (in `Decision`'s order).
pub const PERMISSION_DECISIONS: [&str; 3] = ["allow", "deny", "unavailable"];

/// How a webhook request ended, for [`Metrics::webhook_requests`].
pub const WEBHOOK_OUTCOMES: [&str; 4] = ["2xx", "http_error", "network_error", "timeout"];

/// Upper bounds of the webhook latency buckets, in milliseconds.
const LATENCY_BOUNDS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// A latency histogram with fixed buckets (cumulative when rendered).
pub struct Histogram {
    buckets: [Counter; LATENCY_BOUNDS_MS.len() + 1],
    sum_ms: Counter,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { Counter::new() }; LATENCY_BOUNDS_MS.len() + 1],
            sum_ms: Counter::new(),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, duration: std::time::Duration) {
        let ms = duration.as_millis() as u64;
        let index = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.buckets[index].inc();
        self.sum_ms.add(ms);
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
    permission_checks: [const { Counter::new() }; 3],
    permission_policy_errors: Counter::new(),
    webhook_requests: [const { Counter::new() }; 4],
    webhook_retries: Counter::new(),
    webhook_in_memory: Counter::new(),
    webhook_backlog: Counter::new(),
    webhook_deferred: Counter::new(),
    webhook_latency: Histogram::new(),
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
    let latency = &m.webhook_latency;
    let _ = writeln!(
        out,
        "# HELP realtime_webhook_request_seconds Webhook request durations.\n# TYPE realtime_webhook_request_seconds histogram"
    );
    let mut cumulative = 0;
    for (bound, count) in LATENCY_BOUNDS_MS.iter().zip(&latency.buckets) {
        cumulative += count.get();
        let _ = writeln!(
            out,
            "realtime_webhook_request_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1000.0
        );
    }
    cumulative += latency.buckets[LATENCY_BOUNDS_MS.len()].get();
    let _ = writeln!(
        out,
        "realtime_webhook_request_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nrealtime_webhook_request_seconds_sum {}\nrealtime_webhook_request_seconds_count {cumulative}",
        latency.sum_ms.get() as f64 / 1000.0
    );
    out
}
