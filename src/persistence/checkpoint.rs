//! SQLite: copying the write-ahead log into the database file off the
//! writer's path.
//!
//! SQLite's own automatic checkpoint runs inside the commit that crosses
//! its threshold: with group commit that is the `MessageWriter`'s batch, so
//! every 1,000 pages a batch (and every publish waiting behind it) waited
//! for the copy and its fsyncs (docs/benchmarks.md, "Checkpoints off the
//! writer's path"). The server turns it off (`wal_autocheckpoint = 0` on
//! every pooled connection, [`super::connect`]) and instead:
//!
//! - the [`Checkpointer`] runs a `PASSIVE` checkpoint every [`INTERVAL`]
//!   on a connection of its own, beside the writer's commits: it never
//!   blocks a writer or a reader;
//! - passive copies alone never rewind the log while writes keep coming
//!   (the log starts over only when a write begins with everything in it
//!   copied), so once it holds [`START_OVER_FRAMES`] pages the checkpointer
//!   asks the writer ([`LogStartOver`]), which, between two batches, runs
//!   one more passive checkpoint itself: it copies only what came since
//!   the last one, and the writer's next batch starts the log over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{ConnectOptions, Row};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// How often the log is copied.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// Log pages (4 KiB each) past which the writer is asked to let the log
/// start over.
pub const START_OVER_FRAMES: i64 = 4096;
/// How long to wait after a failure before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// What one checkpoint did (`PRAGMA wal_checkpoint`'s row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Whether another checkpoint was running, so this one did nothing.
    pub busy: bool,
    /// Pages in the log.
    pub log_frames: i64,
    /// Pages of the log now in the database file.
    pub copied_frames: i64,
}

/// The checkpointer's request that the writer let the log start over.
#[derive(Clone, Debug, Default)]
pub struct LogStartOver(Arc<AtomicBool>);

impl LogStartOver {
    fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether it was asked since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// A passive checkpoint through the pool (the writer's, between batches).
///
/// # Errors
/// The database's.
pub async fn passive(db: &DatabaseConnection) -> Result<Checkpoint, sea_orm::DbErr> {
    let row = db
        .query_one(Statement::from_string(DbBackend::Sqlite, PASSIVE))
        .await?
        .ok_or_else(|| sea_orm::DbErr::Custom("wal_checkpoint returned no row".into()))?;
    Ok(Checkpoint {
        busy: row.try_get_by_index::<i64>(0)? != 0,
        log_frames: row.try_get_by_index(1)?,
        copied_frames: row.try_get_by_index(2)?,
    })
}

/// The background half: passive checkpoints beside the writer's commits,
/// on a connection of its own. Not a pooled one: this task is dropped
/// wherever the actix system stops it, possibly mid-checkpoint, and a
/// pooled connection dropped outside the runtime panics (it spawns its
/// return to the pool); a connection of its own just closes.
pub struct Checkpointer {
    options: SqliteConnectOptions,
    start_over: LogStartOver,
}

impl Checkpointer {
    /// A checkpointer of `db`'s file, and the request it hands the writer;
    /// `None` on PostgreSQL.
    pub fn new(db: &DatabaseConnection) -> Option<(Checkpointer, LogStartOver)> {
        if db.get_database_backend() != DbBackend::Sqlite {
            return None;
        }
        let options = db
            .get_sqlite_connection_pool()
            .connect_options()
            .as_ref()
            .clone();
        let start_over = LogStartOver::default();
        let checkpointer = Checkpointer {
            options,
            start_over: start_over.clone(),
        };
        Some((checkpointer, start_over))
    }

    /// Checkpoints for as long as the actix system runs.
    pub fn start(self) {
        actix::spawn(self.run());
    }

    async fn run(self) {
        let mut conn: Option<SqliteConnection> = None;
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let open = match conn.as_mut() {
                Some(open) => open,
                None => match self.options.connect().await {
                    Ok(opened) => conn.insert(opened),
                    Err(err) => {
                        tracing::warn!(error = %err, "WAL checkpointer cannot open the database; retrying");
                        tokio::time::sleep(RETRY_DELAY).await;
                        continue;
                    }
                },
            };
            match checkpoint(open).await {
                Ok(done) if done.log_frames >= START_OVER_FRAMES => self.start_over.ask(),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "WAL checkpoint failed; retrying");
                    // A fresh connection next time, in case this one broke.
                    conn = None;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    }
}

async fn checkpoint(conn: &mut SqliteConnection) -> Result<Checkpoint, sea_orm::sqlx::Error> {
    let row = sea_orm::sqlx::query(PASSIVE).fetch_one(&mut *conn).await?;
    Ok(Checkpoint {
        busy: row.try_get::<i64, _>(0)? != 0,
        log_frames: row.try_get(1)?,
        copied_frames: row.try_get(2)?,
    })
}
