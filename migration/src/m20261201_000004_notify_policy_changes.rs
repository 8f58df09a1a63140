//! PostgreSQL only: an event trigger that tells the server when policies
//! may have changed (`NOTIFY realtime_policy`), so cached permission
//! decisions are dropped at once, whoever changed them (the policy API,
//! psql, another tool); and membership of the policy roles for the
//! server's own role, which checks take with `SET LOCAL ROLE`.
//!
//! Event triggers need a superuser. Without one this migration only warns:
//! the server then also reads the policies' state every
//! `permissions.refresh_ms` (docs/permissions.md).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// The event trigger and role memberships.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000004_notify_policy_changes"
    }
}

/// The NOTIFY channel of policy changes.
pub const POLICY_CHANNEL: &str = "realtime_policy";

fn event_trigger() -> String {
    format!(
        r#"DO $migration$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'realtime_policy_change') THEN
    BEGIN
      IF to_regprocedure('realtime.notify_policy_change()') IS NULL THEN
        CREATE FUNCTION realtime.notify_policy_change() RETURNS event_trigger
          LANGUAGE plpgsql AS $f$ BEGIN PERFORM pg_notify('{POLICY_CHANNEL}', tg_tag); END $f$;
      END IF;
      -- Anything that can change what a policy lets through: the policies,
      -- row-level security switched on or off, grants, and the functions
      -- policies call.
      CREATE EVENT TRIGGER realtime_policy_change ON ddl_command_end
        WHEN TAG IN ('CREATE POLICY', 'ALTER POLICY', 'DROP POLICY', 'ALTER TABLE',
                     'GRANT', 'REVOKE', 'CREATE FUNCTION', 'ALTER FUNCTION', 'DROP FUNCTION')
        EXECUTE FUNCTION realtime.notify_policy_change();
    EXCEPTION
      WHEN insufficient_privilege THEN
        RAISE WARNING 'realtime: not a superuser, so policy changes made outside the server are noticed only every permissions.refresh_ms';
      WHEN duplicate_object THEN NULL;
    END;
  END IF;
END
$migration$"#
    )
}

/// Lets the server's role take the policy roles (a superuser can already).
const MEMBERSHIP: &str = r#"DO $migration$
BEGIN
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    BEGIN
      EXECUTE format('GRANT anon, authenticated, project_admin TO %I', current_user);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE WARNING 'realtime: cannot grant anon, authenticated, project_admin to %; grant them, or permission checks fail', current_user;
    END;
  END IF;
END
$migration$"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(&event_trigger()).await?;
        db.execute_unprepared(MEMBERSHIP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            let db = manager.get_connection();
            db.execute_unprepared("DROP EVENT TRIGGER IF EXISTS realtime_policy_change")
                .await?;
            db.execute_unprepared("DROP FUNCTION IF EXISTS realtime.notify_policy_change()")
                .await?;
        }
        Ok(())
    }
}
