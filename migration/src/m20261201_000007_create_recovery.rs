//! What connection state recovery needs (ARCHITECTURE.md, "Recovery"):
//! an index that makes "this channel's messages after `seq`" one range
//! scan, the sessions saved at shutdown for clients that come back after a
//! restart, and how far history was ever deleted (a recovery that would
//! need a deleted message must not replay a partial history): per channel
//! name, `''` standing for every channel.
//!
//! The `(channel_name, seq)` index replaces the one on `channel_name`
//! alone: it serves every query the old one did (its first column), and
//! one more index on every insert cost 16% of acked publishes on SQLite
//! (docs/benchmarks.md).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The recovery tables and the replay index.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000007_create_recovery"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements: &[&str] = match manager.get_database_backend() {
            DbBackend::Postgres => &[
                "CREATE INDEX IF NOT EXISTS idx_realtime_messages_channel_name_seq
                   ON realtime.messages (channel_name, seq)",
                "DROP INDEX IF EXISTS realtime.idx_realtime_messages_channel_name",
                "CREATE TABLE IF NOT EXISTS realtime.recovery_sessions (
                    pid TEXT PRIMARY KEY,
                    saved_at_ms BIGINT NOT NULL,
                    state TEXT NOT NULL
                )",
                "CREATE TABLE IF NOT EXISTS realtime.history_deletions (
                    channel_name TEXT PRIMARY KEY,
                    deleted_through BIGINT NOT NULL
                )",
            ],
            _ => &[
                "CREATE INDEX IF NOT EXISTS idx_realtime_messages_channel_name_seq
                   ON messages (channel_name, seq)",
                "DROP INDEX IF EXISTS idx_realtime_messages_channel_name",
                "CREATE TABLE IF NOT EXISTS recovery_sessions (
                    pid TEXT PRIMARY KEY NOT NULL,
                    saved_at_ms INTEGER NOT NULL,
                    state TEXT NOT NULL
                ) WITHOUT ROWID",
                "CREATE TABLE IF NOT EXISTS history_deletions (
                    channel_name TEXT PRIMARY KEY NOT NULL,
                    deleted_through INTEGER NOT NULL
                ) WITHOUT ROWID",
            ],
        };
        let db = manager.get_connection();
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements: &[&str] = match manager.get_database_backend() {
            DbBackend::Postgres => &[
                "DROP TABLE IF EXISTS realtime.history_deletions",
                "DROP TABLE IF EXISTS realtime.recovery_sessions",
                "CREATE INDEX IF NOT EXISTS idx_realtime_messages_channel_name
                   ON realtime.messages (channel_name)",
                "DROP INDEX IF EXISTS realtime.idx_realtime_messages_channel_name_seq",
            ],
            _ => &[
                "DROP TABLE IF EXISTS history_deletions",
                "DROP TABLE IF EXISTS recovery_sessions",
                "CREATE INDEX IF NOT EXISTS idx_realtime_messages_channel_name
                   ON messages (channel_name)",
                "DROP INDEX IF EXISTS idx_realtime_messages_channel_name_seq",
            ],
        };
        let db = manager.get_connection();
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
