//! PostgreSQL only: triggers that tell every server sharing the database
//! when channel definitions change (`NOTIFY realtime_catalog`), whoever
//! changed them (another node's REST API, psql, a migration of the app),
//! so each node reloads its catalog at once instead of resolving names
//! against a stale one.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The triggers.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000009_notify_channel_changes"
    }
}

/// The NOTIFY channel of channel-definition changes.
pub const CATALOG_CHANNEL: &str = "realtime_catalog";

fn up_sql() -> String {
    format!(
        r#"CREATE OR REPLACE FUNCTION realtime.notify_catalog_change() RETURNS trigger
             LANGUAGE plpgsql AS $f$ BEGIN PERFORM pg_notify('{CATALOG_CHANNEL}', ''); RETURN NULL; END $f$;
           DROP TRIGGER IF EXISTS trg_realtime_catalog_change ON realtime.channels;
           CREATE TRIGGER trg_realtime_catalog_change
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON realtime.channels
             FOR EACH STATEMENT EXECUTE FUNCTION realtime.notify_catalog_change();
           DROP TRIGGER IF EXISTS trg_realtime_catalog_change ON realtime.channel_options;
           CREATE TRIGGER trg_realtime_catalog_change
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON realtime.channel_options
             FOR EACH STATEMENT EXECUTE FUNCTION realtime.notify_catalog_change();"#
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(&up_sql())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "DROP TRIGGER IF EXISTS trg_realtime_catalog_change ON realtime.channels;
                     DROP TRIGGER IF EXISTS trg_realtime_catalog_change ON realtime.channel_options;
                     DROP FUNCTION IF EXISTS realtime.notify_catalog_change();",
                )
                .await?;
        }
        Ok(())
    }
}
