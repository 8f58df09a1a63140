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
    out
}
