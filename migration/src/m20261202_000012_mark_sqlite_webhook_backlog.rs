//! SQLite: the webhook backlog becomes a mark on the message row
//! (`messages.wh_pending`, set while its deliveries are owed) with a
//! partial index of the marked rows, instead of the `webhook_pending`
//! table. SQLite is one process, so a delivery needs no owner node, and a
//! mark written with the row costs one entry in a small index where a row
//! of its own cost a second statement, two more b-tree entries and a
//! foreign-key lookup per message (ARCHITECTURE.md, "Webhooks").
//! PostgreSQL keeps `webhook_pending`: there each entry names the node that
//! sends it. Marks already owed move over.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The column, its index, and the move.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000012_mark_sqlite_webhook_backlog"
    }
}

const SQLITE_UP: [&str; 4] = [
    "ALTER TABLE messages ADD COLUMN wh_pending INTEGER",
    "UPDATE messages SET wh_pending = 1 WHERE id IN (SELECT message_id FROM webhook_pending)",
    "DROP TABLE IF EXISTS webhook_pending",
    // In the order the dispatcher reads the backlog.
    "CREATE INDEX IF NOT EXISTS idx_messages_wh_pending
        ON messages (created_at, id) WHERE wh_pending IS NOT NULL",
];

const SQLITE_DOWN: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS webhook_pending (
        message_id BLOB PRIMARY KEY NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        node TEXT
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS idx_webhook_pending_node ON webhook_pending (node)",
    "INSERT OR IGNORE INTO webhook_pending (message_id)
        SELECT id FROM messages WHERE wh_pending IS NOT NULL",
    "DROP INDEX IF EXISTS idx_messages_wh_pending",
    "ALTER TABLE messages DROP COLUMN wh_pending",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in SQLITE_UP {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in SQLITE_DOWN {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
