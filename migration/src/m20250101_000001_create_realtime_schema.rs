//! Creates `channels`, `messages` and the `config` singleton with their indexes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The first schema: InsForge's `realtime` tables.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000001_create_realtime_schema"
    }
}

/// PostgreSQL: InsForge's tables in schema `realtime`, column for column.
/// Every statement leaves what exists alone, so pointing the server at an
/// InsForge database keeps its tables, rows and indexes.
const POSTGRES_UP: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS realtime",
    "CREATE TABLE IF NOT EXISTS realtime.channels (
        id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
        pattern TEXT NOT NULL UNIQUE,
        description TEXT,
        webhook_urls TEXT[],
        enabled BOOLEAN NOT NULL DEFAULT TRUE,
        created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
    )",
    "CREATE TABLE IF NOT EXISTS realtime.messages (
        id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
        event_name TEXT NOT NULL,
        channel_id UUID REFERENCES realtime.channels(id) ON DELETE SET NULL,
        channel_name TEXT NOT NULL,
        payload JSONB NOT NULL DEFAULT '{}'::jsonb,
        sender_type TEXT NOT NULL DEFAULT 'system' CHECK (sender_type IN ('system', 'user')),
        sender_id UUID,
        ws_audience_count INTEGER NOT NULL DEFAULT 0,
        wh_audience_count INTEGER NOT NULL DEFAULT 0,
        wh_delivered_count INTEGER NOT NULL DEFAULT 0,
        created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
    )",
    "CREATE TABLE IF NOT EXISTS realtime.config (
        id INTEGER PRIMARY KEY DEFAULT 1 CHECK (id = 1),
        retention_days INTEGER CHECK (retention_days IS NULL OR retention_days > 0),
        created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
    )",
    "INSERT INTO realtime.config (id, retention_days) VALUES (1, NULL) ON CONFLICT (id) DO NOTHING",
    "CREATE INDEX IF NOT EXISTS idx_realtime_channels_enabled ON realtime.channels (enabled)",
    "CREATE INDEX IF NOT EXISTS idx_realtime_messages_channel_id ON realtime.messages (channel_id)",
    "CREATE INDEX IF NOT EXISTS idx_realtime_messages_channel_name ON realtime.messages (channel_name)",
    "CREATE INDEX IF NOT EXISTS idx_realtime_messages_event_name ON realtime.messages (event_name)",
    "CREATE INDEX IF NOT EXISTS idx_realtime_messages_created_at ON realtime.messages (created_at DESC)",
];

const POSTGRES_DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS realtime.messages",
    "DROP TABLE IF EXISTS realtime.channels",
    "DROP TABLE IF EXISTS realtime.config",
];

/// SQLite: the same tables and indexes. Uuids are 16-byte blobs, timestamps
/// RFC 3339 text in UTC, booleans 0/1, and `webhook_urls` a JSON array.
const SQLITE_UP: &[&str] = &[
    "CREATE TABLE channels (
        id BLOB PRIMARY KEY NOT NULL,
        pattern TEXT NOT NULL UNIQUE,
        description TEXT,
        webhook_urls TEXT,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )",
    "CREATE TABLE messages (
        id BLOB PRIMARY KEY NOT NULL,
        event_name TEXT NOT NULL,
        channel_id BLOB REFERENCES channels(id) ON DELETE SET NULL,
        channel_name TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}',
        sender_type TEXT NOT NULL DEFAULT 'system' CHECK (sender_type IN ('system', 'user')),
        sender_id BLOB,
        ws_audience_count INTEGER NOT NULL DEFAULT 0,
        wh_audience_count INTEGER NOT NULL DEFAULT 0,
        wh_delivered_count INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    )",
    "CREATE TABLE config (
        id INTEGER PRIMARY KEY NOT NULL DEFAULT 1 CHECK (id = 1),
        retention_days INTEGER CHECK (retention_days IS NULL OR retention_days > 0),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )",
    "INSERT OR IGNORE INTO config (id, retention_days, created_at, updated_at)
        VALUES (1, NULL, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    "CREATE INDEX idx_realtime_channels_enabled ON channels (enabled)",
    "CREATE INDEX idx_realtime_messages_channel_id ON messages (channel_id)",
    "CREATE INDEX idx_realtime_messages_channel_name ON messages (channel_name)",
    "CREATE INDEX idx_realtime_messages_event_name ON messages (event_name)",
    "CREATE INDEX idx_realtime_messages_created_at ON messages (created_at DESC)",
];

const SQLITE_DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS messages",
    "DROP TABLE IF EXISTS channels",
    "DROP TABLE IF EXISTS config",
];

async fn run_all(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for statement in statements {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => run_all(manager, POSTGRES_UP).await,
            DbBackend::Sqlite => run_all(manager, SQLITE_UP).await,
            other => Err(DbErr::Migration(format!(
                "unsupported database backend {other:?}"
            ))),
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => run_all(manager, POSTGRES_DOWN).await,
            _ => run_all(manager, SQLITE_DOWN).await,
        }
    }
}
