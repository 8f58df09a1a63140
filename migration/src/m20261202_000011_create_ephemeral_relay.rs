//! Ephemeral messages between nodes (PostgreSQL). They travel in
//! notifications on [`EPHEMERAL_CHANNEL`]; one too big for a notification
//! (PostgreSQL's limit is 8,000 bytes) waits in `ephemeral_relay`, which
//! the notification names, until the nodes have read it. The table is
//! UNLOGGED: its rows live seconds and need no crash safety.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// The table.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000011_create_ephemeral_relay"
    }
}

/// The NOTIFY channel of ephemeral messages.
pub const EPHEMERAL_CHANNEL: &str = "realtime_ephemeral";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One process on SQLite: nothing travels between nodes.
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "CREATE UNLOGGED TABLE IF NOT EXISTS realtime.ephemeral_relay (
                         id UUID PRIMARY KEY,
                         packet TEXT NOT NULL,
                         created_at TIMESTAMPTZ NOT NULL DEFAULT now()
                     );
                     CREATE INDEX IF NOT EXISTS idx_ephemeral_relay_created_at
                         ON realtime.ephemeral_relay (created_at);",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP TABLE IF EXISTS realtime.ephemeral_relay")
                .await?;
        }
        Ok(())
    }
}
