//! PostgreSQL only: `realtime.check_access(...)`, one permission check in
//! one statement (one round trip instead of BEGIN, settings, query,
//! ROLLBACK). It takes the caller's role and claims for the rest of its
//! statement's transaction, runs InsForge's subscribe query, or the publish
//! INSERT inside a subtransaction that is always undone, and answers
//! whether row-level security let it through. SECURITY INVOKER (the
//! default): the role switch needs the server's own membership of the
//! roles, and callers other than the server cannot use it to gain any.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use crate::quote_literal;

/// `realtime.check_access`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000006_create_check_access"
    }
}

/// The function. Denials by row-level security surface as the INSERT's own
/// `insufficient_privilege` error, and a failing policy as its error, for
/// the server to tell apart; the subscribe query's empty answer is `false`.
const CHECK_ACCESS: &str = r#"CREATE FUNCTION realtime.check_access(
    p_role text, p_claims text, p_channel_name text, p_action text,
    p_channel_id uuid, p_event_name text, p_payload jsonb,
    p_sender_type text, p_sender_id uuid)
  RETURNS boolean
  LANGUAGE plpgsql
  SET search_path = realtime, pg_temp
  AS $f$
  DECLARE
    v_allowed boolean := false;
  BEGIN
    IF p_role NOT IN ('anon', 'authenticated', 'project_admin') THEN
      RAISE EXCEPTION 'realtime.check_access: unknown role %', p_role;
    END IF;
    PERFORM set_config('role', p_role, true);
    PERFORM set_config('request.jwt.claims', p_claims, true);
    PERFORM set_config('realtime.channel_name', p_channel_name, true);
    IF p_action = 'subscribe' THEN
      -- Planned now, as the caller's role, so its policies apply.
      EXECUTE 'SELECT EXISTS (SELECT 1 FROM realtime.channels
                               WHERE enabled AND (pattern = $1 OR $1 LIKE pattern))'
        INTO v_allowed USING p_channel_name;
    ELSE
      BEGIN
        EXECUTE 'INSERT INTO realtime.messages
                   (event_name, channel_id, channel_name, payload, sender_type, sender_id)
                 VALUES ($1, $2, $3, $4, $5, $6)'
          USING p_event_name, p_channel_id, p_channel_name, p_payload, p_sender_type, p_sender_id;
        -- Let in: undo the row (the server's writer stores the real one).
        RAISE EXCEPTION USING ERRCODE = 'RT001';
      EXCEPTION WHEN SQLSTATE 'RT001' THEN
        v_allowed := true;
      END;
    END IF;
    RETURN v_allowed;
  END
  $f$"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "DO $migration$ BEGIN
               IF to_regprocedure('realtime.check_access(text,text,text,text,uuid,text,jsonb,text,uuid)') IS NULL THEN
                 BEGIN EXECUTE {}; EXCEPTION WHEN duplicate_function THEN NULL; END;
               END IF;
             END $migration$",
            quote_literal(CHECK_ACCESS)
        ))
        .await?;
        // Only the server (the owner) calls it.
        db.execute_unprepared(
            "REVOKE ALL ON FUNCTION realtime.check_access(text,text,text,text,uuid,text,jsonb,text,uuid) FROM PUBLIC",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "DROP FUNCTION IF EXISTS realtime.check_access(text,text,text,text,uuid,text,jsonb,text,uuid)",
                )
                .await?;
        }
        Ok(())
    }
}
