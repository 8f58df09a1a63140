//! SQLite only: the server's own policy store, the counterpart of
//! PostgreSQL's row-level-security policies (docs/permissions.md).
//! `policies` holds one row per subscribe or publish policy, its
//! condition an SQLite expression; `policy_enforced` lists the actions
//! whose policies apply (PostgreSQL's "row level security enabled"): once
//! a policy of an action was created, that action needs one to allow it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The SQLite policy tables.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000005_create_sqlite_policies"
    }
}

const UP: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS policies (
        action TEXT NOT NULL CHECK (action IN ('subscribe', 'publish')),
        name TEXT NOT NULL,
        roles TEXT NOT NULL,
        condition TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (action, name)
    )",
    "CREATE TABLE IF NOT EXISTS policy_enforced (
        action TEXT PRIMARY KEY NOT NULL CHECK (action IN ('subscribe', 'publish'))
    )",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in UP {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Sqlite {
            let db = manager.get_connection();
            db.execute_unprepared("DROP TABLE IF EXISTS policies")
                .await?;
            db.execute_unprepared("DROP TABLE IF EXISTS policy_enforced")
                .await?;
        }
        Ok(())
    }
}
