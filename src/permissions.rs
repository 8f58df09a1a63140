//! The permission hook: may this principal subscribe to, or publish on,
//! this channel? Open by default; the row-level-security policies of
//! PostgreSQL (and their SQLite equivalent) plug in here.
//!
//! Decisions are taken when a socket subscribes and kept for the life of
//! that subscription, as Supabase does; never shared between sockets.

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

/// A pending decision.
pub type Decision = Pin<Box<dyn Future<Output = bool> + Send>>;

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
    ) -> Decision;
}

/// Allows everything: InsForge's behaviour while row-level security is off.
pub struct AllowAll;

impl PermissionHook for AllowAll {
    fn check(&self, _: &Principal, _: Action, _: &str, _: &ChannelDef) -> Decision {
        Box::pin(async { true })
    }
}
