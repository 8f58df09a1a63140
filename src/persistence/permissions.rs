//! Row-level-security policies that govern realtime: on PostgreSQL the
//! policies of `realtime.channels` (subscribe) and `realtime.messages`
//! (publish), read from `pg_policies`, and checks that evaluate them as
//! InsForge does; on SQLite, the server's own store in the same shape.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use uuid::Uuid;

use super::policies::PolicyAction;
use super::{database_error, PersistenceError};

/// One policy as `pg_policies` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `policyname`.
    pub policy_name: String,
    /// `channels` or `messages`.
    pub table_name: String,
    /// `SELECT`, `INSERT`, `UPDATE`, `DELETE` or `ALL`.
    pub command: String,
    /// Roles it applies to (`public` for all).
    pub roles: Vec<String>,
    /// The `USING` expression.
    pub using: Option<String>,
    /// The `WITH CHECK` expression.
    pub with_check: Option<String>,
}

/// The policies that decide subscribing and publishing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RealtimePolicies {
    /// `SELECT` (or `ALL`) policies on `channels`.
    pub subscribe: Vec<Policy>,
    /// `INSERT` (or `ALL`) policies on `messages`.
    pub publish: Vec<Policy>,
}

const POLICIES_SQL: &str =
    "SELECT policyname::text AS policy_name, tablename::text AS table_name, \
     cmd::text AS command, roles::text[] AS roles, qual AS using_expr, with_check \
     FROM pg_policies \
     WHERE schemaname = 'realtime' \
       AND ((tablename = 'channels' AND cmd IN ('SELECT', 'ALL')) \
         OR (tablename = 'messages' AND cmd IN ('INSERT', 'ALL'))) \
     ORDER BY tablename, policyname";

/// Reads the realtime policies.
///
/// # Errors
/// Database failures.
pub async fn realtime_policies(
    db: &DatabaseConnection,
) -> Result<RealtimePolicies, PersistenceError> {
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        return sqlite_policies(db).await;
    }
    let rows = db
        .query_all(Statement::from_string(backend, POLICIES_SQL))
        .await?;
    let mut policies = RealtimePolicies::default();
    for row in rows {
        let policy = Policy {
            policy_name: row.try_get("", "policy_name")?,
            table_name: row.try_get("", "table_name")?,
            command: row.try_get("", "command")?,
            roles: row.try_get("", "roles")?,
            using: row.try_get("", "using_expr")?,
            with_check: row.try_get("", "with_check")?,
        };
        if policy.table_name == "channels" {
            policies.subscribe.push(policy);
        } else {
            policies.publish.push(policy);
        }
    }
    Ok(policies)
}

/// The SQLite store in the same shape.
async fn sqlite_policies(db: &DatabaseConnection) -> Result<RealtimePolicies, PersistenceError> {
    let mut policies = RealtimePolicies::default();
    for stored in super::policies::sqlite_policies(db).await?.policies {
        let condition = Some(stored.condition);
        let subscribe = stored.action == PolicyAction::Subscribe;
        let policy = Policy {
            policy_name: stored.name,
            table_name: stored.action.table().to_owned(),
            command: stored.action.command().to_owned(),
            roles: stored.roles,
            using: if subscribe { condition.clone() } else { None },
            with_check: if subscribe { None } else { condition },
        };
        if subscribe {
            policies.subscribe.push(policy);
        } else {
            policies.publish.push(policy);
        }
    }
    Ok(policies)
}

/// The roles policies are written for, in the order of
/// [`RlsState::roles`].
pub const ROLES: [&str; 3] = ["anon", "authenticated", "project_admin"];

/// What decides whether checks need the database at all (PostgreSQL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RlsState {
    /// Row-level security is on for `realtime.channels`.
    pub channels_rls: bool,
    /// Row-level security is on for `realtime.messages`.
    pub messages_rls: bool,
    /// Per role of [`ROLES`].
    pub roles: [RoleRights; 3],
}

/// A role's table privileges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleRights {
    /// `SELECT` on `realtime.channels`.
    pub select_channels: bool,
    /// `INSERT` on `realtime.messages`.
    pub insert_messages: bool,
    /// `BYPASSRLS` (or superuser).
    pub bypass_rls: bool,
}

/// Reads whether row-level security is on and what each role may do.
///
/// # Errors
/// Database failures.
pub async fn rls_state(db: &DatabaseConnection) -> Result<RlsState, PersistenceError> {
    let rows = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            // A table that is missing (renamed, being migrated) restricts
            // nothing here: the writer reports the storage failure.
            "SELECT r.rolname::text AS role,
                    COALESCE(has_table_privilege(r.oid, t.channels, 'SELECT'), true) AS select_channels,
                    COALESCE(has_table_privilege(r.oid, t.messages, 'INSERT'), true) AS insert_messages,
                    (r.rolbypassrls OR r.rolsuper) AS bypass_rls,
                    COALESCE((SELECT relrowsecurity FROM pg_class WHERE oid = t.channels), false) AS channels_rls,
                    COALESCE((SELECT relrowsecurity FROM pg_class WHERE oid = t.messages), false) AS messages_rls
               FROM pg_roles r,
                    (SELECT to_regclass('realtime.channels') AS channels,
                            to_regclass('realtime.messages') AS messages) AS t
              WHERE r.rolname IN ('anon', 'authenticated', 'project_admin')",
        ))
        .await?;
    let mut state = RlsState::default();
    for row in rows {
        let role: String = row.try_get("", "role")?;
        state.channels_rls = row.try_get("", "channels_rls")?;
        state.messages_rls = row.try_get("", "messages_rls")?;
        if let Some(index) = ROLES.iter().position(|name| *name == role) {
            state.roles[index] = RoleRights {
                select_channels: row.try_get("", "select_channels")?,
                insert_messages: row.try_get("", "insert_messages")?,
                bypass_rls: row.try_get("", "bypass_rls")?,
            };
        }
    }
    Ok(state)
}

/// One permission question, with what policies may look at.
#[derive(Clone, Debug)]
pub struct AccessRequest {
    /// `anon`, `authenticated` or `project_admin`.
    pub role: &'static str,
    /// The caller's claims as JSON (`request.jwt.claims`).
    pub claims: String,
    /// The resolved channel name (`realtime.channel_name()`).
    pub channel_name: String,
    /// What is asked.
    pub action: AccessAction,
}

/// Subscribe, or publish a given message.
#[derive(Clone, Debug)]
pub enum AccessAction {
    /// SELECT on `realtime.channels`.
    Subscribe,
    /// INSERT of this row into `realtime.messages` (rolled back).
    Publish {
        /// The channel definition the name resolved to.
        channel_id: Uuid,
        /// The event.
        event_name: String,
        /// The payload as published.
        payload: serde_json::Value,
        /// `user` or `system`.
        sender_type: &'static str,
        /// The publishing user, if any.
        sender_id: Option<Uuid>,
    },
}

/// What the policies said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessOutcome {
    /// A policy lets it through.
    Allowed,
    /// No policy does (or the role lacks the privilege).
    Denied,
    /// A policy failed with an error (it raised, or divided by zero):
    /// denied for this caller; the database's words are kept for the log.
    PolicyFailed(String),
}

/// Evaluates `request` as InsForge does, in one statement
/// (`realtime.check_access`, migration 6): as the caller's role, with
/// `request.jwt.claims` and `realtime.channel_name` set for that statement
/// only; subscribe is `SELECT 1 FROM realtime.channels` matching the name,
/// publish an INSERT of the message into `realtime.messages`, always
/// undone (the real row is the writer's).
///
/// # Errors
/// Only failures to reach the database; whatever the policies do is an
/// [`AccessOutcome`].
pub async fn check_postgres(
    db: &DatabaseConnection,
    request: &AccessRequest,
) -> Result<AccessOutcome, PersistenceError> {
    let (action, channel_id, event_name, payload, sender_type, sender_id) = match &request.action {
        AccessAction::Subscribe => ("subscribe", None, None, None, None, None),
        AccessAction::Publish {
            channel_id,
            event_name,
            payload,
            sender_type,
            sender_id,
        } => (
            "publish",
            Some(*channel_id),
            Some(event_name.clone()),
            Some(payload.clone()),
            Some(*sender_type),
            *sender_id,
        ),
    };
    let checked = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT realtime.check_access($1, $2, $3, $4, $5, $6, $7, $8, $9) AS allowed",
            [
                Value::from(request.role),
                Value::from(request.claims.as_str()),
                Value::from(request.channel_name.as_str()),
                Value::from(action),
                Value::from(channel_id),
                Value::from(event_name),
                Value::Json(payload.map(Box::new)),
                Value::from(sender_type),
                Value::from(sender_id),
            ],
        ))
        .await
        .and_then(|row| match row {
            Some(row) => row.try_get::<bool>("", "allowed"),
            None => Ok(false),
        });
    match checked {
        Ok(true) => Ok(AccessOutcome::Allowed),
        Ok(false) => Ok(AccessOutcome::Denied),
        Err(err) => match database_error(&err) {
            // insufficient_privilege: "new row violates row-level security
            // policy", or a role without the grant.
            Some((code, _)) if code == "42501" => Ok(AccessOutcome::Denied),
            Some(_) => Ok(AccessOutcome::PolicyFailed(err.to_string())),
            None => Err(err.into()),
        },
    }
}
