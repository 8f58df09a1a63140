//! PostgreSQL only: the roles, helper functions and `realtime.publish` that
//! InsForge users' policies and triggers rely on (SPEC §6, §8). Each object
//! is created only where it is missing, so an InsForge database keeps its
//! own definitions; grants are repeated harmlessly. On SQLite this does
//! nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use crate::quote_literal;

/// Roles, helpers and `realtime.publish`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000002_create_postgres_helpers"
    }
}

/// The roles policies are written for, NOLOGIN: the server (or InsForge)
/// takes them with `SET LOCAL ROLE`, nobody logs in as them.
const ROLES: &str = r#"
DO $$
DECLARE
  role_name text;
BEGIN
  FOREACH role_name IN ARRAY ARRAY['anon', 'authenticated', 'project_admin'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
      EXCEPTION WHEN duplicate_object OR unique_violation THEN
        -- Roles belong to the whole cluster: another database's migration
        -- (or another node) created it a moment ago.
        NULL;
      END;
    END IF;
  END LOOP;
END
$$"#;

/// What the roles may touch, as InsForge grants it: subscribe checks read
/// `channels`, publish checks insert into `messages`.
const GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA realtime TO anon, authenticated, project_admin",
    "GRANT SELECT ON realtime.channels TO anon, authenticated, project_admin",
    "GRANT INSERT ON realtime.messages TO anon, authenticated, project_admin",
    "CREATE SCHEMA IF NOT EXISTS auth",
    "GRANT USAGE ON SCHEMA auth TO anon, authenticated, project_admin",
];

/// `(signature, definition)`: each function is created only if nothing of
/// that signature exists yet.
const FUNCTIONS: &[(&str, &str)] = &[
    (
        "realtime.channel_name()",
        // The channel a policy is being checked for; NULL when unset.
        r#"CREATE FUNCTION realtime.channel_name() RETURNS text
           LANGUAGE sql STABLE
           AS $f$ SELECT NULLIF(current_setting('realtime.channel_name', true), '') $f$"#,
    ),
    (
        "auth.jwt()",
        // Every claim of the caller's token; NULL without one.
        r#"CREATE FUNCTION auth.jwt() RETURNS jsonb
           LANGUAGE sql STABLE
           AS $f$ SELECT NULLIF(current_setting('request.jwt.claims', true), '')::jsonb $f$"#,
    ),
    (
        "auth.uid()",
        // The caller's user id; NULL for anonymous callers and for a
        // `sub` that is not a uuid (rather than failing the policy).
        r#"CREATE FUNCTION auth.uid() RETURNS uuid
           LANGUAGE sql STABLE
           AS $f$
             SELECT CASE WHEN sub ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                         THEN sub::uuid END
             FROM (SELECT NULLIF(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub' AS sub) AS claims
           $f$"#,
    ),
    (
        "auth.role()",
        r#"CREATE FUNCTION auth.role() RETURNS text
           LANGUAGE sql STABLE
           AS $f$ SELECT NULLIF(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role' $f$"#,
    ),
    (
        "realtime.publish(text,text,jsonb)",
        // Publishing from SQL (a trigger, a function): resolves the name as
        // the server does (the exact pattern, else the most specific LIKE
        // pattern of an enabled channel) and stores a `system` message.
        r#"CREATE FUNCTION realtime.publish(p_channel_name text, p_event_name text, p_payload jsonb)
           RETURNS uuid
           LANGUAGE plpgsql
           SECURITY DEFINER
           SET search_path = realtime, pg_temp
           AS $f$
           DECLARE
             v_channel_id uuid;
             v_message_id uuid;
           BEGIN
             SELECT id INTO v_channel_id
               FROM realtime.channels
               WHERE enabled AND pattern = p_channel_name;
             IF v_channel_id IS NULL THEN
               SELECT id INTO v_channel_id
                 FROM realtime.channels
                 WHERE enabled
                   AND strpos(pattern, '%') > 0
                   AND p_channel_name LIKE pattern
                 ORDER BY length(pattern) - length(replace(pattern, '%', '')), length(pattern) DESC
                 LIMIT 1;
             END IF;
             IF v_channel_id IS NULL THEN
               RAISE WARNING 'realtime.publish: no enabled channel matches "%"', p_channel_name;
               RETURN NULL;
             END IF;
             INSERT INTO realtime.messages (event_name, channel_id, channel_name, payload, sender_type)
               VALUES (p_event_name, v_channel_id, p_channel_name, COALESCE(p_payload, '{}'::jsonb), 'system')
               RETURNING id INTO v_message_id;
             RETURN v_message_id;
           END
           $f$"#,
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(ROLES).await?;
        for grant in GRANTS {
            db.execute_unprepared(grant).await?;
        }
        for (signature, definition) in FUNCTIONS {
            // A node starting at the same moment may create it first.
            let create = format!(
                "DO $migration$ BEGIN IF to_regprocedure('{signature}') IS NULL THEN \
                 BEGIN EXECUTE {}; EXCEPTION WHEN duplicate_function THEN NULL; END; \
                 END IF; END $migration$",
                quote_literal(definition)
            );
            db.execute_unprepared(&create).await?;
        }
        // Only the server (the function's owner) and the database's own
        // triggers may publish; never any caller.
        db.execute_unprepared(
            "REVOKE ALL ON FUNCTION realtime.publish(text, text, jsonb) FROM PUBLIC",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Roles and functions may be InsForge's own: nothing is dropped.
        Ok(())
    }
}
