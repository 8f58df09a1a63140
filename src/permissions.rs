//! The permission hook: may this principal subscribe to, or publish on,
//! this channel? Open by default; the row-level-security policies of
//! PostgreSQL (and their SQLite equivalent) plug in here.
//!
//! Decisions are taken when a socket subscribes and kept for the life of
//! that subscription, as Supabase does; never shared between sockets. A
//! hook that cannot decide (the database is down) says so: the caller
//! reports an error the client can retry, never a silent deny.

use std::future::Future;
use std::pin::Pin;

use crate::auth::Principal;
use crate::channel::catalog::ChannelDef;

/// What is being asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Receive the channel's messages (SELECT on `channels`).
    Subscribe,
    /// Publish on the channel (INSERT on `messages`).
    Publish,
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
    /// Whether `principal` may do `action` on `name`, which resolved to
    /// `channel`.
    fn check(
        &self,
        principal: &Principal,
        action: Action,
        name: &str,
        channel: &ChannelDef,
    ) -> PendingDecision;
}

/// Allows everything: InsForge's behaviour while row-level security is off.
pub struct AllowAll;

impl PermissionHook for AllowAll {
    fn check(&self, _: &Principal, _: Action, _: &str, _: &ChannelDef) -> PendingDecision {
        Box::pin(async { Decision::Allow })
    }
}
