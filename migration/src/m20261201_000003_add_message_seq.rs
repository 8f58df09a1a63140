//! Adds `messages.seq`, the per-message sequence in the order messages
//! become visible (ARCHITECTURE.md, "The message sequence"), and numbers
//! the history already stored.
//!
//! On PostgreSQL, rows the server did not write (`realtime.publish()` in a
//! trigger, a direct `INSERT`) arrive without a `seq`: a trigger marks them
//! with a negative arrival number, which keeps their insertion order until
//! the server's sequencer gives them their real `seq`, and wakes the
//! sequencer with a NOTIFY (one per transaction: PostgreSQL folds equal
//! notifications). The server's own rows carry their `seq` already, so the
//! trigger's `WHEN` skips them without calling any function.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use crate::quote_literal;

/// The `seq` column, its sequences, and the arrival trigger.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000003_add_message_seq"
    }
}

/// The key of the transaction-level advisory lock under which every `seq`
/// is given (by the writer and by the sequencer), so `seq` values become
/// visible in increasing order.
pub const SEQUENCE_LOCK: i64 = 0x7265_616c_7469_6d65; // "realtime"

/// The NOTIFY channel that wakes the sequencer.
pub const SEQUENCE_CHANNEL: &str = "realtime_sequence";

const POSTGRES_UP: &[&str] = &[
    "ALTER TABLE realtime.messages ADD COLUMN IF NOT EXISTS seq bigint",
    "CREATE SEQUENCE IF NOT EXISTS realtime.message_seq",
    "CREATE SEQUENCE IF NOT EXISTS realtime.message_arrival",
    // Rows waiting for a `seq`: nearly always none, so this index costs
    // the server's inserts nothing (their `seq` is positive).
    "CREATE INDEX IF NOT EXISTS idx_realtime_messages_unsequenced
        ON realtime.messages (seq) WHERE seq IS NULL OR seq < 0",
];

/// Numbers the stored history once, oldest first, after anything already
/// numbered, and moves the sequence past it.
fn number_history_postgres() -> String {
    format!(
        "DO $migration$
         BEGIN
           PERFORM pg_advisory_xact_lock({SEQUENCE_LOCK});
           UPDATE realtime.messages m
              SET seq = numbered.n + (SELECT COALESCE(MAX(seq), 0) FROM realtime.messages WHERE seq > 0)
             FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n
                     FROM realtime.messages WHERE seq IS NULL) AS numbered
            WHERE m.id = numbered.id;
           PERFORM setval('realtime.message_seq', MAX(seq)) FROM realtime.messages HAVING MAX(seq) > 0;
         END
         $migration$"
    )
}

/// The arrival trigger's function. SECURITY DEFINER: the roles that may
/// insert messages (`anon`, `authenticated`) need no rights on the
/// sequence.
fn arrival_function() -> String {
    format!(
        "CREATE FUNCTION realtime.message_arrived() RETURNS trigger
           LANGUAGE plpgsql
           SECURITY DEFINER
           SET search_path = realtime, pg_temp
           AS $f$
           BEGIN
             NEW.seq := -nextval('realtime.message_arrival');
             PERFORM pg_notify('{SEQUENCE_CHANNEL}', '');
             RETURN NEW;
           END
           $f$"
    )
}

const ARRIVAL_TRIGGER: &str = "CREATE TRIGGER trg_realtime_message_arrival
    BEFORE INSERT ON realtime.messages
    FOR EACH ROW WHEN (NEW.seq IS NULL)
    EXECUTE FUNCTION realtime.message_arrived()";

/// SQLite has one writer, the server, which numbers its rows itself.
const SQLITE_UP: &[&str] = &[
    "ALTER TABLE messages ADD COLUMN seq INTEGER",
    "UPDATE messages SET seq = numbered.n
       FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM messages) AS numbered
      WHERE messages.id = numbered.id",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() != DbBackend::Postgres {
            for statement in SQLITE_UP {
                db.execute_unprepared(statement).await?;
            }
            return Ok(());
        }
        for statement in POSTGRES_UP {
            db.execute_unprepared(statement).await?;
        }
        db.execute_unprepared(&number_history_postgres()).await?;
        // Created only where missing; a node starting at the same moment
        // may create them first.
        db.execute_unprepared(&format!(
            "DO $migration$ BEGIN
               IF to_regprocedure('realtime.message_arrived()') IS NULL THEN
                 BEGIN EXECUTE {}; EXCEPTION WHEN duplicate_function THEN NULL; END;
               END IF;
               IF NOT EXISTS (SELECT 1 FROM pg_trigger
                               WHERE tgname = 'trg_realtime_message_arrival'
                                 AND tgrelid = 'realtime.messages'::regclass) THEN
                 BEGIN EXECUTE {}; EXCEPTION WHEN duplicate_object THEN NULL; END;
               END IF;
             END $migration$",
            quote_literal(&arrival_function()),
            quote_literal(ARRIVAL_TRIGGER),
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements: &[&str] = match manager.get_database_backend() {
            DbBackend::Postgres => &[
                "DROP TRIGGER IF EXISTS trg_realtime_message_arrival ON realtime.messages",
                "DROP FUNCTION IF EXISTS realtime.message_arrived()",
                "DROP INDEX IF EXISTS realtime.idx_realtime_messages_unsequenced",
                "ALTER TABLE realtime.messages DROP COLUMN IF EXISTS seq",
                "DROP SEQUENCE IF EXISTS realtime.message_arrival",
                "DROP SEQUENCE IF EXISTS realtime.message_seq",
            ],
            _ => &["ALTER TABLE messages DROP COLUMN seq"],
        };
        let db = manager.get_connection();
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
