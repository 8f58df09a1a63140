//! Creates `channel_options`: what this server adds to a channel definition
//! (ephemeral channels, per-channel retention), kept apart from InsForge's
//! `channels` table so that table stays exactly InsForge's. A channel
//! without a row has the defaults: durable, the global retention.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The channel options table.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000008_create_channel_options"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statement = match manager.get_database_backend() {
            DbBackend::Postgres => {
                "CREATE TABLE IF NOT EXISTS realtime.channel_options (
                    channel_id UUID PRIMARY KEY REFERENCES realtime.channels(id) ON DELETE CASCADE,
                    ephemeral BOOLEAN NOT NULL DEFAULT FALSE,
                    retention_max_age_days INTEGER CHECK (retention_max_age_days > 0),
                    retention_max_messages BIGINT CHECK (retention_max_messages > 0)
                )"
            }
            _ => {
                "CREATE TABLE IF NOT EXISTS channel_options (
                    channel_id BLOB PRIMARY KEY NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
                    ephemeral INTEGER NOT NULL DEFAULT 0,
                    retention_max_age_days INTEGER CHECK (retention_max_age_days > 0),
                    retention_max_messages INTEGER CHECK (retention_max_messages > 0)
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
            DbBackend::Postgres => "DROP TABLE IF EXISTS realtime.channel_options",
            _ => "DROP TABLE IF EXISTS channel_options",
        };
        manager
            .get_connection()
            .execute_unprepared(statement)
            .await?;
        Ok(())
    }
}
