//! The `MessageWriter` actor: group commit of the message history.
//!
//! Channels send it each accepted message; it inserts them in batches (one
//! statement per batch, at most `batch_size` rows, at most `batch_window`
//! after the first row waited) and tells each channel which of its
//! messages are durable. Messages with webhook URLs enter the webhook
//! backlog in the same statement or transaction. Audience counts recorded
//! after delivery, and finished webhooks, go out in the same cycle. One
//! flush runs at a time, so batches commit in the order their messages
//! arrived.
//!
//! A message that is not stored within `database.publish_timeout_ms` is
//! refused (`DATABASE_UNAVAILABLE`) and never stored later: rows are not
//! written once their time is up, a write is abandoned when it runs out
//! of time, and a write abandoned while its commit may have gone through
//! is undone ("in doubt", deleted as soon as the database answers). While
//! writes fail, the writer reports the database unwritable
//! ([`WriterHealth`]) and probes it once a second until a write commits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Recipient, SpawnHandle, WrapFuture,
};
use chrono::{DateTime, Utc};
use entity::messages;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use uuid::Uuid;

use super::checkpoint::{self, LogStartOver};
use super::hand_on::{self, CatchUp, ConnectRegistry, HandOn};
use super::webhooks::{self as webhook_queries, WebhookOutcome};
use super::{messages as queries, retention, PersistenceError};
use crate::metrics::METRICS;
use crate::publish::PublishError;

/// Most rows in one INSERT, under SQLite's bound-parameter limit.
const MAX_ROWS_PER_INSERT: usize = 1000;
/// Retries of a failed batch, as long as its messages' time allows.
const RETRY_DELAYS_MS: [u64; 3] = [50, 200, 1000];
/// While writes fail: how often the writer probes the database, and
/// retries deleting messages whose write ended in doubt.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Most ids of writes in doubt kept for deletion; past it the oldest are
/// forgotten (logged). A writer abandons at most one batch per publish
/// timeout, so this is hours of a dead database at full batches.
const MAX_IN_DOUBT: usize = 100_000;

/// Where a channel hears that its messages are durable: shared, so a
/// publish clones a pointer rather than boxing a new recipient.
pub type PersistedTo = Arc<Recipient<Persisted>>;

/// Persist one message, then tell `notify`.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Persist {
    /// The row, with its id and timestamp already set.
    pub row: messages::Model,
    /// The channel that waits for it.
    pub notify: PersistedTo,
}

/// Messages of one channel whose batch committed, or failed for good.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct Persisted {
    /// The messages, in the order they were sent.
    pub ids: Vec<Uuid>,
    /// Their `seq` (ARCHITECTURE.md, "The message sequence"), in the same
    /// order; empty when the batch failed. `None` only in the rare case a
    /// retried batch was stored but its numbers could not be read back.
    pub seqs: Vec<Option<i64>>,
    /// [`PublishError::DatabaseUnavailable`] when the messages were not
    /// stored in time (and never will be); the writer has logged why.
    pub result: Result<(), PublishError>,
}

/// Record how many sockets received each message.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct RecordAudience(pub Vec<(Uuid, i32)>);

/// Record how messages' webhooks ended and take them out of the backlog;
/// `notify` hears of their ids once written (or given up on).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct RecordWebhooks {
    /// One per finished message.
    pub outcomes: Vec<WebhookOutcome>,
    /// Told when the write is over.
    pub notify: Recipient<WebhooksRecorded>,
}

/// The ids of a [`RecordWebhooks`] are written (or the write failed for
/// good, and they stay in the backlog).
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct WebhooksRecorded(pub Vec<Uuid>);

/// Resolves once everything received so far is written (shutdown, tests).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Webhook outcomes to write, and who to tell once they are.
type Finished = (Vec<WebhookOutcome>, Recipient<WebhooksRecorded>);

/// A message waiting for its batch.
struct Queued {
    row: messages::Model,
    notify: PersistedTo,
    /// Stored by then, or refused.
    deadline: Instant,
}

/// What a SQLite batch updates beside its inserts.
#[derive(Clone, Copy)]
struct Updates<'a> {
    audience: &'a [(Uuid, i32)],
    webhooks: &'a [WebhookOutcome],
}

/// The highest `seq` known committed on this node: a channel that starts
/// takes it as the point its deliveries begin after (recovery replays what
/// a socket missed from there). Shared by the writer and the database
/// listener, which advance it, and the channel registry.
#[derive(Clone, Debug, Default)]
pub struct CommittedSeq(Arc<AtomicI64>);

impl CommittedSeq {
    /// Starting at `seq` (the highest stored at start).
    pub fn new(seq: i64) -> Self {
        CommittedSeq(Arc::new(AtomicI64::new(seq)))
    }

    /// The highest committed `seq`.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Records that `seq` committed.
    pub fn advance(&self, seq: i64) {
        self.0.fetch_max(seq, Ordering::AcqRel);
    }
}

/// Whether the writer's last write committed: `/health` reports the
/// database unavailable while it did not, also when reads still work (a
/// SQLite file that is full or locked by another process).
#[derive(Clone, Debug)]
pub struct WriterHealth(Arc<AtomicBool>);

impl Default for WriterHealth {
    fn default() -> Self {
        WriterHealth(Arc::new(AtomicBool::new(true)))
    }
}

impl WriterHealth {
    /// True unless the last write failed.
    pub fn is_writable(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, writable: bool) {
        if self.0.swap(writable, Ordering::AcqRel) != writable {
            METRICS.database_unwritable.set(u64::from(!writable));
            if writable {
                tracing::info!("database writes work again");
            } else {
                tracing::error!(
                    "database writes fail: publishes are refused with DATABASE_UNAVAILABLE"
                );
            }
        }
    }
}

/// The group-commit writer.
pub struct MessageWriter {
    db: DatabaseConnection,
    /// Where batches are written ([`super::batch_connection`]).
    batches: DatabaseConnection,
    batch_size: usize,
    batch_window: Duration,
    /// How long a message may wait to be stored.
    publish_timeout: Duration,
    /// Rows waiting for the next flush, in arrival order (so also in
    /// deadline order).
    rows: VecDeque<Queued>,
    /// Audience counts waiting for the next flush.
    audience: Vec<(Uuid, i32)>,
    /// Finished webhooks waiting for the next flush, and who to tell.
    webhooks: Vec<Finished>,
    /// True while a flush runs; the next one waits for it.
    flushing: bool,
    /// Whether audience counts go in their own statement, beside the
    /// inserts (PostgreSQL: a round trip each, so the next batch's insert
    /// does not wait for the counts of the last one) rather than in the
    /// batch's transaction (SQLite, in-process, one writer at a time).
    counts_apart: bool,
    /// True while counts are being written apart.
    counting: bool,
    /// The timer that flushes a batch that did not fill up.
    window_timer: Option<SpawnHandle>,
    /// Rows in the last batch: once as many wait again, the batch goes
    /// without waiting out the window (see [`MessageWriter::schedule`]).
    last_batch_rows: usize,
    /// Callers of [`Drain`] waiting for the queues to empty.
    drain_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// SQLite: the `seq` of the next row, read from the database before the
    /// first batch. The writer is SQLite's only writer and flushes one batch
    /// at a time, so numbering rows as they are flushed is commit order.
    /// (PostgreSQL numbers rows in the INSERT itself.)
    next_seq: Option<i64>,
    /// Advanced after each commit.
    committed: CommittedSeq,
    /// Ids of messages refused while their write may have committed, to be
    /// deleted.
    in_doubt: VecDeque<Uuid>,
    /// Whether the last write committed.
    health: WriterHealth,
    /// True while a probe or a delete of `in_doubt` runs.
    checking: bool,
    /// The timer of the next probe or delete.
    check_timer: Option<SpawnHandle>,
    /// Every `seq` at or below it has been handed to channels (see
    /// [`hand_on`]).
    cursor: i64,
    /// Where rows this writer did not write go, with its own batches after
    /// them; without it (tests) batches go straight to their channels.
    registry: Option<Recipient<HandOn>>,
    /// Rows others stored may be waiting: read them between flushes.
    catch_up_wanted: bool,
    /// This node, as its batches' notifications name it.
    node: Arc<str>,
    /// SQLite: the checkpointer asks for a checkpoint between two batches,
    /// after which the log starts over ([`checkpoint`]).
    log_start_over: Option<LogStartOver>,
}

impl MessageWriter {
    /// A writer over `db` with the given batch bounds, that advances
    /// `committed`. Messages wait at most 5 s to be stored unless
    /// [`MessageWriter::with_publish_timeout`] says otherwise.
    pub fn new(
        db: DatabaseConnection,
        batch_size: usize,
        batch_window: Duration,
        committed: CommittedSeq,
    ) -> Self {
        MessageWriter {
            counts_apart: db.get_database_backend() != DbBackend::Sqlite,
            batches: super::batch_connection(&db),
            db,
            batch_size: batch_size.clamp(1, MAX_ROWS_PER_INSERT),
            batch_window,
            publish_timeout: Duration::from_secs(5),
            rows: VecDeque::new(),
            audience: Vec::new(),
            webhooks: Vec::new(),
            flushing: false,
            counting: false,
            window_timer: None,
            last_batch_rows: 0,
            drain_waiters: Vec::new(),
            next_seq: None,
            in_doubt: VecDeque::new(),
            health: WriterHealth::default(),
            checking: false,
            check_timer: None,
            cursor: committed.get(),
            committed,
            registry: None,
            catch_up_wanted: false,
            node: Uuid::new_v4().to_string().into(),
            log_start_over: None,
        }
    }

    /// SQLite: lets the log start over when `request` asks, between two
    /// batches.
    pub fn with_log_start_over(mut self, request: LogStartOver) -> Self {
        self.log_start_over = Some(request);
        self
    }

    /// This node's id, as the notifications of its batches carry it.
    pub fn with_node(mut self, node: Arc<str>) -> Self {
        self.node = node;
        self
    }

    /// Messages not stored within `timeout` are refused.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Whether the writer's writes commit.
    pub fn health(&self) -> WriterHealth {
        self.health.clone()
    }

    fn is_idle(&self) -> bool {
        self.rows.is_empty()
            && self.audience.is_empty()
            && self.webhooks.is_empty()
            && !self.flushing
            && !self.counting
    }

    /// Counts and webhook outcomes waiting, which a flush (SQLite) or a
    /// write apart (PostgreSQL) takes.
    fn has_updates(&self) -> bool {
        !self.audience.is_empty() || !self.webhooks.is_empty()
    }

    /// Flushes now if a batch is full, as many rows wait as the last batch
    /// held, or a drain waits; else makes sure the window timer runs.
    ///
    /// Publishers that wait for their acks send again about as many
    /// messages as the last batch acknowledged: once those are here,
    /// waiting out the window only adds latency. A lone publisher's
    /// message goes at once; fewer rows than last time wait out the
    /// window for more to come.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.counts_apart {
            self.write_counts(ctx);
        }
        let counts_waiting = !self.counts_apart && self.has_updates();
        if self.flushing {
            return;
        }
        if self.rows.is_empty() && !counts_waiting {
            if self.catch_up_wanted {
                self.catch_up(ctx);
            }
            return;
        }
        let waiting = self.rows.len();
        if waiting >= self.batch_size.min(self.last_batch_rows.max(1))
            || !self.drain_waiters.is_empty()
        {
            self.flush(ctx);
        } else if self.window_timer.is_none() {
            self.window_timer = Some(ctx.run_later(self.batch_window, |writer, ctx| {
                writer.window_timer = None;
                writer.flush(ctx);
            }));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing {
            return;
        }
        if let Some(timer) = self.window_timer.take() {
            ctx.cancel_future(timer);
        }
        self.refuse_late_rows();
        let take = self.rows.len().min(self.batch_size);
        let mut batch: Vec<Queued> = self.rows.drain(..take).collect();
        if !batch.is_empty() {
            self.last_batch_rows = batch.len();
        }
        let (audience, webhooks) = if self.counts_apart {
            (Vec::new(), Vec::new())
        } else {
            self.take_updates()
        };
        if batch.is_empty() && audience.is_empty() && webhooks.is_empty() {
            return;
        }
        self.flushing = true;
        let db = self.batches.clone();
        let counts_apart = self.counts_apart;
        let mut next_seq = self.next_seq;
        let started = Instant::now();
        // The first row waited longest: the batch must be stored by its
        // deadline. Counts alone get the whole timeout.
        let deadline = batch
            .first()
            .map_or(started + self.publish_timeout, |queued| queued.deadline);
        let cursor = self.cursor;
        let node = self.node.clone();
        let hands_on = self.registry.is_some();
        let refused = self.refused();
        let publish_timeout = self.publish_timeout;
        let write = async move {
            let attempt = async {
                if !counts_apart {
                    let first = match next_seq {
                        Some(next) => next,
                        None => {
                            queries::max_seq(&db)
                                .await
                                .map_err(Failure::refused)?
                                .unwrap_or(0)
                                + 1
                        }
                    };
                    // SQLite: numbered here, in commit order. A batch that
                    // then fails leaves a gap, never a repeat.
                    for (ordinal, queued) in batch.iter_mut().enumerate() {
                        queued.row.seq = Some(first + ordinal as i64);
                    }
                    next_seq = Some(first + batch.len() as i64);
                }
                let rows: Vec<&messages::Model> = batch.iter().map(|queued| &queued.row).collect();
                // SQLite: one transaction for all three (see
                // `write_batch_in_one_transaction`).
                let outcomes: Vec<WebhookOutcome> = webhooks
                    .iter()
                    .flat_map(|(outcomes, _)| outcomes.iter().copied())
                    .collect();
                let updates = (!counts_apart).then_some(Updates {
                    audience: &audience,
                    webhooks: &outcomes,
                });
                let written = write_with_retries(&db, &rows, updates, deadline, &node).await?;
                drop(rows);
                number_written(&db, &mut batch, written).await;
                Ok(())
            };
            let written = match tokio::time::timeout_at(deadline.into(), attempt).await {
                Ok(written) => written,
                Err(_) => {
                    tracing::error!(
                        rows = batch.len(),
                        "message batch not stored within database.publish_timeout_ms; refused"
                    );
                    Err(Failure::IN_DOUBT)
                }
            };
            // Rows others stored below this batch go to the channels first.
            let first = batch.first().and_then(|queued| queued.row.seq);
            let gap = match (&written, first) {
                (Ok(()), Some(first)) if hands_on && first > cursor + 1 => {
                    read_gap(&db, cursor, first, &refused, publish_timeout).await
                }
                _ => Vec::new(),
            };
            (batch, webhooks, written, next_seq, gap)
        };
        ctx.spawn(write.into_actor(self).map(
            move |(batch, webhooks, written, next_seq, gap), writer, ctx| {
                writer.next_seq = next_seq;
                match &written {
                    Ok(()) => {
                        writer.health.set(true);
                        if !batch.is_empty() {
                            writer.record_commit(&batch, started);
                        }
                    }
                    Err(failure) => {
                        writer.health.set(false);
                        if failure.maybe_stored {
                            writer.note_in_doubt(batch.iter().map(|queued| queued.row.id));
                        }
                    }
                }
                notify_webhooks(webhooks);
                let own = batch.iter().filter_map(|queued| queued.row.seq).max();
                let last = gap
                    .iter()
                    .filter_map(|row| row.seq)
                    .chain(own.filter(|_| written.is_ok()))
                    .max();
                // write_with_retries logged the database's words.
                let result = written.map_err(|_| PublishError::DatabaseUnavailable);
                let persisted = by_channel(batch, result);
                writer.hand_on(gap, persisted, last, ctx);
            },
        ));
    }

    /// Hands `stored` (rows others stored, in `seq` order) and then this
    /// writer's `persisted` batch on to the channels, advances the cursor
    /// to `last`, and lets the next flush run once both are on their way:
    /// straight to the channels when there are no others' rows, else
    /// through the registry, which keeps the two in order per channel.
    fn hand_on(
        &mut self,
        stored: Vec<messages::Model>,
        persisted: Vec<(PersistedTo, Persisted)>,
        last: Option<i64>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(last) = last {
            self.cursor = self.cursor.max(last);
            self.committed.advance(self.cursor);
        }
        let registry = match &self.registry {
            Some(registry) if !stored.is_empty() => registry.clone(),
            _ => {
                for (notify, message) in persisted {
                    notify.do_send(message);
                }
                self.flushing = false;
                return self.after_write(ctx);
            }
        };
        let sent = registry.send(HandOn { stored, persisted });
        ctx.spawn(sent.into_actor(self).map(|sent, writer, ctx| {
            if sent.is_err() {
                tracing::error!("the channel registry is gone; messages not handed on");
            }
            writer.flushing = false;
            writer.after_write(ctx);
        }));
    }

    /// Reads rows others stored above the cursor, between flushes, and
    /// hands them on ([`CatchUp`]).
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        self.catch_up_wanted = false;
        if self.registry.is_none() {
            return;
        }
        self.flushing = true;
        let db = self.db.clone();
        let after = self.cursor;
        let refused = self.refused();
        let timeout = self.publish_timeout;
        let read = async move { rows_in_time(&db, after, None, &refused, timeout).await };
        ctx.spawn(read.into_actor(self).map(|read, writer, ctx| match read {
            Ok(rows) if !rows.is_empty() => {
                let last = rows.last().and_then(|row| row.seq);
                // There may be more: look again after these.
                writer.catch_up_wanted = true;
                writer.hand_on(rows, Vec::new(), last, ctx);
            }
            Ok(_) => {
                writer.flushing = false;
                writer.after_write(ctx);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read messages others stored; retrying");
                writer.flushing = false;
                ctx.run_later(CHECK_INTERVAL, |writer, ctx| {
                    writer.catch_up_wanted = true;
                    writer.schedule(ctx);
                });
                writer.after_write(ctx);
            }
        }));
    }

    /// Ids of refused messages whose rows may exist until deleted: never
    /// handed on.
    fn refused(&self) -> HashSet<Uuid> {
        self.in_doubt.iter().copied().collect()
    }

    /// Refuses the waiting rows whose time is up: they are never written.
    fn refuse_late_rows(&mut self) {
        let now = Instant::now();
        let n_late = self
            .rows
            .iter()
            .take_while(|queued| queued.deadline <= now)
            .count();
        if n_late > 0 {
            tracing::warn!(
                messages = n_late,
                "messages not stored within database.publish_timeout_ms; refused"
            );
            let late: Vec<Queued> = self.rows.drain(..n_late).collect();
            notify_channels(late, Err(PublishError::DatabaseUnavailable));
        }
    }

    /// Counts a committed batch and advances the committed `seq`.
    fn record_commit(&self, batch: &[Queued], started: Instant) {
        if let Some(last) = batch.iter().filter_map(|queued| queued.row.seq).max() {
            self.committed.advance(last);
        }
        METRICS.writer_batches.inc();
        METRICS.writer_rows.add(batch.len() as u64);
        METRICS.writer_batch_rows.observe_value(batch.len() as u64);
        METRICS.writer_commit.observe_micros(started.elapsed());
        let n_webhooks = batch
            .iter()
            .filter(|queued| queued.row.wh_audience_count > 0)
            .count();
        METRICS.webhook_backlog.add(n_webhooks as u64);
    }

    /// Remembers messages refused while their write may have committed.
    fn note_in_doubt(&mut self, ids: impl Iterator<Item = Uuid>) {
        self.in_doubt.extend(ids);
        if self.in_doubt.len() > MAX_IN_DOUBT {
            let n_forgotten = self.in_doubt.len() - MAX_IN_DOUBT;
            self.in_doubt.drain(..n_forgotten);
            tracing::error!(
                messages = n_forgotten,
                "too many refused messages to check: if their writes committed after all, they stay in history"
            );
        }
        METRICS.writer_in_doubt.set(self.in_doubt.len() as u64);
    }

    /// Deletes messages whose write ended in doubt at once; while writes
    /// fail and there are none, probes the database [`CHECK_INTERVAL`]
    /// later (so `/health` reports a failed write for at least that long).
    fn check_database(&mut self, ctx: &mut Context<Self>) {
        if self.checking || self.check_timer.is_some() {
            return;
        }
        if !self.in_doubt.is_empty() {
            self.run_check(ctx);
        } else if !self.health.is_writable() {
            self.check_later(ctx);
        }
    }

    fn check_later(&mut self, ctx: &mut Context<Self>) {
        self.check_timer = Some(ctx.run_later(CHECK_INTERVAL, |writer, ctx| {
            writer.check_timer = None;
            writer.run_check(ctx);
        }));
    }

    /// One delete of writes in doubt, or one probe: the smallest write
    /// that commits, to learn that writes work again. Nothing while a batch
    /// is about to tell the same. After a failure, again in
    /// [`CHECK_INTERVAL`].
    fn run_check(&mut self, ctx: &mut Context<Self>) {
        let probe = self.in_doubt.is_empty();
        if self.checking
            || (probe && (self.health.is_writable() || self.flushing || !self.rows.is_empty()))
        {
            return;
        }
        self.checking = true;
        let db = self.db.clone();
        let ids: Vec<Uuid> = self
            .in_doubt
            .iter()
            .take(MAX_ROWS_PER_INSERT)
            .copied()
            .collect();
        let check = async move {
            if probe {
                retention::probe_write(&db).await.map(|()| 0)
            } else {
                queries::delete_unacknowledged(&db, &ids).await
            }
        };
        ctx.spawn(check.into_actor(self).map(move |checked, writer, ctx| {
            writer.checking = false;
            match checked {
                Ok(deleted) => {
                    writer.health.set(true);
                    if !probe {
                        let n_checked = writer.in_doubt.len().min(MAX_ROWS_PER_INSERT);
                        writer.in_doubt.drain(..n_checked);
                        METRICS.writer_in_doubt.set(writer.in_doubt.len() as u64);
                        if deleted > 0 {
                            tracing::warn!(
                                messages = deleted,
                                "deleted refused messages whose write had committed after all"
                            );
                        }
                        writer.run_check(ctx);
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "database still unavailable");
                    writer.check_later(ctx);
                }
            }
        }));
    }

    /// Writes waiting audience counts in their own statement, one such
    /// write at a time (`counts_apart`). They cannot fail a batch: a
    /// failure is logged.
    fn write_counts(&mut self, ctx: &mut Context<Self>) {
        if self.counting || !self.has_updates() {
            return;
        }
        let (audience, webhooks) = self.take_updates();
        self.counting = true;
        let db = self.db.clone();
        let write = async move {
            if let Err(err) = queries::add_audience(&db, &audience).await {
                tracing::error!(error = %err, "could not record audience counts");
            }
            let outcomes: Vec<WebhookOutcome> = webhooks
                .iter()
                .flat_map(|(outcomes, _)| outcomes.iter().copied())
                .collect();
            // Idempotent, so retried: a pooled connection can die under it
            // (one made on an HTTP worker's runtime, at shutdown), and the
            // next attempt gets another.
            for attempt in 0..3 {
                match webhook_queries::finish(&db, &outcomes).await {
                    Ok(()) => break,
                    Err(err) if attempt < 2 => {
                        tracing::warn!(error = %err, "could not record webhook outcomes; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "could not record webhook outcomes; they stay in the backlog");
                    }
                }
            }
            webhooks
        };
        ctx.spawn(write.into_actor(self).map(|webhooks, writer, ctx| {
            writer.counting = false;
            notify_webhooks(webhooks);
            writer.after_write(ctx);
        }));
    }

    /// Takes the waiting audience counts and webhook outcomes, up to one
    /// statement's worth of each.
    fn take_updates(&mut self) -> (Vec<(Uuid, i32)>, Vec<Finished>) {
        let take = self.audience.len().min(MAX_ROWS_PER_INSERT);
        let audience = self.audience.drain(..take).collect();
        let mut n_outcomes = 0;
        let take = self
            .webhooks
            .iter()
            .take_while(|(outcomes, _)| {
                n_outcomes += outcomes.len();
                n_outcomes <= MAX_ROWS_PER_INSERT
            })
            .count()
            .max(1)
            .min(self.webhooks.len());
        let webhooks = self.webhooks.drain(..take).collect();
        (audience, webhooks)
    }

    /// A write finished: release drain waiters once idle, start the next,
    /// undo writes in doubt.
    fn after_write(&mut self, ctx: &mut Context<Self>) {
        if self.log_start_over.as_ref().is_some_and(LogStartOver::take) {
            return self.let_log_start_over(ctx);
        }
        if self.is_idle() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        self.schedule(ctx);
        self.check_database(ctx);
    }

    /// A passive checkpoint between two batches: nothing is written while
    /// it copies what came since the checkpointer's last one, so the next
    /// batch finds the log all copied and starts it over.
    fn let_log_start_over(&mut self, ctx: &mut Context<Self>) {
        self.flushing = true;
        let db = self.db.clone();
        let copy = async move { checkpoint::passive(&db).await };
        ctx.spawn(copy.into_actor(self).map(|copied, writer, ctx| {
            match copied {
                Ok(done) => tracing::debug!(?done, "WAL checkpoint between batches"),
                Err(err) => tracing::warn!(error = %err, "WAL checkpoint between batches failed"),
            }
            writer.flushing = false;
            writer.after_write(ctx);
        }));
    }
}

/// Why a batch was not stored.
#[derive(Debug)]
struct Failure {
    /// Whether an attempt may have committed though no answer said so: its
    /// connection broke mid-statement, or the deadline cut it off.
    maybe_stored: bool,
}

impl Failure {
    /// Abandoned at the deadline, or answered in a way that does not say.
    const IN_DOUBT: Failure = Failure { maybe_stored: true };

    /// Answered with an error: nothing was stored.
    fn refused(_: PersistenceError) -> Failure {
        Failure {
            maybe_stored: false,
        }
    }
}

/// Whether a failed attempt may still have committed. SQLite reports
/// every failure after rolling back; on PostgreSQL an error the database
/// answered with, a connection never obtained, or a statement that came
/// too late stored nothing, but a connection that broke mid-statement
/// leaves its outcome unknown.
fn may_have_committed(db: &DatabaseConnection, err: &PersistenceError) -> bool {
    use sea_orm::{sqlx, DbErr, RuntimeErr};
    if db.get_database_backend() == DbBackend::Sqlite {
        return false;
    }
    match err {
        PersistenceError::Database(
            DbErr::ConnectionAcquire(_)
            | DbErr::Conn(RuntimeErr::SqlxError(sqlx::Error::PoolTimedOut)),
        ) => false,
        PersistenceError::Database(err) => super::database_error(err).is_none(),
        PersistenceError::TooLate | PersistenceError::Duplicate | PersistenceError::NotFound => {
            false
        }
    }
}

/// Writes `rows` (and their webhook backlog entries), with audience counts
/// and finished webhooks in the same transaction when given (SQLite),
/// retrying failures while `deadline` leaves time. PostgreSQL statements
/// carry the deadline and store nothing once it passed, and notify the
/// other nodes, naming this one (`node`).
async fn write_with_retries(
    db: &DatabaseConnection,
    rows: &[&messages::Model],
    updates: Option<Updates<'_>>,
    deadline: Instant,
    node: &str,
) -> Result<Written, Failure> {
    if rows.is_empty()
        && updates.is_none_or(|updates| updates.audience.is_empty() && updates.webhooks.is_empty())
    {
        return Ok(Written::Numbered);
    }
    let stored_before = wall_clock(deadline);
    let mut attempt = 0;
    let mut maybe_stored = false;
    loop {
        let written = match updates {
            Some(updates) => {
                super::sqlite_batch::write(db, rows, updates.audience, updates.webhooks)
                    .await
                    .map(|()| Written::Numbered)
            }
            None => queries::insert_batch_with_webhooks(db, rows, stored_before, node)
                .await
                .map(|first| first.map_or(Written::Numbered, Written::From)),
        };
        let err = match written {
            Ok(written) => return Ok(written),
            Err(err) => err,
        };
        // After an attempt that may have committed, a duplicate id means
        // it did; on the first attempt it is a real error.
        if matches!(err, PersistenceError::Duplicate) && maybe_stored {
            return Ok(Written::Earlier);
        }
        maybe_stored |= may_have_committed(db, &err);
        let failure = Failure { maybe_stored };
        if let PersistenceError::Duplicate = err {
            tracing::error!(error = %err, rows = rows.len(), "message batch has a duplicate id; not stored");
            return Err(failure);
        }
        let delay = RETRY_DELAYS_MS
            .get(attempt)
            .map(|ms| Duration::from_millis(*ms))
            .filter(|delay| Instant::now() + *delay < deadline);
        let Some(delay) = delay else {
            tracing::error!(error = %err, rows = rows.len(), "message batch failed; messages refused, not stored");
            return Err(failure);
        };
        tracing::warn!(error = %err, attempt, rows = rows.len(), "message batch failed; retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// [`hand_on::rows_to_hand_on`], given up after `timeout`: rows that come
/// to the writer meanwhile wait behind the read, and must still be stored
/// or refused by their deadline when the database stops answering (a
/// network partition).
async fn rows_in_time(
    db: &DatabaseConnection,
    after: i64,
    before: Option<i64>,
    refused: &HashSet<Uuid>,
    timeout: Duration,
) -> Result<Vec<messages::Model>, PersistenceError> {
    tokio::time::timeout(
        timeout,
        hand_on::rows_to_hand_on(db, after, before, refused),
    )
    .await
    .unwrap_or_else(|_| {
        Err(PersistenceError::Database(sea_orm::DbErr::Custom(
            "no answer within database.publish_timeout_ms".into(),
        )))
    })
}

/// The rows between the cursor and a batch that just committed from
/// `first`: all committed (their numbers were given under the lock the
/// batch then took). A failure (or no answer within `timeout`) is retried
/// a little; past that the batch goes on without them (logged), as
/// holding a durable message back would not bring them either.
async fn read_gap(
    db: &DatabaseConnection,
    cursor: i64,
    first: i64,
    refused: &HashSet<Uuid>,
    timeout: Duration,
) -> Vec<messages::Model> {
    for delay_ms in [0, 50, 200] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        match rows_in_time(db, cursor, Some(first), refused, timeout).await {
            Ok(rows) => return rows,
            Err(err) => {
                tracing::warn!(error = %err, cursor, first, "cannot read the messages before a batch; retrying");
            }
        }
    }
    tracing::error!(
        cursor,
        first,
        "messages stored by others before this batch are not delivered on this node"
    );
    Vec::new()
}

/// `deadline` on the wall clock, as the database compares it.
fn wall_clock(deadline: Instant) -> DateTime<Utc> {
    let left = deadline.saturating_duration_since(Instant::now());
    Utc::now() + chrono::Duration::from_std(left).unwrap_or(chrono::Duration::zero())
}

/// How a batch's rows got their `seq`.
enum Written {
    /// Before the write (SQLite), or there were no rows.
    Numbered,
    /// By the INSERT, from this one on, in batch order (PostgreSQL).
    From(i64),
    /// By an attempt that seemed to fail but committed: read them back.
    Earlier,
}

/// Gives the batch's rows the `seq` the database gave them. The rows are
/// stored whatever happens here: a number that cannot be read back is left
/// unknown (logged), never turned into a failed publish.
async fn number_written(db: &DatabaseConnection, batch: &mut [Queued], written: Written) {
    match written {
        Written::Numbered => {}
        Written::From(first) => {
            for (ordinal, queued) in batch.iter_mut().enumerate() {
                queued.row.seq = Some(first + ordinal as i64);
            }
        }
        Written::Earlier => {
            let ids: Vec<Uuid> = batch.iter().map(|queued| queued.row.id).collect();
            match queries::seqs_of(db, &ids).await {
                Ok(seqs) => {
                    for queued in batch.iter_mut() {
                        queued.row.seq = seqs.get(&queued.row.id).copied();
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "batch stored, but its sequence numbers could not be read");
                }
            }
        }
    }
}

/// Tells each channel about its messages of the batch, in order.
fn notify_channels(batch: Vec<Queued>, result: Result<(), PublishError>) {
    for (notify, message) in by_channel(batch, result) {
        notify.do_send(message);
    }
}

/// The batch's outcome as one [`Persisted`] per channel, ids in order.
fn by_channel(
    batch: Vec<Queued>,
    result: Result<(), PublishError>,
) -> Vec<(PersistedTo, Persisted)> {
    type Numbered = (PersistedTo, Vec<Uuid>, Vec<Option<i64>>);
    let mut by_channel: HashMap<String, Numbered> = HashMap::new();
    let ok = result.is_ok();
    for Queued { row, notify, .. } in batch {
        let entry = by_channel
            .entry(row.channel_name)
            .or_insert_with(|| (notify, Vec::new(), Vec::new()));
        entry.1.push(row.id);
        if ok {
            entry.2.push(row.seq);
        }
    }
    by_channel
        .into_values()
        .map(|(notify, ids, seqs)| {
            let persisted = Persisted {
                ids,
                seqs,
                result: result.clone(),
            };
            (notify, persisted)
        })
        .collect()
}

/// Tells the dispatcher its outcomes are written (or given up on).
fn notify_webhooks(webhooks: Vec<Finished>) {
    for (outcomes, notify) in webhooks {
        notify.do_send(WebhooksRecorded(
            outcomes.iter().map(|outcome| outcome.message_id).collect(),
        ));
    }
}

impl Actor for MessageWriter {
    type Context = Context<Self>;
}

impl Handler<Persist> for MessageWriter {
    type Result = ();

    fn handle(&mut self, persist: Persist, ctx: &mut Context<Self>) {
        self.rows.push_back(Queued {
            row: persist.row,
            notify: persist.notify,
            deadline: Instant::now() + self.publish_timeout,
        });
        self.schedule(ctx);
    }
}

impl Handler<RecordAudience> for MessageWriter {
    type Result = ();

    fn handle(&mut self, RecordAudience(counts): RecordAudience, ctx: &mut Context<Self>) {
        self.audience.extend(counts);
        self.schedule(ctx);
    }
}

impl Handler<RecordWebhooks> for MessageWriter {
    type Result = ();

    fn handle(&mut self, record: RecordWebhooks, ctx: &mut Context<Self>) {
        self.webhooks.push((record.outcomes, record.notify));
        self.schedule(ctx);
    }
}

impl Handler<ConnectRegistry> for MessageWriter {
    type Result = ();

    fn handle(&mut self, ConnectRegistry(registry): ConnectRegistry, ctx: &mut Context<Self>) {
        self.registry = Some(registry);
        // What others stored since the cursor was read at start.
        self.catch_up_wanted = true;
        self.schedule(ctx);
    }
}

impl Handler<CatchUp> for MessageWriter {
    type Result = ();

    fn handle(&mut self, _: CatchUp, ctx: &mut Context<Self>) {
        self.catch_up_wanted = true;
        self.schedule(ctx);
    }
}

impl Handler<Drain> for MessageWriter {
    type Result = actix::ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        if self.is_idle() {
            return Box::pin(async {});
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drain_waiters.push(tx);
        self.schedule(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
