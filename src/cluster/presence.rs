//! Cluster-wide presence (PostgreSQL). Each node's channels announce their
//! own members to the [`PresenceBus`], which writes them to `presence` and
//! notifies the other nodes in batches (one statement per batch, as the
//! message writer does); the listener hands other nodes' notifications to
//! the registry, which gives each live channel its part. A channel that
//! starts loads the other nodes' members of its name before it answers its
//! first subscribe ([`PresenceLink::elsewhere`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, WrapFuture};
use sea_orm::DatabaseConnection;
use serde_json::Value;

use super::Peers;
use crate::persistence::presence::{self, PresenceChange};
use crate::persistence::PersistenceError;

/// Other nodes' members of one channel: presence id → node → member.
pub type RemoteMembers = HashMap<String, HashMap<String, Value>>;

/// What a channel holds to take part in cluster presence.
#[derive(Clone)]
pub struct PresenceLink {
    db: DatabaseConnection,
    node: Arc<str>,
    bus: Addr<PresenceBus>,
    peers: Peers,
}

impl PresenceLink {
    /// Starts the bus of `node`, among `peers`, on `arbiter`.
    pub fn start(
        db: DatabaseConnection,
        node: Arc<str>,
        peers: Peers,
        arbiter: &actix::ArbiterHandle,
    ) -> PresenceLink {
        let bus = PresenceBus {
            db: db.clone(),
            node: node.clone(),
            waiting: HashMap::new(),
            order: Vec::new(),
            writing: false,
        };
        let bus = PresenceBus::start_in_arbiter(arbiter, move |_| bus);
        PresenceLink {
            db,
            node,
            bus,
            peers,
        }
    }

    /// Whether no other node is alive (nobody else sees this node's
    /// members).
    pub fn alone(&self) -> bool {
        self.peers.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    /// Tells the other nodes that `presence_id` is now present in `channel`
    /// on this node (`member`), or no longer (`None`).
    pub fn announce(&self, channel: &str, presence_id: &str, member: Option<Value>) {
        self.bus.do_send(Announce(PresenceChange {
            channel: channel.to_owned(),
            presence_id: presence_id.to_owned(),
            member,
        }));
    }

    /// The other nodes' members of `channel`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn elsewhere(&self, channel: &str) -> Result<RemoteMembers, PersistenceError> {
        presence::elsewhere(&self.db, channel, &self.node).await
    }
}

/// Writes and notifies this node's member changes.
pub struct PresenceBus {
    db: DatabaseConnection,
    node: Arc<str>,
    /// The latest change of each (channel, presence id) not yet written.
    waiting: HashMap<(String, String), PresenceChange>,
    /// The keys of `waiting` in the order they first changed.
    order: Vec<(String, String)>,
    /// A batch is being written.
    writing: bool,
}

/// How long the bus waits before writing a failed batch again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl PresenceBus {
    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.order.is_empty() {
            return;
        }
        self.writing = true;
        let mut waiting = std::mem::take(&mut self.waiting);
        let changes: Vec<PresenceChange> = std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|key| waiting.remove(&key))
            .collect();
        let db = self.db.clone();
        let node = self.node.clone();
        let write = async move {
            let written = presence::write(&db, &node, &changes).await;
            (written, changes)
        };
        ctx.spawn(write.into_actor(self).map(|(written, changes), bus, ctx| {
            bus.writing = false;
            match written {
                Ok(()) => bus.write(ctx),
                Err(err) => {
                    tracing::warn!(error = %err, n = changes.len(),
                        "cannot tell the other nodes of presence changes; retrying");
                    // Changes made meanwhile are newer: they win.
                    let mut order = Vec::with_capacity(changes.len() + bus.order.len());
                    for change in changes {
                        let key = (change.channel.clone(), change.presence_id.clone());
                        if let std::collections::hash_map::Entry::Vacant(entry) =
                            bus.waiting.entry(key.clone())
                        {
                            entry.insert(change);
                            order.push(key);
                        }
                    }
                    order.append(&mut bus.order);
                    bus.order = order;
                    ctx.run_later(RETRY_AFTER, |bus, ctx| bus.write(ctx));
                }
            }
        }));
    }
}

impl Actor for PresenceBus {
    type Context = Context<Self>;
}

/// A member change of this node's channel.
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Announce(PresenceChange);

impl Handler<Announce> for PresenceBus {
    type Result = ();

    fn handle(&mut self, Announce(change): Announce, ctx: &mut Context<Self>) {
        let key = (change.channel.clone(), change.presence_id.clone());
        if self.waiting.insert(key.clone(), change).is_none() {
            self.order.push(key);
        }
        // Written at the end of this mailbox turn, with what else arrived.
        if !self.writing && self.order.len() == 1 {
            ctx.notify(Flush);
        }
    }
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for PresenceBus {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.write(ctx);
    }
}
