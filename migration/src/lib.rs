//! Schema migrations, run on start and by `realtime migrate`.
//!
//! The DDL is written out per backend so that PostgreSQL gets InsForge's
//! exact `realtime` schema (`text[]`, `jsonb`, check constraints, descending
//! indexes) and SQLite gets its closest equivalent.

pub use sea_orm_migration::prelude::*;

mod m20250101_000001_create_realtime_schema;
mod m20261201_000001_create_webhook_pending;
mod m20261201_000002_create_postgres_helpers;
mod m20261201_000003_add_message_seq;
mod m20261201_000004_notify_policy_changes;
mod m20261201_000005_create_sqlite_policies;
mod m20261201_000006_create_check_access;
mod m20261201_000007_create_recovery;
mod m20261201_000008_create_channel_options;
mod m20261202_000009_notify_channel_changes;
mod m20261202_000010_create_nodes;
mod m20261202_000011_create_ephemeral_relay;
mod m20261202_000012_mark_sqlite_webhook_backlog;

pub use m20261201_000003_add_message_seq::{SEQUENCE_CHANNEL, SEQUENCE_LOCK};
pub use m20261201_000004_notify_policy_changes::POLICY_CHANNEL;
pub use m20261202_000009_notify_channel_changes::CATALOG_CHANNEL;
pub use m20261202_000010_create_nodes::{HANDOVER_CHANNEL, PRESENCE_CHANNEL};
pub use m20261202_000011_create_ephemeral_relay::EPHEMERAL_CHANNEL;

/// Every migration of the project, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_create_realtime_schema::Migration),
            Box::new(m20261201_000001_create_webhook_pending::Migration),
            Box::new(m20261201_000002_create_postgres_helpers::Migration),
            Box::new(m20261201_000003_add_message_seq::Migration),
            Box::new(m20261201_000004_notify_policy_changes::Migration),
            Box::new(m20261201_000005_create_sqlite_policies::Migration),
            Box::new(m20261201_000006_create_check_access::Migration),
            Box::new(m20261201_000007_create_recovery::Migration),
            Box::new(m20261201_000008_create_channel_options::Migration),
            Box::new(m20261202_000009_notify_channel_changes::Migration),
            Box::new(m20261202_000010_create_nodes::Migration),
            Box::new(m20261202_000011_create_ephemeral_relay::Migration),
            Box::new(m20261202_000012_mark_sqlite_webhook_backlog::Migration),
        ]
    }
}

/// `text` as an SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
