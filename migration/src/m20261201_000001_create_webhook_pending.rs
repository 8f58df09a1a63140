//! Creates `webhook_pending`: the durable backlog of webhook deliveries,
//! kept apart from InsForge's `messages` table so that table stays exactly
//! InsForge's.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The webhook backlog table.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000001_create_webhook_pending"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statement = match manager.get_database_backend() {
            DbBackend::Postgres => {
                "CREATE TABLE IF NOT EXISTS realtime.webhook_pending (
                    message_id UUID PRIMARY KEY REFERENCES realtime.messages(id) ON DELETE CASCADE
                )"
            }
            _ => {
                // WITHOUT ROWID: the key is the only b-tree to update.
                "CREATE TABLE IF NOT EXISTS webhook_pending (
                    message_id BLOB PRIMARY KEY NOT NULL REFERENCES messages(id) ON DELETE CASCADE
                ) WITHOUT ROWID"
            }
        };
        manager
            .get_connection()
            .execute_unprepared(statement)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statement = match manager.get_database_backend() {
            DbBackend::Postgres => "DROP TABLE IF EXISTS realtime.webhook_pending",
            _ => "DROP TABLE IF EXISTS webhook_pending",
        };
        manager
            .get_connection()
            .execute_unprepared(statement)
            .await?;
        Ok(())
    }
}
