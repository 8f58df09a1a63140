//! Row-level-security policies that govern realtime: on PostgreSQL the
//! policies of `realtime.channels` (subscribe) and `realtime.messages`
//! (publish), read from `pg_policies`. SQLite has no policies yet.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use super::PersistenceError;

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
        return Ok(RealtimePolicies::default());
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
