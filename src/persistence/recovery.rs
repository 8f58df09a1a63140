//! What connection state recovery reads and writes (ARCHITECTURE.md,
//! "Recovery"): the messages a session missed, in `seq` order; the
//! sessions saved at shutdown (`recovery_sessions`); and how far history
//! was ever deleted (`history_deletions`), so a recovery never replays a
//! history with holes.

use entity::messages::{self, Entity as Messages};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, TransactionTrait, Value,
};

use super::PersistenceError;

/// What a session missed: per channel, everything after a `seq`, and
/// single messages sent before the drop but never received whose `seq` is
/// below their channel's point (a channel can deliver a message stored by
/// SQL after a later one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Missed {
    /// `(channel name, after this seq)`.
    pub channels: Vec<(String, i64)>,
    /// Single messages, by `seq`.
    pub extra: Vec<i64>,
}

impl Missed {
    /// `WHERE` text for these messages with `seq > $1`, and its values
    /// (`$1` is `after`).
    fn condition(&self, after: i64) -> (String, Vec<Value>) {
        let mut values: Vec<Value> = vec![after.into()];
        let mut alternatives = Vec::new();
        for (name, floor) in &self.channels {
            values.push(name.clone().into());
            values.push((*floor).into());
            alternatives.push(format!(
                "(channel_name = ${} AND seq > ${})",
                values.len() - 1,
                values.len()
            ));
        }
        if !self.extra.is_empty() {
            let first = values.len() + 1;
            values.extend(self.extra.iter().map(|seq| Value::from(*seq)));
            let params: Vec<String> = (first..=values.len()).map(|i| format!("${i}")).collect();
            alternatives.push(format!("seq IN ({})", params.join(", ")));
        }
        if alternatives.is_empty() {
            alternatives.push("FALSE".into());
        }
        (
            format!("seq > $1 AND ({})", alternatives.join(" OR ")),
            values,
        )
    }
}

/// Up to `limit` of the `missed` messages with `seq > after`, in `seq`
/// order: one range scan of `(channel_name, seq)` per channel.
///
/// # Errors
/// Database failures.
pub async fn missed_page(
    db: &DatabaseConnection,
    missed: &Missed,
    after: i64,
    limit: u64,
) -> Result<Vec<messages::Model>, PersistenceError> {
    let (condition, mut values) = missed.condition(after);
    values.push((limit as i64).into());
    let sql = format!(
        "SELECT * FROM messages WHERE {condition} ORDER BY seq LIMIT ${}",
        values.len()
    );
    Ok(Messages::find()
        .from_raw_sql(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            values,
        ))
        .all(db)
        .await?)
}

/// How many messages `missed` holds, counting at most `limit + 1` (enough
/// to know whether there are more than `limit`).
///
/// # Errors
/// Database failures.
pub async fn count_missed(
    db: &DatabaseConnection,
    missed: &Missed,
    limit: u64,
) -> Result<u64, PersistenceError> {
    let (condition, mut values) = missed.condition(i64::MIN);
    values.push(((limit + 1) as i64).into());
    let sql = format!(
        "SELECT count(*) AS n FROM (SELECT 1 FROM messages WHERE {condition} LIMIT ${}) AS missed",
        values.len()
    );
    let row = db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            values,
        ))
        .await?
        .ok_or(PersistenceError::NotFound)?;
    Ok(row.try_get::<i64>("", "n")?.max(0) as u64)
}

/// How far history was deleted for each of `channels`: the highest `seq`
/// deleted from that channel or from every channel (0 if none). History
/// after it is whole.
///
/// # Errors
/// Database failures.
pub async fn deleted_through(
    db: &DatabaseConnection,
    channels: &[&str],
) -> Result<Vec<i64>, PersistenceError> {
    // Only the rows asked about: a count retention leaves one per name.
    let names: Vec<Value> = std::iter::once(EVERY_CHANNEL)
        .chain(channels.iter().copied())
        .map(Value::from)
        .collect();
    let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let rows = db
        .query_all(Statement::from_sql_and_values(
            db.get_database_backend(),
            format!(
                "SELECT channel_name, deleted_through FROM history_deletions WHERE channel_name IN ({})",
                params.join(", ")
            ),
            names,
        ))
        .await?;
    let mut by_name = std::collections::HashMap::new();
    for row in rows {
        let name: String = row.try_get("", "channel_name")?;
        by_name.insert(name, row.try_get::<i64>("", "deleted_through")?);
    }
    let everywhere = by_name.get(EVERY_CHANNEL).copied().unwrap_or(0);
    Ok(channels
        .iter()
        .map(|name| everywhere.max(by_name.get(*name).copied().unwrap_or(0)))
        .collect())
}

/// The `history_deletions` key of deletions across every channel.
const EVERY_CHANNEL: &str = "";

/// Records that messages of `channel` (`None`: of every channel) up to
/// `seq` may have been deleted.
pub(super) async fn record_deletion<C: ConnectionTrait>(
    conn: &C,
    channel: Option<&str>,
    seq: i64,
) -> Result<(), PersistenceError> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO history_deletions (channel_name, deleted_through) VALUES ($1, $2)
             ON CONFLICT (channel_name) DO UPDATE
             SET deleted_through = GREATEST(history_deletions.deleted_through, EXCLUDED.deleted_through)"
        }
        _ => {
            "INSERT INTO history_deletions (channel_name, deleted_through) VALUES ($1, $2)
             ON CONFLICT (channel_name) DO UPDATE
             SET deleted_through = MAX(history_deletions.deleted_through, excluded.deleted_through)"
        }
    };
    conn.execute(Statement::from_sql_and_values(
        backend,
        sql,
        [channel.unwrap_or(EVERY_CHANNEL).into(), seq.into()],
    ))
    .await?;
    Ok(())
}

/// A session saved for recovery: its private id, when it was saved (Unix
/// milliseconds) and its state as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedSession {
    /// The private session id.
    pub pid: String,
    /// When the connection dropped, in Unix milliseconds.
    pub saved_at_ms: i64,
    /// What recovery needs, as JSON.
    pub state: String,
}

/// Saves `sessions` (replacing any saved under the same pid earlier than
/// it: a late write from a node that was shutting down never replaces the
/// state or the taken mark a later one left), in one transaction.
///
/// # Errors
/// Database failures; nothing is saved then.
pub async fn save_sessions(
    db: &DatabaseConnection,
    sessions: &[SavedSession],
) -> Result<(), PersistenceError> {
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    for session in sessions {
        txn.execute(Statement::from_sql_and_values(
            backend,
            "INSERT INTO recovery_sessions (pid, saved_at_ms, state) VALUES ($1, $2, $3)
             ON CONFLICT (pid) DO UPDATE SET saved_at_ms = excluded.saved_at_ms, state = excluded.state
             WHERE recovery_sessions.saved_at_ms <= excluded.saved_at_ms",
            [
                session.pid.clone().into(),
                session.saved_at_ms.into(),
                session.state.clone().into(),
            ],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// What a taken (or forgotten) session leaves in its row on PostgreSQL:
/// an empty state, dated, so that a late write of an older state is
/// refused ([`save_sessions`]). Deleted with the expired sessions.
const TAKEN: &str = "";

/// Removes and returns the session saved under `pid`, if any. On
/// PostgreSQL, where other nodes may still write it, the row stays as a
/// mark dated `now_ms`.
///
/// # Errors
/// Database failures.
pub async fn take_session(
    db: &DatabaseConnection,
    pid: &str,
    now_ms: i64,
) -> Result<Option<SavedSession>, PersistenceError> {
    let backend = db.get_database_backend();
    let row = if backend == DbBackend::Postgres {
        db.query_one(Statement::from_sql_and_values(
            backend,
            "WITH old AS (SELECT pid, saved_at_ms, state FROM recovery_sessions WHERE pid = $1 FOR UPDATE),
                  marked AS (UPDATE recovery_sessions r SET state = $3, saved_at_ms = GREATEST(r.saved_at_ms, $2)
                               FROM old WHERE r.pid = old.pid)
             SELECT saved_at_ms, state FROM old",
            [pid.into(), now_ms.into(), TAKEN.into()],
        ))
        .await?
    } else {
        db.query_one(Statement::from_sql_and_values(
            backend,
            "DELETE FROM recovery_sessions WHERE pid = $1 RETURNING saved_at_ms, state",
            [pid.into()],
        ))
        .await?
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let state: String = row.try_get("", "state")?;
    if state == TAKEN {
        return Ok(None);
    }
    Ok(Some(SavedSession {
        pid: pid.to_owned(),
        saved_at_ms: row.try_get("", "saved_at_ms")?,
        state,
    }))
}

/// PostgreSQL: asks the other nodes to hand over session `pid` if one of
/// them holds it live ([`migration::HANDOVER_CHANNEL`]).
///
/// # Errors
/// Database failures.
pub async fn request_hand_over(db: &DatabaseConnection, pid: &str) -> Result<(), PersistenceError> {
    db.execute(Statement::from_sql_and_values(
        db.get_database_backend(),
        format!("SELECT pg_notify('{}', $1)", migration::HANDOVER_CHANNEL),
        [pid.into()],
    ))
    .await?;
    Ok(())
}

/// The channel of the message numbered `seq`, if it is in history.
///
/// # Errors
/// Database failures.
pub async fn channel_of(
    db: &DatabaseConnection,
    seq: i64,
) -> Result<Option<String>, PersistenceError> {
    let row = db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT channel_name FROM messages WHERE seq = $1",
            [seq.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get("", "channel_name")?),
        None => None,
    })
}

/// Forgets the sessions saved under `pids` (their clients left for good),
/// leaving the dated mark a taken session leaves (see [`take_session`]).
///
/// # Errors
/// Database failures.
pub async fn forget_sessions(
    db: &DatabaseConnection,
    pids: &[String],
    now_ms: i64,
) -> Result<(), PersistenceError> {
    let marks: Vec<SavedSession> = pids
        .iter()
        .map(|pid| SavedSession {
            pid: pid.clone(),
            saved_at_ms: now_ms,
            state: TAKEN.to_owned(),
        })
        .collect();
    for chunk in marks.chunks(500) {
        save_sessions(db, chunk).await?;
    }
    Ok(())
}

/// Deletes sessions saved before `before_ms` (too old to recover).
///
/// # Errors
/// Database failures.
pub async fn delete_sessions_before(
    db: &DatabaseConnection,
    before_ms: i64,
) -> Result<u64, PersistenceError> {
    Ok(db
        .execute(Statement::from_sql_and_values(
            db.get_database_backend(),
            "DELETE FROM recovery_sessions WHERE saved_at_ms < $1",
            [before_ms.into()],
        ))
        .await?
        .rows_affected())
}
