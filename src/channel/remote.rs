//! The members other nodes have in a channel (cluster presence, on
//! PostgreSQL). A channel keeps them beside its own: a member is present
//! while any node has it, so subscribers see `presence:join` when the
//! first node gains it and `presence:leave` when the last one loses it,
//! once per logical member (a user with sockets on two nodes is one).
//!
//! A channel loads the others' members when it starts (its first
//! subscribe waits for them) and again when the listener lost
//! notifications; changes heard during a load are applied after it.

use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use serde_json::Value;

use super::Channel;
use crate::cluster::presence::RemoteMembers;

/// Another node's member changes in this channel: each presence id with
/// its member, or `None` when it left that node.
#[derive(actix::Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct RemoteChanges {
    /// The node.
    pub node: Arc<str>,
    /// The changes, in order.
    pub changes: Vec<(String, Option<Value>)>,
}

/// Load the other nodes' members again: notifications may have been lost
/// (the listening connection was down).
#[derive(actix::Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct ReloadRemote;

impl Channel {
    /// Reads the other nodes' members; changes heard meanwhile wait.
    pub(super) fn load_remote(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if self.remote_waiting.is_some() {
            self.reload_wanted = true;
            return;
        }
        self.remote_waiting = Some(Vec::new());
        let name = self.name.clone();
        let load = async move { cluster.elsewhere(&name).await };
        ctx.spawn(load.into_actor(self).map(|loaded, channel, ctx| {
            let members = loaded.unwrap_or_else(|err| {
                tracing::warn!(channel = %channel.name, error = %err,
                    "cannot read the other nodes' presence members; showing this node's only");
                RemoteMembers::new()
            });
            channel.replace_remote(members, ctx);
            for changes in channel.remote_waiting.take().unwrap_or_default() {
                channel.apply_remote(changes, ctx);
            }
            if let Some(joins) = channel.joins_waiting.take() {
                for subscriber in joins {
                    channel.join(subscriber, ctx);
                }
                channel.report_if_idle();
            }
            if std::mem::take(&mut channel.reload_wanted) {
                channel.load_remote(ctx);
            }
        }));
    }

    /// Puts `members` in place of what was known of the other nodes, and
    /// tells subscribers who appeared and who went.
    fn replace_remote(&mut self, members: RemoteMembers, ctx: &mut Context<Self>) {
        let old = std::mem::replace(&mut self.remote, members);
        for (presence_id, nodes) in &old {
            if self.presence.contains_key(presence_id.as_str())
                || self.remote.contains_key(presence_id)
            {
                continue;
            }
            if let Some(member) = nodes.values().next() {
                self.tell_presence("presence:leave", &member.to_string(), None, ctx);
            }
        }
        let appeared: Vec<Value> = self
            .remote
            .iter()
            .filter(|(presence_id, _)| {
                !self.presence.contains_key(presence_id.as_str()) && !old.contains_key(*presence_id)
            })
            .filter_map(|(_, nodes)| nodes.values().next().cloned())
            .collect();
        for member in appeared {
            self.tell_presence("presence:join", &member.to_string(), None, ctx);
        }
    }

    /// Applies one node's changes.
    fn apply_remote(
        &mut self,
        RemoteChanges { node, changes }: RemoteChanges,
        ctx: &mut Context<Self>,
    ) {
        for (presence_id, member) in changes {
            let here = self.presence.contains_key(presence_id.as_str());
            match member {
                Some(member) => {
                    let nodes = self.remote.entry(presence_id).or_default();
                    let new = nodes.is_empty();
                    nodes.insert(node.to_string(), member.clone());
                    if new && !here {
                        self.tell_presence("presence:join", &member.to_string(), None, ctx);
                    }
                }
                None => {
                    let Some(nodes) = self.remote.get_mut(&presence_id) else {
                        continue;
                    };
                    let Some(member) = nodes.remove(&*node) else {
                        continue;
                    };
                    if nodes.is_empty() {
                        self.remote.remove(&presence_id);
                        if !here {
                            self.tell_presence("presence:leave", &member.to_string(), None, ctx);
                        }
                    }
                }
            }
        }
    }
}

impl Handler<RemoteChanges> for Channel {
    type Result = ();

    fn handle(&mut self, changes: RemoteChanges, ctx: &mut Context<Self>) {
        match &mut self.remote_waiting {
            Some(waiting) => waiting.push(changes),
            None => self.apply_remote(changes, ctx),
        }
    }
}

impl Handler<ReloadRemote> for Channel {
    type Result = ();

    fn handle(&mut self, _: ReloadRemote, ctx: &mut Context<Self>) {
        self.load_remote(ctx);
    }
}
