//! The server processes sharing a database, and what each one holds:
//!
//! - `nodes`: one row per running server process, its heartbeat renewed
//!   every few seconds; a row whose heartbeat is older than the node
//!   timeout belongs to a process that died, and is deleted by the others.
//!   `url` is where the others reach its admin API (cluster inspection).
//! - `webhook_pending.node`: the node that sends a message's webhooks.
//!   Another node takes a delivery over only when its owner is gone, so a
//!   message's webhooks are sent by one node, not by each.
//! - `presence` (PostgreSQL): each node's presence members per channel,
//!   so a node that starts a channel knows who is present on the others.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The tables and the column.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000010_create_nodes"
    }
}

/// The NOTIFY channel of presence changes.
pub const PRESENCE_CHANNEL: &str = "realtime_presence";
/// The NOTIFY channel on which a node asks the others to hand over a live
/// session it recovers (the payload is the private session id).
pub const HANDOVER_CHANNEL: &str = "realtime_handover";

const POSTGRES_UP: &str = "
    CREATE TABLE IF NOT EXISTS realtime.nodes (
        id TEXT PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        stopping BOOLEAN NOT NULL DEFAULT false,
        url TEXT
    );
    ALTER TABLE realtime.webhook_pending ADD COLUMN IF NOT EXISTS node TEXT;
    CREATE INDEX IF NOT EXISTS idx_webhook_pending_node ON realtime.webhook_pending (node);
    CREATE TABLE IF NOT EXISTS realtime.presence (
        node TEXT NOT NULL,
        channel_name TEXT NOT NULL,
        presence_id TEXT NOT NULL,
        member JSONB NOT NULL,
        PRIMARY KEY (channel_name, presence_id, node)
    );
    CREATE INDEX IF NOT EXISTS idx_presence_node ON realtime.presence (node);";

const SQLITE_UP: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS nodes (
        id TEXT PRIMARY KEY NOT NULL,
        started_at TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL,
        stopping INTEGER NOT NULL DEFAULT 0,
        url TEXT
    )",
    "ALTER TABLE webhook_pending ADD COLUMN node TEXT",
    "CREATE INDEX IF NOT EXISTS idx_webhook_pending_node ON webhook_pending (node)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(POSTGRES_UP).await?;
        } else {
            for statement in SQLITE_UP {
                db.execute_unprepared(statement).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(
                "DROP TABLE IF EXISTS realtime.presence;
                 DROP INDEX IF EXISTS realtime.idx_webhook_pending_node;
                 ALTER TABLE realtime.webhook_pending DROP COLUMN IF EXISTS node;
                 DROP TABLE IF EXISTS realtime.nodes;",
            )
            .await?;
        } else {
            db.execute_unprepared("DROP INDEX IF EXISTS idx_webhook_pending_node")
                .await?;
            db.execute_unprepared("ALTER TABLE webhook_pending DROP COLUMN node")
                .await?;
            db.execute_unprepared("DROP TABLE IF EXISTS nodes").await?;
        }
        Ok(())
    }
}
