//! Message history: batched inserts and count updates for the pipeline,
//! listing, clearing and statistics for the REST API.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use entity::messages::{self, Column, Entity as Messages};
use sea_orm::sea_query::{Alias, Expr, Order};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Select, Statement, TransactionTrait,
};
use uuid::Uuid;

use super::PersistenceError;

/// Filters shared by listing and statistics.
#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    /// Only messages of this channel.
    pub channel_id: Option<Uuid>,
    /// Only messages of this event.
    pub event_name: Option<String>,
    /// Only messages created at or after this instant.
    pub since: Option<DateTime<Utc>>,
}

impl MessageFilter {
    fn apply(&self, mut select: Select<Messages>) -> Select<Messages> {
        if let Some(channel_id) = self.channel_id {
            select = select.filter(Column::ChannelId.eq(channel_id));
        }
        if let Some(event_name) = &self.event_name {
            select = select.filter(Column::EventName.eq(event_name.as_str()));
        }
        if let Some(since) = self.since {
            select = select.filter(Column::CreatedAt.gte(since));
        }
        select
    }
}

/// Aggregates over the history.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageStats {
    /// Messages matching the filter.
    pub total_messages: i64,
    /// Webhook deliveries that succeeded over those attempted; 0 when none
    /// were attempted.
    pub wh_delivery_rate: f64,
    /// The ten most frequent events with their counts, most frequent first,
    /// ties by name.
    pub top_events: Vec<(String, i64)>,
}

/// Inserts messages in one statement, as history the server wrote (on
/// PostgreSQL numbered like the writer's batches, so the sequencer does not
/// take them for rows published by SQL). Rows keep the ids and timestamps
/// the caller gave them, so a retried batch cannot create a second copy: a
/// repeated id is refused by the primary key.
///
/// # Errors
/// Database failures; [`PersistenceError::Duplicate`] if an id exists.
pub async fn insert_batch<'a>(
    db: &DatabaseConnection,
    batch: impl IntoIterator<Item = &'a messages::Model>,
) -> Result<(), PersistenceError> {
    let rows: Vec<&messages::Model> = batch.into_iter().collect();
    if db.get_database_backend() == DbBackend::Postgres {
        return insert_numbered(db, &rows, false, None, None)
            .await
            .map(|_| ());
    }
    insert_rows(db, rows).await
}

/// The highest `seq` stored (SQLite: the writer numbers on from it).
///
/// # Errors
/// Database failures.
pub async fn max_seq<C: ConnectionTrait>(db: &C) -> Result<Option<i64>, PersistenceError> {
    let max: Option<Option<i64>> = Messages::find()
        .select_only()
        .column_as(Column::Seq.max(), "max")
        .into_tuple()
        .one(db)
        .await?;
    Ok(max.flatten())
}

/// The writer's batch on PostgreSQL: one statement numbers the rows,
/// inserts them, and puts those that have webhook URLs
/// (`wh_audience_count > 0`) in the webhook backlog, so neither the
/// sequence nor durable webhooks cost a round trip.
///
/// `stored_before` is the publish deadline: the statement stores nothing
/// (and answers [`PersistenceError::TooLate`]) if it takes the sequence
/// lock at or after it, so a statement held up on the network or behind
/// the lock cannot store messages whose publishers were already told they
/// failed (ARCHITECTURE.md, "When the database is unavailable").
///
/// # Errors
/// Database failures (nothing is written); [`PersistenceError::Duplicate`]
/// if an id exists; [`PersistenceError::TooLate`].
/// The statement also notifies [`migration::SEQUENCE_CHANNEL`] with
/// `node` (once, at commit), which wakes the other nodes to read it, and
/// makes `node` the owner of the backlog entries (their webhooks are sent
/// by this node alone).
pub async fn insert_batch_with_webhooks(
    db: &DatabaseConnection,
    batch: &[&messages::Model],
    stored_before: DateTime<Utc>,
    node: &str,
) -> Result<Option<i64>, PersistenceError> {
    insert_numbered(db, batch, true, Some(stored_before), Some(node)).await
}

/// PostgreSQL: inserts `rows` numbered in order under the sequence lock
/// (ARCHITECTURE.md, "The message sequence"), and, `with_backlog`, enters
/// those with webhook URLs in the webhook backlog. The lock is taken before
/// the sequence moves (`first` reads `locked`) and is held until the
/// statement commits, so `seq` values become visible in increasing order.
/// Returns the first row's `seq` (the others follow in order; `None` for
/// no rows). With `stored_before`, the statement stores nothing if the
/// lock comes at or after that instant (by the database's clock); with
/// `notify`, it notifies the sequence channel with that payload. The
/// statement's text depends only on the row count and the options, and is
/// built once for each.
async fn insert_numbered(
    db: &DatabaseConnection,
    rows: &[&messages::Model],
    with_backlog: bool,
    stored_before: Option<DateTime<Utc>>,
    notify: Option<&str>,
) -> Result<Option<i64>, PersistenceError> {
    const COLUMNS: &str = "id, event_name, channel_id, channel_name, payload, sender_type, \
                           sender_id, ws_audience_count, wh_audience_count, wh_delivered_count, created_at";
    /// Statement texts by (row count, with backlog, with deadline, with
    /// notification).
    type Texts = std::sync::Mutex<HashMap<(usize, bool, bool, bool), Arc<str>>>;
    static TEXTS: OnceLock<Texts> = OnceLock::new();
    if rows.is_empty() {
        return Ok(None);
    }
    let n = rows.len();
    let sql = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry((n, with_backlog, stored_before.is_some(), notify.is_some()))
        .or_insert_with(|| {
            let mut values = String::with_capacity(n * 64);
            for row in 0..n {
                let first = row * 11 + 1;
                let params: Vec<String> = (first..first + 11).map(|i| format!("${i}")).collect();
                let comma = if row == 0 { "" } else { ", " };
                values.push_str(&format!("{comma}({}, {row})", params.join(", ")));
            }
            // Data-modifying WITH clauses run whether or not the final
            // SELECT reads them.
            // Read once the lock is held, just before the rows go in.
            let mut next_param = n * 11 + 1;
            let in_time = if stored_before.is_some() {
                next_param += 1;
                format!(" WHERE clock_timestamp() < ${}", next_param - 1)
            } else {
                String::new()
            };
            // Owned by the node named in the notification (if any).
            let backlog = if with_backlog {
                let owner = if notify.is_some() { format!("${next_param}::text") } else { "NULL".into() };
                format!(", backlog AS (INSERT INTO webhook_pending (message_id, node) SELECT id, {owner} FROM inserted WHERE wh_audience_count > 0)")
            } else {
                String::new()
            };
            // A plain CTE runs only if read: the final SELECT joins it.
            let (notified, from) = if notify.is_some() {
                (
                    format!(
                        ", notified AS MATERIALIZED (SELECT pg_notify('{}', ${next_param}) FROM first)",
                        migration::SEQUENCE_CHANNEL
                    ),
                    "first, notified",
                )
            } else {
                (String::new(), "first")
            };
            format!(
                "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock({lock})), \
                 first AS MATERIALIZED (SELECT setval('realtime.message_seq', nextval('realtime.message_seq') + {last}) - {last} AS seq FROM locked{in_time}), \
                 inserted AS (INSERT INTO messages ({COLUMNS}, seq) \
                   SELECT {picked}, first.seq + v.ord FROM first, (VALUES {values}) AS v({COLUMNS}, ord) \
                   RETURNING id, wh_audience_count){backlog}{notified} \
                 SELECT seq FROM {from}",
                lock = migration::SEQUENCE_LOCK,
                last = n - 1,
                picked = COLUMNS.split(", ").map(|c| format!("v.{c}")).collect::<Vec<_>>().join(", "),
            )
            .into()
        })
        .clone();
    let first = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql.as_ref(),
            rows.iter()
                .flat_map(|row| {
                    let [values @ .., _seq] = row_values(row);
                    values
                })
                .chain(stored_before.map(sea_orm::Value::from))
                .chain(notify.map(sea_orm::Value::from)),
        ))
        .await
        .map_err(PersistenceError::from_write)?;
    match first {
        Some(first) => Ok(Some(first.try_get_by_index::<i64>(0)?)),
        None if stored_before.is_some() => Err(PersistenceError::TooLate),
        None => Err(PersistenceError::Database(
            sea_orm::DbErr::RecordNotInserted,
        )),
    }
}

/// Deletes the messages `ids`, whose publishers were told they failed
/// though their write may have committed (its answer never came back in
/// time). On PostgreSQL it first takes the sequence lock, so a write of
/// theirs still running commits before the delete looks (writes hold the
/// lock until they commit), and the delete's own statement sees it. Their
/// webhook backlog entries go with them.
///
/// # Errors
/// Database failures; then nothing was deleted.
pub async fn delete_unacknowledged(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<u64, PersistenceError> {
    let txn = db.begin().await?;
    if db.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({})",
            migration::SEQUENCE_LOCK
        ))
        .await?;
    }
    let deleted = Messages::delete_many()
        .filter(Column::Id.is_in(ids.iter().copied()))
        .exec(&txn)
        .await?
        .rows_affected;
    txn.commit().await?;
    Ok(deleted)
}

/// The `seq` of each of `ids` that is stored and numbered (the writer asks
/// after a retry found its batch written by an attempt that seemed to fail).
///
/// # Errors
/// Database failures.
pub async fn seqs_of(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, PersistenceError> {
    let mut seqs = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(MAX_IDS_PER_UPDATE) {
        let rows: Vec<(Uuid, Option<i64>)> = Messages::find()
            .select_only()
            .column(Column::Id)
            .column(Column::Seq)
            .filter(Column::Id.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        seqs.extend(rows.into_iter().filter_map(|(id, seq)| Some((id, seq?))));
    }
    Ok(seqs)
}

/// Stored messages with `seq` above `after` (and below `before`), in `seq`
/// order, at most `limit`: what this node's writer did not write and must
/// still hand to its channels (ARCHITECTURE.md, "The message sequence").
/// One range scan of the `seq` index.
///
/// # Errors
/// Database failures.
pub async fn log_after(
    db: &DatabaseConnection,
    after: i64,
    before: Option<i64>,
    limit: u64,
) -> Result<Vec<messages::Model>, PersistenceError> {
    let mut select = Messages::find().filter(Column::Seq.gt(after));
    if let Some(before) = before {
        select = select.filter(Column::Seq.lt(before));
    }
    Ok(select
        .order_by_asc(Column::Seq)
        .limit(limit)
        .all(db)
        .await?)
}

async fn insert_rows<C: ConnectionTrait>(
    conn: &C,
    rows: Vec<&messages::Model>,
) -> Result<(), PersistenceError> {
    if rows.is_empty() {
        return Ok(());
    }
    Messages::insert_many(rows.iter().map(|row| active_model(row)))
        .exec_without_returning(conn)
        .await
        .map_err(PersistenceError::from_write)?;
    Ok(())
}

fn active_model(message: &messages::Model) -> messages::ActiveModel {
    messages::ActiveModel {
        id: Set(message.id),
        event_name: Set(message.event_name.clone()),
        channel_id: Set(message.channel_id),
        channel_name: Set(message.channel_name.clone()),
        payload: Set(message.payload.clone()),
        sender_type: Set(message.sender_type.clone()),
        sender_id: Set(message.sender_id),
        ws_audience_count: Set(message.ws_audience_count),
        wh_audience_count: Set(message.wh_audience_count),
        wh_delivered_count: Set(message.wh_delivered_count),
        created_at: Set(message.created_at),
        seq: Set(message.seq),
    }
}

/// The text of the writer's INSERT of `n_rows` rows (a power of two) on
/// SQLite: the entity's columns in its order, then the webhook backlog
/// mark (`wh_pending`, SQLite's own column, so not in the entity). Written
/// once per size; later batches only bind their values (building the text
/// again for every batch was ~10% of the publish profile).
pub(super) fn sqlite_insert_text(n_rows: usize) -> &'static str {
    static TEXTS: [OnceLock<String>; usize::BITS as usize] =
        [const { OnceLock::new() }; usize::BITS as usize];
    debug_assert!(n_rows.is_power_of_two());
    TEXTS[n_rows.trailing_zeros() as usize].get_or_init(|| {
        let columns: Vec<String> = <Column as sea_orm::Iterable>::iter()
            .map(|column| format!("\"{}\"", sea_orm::IdenStatic::as_str(&column)))
            .chain(["\"wh_pending\"".to_owned()])
            .collect();
        let row = format!("({})", vec!["?"; columns.len()].join(", "));
        format!(
            "INSERT INTO \"messages\" ({}) VALUES {}",
            columns.join(", "),
            vec![row; n_rows].join(", ")
        )
    })
}

/// A row's values in the entity's column order.
fn row_values(message: &messages::Model) -> [sea_orm::Value; 12] {
    [
        message.id.into(),
        message.event_name.clone().into(),
        message.channel_id.into(),
        message.channel_name.clone().into(),
        message.payload.clone().into(),
        message.sender_type.clone().into(),
        message.sender_id.into(),
        message.ws_audience_count.into(),
        message.wh_audience_count.into(),
        message.wh_delivered_count.into(),
        message.created_at.into(),
        message.seq.into(),
    ]
}

/// How many rows (or ids) each statement takes for `n` of them: the powers
/// of two that add up to `n` (the bits of `n`), largest first, so that only
/// a few distinct statements are ever prepared.
pub(super) fn statement_sizes(n: usize) -> Vec<usize> {
    (0..usize::BITS)
        .rev()
        .map(|bit| 1usize << bit)
        .filter(|size| n & size != 0)
        .collect()
}

/// Adds this node's audience to `ws_audience_count` of many messages (each
/// node that delivers a message adds its own, so the count is the sum over
/// nodes). Messages delivered together share their count, so the ids are
/// grouped by value and each group is one `UPDATE … WHERE id IN (…)`
/// (primary-key lookups; a `CASE` over hundreds of ids made the database
/// compare every row with every branch). Returns how many rows changed.
///
/// # Errors
/// Database failures.
pub async fn add_audience(
    db: &DatabaseConnection,
    counts: &[(Uuid, i32)],
) -> Result<u64, PersistenceError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return update_counts(db, Column::WsAudienceCount, counts, Count::Add).await;
    }
    // Every node adds to the same rows at once: each statement locks its
    // rows in id order (so two nodes' statements cannot deadlock), and one
    // that lost a deadlock anyway (against another kind of write) was
    // rolled back whole, so it is simply run again.
    let mut changed = 0;
    for (count, ids) in by_count(counts) {
        for chunk in ids.chunks(MAX_IDS_PER_UPDATE) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "UPDATE messages m SET ws_audience_count = m.ws_audience_count + $1
                   FROM (SELECT id FROM messages WHERE id IN ({}) ORDER BY id FOR UPDATE) AS locked
                  WHERE m.id = locked.id",
                placeholders.join(", ")
            );
            let values = || {
                std::iter::once(sea_orm::Value::from(count))
                    .chain(chunk.iter().map(|id| sea_orm::Value::from(*id)))
                    .collect::<Vec<_>>()
            };
            let mut attempt = 0;
            loop {
                let result = db
                    .execute(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        sql.as_str(),
                        values(),
                    ))
                    .await;
                match result {
                    Ok(result) => {
                        changed += result.rows_affected();
                        break;
                    }
                    Err(err) if attempt < 3 && is_deadlock(&err) => attempt += 1,
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    Ok(changed)
}

/// Whether PostgreSQL aborted the statement to break a deadlock.
fn is_deadlock(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{sqlx, DbErr, RuntimeErr};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(err)))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(err))) => {
            err.code().as_deref() == Some("40P01")
        }
        _ => false,
    }
}

/// How [`update_counts`] writes a count.
#[derive(Clone, Copy)]
pub(super) enum Count {
    /// The count is the value (webhook outcomes, decided once).
    Set,
    /// The value adds to the count: each node that delivers a message adds
    /// its own audience.
    Add,
}

pub(super) async fn update_counts<C: ConnectionTrait>(
    conn: &C,
    column: Column,
    counts: &[(Uuid, i32)],
    how: Count,
) -> Result<u64, PersistenceError> {
    let mut changed = 0;
    for (count, ids) in by_count(counts) {
        for chunk in ids.chunks(MAX_IDS_PER_UPDATE) {
            let value = match how {
                Count::Set => Expr::value(count),
                Count::Add => Expr::col(column).add(count),
            };
            let result = Messages::update_many()
                .col_expr(column, value)
                .filter(Column::Id.is_in(chunk.iter().copied()))
                .exec(conn)
                .await?;
            changed += result.rows_affected;
        }
    }
    Ok(changed)
}

/// The ids of `counts` grouped by count: one statement sets (or adds) the
/// same value to all of a group.
pub(super) fn by_count(counts: &[(Uuid, i32)]) -> BTreeMap<i32, Vec<Uuid>> {
    let mut groups: BTreeMap<i32, Vec<Uuid>> = BTreeMap::new();
    for (id, count) in counts {
        groups.entry(*count).or_default().push(*id);
    }
    groups
}

/// Most ids bound in one `IN (…)`, under SQLite's parameter limit.
pub(super) const MAX_IDS_PER_UPDATE: usize = 1000;

/// The messages with these ids (those that still exist), in no order.
///
/// # Errors
/// Database failures.
pub async fn by_ids(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<Vec<messages::Model>, PersistenceError> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(MAX_IDS_PER_UPDATE) {
        rows.extend(
            Messages::find()
                .filter(Column::Id.is_in(chunk.iter().copied()))
                .all(db)
                .await?,
        );
    }
    Ok(rows)
}

/// Messages matching `filter`, newest first.
///
/// # Errors
/// Database failures.
pub async fn list(
    db: &DatabaseConnection,
    filter: &MessageFilter,
    limit: u64,
    offset: u64,
) -> Result<Vec<messages::Model>, PersistenceError> {
    Ok(filter
        .apply(Messages::find())
        .order_by_desc(Column::CreatedAt)
        .order_by_desc(Column::Id)
        .limit(limit)
        .offset(offset)
        .all(db)
        .await?)
}

/// Deletes up to `limit` messages created before `cutoff`; returns how many.
/// Records how far history was deleted, in the same transaction (a
/// recovery must not replay across the hole).
///
/// # Errors
/// Database failures.
pub async fn delete_older_than(
    db: &DatabaseConnection,
    cutoff: DateTime<Utc>,
    limit: u64,
) -> Result<u64, PersistenceError> {
    delete_expired(db, cutoff, AgeScope::AllBut(&[]), limit).await
}

/// Which messages an age sweep covers.
#[derive(Clone, Copy, Debug)]
pub enum AgeScope<'a> {
    /// Every message but those of these channels (which have an age limit
    /// of their own).
    AllBut(&'a [Uuid]),
    /// The messages of one channel.
    Channel(Uuid),
}

/// Deletes up to `limit` messages of `scope` created before `cutoff`;
/// returns how many. Records how far history was deleted, in the same
/// transaction.
///
/// # Errors
/// Database failures.
pub async fn delete_expired(
    db: &DatabaseConnection,
    cutoff: DateTime<Utc>,
    scope: AgeScope<'_>,
    limit: u64,
) -> Result<u64, PersistenceError> {
    let mut expired = sea_orm::sea_query::Query::select()
        .column(Column::Id)
        .from(Messages)
        .and_where(Expr::col(Column::CreatedAt).lt(cutoff))
        .limit(limit)
        .to_owned();
    match scope {
        AgeScope::AllBut([]) => {}
        AgeScope::AllBut(except) => {
            expired.and_where(
                Expr::col(Column::ChannelId)
                    .is_null()
                    .or(Expr::col(Column::ChannelId).is_not_in(except.iter().copied())),
            );
        }
        AgeScope::Channel(id) => {
            expired.and_where(Expr::col(Column::ChannelId).eq(id));
        }
    }
    let txn = db.begin().await?;
    super::write_lock_first(&txn).await?;
    let deleted_through: Option<Option<i64>> = Messages::find()
        .select_only()
        .column_as(Column::Seq.max(), "max")
        .filter(Column::Id.in_subquery(expired.clone()))
        .into_tuple()
        .one(&txn)
        .await?;
    let result = Messages::delete_many()
        .filter(Column::Id.in_subquery(expired))
        .exec(&txn)
        .await?;
    if let Some(seq) = deleted_through.flatten() {
        super::recovery::record_deletion(&txn, None, seq).await?;
    }
    txn.commit().await?;
    Ok(result.rows_affected)
}

/// Keeps at most `max` numbered messages of each resolved name of channel
/// `channel_id`, deleting older ones `limit` at a time; returns how many it
/// deleted. Records how far each name's history was deleted.
///
/// # Errors
/// Database failures.
pub async fn delete_beyond_count(
    db: &DatabaseConnection,
    channel_id: Uuid,
    max: i64,
    limit: u64,
) -> Result<u64, PersistenceError> {
    let backend = db.get_database_backend();
    let crowded = db
        .query_all(Statement::from_sql_and_values(
            backend,
            "SELECT channel_name FROM messages WHERE channel_id = $1 AND seq > 0
             GROUP BY channel_name HAVING count(*) > $2",
            [channel_id.into(), max.into()],
        ))
        .await?;
    let mut deleted = 0;
    for row in crowded {
        let name: String = row.try_get("", "channel_name")?;
        // The newest message that goes: everything up to it does.
        let Some(threshold) = db
            .query_one(Statement::from_sql_and_values(
                backend,
                "SELECT seq FROM messages WHERE channel_name = $1 AND seq > 0
                 ORDER BY seq DESC LIMIT 1 OFFSET $2",
                [name.clone().into(), max.into()],
            ))
            .await?
        else {
            continue;
        };
        let threshold: i64 = threshold.try_get("", "seq")?;
        loop {
            let txn = db.begin().await?;
            let n = txn
                .execute(Statement::from_sql_and_values(
                    backend,
                    "DELETE FROM messages WHERE id IN (
                       SELECT id FROM messages WHERE channel_name = $1 AND seq > 0 AND seq <= $2
                        LIMIT $3)",
                    [name.clone().into(), threshold.into(), (limit as i64).into()],
                ))
                .await?
                .rows_affected();
            super::recovery::record_deletion(&txn, Some(&name), threshold).await?;
            txn.commit().await?;
            deleted += n;
            if n < limit {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Deletes every message and returns how many there were; records that
/// history was deleted up to the highest `seq` there was.
///
/// # Errors
/// Database failures.
pub async fn clear(db: &DatabaseConnection) -> Result<u64, PersistenceError> {
    let txn = db.begin().await?;
    if db.get_database_backend() == DbBackend::Postgres {
        // Rows committed while this runs must not slip past the record.
        txn.execute_unprepared("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
            .await?;
    }
    super::write_lock_first(&txn).await?;
    let deleted_through = max_seq(&txn).await?;
    let deleted = Messages::delete_many().exec(&txn).await?.rows_affected;
    if let Some(seq) = deleted_through {
        super::recovery::record_deletion(&txn, None, seq).await?;
    }
    txn.commit().await?;
    Ok(deleted)
}

/// Totals, webhook delivery rate and top events of the messages matching
/// `filter` (its `event_name` is ignored: the top events span all events).
///
/// # Errors
/// Database failures.
pub async fn stats(
    db: &DatabaseConnection,
    filter: &MessageFilter,
) -> Result<MessageStats, PersistenceError> {
    let filter = MessageFilter {
        event_name: None,
        ..filter.clone()
    };
    let totals: Option<(i64, Option<i64>, Option<i64>)> = filter
        .apply(Messages::find())
        .select_only()
        .column_as(Expr::col(Column::Id).count(), "total")
        .column_as(Expr::col(Column::WhAudienceCount).sum(), "audience")
        .column_as(Expr::col(Column::WhDeliveredCount).sum(), "delivered")
        .into_tuple()
        .one(db)
        .await?;
    let (total_messages, audience, delivered) = totals.unwrap_or_default();
    let (audience, delivered) = (audience.unwrap_or(0), delivered.unwrap_or(0));
    let wh_delivery_rate = if audience > 0 {
        delivered as f64 / audience as f64
    } else {
        0.0
    };
    let top_events: Vec<(String, i64)> = filter
        .apply(Messages::find())
        .select_only()
        .column(Column::EventName)
        .column_as(Expr::col(Column::Id).count(), "n")
        .group_by(Column::EventName)
        .order_by(Expr::col(Alias::new("n")), Order::Desc)
        .order_by_asc(Column::EventName)
        .limit(10)
        .into_tuple()
        .all(db)
        .await?;
    Ok(MessageStats {
        total_messages,
        wh_delivery_rate,
        top_events,
    })
}

/// Up to `limit` of `channel`'s numbered messages with `seq` below
/// `before` (all when `None`), newest first: one range scan of the
/// `(channel_name, seq)` index.
///
/// # Errors
/// Database failures.
pub async fn history_page(
    db: &DatabaseConnection,
    channel: &str,
    before: Option<i64>,
    limit: u64,
) -> Result<Vec<messages::Model>, PersistenceError> {
    Ok(Messages::find()
        .filter(Column::ChannelName.eq(channel))
        .filter(Column::Seq.gt(0))
        .filter(Column::Seq.lt(before.unwrap_or(i64::MAX)))
        .order_by_desc(Column::Seq)
        .limit(limit)
        .all(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_sizes_add_up_in_powers_of_two() {
        assert_eq!(statement_sizes(0), Vec::<usize>::new());
        assert_eq!(statement_sizes(13), vec![8, 4, 1]);
        assert_eq!(statement_sizes(512), vec![512]);
        for n in 0..1100 {
            let sizes = statement_sizes(n);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|size| size.is_power_of_two()));
        }
    }
}
