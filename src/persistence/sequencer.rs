//! PostgreSQL only: numbering the messages that SQL stored, and the
//! connection that is told when there are some.
//!
//! Rows inserted by `realtime.publish()` or a direct `INSERT` arrive with a
//! negative `seq` (their arrival order, given by a trigger, which also
//! NOTIFYs [`migration::SEQUENCE_CHANNEL`]). [`number_arrivals`] gives them
//! their real `seq` under the sequence lock, oldest arrival first, and
//! returns them: a row whose transaction commits late is found by a later
//! pass and numbered then, late but never skipped (ARCHITECTURE.md, "The
//! message sequence").

use std::str::FromStr;

use entity::messages::{self, Entity as Messages};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::{DatabaseConnection, DbBackend, EntityTrait, Statement};

use super::PersistenceError;

/// The `application_name` of the listening connection, so an operator (or
/// a test) can find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "realtime-listener";

/// Gives up to `limit` rows stored by SQL their `seq`, in arrival order,
/// sets their `wh_audience_count` to their channel's webhook URLs (none if
/// the channel is gone or disabled) and enters those that have some in the
/// webhook backlog, owned by `node` (the node that hands them to its
/// dispatcher), all in one statement. Returns the rows in `seq` order.
/// Takes the sequence lock only when there is something to number, so an
/// idle poll costs the writer nothing.
///
/// # Errors
/// Database failures; then nothing was numbered.
pub async fn number_arrivals(
    db: &DatabaseConnection,
    limit: u64,
    node: &str,
) -> Result<Vec<messages::Model>, PersistenceError> {
    let sql = format!(
        "WITH locked AS MATERIALIZED (
           SELECT pg_advisory_xact_lock({lock})
            WHERE EXISTS (SELECT 1 FROM messages WHERE seq IS NULL OR seq < 0)),
         todo AS MATERIALIZED (
           SELECT m.id, row_number() OVER (ORDER BY m.seq DESC NULLS FIRST, m.created_at, m.id) AS ord
             FROM messages m, locked
            WHERE m.seq IS NULL OR m.seq < 0
            ORDER BY m.seq DESC NULLS FIRST, m.created_at, m.id
            LIMIT $1),
         first AS MATERIALIZED (
           SELECT setval('realtime.message_seq', nextval('realtime.message_seq') + n - 1) - n + 1 AS seq
             FROM (SELECT count(*) AS n FROM todo) AS counted
            WHERE n > 0),
         numbered AS (
           UPDATE messages m
              SET seq = first.seq + todo.ord - 1,
                  wh_audience_count = COALESCE(
                    (SELECT cardinality(c.webhook_urls) FROM channels c
                      WHERE c.id = m.channel_id AND c.enabled), 0)
             FROM todo, first
            -- Checked again on the row as it is once the lock is held:
            -- another node's sequencer may have numbered it meanwhile.
            WHERE m.id = todo.id AND (m.seq IS NULL OR m.seq < 0)
           RETURNING m.*),
         backlog AS (
           INSERT INTO webhook_pending (message_id, node)
           SELECT id, $2 FROM numbered WHERE wh_audience_count > 0
           ON CONFLICT DO NOTHING)
         SELECT * FROM numbered ORDER BY seq",
        lock = migration::SEQUENCE_LOCK,
    );
    let rows = Messages::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [
                sea_orm::Value::from(limit as i64),
                sea_orm::Value::from(node),
            ],
        ))
        .all(db)
        .await?;
    Ok(rows)
}

/// Opens the dedicated connection that LISTENs for new rows stored by SQL
/// and for policy changes.
/// On its own (the pool's connections are lent out per query); when the
/// connection is lost, [`PgListener::try_recv`] makes it again, LISTENs
/// again, and returns `Ok(None)` so the caller knows to catch up.
///
/// # Errors
/// A malformed URL, or the database cannot be reached.
pub async fn listen(url: &str) -> Result<PgListener, PersistenceError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|err| sea_orm::DbErr::Custom(format!("database.url: {err}")))?
        .application_name(LISTENER_APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let listen = async {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener
            .listen_all([
                migration::SEQUENCE_CHANNEL,
                migration::POLICY_CHANNEL,
                migration::CATALOG_CHANNEL,
                migration::PRESENCE_CHANNEL,
                migration::HANDOVER_CHANNEL,
                migration::EPHEMERAL_CHANNEL,
            ])
            .await?;
        Ok::<_, sea_orm::sqlx::Error>(listener)
    };
    listen
        .await
        .map_err(|err| PersistenceError::Database(sea_orm::DbErr::Custom(err.to_string())))
}
