//! The permission hook: may this principal subscribe to, or publish on,
//! this channel? Open while no policy restricts it (InsForge's default);
//! on PostgreSQL the row-level-security policies of `realtime.channels`
//! (subscribe) and `realtime.messages` (publish) decide, evaluated as
//! InsForge evaluates them.
//!
//! Callers first ask [`PermissionHook::quick`], which answers without I/O
//! whenever the policies' state allows (row-level security off, a role
//! without the privilege): the common case costs nothing. Otherwise they
//! ask [`PermissionHook::check`], which runs on the hook's own bounded
//! pool, never on a channel actor. Callers may keep a decision per socket
//! and channel (never across sockets) while [`PermissionHook::generation`]
//! stays the same: it moves whenever the policies may have changed. A hook
//! that cannot decide (the database is down) says so: the caller reports
//! an error the client can retry, never a silent deny.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sea_orm::DatabaseConnection;
use serde_json::{json, Map, Value};

use crate::auth::{Principal, Role};
use crate::channel::catalog::ChannelDef;
use crate::config::{DatabaseSettings, PermissionSettings};
use crate::metrics::METRICS;
use crate::persistence::permissions::{
    self as queries, AccessAction, AccessOutcome, AccessRequest, RlsState, ROLES,
};
use crate::persistence::policies::{self, PolicyAction, SqlitePolicySet, SqliteRequest};
use crate::persistence::{self, PersistenceError};
use crate::publish::Sender;

/// What is being asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Receive the channel's messages (SELECT on `channels`).
    Subscribe,
    /// Publish on the channel (INSERT on `messages`).
    Publish,
}

/// A question for [`PermissionHook::check`], with what policies may read.
#[derive(Clone, Debug)]
pub enum Request {
    /// Subscribe to the channel.
    Subscribe,
    /// Publish this message on it.
    Publish {
        /// The event name.
        event: String,
        /// The payload as published.
        payload: Map<String, Value>,
    },
}

/// The answer to a permission check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The policies allow it.
    Allow,
    /// The policies deny it.
    Deny,
    /// No decision could be taken (the hook logged why, once); the
    /// request fails with `INTERNAL_ERROR` and may be retried.
    Unavailable,
}

/// A decision on its way.
pub type PendingDecision = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// Decides subscribe and publish requests.
pub trait PermissionHook: Send + Sync + 'static {
    /// The decision, if it can be taken without asking anyone.
    fn quick(&self, principal: &Principal, action: Action) -> Option<Decision>;

    /// Whether `principal` may do `request` on `name`, which resolved to
    /// `channel`.
    fn check(
        &self,
        principal: &Principal,
        request: Request,
        name: &str,
        channel: &ChannelDef,
    ) -> PendingDecision;

    /// Whether `principal` may subscribe to `name` (which resolved to
    /// `channel`): the quick answer if there is one, else a check.
    fn may_subscribe(
        &self,
        principal: &Principal,
        name: &str,
        channel: &ChannelDef,
    ) -> PendingDecision {
        match self.quick(principal, Action::Subscribe) {
            Some(decision) => Box::pin(std::future::ready(decision)),
            None => self.check(principal, Request::Subscribe, name, channel),
        }
    }

    /// Moves whenever the policies may have changed: decisions taken under
    /// an older generation must be taken again.
    fn generation(&self) -> u64;

    /// The policies may have changed (a notification from the database,
    /// the policy API): every cached decision is void from now on, and the
    /// state that quick answers rest on is read again.
    fn policies_changed(&self) -> Refresh<'_> {
        Box::pin(async {})
    }

    /// Reads that state again in case a change went unnoticed.
    fn refresh(&self) -> Refresh<'_> {
        Box::pin(async {})
    }
}

/// A re-read of the policies' state on its way.
pub type Refresh<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Allows everything: InsForge's behaviour while row-level security is off.
pub struct AllowAll;

impl PermissionHook for AllowAll {
    fn quick(&self, _: &Principal, _: Action) -> Option<Decision> {
        Some(Decision::Allow)
    }

    fn check(&self, _: &Principal, _: Request, _: &str, _: &ChannelDef) -> PendingDecision {
        Box::pin(async { Decision::Allow })
    }

    fn generation(&self) -> u64 {
        0
    }
}

/// PostgreSQL's row-level-security policies, evaluated in the database as
/// the caller's role (see [`queries::check_postgres`]).
pub struct PostgresPolicies {
    /// The hook's own pool: a storm of checks waits here, not in the
    /// pipeline's pool.
    db: DatabaseConnection,
    generation: AtomicU64,
    /// The state read under a generation; only that generation may use it.
    state: RwLock<Option<(u64, RlsState)>>,
    timeout: Duration,
}

impl PostgresPolicies {
    /// Opens the hook's pool on `database.url` and reads the policies'
    /// state.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub async fn open(
        database: &DatabaseSettings,
        settings: &PermissionSettings,
    ) -> Result<Arc<PostgresPolicies>, PersistenceError> {
        let pool = DatabaseSettings {
            pool_size: settings.pool_size,
            ..database.clone()
        };
        let policies = Arc::new(PostgresPolicies {
            db: persistence::connect(&pool).await?,
            generation: AtomicU64::new(1),
            state: RwLock::new(None),
            timeout: Duration::from_millis(settings.check_timeout_ms),
        });
        policies.read_state().await;
        Ok(policies)
    }

    /// Reads the policies' state again. A state that differs from the last
    /// one also moves the generation.
    async fn read_state(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        match queries::rls_state(&self.db).await {
            Ok(state) => {
                let mut current = self.state.write();
                if current.is_some_and(|(read_at, _)| read_at > generation) {
                    // A read that began later finished first: it stays.
                    return;
                }
                let differs = current.is_some_and(|(_, old)| old != state);
                *current = Some((generation, state));
                if differs {
                    drop(current);
                    // Decisions taken before the unnoticed change are void;
                    // the state just read stays valid for the new generation.
                    let next = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    if let Some((read_at, _)) = self.state.write().as_mut() {
                        if *read_at == generation {
                            *read_at = next;
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the row-level-security state; checking every request in the database");
            }
        }
    }
}

/// The claims policies see as `request.jwt.claims`: a JWT's own, or the
/// role alone for keys.
fn claims_json(principal: &Principal) -> String {
    match principal {
        Principal::Jwt { claims, .. } => Value::Object((**claims).clone()).to_string(),
        other => json!({ "role": other.role().as_str() }).to_string(),
    }
}

fn role_index(role: Role) -> usize {
    // unwrap: ROLES lists every Role's name.
    ROLES
        .iter()
        .position(|name| *name == role.as_str())
        .unwrap()
}

impl PermissionHook for PostgresPolicies {
    fn quick(&self, principal: &Principal, action: Action) -> Option<Decision> {
        let generation = self.generation.load(Ordering::Acquire);
        let (read_at, state) = (*self.state.read())?;
        if read_at != generation {
            return None;
        }
        let rights = state.roles[role_index(principal.role())];
        let (has_privilege, rls_on) = match action {
            Action::Subscribe => (rights.select_channels, state.channels_rls),
            Action::Publish => (rights.insert_messages, state.messages_rls),
        };
        if !has_privilege {
            Some(Decision::Deny)
        } else if !rls_on || rights.bypass_rls {
            // The check could only fail on the channel's existence, which
            // the caller resolved already.
            Some(Decision::Allow)
        } else {
            None
        }
    }

    fn check(
        &self,
        principal: &Principal,
        request: Request,
        name: &str,
        channel: &ChannelDef,
    ) -> PendingDecision {
        let role = principal.role();
        let action = match request {
            Request::Subscribe => AccessAction::Subscribe,
            Request::Publish { event, payload } => AccessAction::Publish {
                channel_id: channel.id,
                event_name: event,
                payload: Value::Object(payload),
                sender_type: Sender::of(principal).sender_type.as_str(),
                sender_id: Sender::of(principal).sender_id,
            },
        };
        let request = AccessRequest {
            role: role.as_str(),
            claims: claims_json(principal),
            channel_name: name.to_owned(),
            action,
        };
        let db = self.db.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let checked =
                tokio::time::timeout(timeout, queries::check_postgres(&db, &request)).await;
            let decision = match checked {
                Ok(Ok(AccessOutcome::Allowed)) => Decision::Allow,
                Ok(Ok(AccessOutcome::Denied)) => Decision::Deny,
                Ok(Ok(AccessOutcome::PolicyFailed(error))) => {
                    METRICS.permission_policy_errors.inc();
                    tracing::warn!(role = request.role, channel = %request.channel_name, %error,
                        "a policy failed; denied for this caller");
                    Decision::Deny
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "permission check failed: database unavailable");
                    Decision::Unavailable
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = timeout.as_millis() as u64,
                        "permission check timed out"
                    );
                    Decision::Unavailable
                }
            };
            METRICS.permission_checks[decision as usize].inc();
            decision
        })
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn policies_changed(&self) -> Refresh<'_> {
        // Until the new state is read, every check goes to the database.
        self.generation.fetch_add(1, Ordering::AcqRel);
        Box::pin(self.read_state())
    }

    fn refresh(&self) -> Refresh<'_> {
        Box::pin(self.read_state())
    }
}

/// The SQLite policy store (`persistence::policies`): conditions are SQLite
/// expressions over the one-row table `request`, evaluated by SQLite. An
/// action that never had a policy is open; once it had one, a caller needs
/// a policy for its role whose condition holds (PostgreSQL's semantics with
/// row-level security on).
pub struct SqlitePolicies {
    db: DatabaseConnection,
    generation: AtomicU64,
    set: RwLock<SqlitePolicySet>,
    timeout: Duration,
}

impl SqlitePolicies {
    /// Reads the store.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn open(
        db: &DatabaseConnection,
        settings: &PermissionSettings,
    ) -> Result<Arc<SqlitePolicies>, PersistenceError> {
        Ok(Arc::new(SqlitePolicies {
            set: RwLock::new(policies::sqlite_policies(db).await?),
            db: db.clone(),
            generation: AtomicU64::new(1),
            timeout: Duration::from_millis(settings.check_timeout_ms),
        }))
    }

    /// Reads the store again; a change moves the generation.
    async fn reload(&self, changed: bool) {
        match policies::sqlite_policies(&self.db).await {
            Ok(set) => {
                let mut current = self.set.write();
                if changed || *current != set {
                    *current = set;
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the policies");
                if changed {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// The decision when none needs evaluating: the action is not
    /// governed, the role has no policy, or one of its policies is `true`.
    /// Allocates nothing (every publish asks).
    fn decided(set: &SqlitePolicySet, role: Role, action: PolicyAction) -> Option<Decision> {
        let enforced = match action {
            PolicyAction::Subscribe => set.subscribe_enforced,
            PolicyAction::Publish => set.publish_enforced,
        };
        if !enforced {
            return Some(Decision::Allow);
        }
        let mut applicable = Self::applicable(set, role, action).peekable();
        if applicable.peek().is_none() {
            return Some(Decision::Deny);
        }
        applicable
            .any(|condition| condition.eq_ignore_ascii_case("true") || condition == "1")
            .then_some(Decision::Allow)
    }

    /// The conditions of the policies that may allow `role` to do `action`.
    fn applicable(
        set: &SqlitePolicySet,
        role: Role,
        action: PolicyAction,
    ) -> impl Iterator<Item = &str> {
        set.policies
            .iter()
            .filter(move |policy| policy.action == action)
            .filter(move |policy| {
                policy
                    .roles
                    .iter()
                    .any(|r| r == role.as_str() || r == "public")
            })
            .map(|policy| policy.condition.trim())
    }
}

fn policy_action(action: Action) -> PolicyAction {
    match action {
        Action::Subscribe => PolicyAction::Subscribe,
        Action::Publish => PolicyAction::Publish,
    }
}

impl PermissionHook for SqlitePolicies {
    fn quick(&self, principal: &Principal, action: Action) -> Option<Decision> {
        Self::decided(&self.set.read(), principal.role(), policy_action(action))
    }

    fn check(
        &self,
        principal: &Principal,
        request: Request,
        name: &str,
        _channel: &ChannelDef,
    ) -> PendingDecision {
        let (action, event) = match request {
            Request::Subscribe => (PolicyAction::Subscribe, None),
            Request::Publish { event, .. } => (PolicyAction::Publish, Some(event)),
        };
        let conditions: Vec<String> = {
            let set = self.set.read();
            if let Some(decision) = Self::decided(&set, principal.role(), action) {
                return Box::pin(async move { decision });
            }
            Self::applicable(&set, principal.role(), action)
                .map(str::to_owned)
                .collect()
        };
        let request = SqliteRequest {
            user_id: match principal {
                Principal::Jwt {
                    sub,
                    role: Role::Authenticated,
                    ..
                } => Some(sub.clone()),
                _ => None,
            },
            role: principal.role().as_str(),
            channel: name.to_owned(),
            claims: claims_json(principal),
            event,
        };
        let db = self.db.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let evaluate = async {
                // Permissive, as PostgreSQL's: any policy that holds allows.
                for condition in &conditions {
                    match policies::evaluate_sqlite(&db, condition, &request).await {
                        Ok(true) => return Decision::Allow,
                        Ok(false) => {}
                        Err(err) if persistence::database_error(&err).is_some() => {
                            METRICS.permission_policy_errors.inc();
                            tracing::warn!(role = request.role, channel = %request.channel, error = %err,
                                "a policy failed; it allows nothing for this caller");
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "permission check failed: database unavailable");
                            return Decision::Unavailable;
                        }
                    }
                }
                Decision::Deny
            };
            let decision = tokio::time::timeout(timeout, evaluate)
                .await
                .unwrap_or(Decision::Unavailable);
            METRICS.permission_checks[decision as usize].inc();
            decision
        })
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn policies_changed(&self) -> Refresh<'_> {
        Box::pin(self.reload(true))
    }

    fn refresh(&self) -> Refresh<'_> {
        Box::pin(self.reload(false))
    }
}
