//! What the server hears from PostgreSQL on its one LISTEN connection:
//!
//! - **Publishing from SQL**: messages that `realtime.publish()` in a
//!   user's trigger, or a direct `INSERT INTO realtime.messages`, stored
//!   reach subscribers and webhooks like any other.
//! - **Policy changes**: the permission hook drops its cached decisions
//!   and reads the policies' state again (and now and then without being
//!   told, in case a change went unnoticed).
//!
//! - **Other nodes' batches**: their writers notify the same channel,
//!   naming their node; this node's writer then reads them.
//! - **Other nodes' presence changes**: handed to the registry, which
//!   gives each live channel its part ([`crate::cluster::presence`]).
//! - **Sessions another node recovers**: if live here, handed over
//!   ([`RecoveryStore::hand_over_elsewhere`]).
//! - **Ephemeral messages** of every node, this one's included: handed to
//!   the registry in the order heard ([`crate::cluster::relay`]).
//!
//! A thread of its own holds the connection. Woken by a notification (or
//! by a poll, a safety net), it asks the sequencer to number what SQL stored
//! ([`sequencer::number_arrivals`]), hands each row with webhook URLs to the
//! webhook dispatcher, and tells the writer to catch up ([`CatchUp`]): the
//! writer hands every row it did not write to the channels, in `seq` order
//! with its own batches ([`crate::persistence::hand_on`]). Notifications of
//! this node's own batches are ignored. Notifications sent while the
//! connection is down are lost, so after every (re)connect it LISTENs first
//! and then numbers everything waiting: a row is numbered exactly once, so
//! its webhooks are handed on exactly once, whenever it was stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use entity::messages;
use sea_orm::DatabaseConnection;

use crate::channel::catalog::ChannelCatalog;
use crate::channel::registry::{ChannelRegistry, ReloadPresence, RemoteEphemeral, RemotePresence};
use crate::metrics::METRICS;
use crate::permissions::PermissionHook;
use crate::persistence::ephemeral::{self, EphemeralEnvelope};
use crate::persistence::hand_on::CatchUp;
use crate::persistence::presence::PresenceEnvelope;
use crate::persistence::sequencer;
use crate::persistence::writer::MessageWriter;
use crate::recovery::RecoveryStore;
use crate::webhooks::{WebhookMessage, Webhooks};

/// Rows numbered per statement.
const PAGE: u64 = 500;
/// The first wait before connecting again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The task that delivers messages stored by SQL.
pub struct DatabaseListener {
    /// Where rows are numbered.
    pub db: DatabaseConnection,
    /// The database URL, for the listening connection.
    pub url: String,
    /// The channels rows may belong to (disabled ones get nothing).
    pub catalog: Arc<ChannelCatalog>,
    /// Live channels.
    pub registry: Addr<ChannelRegistry>,
    /// Webhook delivery.
    pub webhooks: Webhooks,
    /// Look for rows this often even without a notification.
    pub poll: Duration,
    /// Whether rows SQL stores are delivered (`database.sql_publish`).
    pub sql_publish: bool,
    /// Told of policy changes.
    pub permissions: Arc<dyn PermissionHook>,
    /// Read the policies' state again this often even without a
    /// notification (`permissions.refresh_ms`).
    pub refresh: Duration,
    /// Reads and hands on what others stored.
    pub writer: Addr<MessageWriter>,
    /// This node, as its writer's notifications name it: those are skipped.
    pub node: Arc<str>,
    /// Sessions another node may ask to take over.
    pub recovery: Option<Arc<RecoveryStore>>,
    /// Set while the listening connection hears notifications (the
    /// ephemeral relay refuses messages otherwise).
    pub listening: Arc<AtomicBool>,
}

impl DatabaseListener {
    /// Runs on a thread of its own until the channel registry stops. (Its
    /// own runtime, so the listening connection is always closed inside
    /// one, whatever order an actix system shuts down in.)
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn spawn(self) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("realtime-db-listener".into())
            .spawn(move || runtime.block_on(self.run()))?;
        Ok(())
    }

    /// Whether the pipeline it feeds still runs.
    fn running(&self) -> bool {
        self.registry.connected()
    }

    async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        while self.running() {
            let mut listener = match sequencer::listen(&self.url).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64,
                        "cannot listen for messages published by SQL; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            self.listening.store(true, Ordering::Relaxed);
            tracing::debug!("listening for messages published by SQL and policy changes");
            // Listening first, then catching up: a row stored (or a policy
            // changed) from now on is notified, one before is found now.
            self.permissions.policies_changed().await;
            self.reload_catalog().await;
            // Presence changes may have been missed while not listening.
            self.registry.do_send(ReloadPresence);
            self.catch_up().await;
            let mut last_refresh = Instant::now();
            while self.running() {
                let woken = tokio::time::timeout(self.poll, listener.try_recv()).await;
                let mut notified = Vec::new();
                // Whether to look without a notification: the poll's time,
                // or a reconnect that may have lost some.
                let mut look = false;
                let mut reconnected = false;
                match woken {
                    Ok(Ok(Some(notification))) => {
                        notified.push(notification);
                        // Every notification waiting is answered at once.
                        notified.extend(std::iter::from_fn(|| listener.next_buffered()));
                    }
                    Err(_) => look = true,
                    // The connection was lost and made again (LISTEN too):
                    // what was notified meanwhile is caught up now.
                    Ok(Ok(None)) => {
                        look = true;
                        reconnected = true;
                        METRICS.sql_listener_reconnects.inc();
                        tracing::warn!(
                            "the listening connection was lost and made again; catching up"
                        );
                        self.permissions.policies_changed().await;
                        self.registry.do_send(ReloadPresence);
                        last_refresh = Instant::now();
                    }
                    Ok(Err(err)) => {
                        self.listening.store(false, Ordering::Relaxed);
                        METRICS.sql_listener_reconnects.inc();
                        tracing::warn!(error = %err, "the listening connection was lost; connecting again");
                        break;
                    }
                }
                // Ephemeral messages first, in the order heard.
                let mut relayed = Vec::new();
                notified.retain(|notification| {
                    if notification.channel() != migration::EPHEMERAL_CHANNEL {
                        return true;
                    }
                    match serde_json::from_str::<EphemeralEnvelope>(notification.payload()) {
                        Ok(envelope) => relayed.push(envelope),
                        Err(err) => tracing::warn!(error = %err,
                            "an ephemeral message notification that is not one; ignored"),
                    }
                    false
                });
                if !relayed.is_empty() {
                    self.ephemeral_heard(relayed).await;
                }
                // This node's own batches need nothing: its writer handed
                // them on already. Presence changes go to the channels.
                notified.retain(|notification| {
                    if notification.channel() == migration::PRESENCE_CHANNEL {
                        self.presence_changed(notification.payload());
                        return false;
                    }
                    if notification.channel() == migration::HANDOVER_CHANNEL {
                        self.hand_over(notification.payload());
                        return false;
                    }
                    notification.channel() != migration::SEQUENCE_CHANNEL
                        || notification.payload() != &*self.node
                });
                if notified.is_empty() && !look {
                    continue;
                }
                if reconnected
                    || notified
                        .iter()
                        .any(|notification| notification.channel() == migration::CATALOG_CHANNEL)
                {
                    self.reload_catalog().await;
                }
                if notified
                    .iter()
                    .any(|notification| notification.channel() == migration::POLICY_CHANNEL)
                {
                    tracing::debug!("policies changed");
                    self.permissions.policies_changed().await;
                    last_refresh = Instant::now();
                } else if last_refresh.elapsed() >= self.refresh {
                    self.permissions.refresh().await;
                    last_refresh = Instant::now();
                }
                self.catch_up().await;
            }
        }
    }

    /// Hands another node's presence changes to the registry (this node's
    /// own are known already).
    fn presence_changed(&self, payload: &str) {
        match serde_json::from_str::<PresenceEnvelope>(payload) {
            Ok(envelope) if envelope.node != *self.node => {
                self.registry.do_send(RemotePresence(envelope));
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "a presence notification that is not one; ignored")
            }
        }
    }

    /// Hands ephemeral messages (every node's) to the registry, in order;
    /// packets too big for their notification are read from their rows
    /// first.
    async fn ephemeral_heard(&self, envelopes: Vec<EphemeralEnvelope>) {
        let rows: Vec<uuid::Uuid> = envelopes
            .iter()
            .flat_map(|envelope| envelope.messages.iter().filter_map(|message| message.row))
            .collect();
        let mut packets = if rows.is_empty() {
            Default::default()
        } else {
            match ephemeral::relayed_packets(&self.db, &rows).await {
                Ok(packets) => packets,
                Err(err) => {
                    tracing::warn!(error = %err, n = rows.len(),
                        "cannot read large ephemeral messages; they are not delivered here");
                    Default::default()
                }
            }
        };
        let mut messages = Vec::new();
        for message in envelopes.into_iter().flat_map(|envelope| envelope.messages) {
            let packet = match (message.packet, message.row) {
                (Some(packet), _) => packet,
                (None, Some(row)) => match packets.remove(&row) {
                    Some(packet) => packet,
                    None => continue,
                },
                (None, None) => continue,
            };
            messages.push((message.channel, packet.into()));
        }
        if !messages.is_empty() {
            self.registry.do_send(RemoteEphemeral(messages));
        }
    }

    /// Another node recovers session `pid`: if it is live here, its state
    /// is handed over (without holding up this loop).
    fn hand_over(&self, pid: &str) {
        if let Some(store) = self.recovery.clone() {
            let pid = pid.to_owned();
            tokio::spawn(async move { store.hand_over_elsewhere(&pid).await });
        }
    }

    /// Reads the channel definitions again: another node (or SQL) changed
    /// them, or a change may have gone unnoticed while disconnected.
    async fn reload_catalog(&self) {
        if let Err(err) = self.catalog.reload(&self.db).await {
            tracing::warn!(error = %err, "cannot reload the channel definitions; retrying later");
        }
    }

    /// Numbers every row SQL stored, page by page, and has the writer
    /// hand on what others stored. A failure leaves the rest for the next
    /// wake-up.
    async fn catch_up(&self) {
        self.writer.do_send(CatchUp);
        if !self.sql_publish {
            return;
        }
        loop {
            match sequencer::number_arrivals(&self.db, PAGE, &self.node).await {
                Ok(rows) => {
                    let more = rows.len() as u64 == PAGE;
                    if !rows.is_empty() {
                        self.hand_on(rows);
                        self.writer.do_send(CatchUp);
                    }
                    if !more {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot number messages published by SQL; retrying later");
                    return;
                }
            }
        }
    }

    /// Hands numbered rows to the webhook dispatcher (the writer hands
    /// them to their channels). A row of a channel that is gone or
    /// disabled goes nowhere (InsForge skips them too).
    fn hand_on(&self, rows: Vec<messages::Model>) {
        for row in rows {
            let Some(definition) = row.channel_id.and_then(|id| self.catalog.by_id(id)) else {
                continue;
            };
            METRICS.sql_messages.inc();
            if row.wh_audience_count > 0 {
                // Entered in the backlog by the numbering statement.
                METRICS.webhook_backlog.inc();
                if definition.webhook_urls.is_empty() {
                    // Its URLs went a moment ago: the backlog scan settles it.
                    self.webhooks.defer();
                } else {
                    self.webhooks
                        .dispatch(WebhookMessage::from_row(&row), definition);
                }
            }
        }
    }
}
