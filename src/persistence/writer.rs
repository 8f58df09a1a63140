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

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Recipient, SpawnHandle, WrapFuture,
};
use entity::messages;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use uuid::Uuid;

use super::webhooks::{self as webhook_queries, WebhookOutcome};
use super::{messages as queries, PersistenceError};
use crate::publish::PublishError;

/// Most rows in one INSERT, under SQLite's bound-parameter limit.
const MAX_ROWS_PER_INSERT: usize = 1000;
/// Retries of a failed batch before its messages are reported lost.
const RETRY_DELAYS_MS: [u64; 3] = [50, 200, 1000];

/// Persist one message, then tell `notify`.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Persist {
    /// The row, with its id and timestamp already set.
    pub row: messages::Model,
    /// The channel that waits for it.
    pub notify: Recipient<Persisted>,
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
    /// [`PublishError::Storage`] when the batch could not be written; the
    /// writer has logged why.
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

/// The group-commit writer.
pub struct MessageWriter {
    db: DatabaseConnection,
    batch_size: usize,
    batch_window: Duration,
    /// Rows waiting for the next flush, in arrival order.
    rows: Vec<(messages::Model, Recipient<Persisted>)>,
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
    /// Callers of [`Drain`] waiting for the queues to empty.
    drain_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// SQLite: the `seq` of the next row, read from the database before the
    /// first batch. The writer is SQLite's only writer and flushes one batch
    /// at a time, so numbering rows as they are flushed is commit order.
    /// (PostgreSQL numbers rows in the INSERT itself.)
    next_seq: Option<i64>,
    /// Advanced after each commit.
    committed: CommittedSeq,
}

impl MessageWriter {
    /// A writer over `db` with the given batch bounds, that advances
    /// `committed`.
    pub fn new(
        db: DatabaseConnection,
        batch_size: usize,
        batch_window: Duration,
        committed: CommittedSeq,
    ) -> Self {
        MessageWriter {
            committed,
            counts_apart: db.get_database_backend() != DbBackend::Sqlite,
            db,
            batch_size: batch_size.clamp(1, MAX_ROWS_PER_INSERT),
            batch_window,
            rows: Vec::new(),
            audience: Vec::new(),
            webhooks: Vec::new(),
            flushing: false,
            counting: false,
            window_timer: None,
            drain_waiters: Vec::new(),
            next_seq: None,
        }
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

    /// Flushes now if a batch is full (or a drain waits), else makes sure
    /// the window timer runs.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.counts_apart {
            self.write_counts(ctx);
        }
        let counts_waiting = !self.counts_apart && self.has_updates();
        if self.flushing || (self.rows.is_empty() && !counts_waiting) {
            return;
        }
        if self.rows.len() >= self.batch_size || !self.drain_waiters.is_empty() {
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
        let take = self.rows.len().min(self.batch_size);
        let mut batch: Vec<_> = self.rows.drain(..take).collect();
        let (audience, webhooks) = if self.counts_apart {
            (Vec::new(), Vec::new())
        } else {
            self.take_updates()
        };
        if batch.is_empty() && audience.is_empty() && webhooks.is_empty() {
            return;
        }
        self.flushing = true;
        let db = self.db.clone();
        let counts_apart = self.counts_apart;
        let next_seq = self.next_seq;
        let started = std::time::Instant::now();
        let write = async move {
            let next_seq = if counts_apart {
                Ok(None)
            } else {
                number_rows(&db, &mut batch, next_seq).await.map(Some)
            };
            let rows: Vec<&messages::Model> = batch.iter().map(|(row, _)| row).collect();
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
            let (inserted, next_seq) = match next_seq {
                Ok(next_seq) => (write_with_retries(&db, &rows, updates).await, next_seq),
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the last message sequence number; batch not stored");
                    (Err(err), None)
                }
            };
            drop(rows);
            let inserted = match inserted {
                Ok(written) => {
                    number_written(&db, &mut batch, written).await;
                    Ok(())
                }
                Err(err) => Err(err),
            };
            (batch, webhooks, inserted, next_seq)
        };
        ctx.spawn(write.into_actor(self).map(
            move |(batch, webhooks, inserted, next_seq), writer, ctx| {
                writer.flushing = false;
                writer.next_seq = next_seq;
                if inserted.is_ok() && !batch.is_empty() {
                    if let Some(last) = batch.iter().filter_map(|(row, _)| row.seq).max() {
                        writer.committed.advance(last);
                    }
                    let metrics = &crate::metrics::METRICS;
                    metrics.writer_batches.inc();
                    metrics.writer_rows.add(batch.len() as u64);
                    metrics.writer_batch_rows.observe_value(batch.len() as u64);
                    metrics.writer_commit.observe_micros(started.elapsed());
                    let n_webhooks = batch
                        .iter()
                        .filter(|(row, _)| row.wh_audience_count > 0)
                        .count();
                    metrics.webhook_backlog.add(n_webhooks as u64);
                }
                // write_with_retries logged the database's words.
                notify_channels(batch, inserted.map_err(|_| PublishError::Storage));
                notify_webhooks(webhooks);
                writer.after_write(ctx);
            },
        ));
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
            if let Err(err) =
                queries::set_counts(&db, messages::Column::WsAudienceCount, &audience).await
            {
                tracing::error!(error = %err, "could not record audience counts");
            }
            let outcomes: Vec<WebhookOutcome> = webhooks
                .iter()
                .flat_map(|(outcomes, _)| outcomes.iter().copied())
                .collect();
            if let Err(err) = webhook_queries::finish(&db, &outcomes).await {
                tracing::error!(error = %err, "could not record webhook outcomes; they stay in the backlog");
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

    /// A write finished: release drain waiters once idle, start the next.
    fn after_write(&mut self, ctx: &mut Context<Self>) {
        if self.is_idle() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        self.schedule(ctx);
    }
}

/// SQLite: gives the batch's rows their `seq`, after `next` or, before the
/// first batch, after the highest stored. Returns the next one. A batch
/// that then fails leaves a gap, never a repeat.
async fn number_rows(
    db: &DatabaseConnection,
    batch: &mut [(messages::Model, Recipient<Persisted>)],
    next: Option<i64>,
) -> Result<i64, PersistenceError> {
    let mut next = match next {
        Some(next) => next,
        None => queries::max_seq(db).await?.unwrap_or(0) + 1,
    };
    for (row, _) in batch {
        row.seq = Some(next);
        next += 1;
    }
    Ok(next)
}

/// Writes `rows` (and their webhook backlog entries), with audience counts
/// and finished webhooks in the same transaction when given (SQLite),
/// retrying failures.
async fn write_with_retries(
    db: &DatabaseConnection,
    rows: &[&messages::Model],
    updates: Option<Updates<'_>>,
) -> Result<Written, PersistenceError> {
    if rows.is_empty()
        && updates.is_none_or(|updates| updates.audience.is_empty() && updates.webhooks.is_empty())
    {
        return Ok(Written::Numbered);
    }
    let mut attempt = 0;
    loop {
        let written = match updates {
            Some(updates) => queries::write_batch_in_one_transaction(
                db,
                rows,
                updates.audience,
                updates.webhooks,
            )
            .await
            .map(|()| Written::Numbered),
            None => queries::insert_batch_with_webhooks(db, rows)
                .await
                .map(|first| first.map_or(Written::Numbered, Written::From)),
        };
        match written {
            Ok(written) => return Ok(written),
            // After a failed attempt, a duplicate id means that attempt
            // committed after all; on the first attempt it is a real error.
            Err(PersistenceError::Duplicate) if attempt > 0 => return Ok(Written::Earlier),
            Err(err @ PersistenceError::Duplicate) => {
                tracing::error!(error = %err, rows = rows.len(), "message batch has a duplicate id; not stored");
                return Err(err);
            }
            Err(err) if attempt < RETRY_DELAYS_MS.len() => {
                tracing::warn!(error = %err, attempt, rows = rows.len(), "message batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(RETRY_DELAYS_MS[attempt])).await;
                attempt += 1;
            }
            Err(err) => {
                tracing::error!(error = %err, rows = rows.len(), "message batch failed; messages not stored");
                return Err(err);
            }
        }
    }
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
async fn number_written(
    db: &DatabaseConnection,
    batch: &mut [(messages::Model, Recipient<Persisted>)],
    written: Written,
) {
    match written {
        Written::Numbered => {}
        Written::From(first) => {
            for (ordinal, (row, _)) in batch.iter_mut().enumerate() {
                row.seq = Some(first + ordinal as i64);
            }
        }
        Written::Earlier => {
            let ids: Vec<Uuid> = batch.iter().map(|(row, _)| row.id).collect();
            match queries::seqs_of(db, &ids).await {
                Ok(seqs) => {
                    for (row, _) in batch.iter_mut() {
                        row.seq = seqs.get(&row.id).copied();
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
fn notify_channels(
    batch: Vec<(messages::Model, Recipient<Persisted>)>,
    result: Result<(), PublishError>,
) {
    type Numbered = (Recipient<Persisted>, Vec<Uuid>, Vec<Option<i64>>);
    let mut by_channel: HashMap<String, Numbered> = HashMap::new();
    let ok = result.is_ok();
    for (row, notify) in batch {
        let entry = by_channel
            .entry(row.channel_name)
            .or_insert_with(|| (notify, Vec::new(), Vec::new()));
        entry.1.push(row.id);
        if ok {
            entry.2.push(row.seq);
        }
    }
    for (notify, ids, seqs) in by_channel.into_values() {
        notify.do_send(Persisted {
            ids,
            seqs,
            result: result.clone(),
        });
    }
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
        self.rows.push((persist.row, persist.notify));
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
