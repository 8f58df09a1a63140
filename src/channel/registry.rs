//! The `ChannelRegistry` actor: maps resolved channel names to their
//! `Channel` actors, creating one on first use and retiring it once idle.
//!
//! Joins, REST publishes and stored messages reach a channel through the
//! registry, which counts what it forwarded. A channel that has gone idle reports how many
//! messages it received; the registry retires it only if that equals what
//! it forwarded, so a join already on its way is never lost. Sockets that
//! joined publish to their channel directly.
//!
//! Channels run on a small pool of arbiters (threads), spread by name, so
//! fan-out uses every core.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::{Actor, Addr, Arbiter, ArbiterHandle, AsyncContext, Context, Handler};
use bytestring::ByteString;

use super::catalog::ChannelCatalog;
use super::{
    Barrier, Channel, ChannelSettings, Join, Leave, Publish, ReloadRemote, RemoteChanges, Retire,
    Stored,
};
use crate::cluster::ChannelLinks;
use crate::persistence::hand_on::HandOn;
use crate::persistence::presence::PresenceEnvelope;
use crate::persistence::writer::{CommittedSeq, MessageWriter};
use crate::protocol::engineio::Frame;
use crate::webhooks::Webhooks;

struct Entry {
    channel: Addr<Channel>,
    /// Joins and publishes forwarded to the channel.
    n_forwarded: u64,
}

/// The name → channel map.
pub struct ChannelRegistry {
    channels: HashMap<Arc<str>, Entry>,
    writer: Addr<MessageWriter>,
    /// Given to each channel: where durable messages go for webhooks.
    webhooks: Webhooks,
    /// Given to each channel: how it runs.
    settings: ChannelSettings,
    /// Where a new channel's deliveries begin after.
    committed: CommittedSeq,
    /// Enabled channels: rows others stored for any other go nowhere.
    catalog: Arc<ChannelCatalog>,
    /// Threads the channels run on; they live as long as the registry.
    arbiters: Vec<Arbiter>,
    /// Given to each channel: its part in the cluster (PostgreSQL).
    cluster: Option<ChannelLinks>,
}

impl ChannelRegistry {
    /// A registry whose channels write through `writer`, hand webhooks to
    /// `webhooks`, run on `n_threads` arbiters with `settings`, and start
    /// after the `seq` that `committed` holds then; rows others stored
    /// reach only channels `catalog` has enabled.
    pub fn new(
        writer: Addr<MessageWriter>,
        webhooks: Webhooks,
        n_threads: usize,
        settings: ChannelSettings,
        committed: CommittedSeq,
        catalog: Arc<ChannelCatalog>,
    ) -> Self {
        ChannelRegistry {
            channels: HashMap::new(),
            writer,
            webhooks,
            settings,
            committed,
            catalog,
            arbiters: (0..n_threads.max(1)).map(|_| Arbiter::new()).collect(),
            cluster: None,
        }
    }

    /// Channels take part in the cluster (presence, ephemeral messages)
    /// through `links`.
    pub fn with_cluster(mut self, links: ChannelLinks) -> Self {
        self.cluster = Some(links);
        self
    }

    /// Starts the registry on an arbiter of its own.
    pub fn start_on_own_thread(self) -> Addr<ChannelRegistry> {
        // The arbiter thread runs until the system stops; dropping this
        // handle to it does not stop it.
        ChannelRegistry::start_in_arbiter(&Arbiter::new().handle(), |_| self)
    }

    fn arbiter_for(&self, name: &str) -> ArbiterHandle {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        self.arbiters[(hasher.finish() as usize) % self.arbiters.len()].handle()
    }

    fn entry(&mut self, name: &str, ctx: &mut Context<Self>) -> &mut Entry {
        if !self.channels.contains_key(name) {
            let name: Arc<str> = name.into();
            let registry = ctx.address();
            let writer = self.writer.clone();
            let webhooks = self.webhooks.clone();
            let channel_name = name.clone();
            let settings = self.settings;
            let committed = self.committed.get();
            let cluster = self.cluster.clone();
            let channel = Channel::start_in_arbiter(&self.arbiter_for(&name), move |_| {
                Channel::new(
                    channel_name,
                    registry,
                    writer,
                    webhooks,
                    settings,
                    committed,
                    cluster,
                )
            });
            tracing::debug!(channel = %name, "channel started");
            crate::metrics::METRICS.channels_started.inc();
            self.channels.insert(
                name.clone(),
                Entry {
                    channel,
                    n_forwarded: 0,
                },
            );
        }
        // unwrap: inserted above if it was missing.
        self.channels.get_mut(name).unwrap()
    }
}

impl Actor for ChannelRegistry {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Subscribe a socket to the channel `name`.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct JoinChannel {
    /// The resolved channel name.
    pub name: String,
    /// The join to forward.
    pub join: Join,
}

impl Handler<JoinChannel> for ChannelRegistry {
    type Result = ();

    fn handle(&mut self, message: JoinChannel, ctx: &mut Context<Self>) {
        let entry = self.entry(&message.name, ctx);
        entry.n_forwarded += 1;
        entry.channel.do_send(message.join);
    }
}

/// Unsubscribe a socket from the channel `name` whose join it sent but
/// whose answer it never got (it closed meanwhile). Through the registry,
/// so it reaches the channel after the join did.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct LeaveChannel {
    /// The resolved channel name.
    pub name: String,
    /// The leave to forward.
    pub leave: Leave,
}

impl Handler<LeaveChannel> for ChannelRegistry {
    type Result = ();

    fn handle(&mut self, message: LeaveChannel, _: &mut Context<Self>) {
        // Not counted as forwarded: a channel retired meanwhile has
        // nobody to remove, and one that is not has no message to await.
        if let Some(entry) = self.channels.get(message.name.as_str()) {
            entry.channel.do_send(message.leave);
        }
    }
}

/// Publish to the channel `name`, whether or not anyone listens.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct PublishTo {
    /// The resolved channel name.
    pub name: String,
    /// The publish to forward.
    pub publish: Publish,
}

impl Handler<PublishTo> for ChannelRegistry {
    type Result = ();

    fn handle(&mut self, message: PublishTo, ctx: &mut Context<Self>) {
        let entry = self.entry(&message.name, ctx);
        entry.n_forwarded += 1;
        let mut publish = message.publish;
        publish.via_registry = true;
        entry.channel.do_send(publish);
    }
}

/// Deliver a message already in history to the live subscribers of
/// `name`; nothing happens when nobody listens (the channel is not
/// started for it).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct DeliverStored(pub Stored);

impl Handler<DeliverStored> for ChannelRegistry {
    type Result = ();

    fn handle(&mut self, DeliverStored(mut stored): DeliverStored, _: &mut Context<Self>) {
        if let Some(entry) = self.channels.get_mut(stored.row.channel_name.as_str()) {
            entry.n_forwarded += 1;
            stored.via_registry = true;
            entry.channel.do_send(stored);
        }
    }
}

impl Handler<HandOn> for ChannelRegistry {
    type Result = ();

    /// Rows others stored, to their live channels in order, then the
    /// writer's own batch: each channel's mailbox gets them in `seq` order.
    /// A row of a channel that is gone or disabled goes nowhere (InsForge
    /// skips them too).
    fn handle(&mut self, hand_on: HandOn, ctx: &mut Context<Self>) {
        for row in hand_on.stored {
            let enabled = row.channel_id.and_then(|id| self.catalog.by_id(id));
            if enabled.is_none() {
                continue;
            }
            self.handle(
                DeliverStored(Stored {
                    row,
                    via_registry: false,
                }),
                ctx,
            );
        }
        for (notify, persisted) in hand_on.persisted {
            notify.do_send(persisted);
        }
    }
}

/// Another node's member changes, as its notification carried them.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct RemotePresence(pub PresenceEnvelope);

impl Handler<RemotePresence> for ChannelRegistry {
    type Result = ();

    /// Gives each live channel its changes (in order); a channel started
    /// later loads them from the database.
    fn handle(&mut self, RemotePresence(envelope): RemotePresence, _: &mut Context<Self>) {
        let node: Arc<str> = envelope.node.into();
        let mut by_channel: HashMap<String, Vec<(String, Option<serde_json::Value>)>> =
            HashMap::new();
        for change in envelope.changes {
            if self.channels.contains_key(change.channel.as_str()) {
                by_channel
                    .entry(change.channel)
                    .or_default()
                    .push((change.presence_id, change.member));
            }
        }
        for (name, changes) in by_channel {
            if let Some(entry) = self.channels.get(name.as_str()) {
                entry.channel.do_send(RemoteChanges {
                    node: node.clone(),
                    changes,
                });
            }
        }
    }
}

/// Ephemeral messages heard from PostgreSQL, in order: (channel, packet).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct RemoteEphemeral(pub Vec<(String, ByteString)>);

impl Handler<RemoteEphemeral> for ChannelRegistry {
    type Result = ();

    /// Gives each live channel its messages, in order; a channel with no
    /// actor here has no subscriber here.
    fn handle(&mut self, RemoteEphemeral(messages): RemoteEphemeral, _: &mut Context<Self>) {
        let mut by_channel: HashMap<String, Vec<Frame>> = HashMap::new();
        for (channel, packet) in messages {
            if self.channels.contains_key(channel.as_str()) {
                by_channel
                    .entry(channel)
                    .or_default()
                    .push(Frame::Text(packet));
            }
        }
        for (name, frames) in by_channel {
            if let Some(entry) = self.channels.get(name.as_str()) {
                entry.channel.do_send(super::Relayed(frames));
            }
        }
    }
}

/// Every live channel loads the other nodes' members again (the listener
/// may have missed changes).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct ReloadPresence;

impl Handler<ReloadPresence> for ChannelRegistry {
    type Result = ();

    fn handle(&mut self, _: ReloadPresence, _: &mut Context<Self>) {
        for entry in self.channels.values() {
            entry.channel.do_send(ReloadRemote);
        }
    }
}

/// The live channel actors whose names start with `prefix`, sorted by
/// name, `offset` and `limit` applied; with how many match in all.
#[derive(actix::Message)]
#[rtype(result = "ActorPage")]
pub struct ListActors {
    /// Only names starting with this.
    pub prefix: String,
    /// Most actors returned.
    pub limit: usize,
    /// Matching actors skipped first.
    pub offset: usize,
}

/// The answer to [`ListActors`].
pub struct ActorPage {
    /// Actors matching the prefix, before `offset` and `limit`.
    pub total: usize,
    /// The page, by name.
    pub actors: Vec<(Arc<str>, Addr<Channel>)>,
}

impl Handler<ListActors> for ChannelRegistry {
    type Result = actix::MessageResult<ListActors>;

    fn handle(&mut self, list: ListActors, _: &mut Context<Self>) -> Self::Result {
        let mut matching: Vec<(&Arc<str>, &Entry)> = self
            .channels
            .iter()
            .filter(|(name, _)| name.starts_with(&list.prefix))
            .collect();
        matching.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let total = matching.len();
        let actors = matching
            .into_iter()
            .skip(list.offset)
            .take(list.limit)
            .map(|(name, entry)| (name.clone(), entry.channel.clone()))
            .collect();
        actix::MessageResult(ActorPage { total, actors })
    }
}

/// The live actor of one name, if any.
#[derive(actix::Message)]
#[rtype(result = "Option<Addr<Channel>>")]
pub struct FindActor(pub String);

impl Handler<FindActor> for ChannelRegistry {
    type Result = Option<Addr<Channel>>;

    fn handle(&mut self, FindActor(name): FindActor, _: &mut Context<Self>) -> Self::Result {
        self.channels
            .get(name.as_str())
            .map(|entry| entry.channel.clone())
    }
}

/// A channel has no subscribers and nothing pending.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Idle {
    /// The channel's name.
    pub name: Arc<str>,
    /// Joins and publishes it has received so far.
    pub n_received: u64,
}

impl Handler<Idle> for ChannelRegistry {
    type Result = ();

    fn handle(&mut self, idle: Idle, _: &mut Context<Self>) {
        let retire = self
            .channels
            .get(&idle.name)
            .is_some_and(|entry| entry.n_forwarded == idle.n_received);
        if retire {
            if let Some(entry) = self.channels.remove(&idle.name) {
                entry.channel.do_send(Retire);
                crate::metrics::METRICS.channels_retired.inc();
                tracing::debug!(channel = %idle.name, "channel retired");
            }
        }
    }
}

/// How many channels are live.
#[derive(actix::Message)]
#[rtype(result = "usize")]
pub struct CountChannels;

impl Handler<CountChannels> for ChannelRegistry {
    type Result = usize;

    fn handle(&mut self, _: CountChannels, _: &mut Context<Self>) -> usize {
        self.channels.len()
    }
}

/// Resolves once every live channel has handled what it had received.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct SyncChannels;

impl Handler<SyncChannels> for ChannelRegistry {
    type Result = actix::ResponseFuture<()>;

    fn handle(&mut self, _: SyncChannels, _: &mut Context<Self>) -> Self::Result {
        let syncs: Vec<_> = self
            .channels
            .values()
            .map(|entry| entry.channel.send(Barrier))
            .collect();
        Box::pin(async move {
            for sync in syncs {
                let _ = sync.await;
            }
        })
    }
}
