//! The server processes sharing the database (`nodes`), and which of them
//! sends which webhooks (`webhook_pending.node`). ARCHITECTURE.md, "Several
//! nodes".
//!
//! On PostgreSQL times are the database's (`now()`), so nodes whose clocks
//! disagree still agree on who is late. On SQLite, which one process
//! serves, they are this process's. (`NOT stopping` reads the same on both:
//! SQLite stores the flag as 0 or 1.)

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};

use super::PersistenceError;

/// Another node found at start.
#[derive(Clone, Debug, PartialEq)]
pub struct OtherNode {
    /// Its id.
    pub id: String,
    /// How long ago it last renewed its heartbeat.
    pub silent_for: Duration,
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ago_text(ago: Duration) -> String {
    let ago = chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::zero());
    (Utc::now() - ago).to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn execute(
    db: &DatabaseConnection,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, PersistenceError> {
    Ok(db
        .execute(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            values,
        ))
        .await?
        .rows_affected())
}

/// Enters `node` in the table, and returns the other nodes that are not
/// stopping (on SQLite, a second process on the same file).
///
/// # Errors
/// Database failures.
pub async fn register(
    db: &DatabaseConnection,
    node: &str,
) -> Result<Vec<OtherNode>, PersistenceError> {
    insert(db, node).await?;
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT id, (EXTRACT(EPOCH FROM now() - heartbeat_at) * 1000)::float8 AS silent_ms
               FROM nodes WHERE id <> $1 AND NOT stopping ORDER BY id"
        }
        _ => {
            "SELECT id, (julianday('now') - julianday(heartbeat_at)) * 86400000.0 AS silent_ms
               FROM nodes WHERE id <> $1 AND NOT stopping ORDER BY id"
        }
    };
    let rows = db
        .query_all(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [node.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let silent_ms: f64 = row.try_get("", "silent_ms")?;
            Ok(OtherNode {
                id: row.try_get("", "id")?,
                silent_for: Duration::from_millis(silent_ms.max(0.0) as u64),
            })
        })
        .collect()
}

/// Enters `node` unless it is there (a row that is there but stopping
/// stays stopping). Returns whether a row went in.
async fn insert(db: &DatabaseConnection, node: &str) -> Result<bool, PersistenceError> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => "INSERT INTO nodes (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        _ => {
            "INSERT INTO nodes (id, started_at, heartbeat_at) VALUES ($1, $2, $2)
               ON CONFLICT (id) DO NOTHING"
        }
    };
    let mut values = vec![node.into()];
    if db.get_database_backend() != DbBackend::Postgres {
        values.push(now_text().into());
    }
    Ok(execute(db, sql, values).await? > 0)
}

/// Renews `node`'s heartbeat. Returns `false` when its row was gone (the
/// others took it for dead: it was silent too long) and had to be entered
/// again. A node marked stopping is left as it is.
///
/// # Errors
/// Database failures.
pub async fn heartbeat(db: &DatabaseConnection, node: &str) -> Result<bool, PersistenceError> {
    let updated = match db.get_database_backend() {
        DbBackend::Postgres => {
            execute(
                db,
                "UPDATE nodes SET heartbeat_at = now() WHERE id = $1 AND NOT stopping",
                vec![node.into()],
            )
            .await?
        }
        _ => {
            execute(
                db,
                "UPDATE nodes SET heartbeat_at = $2 WHERE id = $1 AND NOT stopping",
                vec![node.into(), now_text().into()],
            )
            .await?
        }
    };
    Ok(updated > 0 || !insert(db, node).await?)
}

/// A node deleted from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// Its id.
    pub id: String,
    /// It had stopped gracefully (rather than fallen silent).
    pub stopped: bool,
}

/// Deletes the nodes silent for longer than `timeout` and returns them.
/// Several nodes may run it at once: each dead node is returned to one.
///
/// # Errors
/// Database failures.
pub async fn expire(
    db: &DatabaseConnection,
    timeout: Duration,
) -> Result<Vec<Expired>, PersistenceError> {
    let (sql, limit): (&str, Value) = match db.get_database_backend() {
        DbBackend::Postgres => (
            "DELETE FROM nodes WHERE heartbeat_at < now() - $1 * interval '1 millisecond'
             RETURNING id, stopping",
            (timeout.as_millis() as i64).into(),
        ),
        _ => (
            "DELETE FROM nodes WHERE heartbeat_at < $1 RETURNING id, stopping <> 0 AS stopping",
            ago_text(timeout).into(),
        ),
    };
    let rows = db
        .query_all(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [limit],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Expired {
                id: row.try_get("", "id")?,
                stopped: row.try_get("", "stopping")?,
            })
        })
        .collect()
}

/// Records where the other nodes reach `node`'s API.
///
/// # Errors
/// Database failures.
pub async fn set_url(
    db: &DatabaseConnection,
    node: &str,
    url: &str,
) -> Result<(), PersistenceError> {
    execute(
        db,
        "UPDATE nodes SET url = $2 WHERE id = $1",
        vec![node.into(), url.into()],
    )
    .await?;
    Ok(())
}

/// The other live nodes (not stopping) with where their API is, if known.
///
/// # Errors
/// Database failures.
pub async fn peers(
    db: &DatabaseConnection,
    node: &str,
) -> Result<Vec<(String, Option<String>)>, PersistenceError> {
    let rows = db
        .query_all(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT id, url FROM nodes WHERE id <> $1 AND NOT stopping ORDER BY id",
            [node.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "url")?)))
        .collect()
}

/// Whether node `id` is live (in the table and not stopping).
///
/// # Errors
/// Database failures.
pub async fn is_live(db: &DatabaseConnection, id: &str) -> Result<bool, PersistenceError> {
    Ok(db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT 1 AS one FROM nodes WHERE id = $1 AND NOT stopping",
            [id.into()],
        ))
        .await?
        .is_some())
}

/// The ids of the nodes that are neither stopping nor expired, in order.
///
/// # Errors
/// Database failures.
pub async fn live(db: &DatabaseConnection) -> Result<Vec<String>, PersistenceError> {
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM nodes WHERE NOT stopping ORDER BY id",
        ))
        .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<String>("", "id")?))
        .collect()
}

/// Marks `node` as stopping (a graceful shutdown, once its webhook requests
/// ended): its webhook deliveries may be taken over at once, and its row
/// expires after `linger` (its presence members stay that long, in case
/// their clients come back to another node). On SQLite the row goes.
///
/// # Errors
/// Database failures.
pub async fn stop(
    db: &DatabaseConnection,
    node: &str,
    timeout: Duration,
    linger: Duration,
) -> Result<(), PersistenceError> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let backdate = timeout.saturating_sub(linger).as_millis() as i64;
            execute(
                db,
                "UPDATE nodes SET stopping = true,
                   heartbeat_at = now() - $2 * interval '1 millisecond' WHERE id = $1",
                vec![node.into(), backdate.into()],
            )
            .await?
        }
        _ => execute(db, "DELETE FROM nodes WHERE id = $1", vec![node.into()]).await?,
    };
    Ok(())
}

/// Makes `node` the owner of the webhook deliveries nobody sends: those of
/// nodes gone, stopping or never named. Rows another node is claiming at
/// the same moment are skipped (it gets them). Returns how many. SQLite,
/// which one process serves, has no owners: its backlog is all this
/// process's (0).
///
/// # Errors
/// Database failures.
pub async fn claim_webhooks(db: &DatabaseConnection, node: &str) -> Result<u64, PersistenceError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(0);
    }
    let sql = "UPDATE webhook_pending SET node = $1 WHERE message_id IN (
                 SELECT p.message_id FROM webhook_pending p
                  WHERE p.node IS DISTINCT FROM $1
                    AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = p.node AND NOT n.stopping)
                  FOR UPDATE SKIP LOCKED)";
    execute(db, sql, vec![node.into()]).await
}
