//! Creating and dropping subscribe and publish policies (the policy API):
//! on PostgreSQL as row-level-security policies on `realtime.channels` and
//! `realtime.messages`; on SQLite in the server's own store (`policies`,
//! `policy_enforced`), whose conditions [`evaluate_sqlite`] evaluates.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait, Value,
};

use super::permissions::ROLES;
use super::{database_error, now, PersistenceError};

/// What a policy governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Subscribing (PostgreSQL: SELECT on `realtime.channels`).
    Subscribe,
    /// Publishing (PostgreSQL: INSERT on `realtime.messages`).
    Publish,
}

impl PolicyAction {
    /// `subscribe` or `publish`.
    pub fn parse(name: &str) -> Option<PolicyAction> {
        match name {
            "subscribe" => Some(PolicyAction::Subscribe),
            "publish" => Some(PolicyAction::Publish),
            _ => None,
        }
    }

    /// The name the API and the SQLite store use.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Subscribe => "subscribe",
            PolicyAction::Publish => "publish",
        }
    }

    /// The table whose policies decide it, as `GET /permissions` shows it.
    pub fn table(self) -> &'static str {
        match self {
            PolicyAction::Subscribe => "channels",
            PolicyAction::Publish => "messages",
        }
    }

    /// The SQL command the policy applies to.
    pub fn command(self) -> &'static str {
        match self {
            PolicyAction::Subscribe => "SELECT",
            PolicyAction::Publish => "INSERT",
        }
    }
}

/// A policy to create.
#[derive(Clone, Debug)]
pub struct NewPolicy {
    /// Unique per action.
    pub name: String,
    /// What it governs.
    pub action: PolicyAction,
    /// Roles it applies to, among `anon`, `authenticated`, `project_admin`.
    pub roles: Vec<String>,
    /// When it allows: a PostgreSQL (or, on SQLite, an SQLite) boolean
    /// expression.
    pub condition: String,
}

/// Why a policy could not be created or dropped.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy of that action and name exists.
    #[error("a {} policy named {name:?} already exists", action.as_str())]
    Exists {
        /// Its action.
        action: PolicyAction,
        /// Its name.
        name: String,
    },
    /// No policy of that action and name.
    #[error("no {} policy named {name:?}", action.as_str())]
    NotFound {
        /// The action asked for.
        action: PolicyAction,
        /// The name asked for.
        name: String,
    },
    /// The database refused the condition; its words.
    #[error("{0}")]
    Invalid(String),
    /// Anything else.
    #[error(transparent)]
    Database(#[from] PersistenceError),
}

/// `name` as an SQL identifier, quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates `policy`. On PostgreSQL: `CREATE POLICY` on the action's table,
/// then row-level security enabled on it, in one transaction, each
/// statement on its own through the extended protocol (which refuses a
/// second statement smuggled into the condition). On SQLite: the
/// condition is tried once, then stored, and the action's policies apply
/// from then on.
///
/// # Errors
/// [`PolicyError::Exists`], [`PolicyError::Invalid`] with the database's
/// words about the condition, or a database failure.
pub async fn create(db: &DatabaseConnection, policy: &NewPolicy) -> Result<(), PolicyError> {
    let backend = db.get_database_backend();
    let txn = db.begin().await.map_err(PersistenceError::from)?;
    if backend == DbBackend::Postgres {
        let roles: Vec<String> = policy.roles.iter().map(|role| quote_ident(role)).collect();
        let clause = match policy.action {
            PolicyAction::Subscribe => "USING",
            PolicyAction::Publish => "WITH CHECK",
        };
        let table = policy.action.table();
        let create = format!(
            "CREATE POLICY {} ON realtime.{table} FOR {} TO {} {clause} ({})",
            quote_ident(&policy.name),
            policy.action.command(),
            roles.join(", "),
            policy.condition,
        );
        txn.execute(Statement::from_string(backend, create))
            .await
            .map_err(|err| match database_error(&err) {
                Some((code, _)) if code == "42710" => PolicyError::Exists {
                    action: policy.action,
                    name: policy.name.clone(),
                },
                Some((_, message)) => PolicyError::Invalid(message),
                None => PolicyError::Database(err.into()),
            })?;
        txn.execute(Statement::from_string(
            backend,
            format!("ALTER TABLE realtime.{table} ENABLE ROW LEVEL SECURITY"),
        ))
        .await
        .map_err(PersistenceError::from)?;
    } else {
        check_sqlite_condition(&policy.condition)?;
        super::write_lock_first(&txn)
            .await
            .map_err(PersistenceError::from)?;
        evaluate_sqlite(&txn, &policy.condition, &SqliteRequest::example())
            .await
            .map_err(|err| match database_error(&err) {
                Some((_, message)) => PolicyError::Invalid(message),
                None => PolicyError::Database(err.into()),
            })?;
        let roles = serde_json::to_string(&policy.roles).unwrap_or_default();
        txn.execute(Statement::from_sql_and_values(
            backend,
            "INSERT INTO policies (action, name, roles, condition, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                Value::from(policy.action.as_str()),
                Value::from(policy.name.as_str()),
                Value::from(roles),
                Value::from(policy.condition.as_str()),
                Value::from(now()),
            ],
        ))
        .await
        .map_err(|err| match PersistenceError::from_write(err) {
            PersistenceError::Duplicate => PolicyError::Exists {
                action: policy.action,
                name: policy.name.clone(),
            },
            other => PolicyError::Database(other),
        })?;
        txn.execute(Statement::from_sql_and_values(
            backend,
            "INSERT OR IGNORE INTO policy_enforced (action) VALUES (?)",
            [Value::from(policy.action.as_str())],
        ))
        .await
        .map_err(PersistenceError::from)?;
    }
    txn.commit().await.map_err(PersistenceError::from)?;
    Ok(())
}

/// Drops a policy. The action's policies keep applying (PostgreSQL's row
/// level security stays on): with none left, nobody may do it.
///
/// # Errors
/// [`PolicyError::NotFound`], or a database failure.
pub async fn drop(
    db: &DatabaseConnection,
    action: PolicyAction,
    name: &str,
) -> Result<(), PolicyError> {
    let backend = db.get_database_backend();
    let not_found = || PolicyError::NotFound {
        action,
        name: name.to_owned(),
    };
    if backend == DbBackend::Postgres {
        let statement = format!(
            "DROP POLICY {} ON realtime.{}",
            quote_ident(name),
            action.table()
        );
        db.execute(Statement::from_string(backend, statement))
            .await
            .map_err(|err| match database_error(&err) {
                Some((code, _)) if code == "42704" => not_found(),
                _ => PolicyError::Database(err.into()),
            })?;
        return Ok(());
    }
    let deleted = db
        .execute(Statement::from_sql_and_values(
            backend,
            "DELETE FROM policies WHERE action = ? AND name = ?",
            [Value::from(action.as_str()), Value::from(name)],
        ))
        .await
        .map_err(PersistenceError::from)?;
    if deleted.rows_affected() == 0 {
        return Err(not_found());
    }
    Ok(())
}

/// One policy of the SQLite store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    /// What it governs.
    pub action: PolicyAction,
    /// Its name.
    pub name: String,
    /// The roles it applies to.
    pub roles: Vec<String>,
    /// Its SQLite condition.
    pub condition: String,
}

/// The SQLite store: every policy, and which actions they govern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqlitePolicySet {
    /// By action, then name.
    pub policies: Vec<StoredPolicy>,
    /// Subscribing needs a policy (one was created once).
    pub subscribe_enforced: bool,
    /// Publishing needs a policy.
    pub publish_enforced: bool,
}

/// Reads the SQLite store.
///
/// # Errors
/// Database failures.
pub async fn sqlite_policies(db: &DatabaseConnection) -> Result<SqlitePolicySet, PersistenceError> {
    let backend = DbBackend::Sqlite;
    let rows = db
        .query_all(Statement::from_string(
            backend,
            "SELECT action, name, roles, condition FROM policies ORDER BY action DESC, name",
        ))
        .await?;
    let mut set = SqlitePolicySet::default();
    for row in rows {
        let action: String = row.try_get("", "action")?;
        let roles: String = row.try_get("", "roles")?;
        let Some(action) = PolicyAction::parse(&action) else {
            continue;
        };
        set.policies.push(StoredPolicy {
            action,
            name: row.try_get("", "name")?,
            roles: serde_json::from_str(&roles).unwrap_or_default(),
            condition: row.try_get("", "condition")?,
        });
    }
    for row in db
        .query_all(Statement::from_string(
            backend,
            "SELECT action FROM policy_enforced",
        ))
        .await?
    {
        let action: String = row.try_get("", "action")?;
        match PolicyAction::parse(&action) {
            Some(PolicyAction::Subscribe) => set.subscribe_enforced = true,
            Some(PolicyAction::Publish) => set.publish_enforced = true,
            None => {}
        }
    }
    Ok(set)
}

/// A request as SQLite conditions see it: the one-row table `request`.
#[derive(Clone, Debug)]
pub struct SqliteRequest {
    /// The caller's user id (`sub` of an authenticated user's JWT).
    pub user_id: Option<String>,
    /// `anon`, `authenticated` or `project_admin`.
    pub role: &'static str,
    /// The resolved channel name.
    pub channel: String,
    /// The caller's claims as JSON text.
    pub claims: String,
    /// The event of a publish; NULL for a subscribe.
    pub event: Option<String>,
}

impl SqliteRequest {
    /// Values to try a new condition with.
    fn example() -> SqliteRequest {
        SqliteRequest {
            user_id: None,
            role: ROLES[0],
            channel: "example:1".into(),
            claims: "{}".into(),
            event: None,
        }
    }
}

/// Whether `condition` holds for `request` on SQLite.
///
/// # Errors
/// What SQLite says of the condition, or a database failure.
pub async fn evaluate_sqlite<C: ConnectionTrait>(
    conn: &C,
    condition: &str,
    request: &SqliteRequest,
) -> Result<bool, DbErr> {
    // Checked when stored; checked again in case the table was edited by
    // hand: one statement only.
    if check_sqlite_condition(condition).is_err() {
        return Err(DbErr::Custom("the condition is not one expression".into()));
    }
    let sql = format!(
        "WITH request(user_id, role, channel, claims, event) AS (SELECT ?, ?, ?, ?, ?) \
         SELECT 1 AS allowed FROM request WHERE ({condition})"
    );
    let row = conn
        .query_one(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            [
                Value::from(request.user_id.clone()),
                Value::from(request.role),
                Value::from(request.channel.as_str()),
                Value::from(request.claims.as_str()),
                Value::from(request.event.clone()),
            ],
        ))
        .await?;
    Ok(row.is_some())
}

/// An SQLite condition must be one expression: no `;` outside quotes
/// (SQLite would run what follows as another statement), and no bind
/// parameter (`?`, `:name`, `@name`, `$name`): the condition is given the
/// request's values as the `request` table, and a parameter of its own
/// would fail inside the driver as if the database were down.
fn check_sqlite_condition(condition: &str) -> Result<(), PolicyError> {
    let mut quote: Option<char> = None;
    for c in condition.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '\'' | '"' | '`') => quote = Some(c),
            None if c == '[' => quote = Some(']'),
            None if c == ';' => {
                return Err(PolicyError::Invalid(
                    "condition: one expression only (no ';')".into(),
                ))
            }
            None if matches!(c, '?' | ':' | '@' | '$') => {
                return Err(PolicyError::Invalid(format!(
                    "condition: no bind parameters ('{c}' outside quotes); use the request table's columns"
                )))
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_semicolon_outside_quotes_is_refused() {
        assert!(check_sqlite_condition("request.role = 'anon'").is_ok());
        assert!(check_sqlite_condition("request.channel LIKE 'a;b%'").is_ok());
        assert!(check_sqlite_condition("\"odd;name\" = 1").is_ok());
        assert!(check_sqlite_condition("1); DROP TABLE messages; --").is_err());
        assert!(check_sqlite_condition("'it''s'; DELETE FROM x").is_err());
    }

    #[test]
    fn bind_parameters_outside_quotes_are_refused() {
        for condition in [
            "role = ?",
            "role = ?1",
            ":a",
            "@who = 1",
            "$x = 1",
            ":\u{a6}",
        ] {
            assert!(
                matches!(
                    check_sqlite_condition(condition),
                    Err(PolicyError::Invalid(_))
                ),
                "{condition}"
            );
        }
        assert!(check_sqlite_condition("json_extract(claims, '$.sub') = 'a:b?'").is_ok());
        assert!(check_sqlite_condition("\"odd:name\" = 1").is_ok());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("own orders"), "\"own orders\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
