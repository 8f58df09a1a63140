//! Everything that touches the database: connecting, migrating, and the
//! queries of the REST API. Outside `entity`, no other module uses sea-orm.
//!
//! # Layout
//! - [`channels`]: channel definitions.
//! - [`checkpoint`]: SQLite: copying the write-ahead log into the database
//!   file off the writer's path.
//! - [`envelope`]: packing items into notification payloads.
//! - [`hand_on`]: handing durable messages to channels in `seq` order.
//! - [`messages`]: history listing, clearing and statistics.
//! - [`nodes`]: the server processes sharing the database, and which
//!   one sends which webhooks.
//! - [`permissions`]: the row-level-security policies of realtime, and
//!   evaluating them on PostgreSQL.
//! - [`presence`]: PostgreSQL: each node's presence members, and their
//!   notifications.
//! - [`policies`]: creating and dropping policies; the SQLite store.
//! - [`recovery`]: missed messages, sessions saved for recovery, and how
//!   far history was deleted.
//! - [`retention`]: the `config` singleton row.
//! - [`sequencer`]: PostgreSQL: numbering rows stored by SQL, and the
//!   connection that LISTENs for them.
//! - [`sweeper`]: the `RetentionSweeper` actor, which deletes expired history.
//! - [`webhooks`]: the durable backlog of webhook deliveries.
//! - [`writer`]: the `MessageWriter` actor, group commit of messages.

pub mod channels;
pub mod checkpoint;
pub mod envelope;
pub mod ephemeral;
pub mod hand_on;
pub mod messages;
pub mod nodes;
pub mod permissions;
pub mod policies;
pub mod presence;
pub mod recovery;
pub mod retention;
pub mod sequencer;
pub mod sqlite_batch;
pub mod sweeper;
pub mod webhooks;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, SqlErr, SqlxPostgresConnector, SqlxSqliteConnector,
};

use crate::config::DatabaseSettings;

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A unique column already holds the value.
    #[error("already exists")]
    Duplicate,
    /// A write reached the database after its deadline and stored nothing.
    #[error("the write came too late and stored nothing")]
    TooLate,
    /// Anything else the database said.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl PersistenceError {
    /// Turns unique-constraint violations into [`PersistenceError::Duplicate`].
    fn from_write(err: DbErr) -> Self {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => PersistenceError::Duplicate,
            _ => PersistenceError::Database(err),
        }
    }
}

impl PersistenceError {
    /// Whether the database could not do the work at all right now, as
    /// opposed to refusing this particular request: it cannot be reached
    /// (no connection within the acquire timeout, the connection broke),
    /// it is shutting down or out of resources (PostgreSQL classes 08, 53
    /// and 57P), or its file is locked, full or failing (SQLite `BUSY`,
    /// `LOCKED`, `FULL`, `IOERR`, `CANTOPEN`). Callers answer those with
    /// `DATABASE_UNAVAILABLE` and a 503.
    pub fn is_unavailable(&self) -> bool {
        let err = match self {
            PersistenceError::Database(err) => err,
            PersistenceError::TooLate => return true,
            PersistenceError::NotFound | PersistenceError::Duplicate => return false,
        };
        let Some((code, _)) = database_error(err) else {
            return true;
        };
        if let Ok(sqlite) = code.parse::<i32>() {
            // The primary result code is the low byte of an extended one.
            const BUSY: i32 = 5;
            const LOCKED: i32 = 6;
            const IOERR: i32 = 10;
            const FULL: i32 = 13;
            const CANTOPEN: i32 = 14;
            return matches!(sqlite & 0xff, BUSY | LOCKED | IOERR | FULL | CANTOPEN);
        }
        code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
    }
}

/// The SQLSTATE (or SQLite code) and message of an error the database
/// answered with; `None` for failures to reach it (connection, pool, I/O).
pub(crate) fn database_error(err: &DbErr) -> Option<(String, String)> {
    use sea_orm::{sqlx, RuntimeErr};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(db)))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(db))) => Some((
            db.code().map(|code| code.into_owned()).unwrap_or_default(),
            db.message().to_owned(),
        )),
        _ => None,
    }
}

/// Whether a SQLite connection given back to the pool may be kept: not if
/// it is still counted as inside a transaction once its queued rollback
/// (of a transaction dropped unfinished) has run. That happens when SQLite
/// already ended the transaction itself (a write failing with an I/O error
/// or a full disk rolls it back): sqlx's `ROLLBACK` then fails, its count
/// stays at one, and the connection's next transaction would be a
/// `SAVEPOINT` that a failed write rolls back to without ending, leaving
/// the write lock held and every other writer `database is locked`
/// (tests/sqlite_disk_full.rs). Closing the connection ends whatever it
/// holds; the pool opens a fresh one.
async fn leaves_no_transaction_open(
    conn: &mut sea_orm::sqlx::SqliteConnection,
) -> Result<bool, sea_orm::sqlx::Error> {
    use sea_orm::sqlx::{Connection, Sqlite, TransactionManager};
    type Transactions = <Sqlite as sea_orm::sqlx::Database>::TransactionManager;
    if Transactions::get_transaction_depth(conn) == 0 {
        return Ok(true);
    }
    // Runs the queued rollback, if any.
    conn.ping().await?;
    if Transactions::get_transaction_depth(conn) == 0 {
        return Ok(true);
    }
    tracing::warn!("a database connection still in a transaction is closed, not reused");
    Ok(false)
}

/// SQLite: a pool of one connection of its own over `db`'s file, for the
/// writer's batches; `db` itself on PostgreSQL. SQLite drops a
/// connection's page cache whenever another connection wrote since its
/// last transaction, and the shared pool hands out its idle connections in
/// turn, so every batch read the tables' last pages back from the file
/// (docs/benchmarks.md, "The writer's own connection, batch threads").
pub fn batch_connection(db: &DatabaseConnection) -> DatabaseConnection {
    if db.get_database_backend() != sea_orm::DbBackend::Sqlite {
        return db.clone();
    }
    let shared = db.get_sqlite_connection_pool();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(shared.options().get_acquire_timeout())
        .after_release(|conn, _| Box::pin(leaves_no_transaction_open(conn)))
        .connect_lazy_with(shared.connect_options().as_ref().clone());
    SqlxSqliteConnector::from_sqlx_sqlite_pool(pool)
}

/// SQLite: takes the write lock as `txn`'s first step, waiting for it as
/// for any write (the busy timeout). A transaction that reads first and
/// writes later would instead fail at once with `database is locked` if
/// another connection wrote meanwhile: SQLite does not wait to turn a read
/// transaction into a write one. Nothing on PostgreSQL.
///
/// # Errors
/// The database's.
pub(crate) async fn write_lock_first<C: ConnectionTrait>(txn: &C) -> Result<(), DbErr> {
    if txn.get_database_backend() == sea_orm::DbBackend::Sqlite {
        // A write that matches no row still begins the write transaction.
        txn.execute_unprepared("UPDATE messages SET seq = seq WHERE 0")
            .await?;
    }
    Ok(())
}

/// Opens the pool for `settings.url`. SQLite files (and their folder) are
/// created if missing and run in WAL mode, checkpointed by the
/// [`checkpoint::Checkpointer`] (not by SQLite inside a commit);
/// PostgreSQL connections get `search_path = realtime, public` so the
/// schema-less entities find InsForge's tables.
///
/// # Errors
/// A malformed URL or a database that cannot be reached.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    let acquire_timeout = Duration::from_millis(settings.acquire_timeout_ms);
    let url = settings.url.as_str();
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| DbErr::Custom(format!("database.url: {err}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(acquire_timeout)
            // The server checkpoints off the writer's path (`checkpoint`).
            .pragma("wal_autocheckpoint", "0")
            // A log that grew while readers held it is cut back when it
            // starts over.
            .pragma("journal_size_limit", (64 * 1024 * 1024).to_string())
            // A batch's statement journal (its INSERT may fail halfway in
            // a transaction of several statements) stays in memory instead
            // of a temporary file created and deleted per batch.
            .pragma("temp_store", "memory");
        if let Some(folder) = options.get_filename().parent() {
            create_folder(folder)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.pool_size)
            .acquire_timeout(acquire_timeout)
            .after_release(|conn, _| Box::pin(leaves_no_transaction_open(conn)))
            .connect_with(options)
            .await
            .map_err(|err| DbErr::Custom(format!("cannot open {url}: {err}")))?;
        Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
    } else {
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| DbErr::Custom(format!("database.url: {err}")))?
            .options([("search_path", "realtime,public")]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|err| DbErr::Custom(format!("cannot connect to postgres: {err}")))?;
        Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
    }
}

fn create_folder(folder: &Path) -> Result<(), DbErr> {
    if folder.as_os_str().is_empty() || folder.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(folder)
        .map_err(|err| DbErr::Custom(format!("cannot create {}: {err}", folder.display())))
}

/// Applies every pending migration.
///
/// On PostgreSQL the `realtime` schema is created first, so that sea-orm's
/// own bookkeeping table lands in it rather than in `public`.
///
/// # Errors
/// Whatever the database refuses.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        db.execute_unprepared("CREATE SCHEMA IF NOT EXISTS realtime")
            .await?;
    }
    Migrator::up(db, None).await
}

/// The current time as stored: whole microseconds, the precision both
/// databases keep, so a value read back equals the value written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, Statement, TransactionTrait};

    use super::*;

    fn sqlite_settings(dir: &Path) -> DatabaseSettings {
        DatabaseSettings {
            url: format!("sqlite://{}", dir.join("pool.db").display()),
            pool_size: 1,
            acquire_timeout_ms: 500,
            batch_size: 64,
            batch_window_ms: 1,
            publish_timeout_ms: 5000,
            sql_publish: false,
            sql_publish_poll_ms: 1000,
        }
    }

    /// Transactions that read, then write (clearing history reads the
    /// highest `seq`; changing a channel's options reads the current ones;
    /// creating a policy tries its condition) must wait for another
    /// connection's write, not fail at once as a read transaction turned
    /// into a write one would.
    #[actix_rt::test]
    async fn transactions_that_read_then_write_wait_for_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let settings = sqlite_settings(dir.path());
        let db = connect(&settings).await.unwrap();
        migrate(&db).await.unwrap();
        let channel = channels::create(
            &db,
            channels::NewChannel {
                pattern: "order:%".into(),
                description: None,
                webhook_urls: None,
                enabled: true,
            },
        )
        .await
        .unwrap();
        let other = connect(&settings).await.unwrap();
        for attempt in ["clear", "set_options", "create policy"] {
            let holder = other.begin().await.unwrap();
            write_lock_first(&holder).await.unwrap();
            let released = actix_rt::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                holder.commit().await.unwrap();
            });
            let outcome = match attempt {
                "clear" => messages::clear(&db)
                    .await
                    .map(drop)
                    .map_err(|err| err.to_string()),
                "set_options" => channels::set_options(
                    &db,
                    channel.id,
                    channels::OptionChanges {
                        ephemeral: Some(true),
                        retention: None,
                    },
                )
                .await
                .map(drop)
                .map_err(|err| err.to_string()),
                _ => policies::create(
                    &db,
                    &policies::NewPolicy {
                        name: "members".into(),
                        action: policies::PolicyAction::Subscribe,
                        roles: vec!["authenticated".into()],
                        // Reads a table: the transaction reads before it writes.
                        condition: "EXISTS (SELECT 1 FROM channels WHERE pattern = 'order:%')"
                            .into(),
                    },
                )
                .await
                .map_err(|err| err.to_string()),
            };
            assert!(
                outcome.is_ok(),
                "{attempt} waits for the write lock: {outcome:?}"
            );
            released.await.unwrap();
        }
    }

    /// A transaction SQLite ended by itself (as it does when a write fails
    /// on a full disk) must not leave its connection in the pool holding
    /// the write lock for everyone else.
    #[actix_rt::test]
    async fn a_connection_left_inside_a_transaction_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = sqlite_settings(dir.path());
        let db = connect(&settings).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        // The transaction ends behind sqlx's back, so its rollback on drop
        // fails and sqlx still counts the connection inside a transaction.
        let ended = db.begin().await.unwrap();
        ended
            .execute_unprepared("INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        ended.execute_unprepared("ROLLBACK").await.unwrap();
        drop(ended);
        // The pool's one connection: a transaction that writes, fails and
        // is dropped. Reused as it was, this would be a savepoint rolled
        // back to, with the transaction and its write lock left open.
        let failed = db.begin().await.unwrap();
        failed
            .execute_unprepared("INSERT INTO t VALUES (2)")
            .await
            .unwrap();
        assert!(failed
            .execute_unprepared("INSERT INTO t VALUES (2)")
            .await
            .is_err());
        drop(failed);
        // Another connection to the file can write: no lock is left held.
        let other = connect(&settings).await.unwrap();
        other
            .execute_unprepared("INSERT INTO t VALUES (3)")
            .await
            .expect("the file is not left locked");
        let count = db
            .query_one(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT COUNT(*) FROM t",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            count.try_get_by_index::<i64>(0).unwrap(),
            1,
            "only row 3 stays"
        );
    }

    /// The writer's batches keep one connection apart from the pool, so
    /// its page cache outlives the batch (a temporary table lives as long
    /// as its connection and is seen by no other), and what they write is
    /// seen through the pool.
    #[actix_rt::test]
    async fn batches_keep_one_connection_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let settings = DatabaseSettings {
            pool_size: 4,
            ..sqlite_settings(dir.path())
        };
        let db = connect(&settings).await.unwrap();
        migrate(&db).await.unwrap();
        let batches = batch_connection(&db);
        let run = |db: &DatabaseConnection, sql: &str| {
            let statement = Statement::from_string(DbBackend::Sqlite, sql);
            let db = db.clone();
            async move { db.execute(statement).await }
        };
        run(&batches, "CREATE TEMP TABLE mark (n INTEGER)")
            .await
            .unwrap();
        run(&batches, "CREATE TABLE written (n INTEGER)")
            .await
            .unwrap();
        for n in 0..3 {
            run(&batches, &format!("INSERT INTO mark VALUES ({n})"))
                .await
                .expect("the same connection, so its temporary table, every time");
            run(&batches, &format!("INSERT INTO written VALUES ({n})"))
                .await
                .unwrap();
        }
        assert!(
            run(&db, "INSERT INTO mark VALUES (9)").await.is_err(),
            "the pool's connections are others"
        );
        let rows = db
            .query_one(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT COUNT(*) FROM written",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.try_get_by_index::<i64>(0).unwrap(), 3);
    }
}
