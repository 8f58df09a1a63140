//! Channels: one `Channel` actor per resolved channel name with at least
//! one subscriber (`order:123`), found or created by the `ChannelRegistry`.
//!
//! A channel owns its subscribers, its presence table (one logical member
//! per user, however many sockets) and the order of its messages. Messages
//! come in two ways and share one queue, so a channel has one delivery
//! order whatever the source:
//! - [`Publish`]: stamp the message, hand it to the `MessageWriter`, and
//!   deliver it once durable;
//! - [`Stored`]: a message already in history (the PostgreSQL listener, a
//!   replay, another node), delivered as soon as everything before it is.
//!
//! Each message is encoded once and the same frame goes to every
//! subscriber, as a [`SubscriberEvent`].
//!
//! # Layout
//! - [`catalog`]: channel definitions in memory, for name resolution.
//! - [`delivery`]: the wire form of deliveries and presence events.
//! - [`registry`]: the `ChannelRegistry` actor.
//! - [`remote`]: the members other nodes have (cluster presence).
//! - [`subscriber`]: subscribers and what the channel tells them.

pub mod catalog;
pub mod delivery;
pub mod registry;
pub mod remote;
pub mod subscriber;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Recipient, SpawnHandle};
use chrono::{DateTime, SecondsFormat, Utc};
use entity::messages;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::cluster::presence::{PresenceLink, RemoteMembers};
use crate::cluster::relay::{RelayDone, RelayLink};
use crate::cluster::ChannelLinks;
use crate::metrics::METRICS;
use crate::persistence::writer::{MessageWriter, Persist, Persisted, PersistedTo, RecordAudience};
use crate::protocol::engineio::Frame;
use crate::publish::{Outgoing, PublishError, Sender};
use crate::webhooks::{WebhookMessage, Webhooks};
use catalog::ChannelDef;
pub use delivery::{encode_delivery, encode_event, open_delivery, open_stored, OpenFrame};
use registry::{ChannelRegistry, Idle};
pub use remote::{ReloadRemote, RemoteChanges};
pub use subscriber::{Delivered, Joined, Member, Published, Subscriber, SubscriberEvent};

/// Where the outcome of a publish goes.
#[derive(Debug)]
pub enum Reply {
    /// The publishing socket: told if it asked for an ack, or if the
    /// publish failed.
    Socket {
        /// The publishing socket's events (shared: a socket sends the same
        /// one with each publish).
        to: Arc<Recipient<SubscriberEvent>>,
        /// The Socket.IO ack id to answer, if any.
        ack_id: Option<u64>,
    },
    /// A REST request waiting for the stored row, with its audience.
    Http(oneshot::Sender<Result<messages::Model, PublishError>>),
}

/// Subscribe a socket; the answer goes to the socket as
/// [`SubscriberEvent::Joined`].
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Join(pub Subscriber);

/// Unsubscribe a socket.
#[derive(actix::Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Leave {
    /// The subscriber's id.
    pub subscriber_id: u64,
    /// Its connection dropped (rather than the client leaving): its
    /// presence member stays for the leave grace, in case it comes back.
    pub dropped: bool,
}

/// Store a message, then deliver it.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The message.
    pub message: Outgoing,
    /// Where its outcome goes.
    pub reply: Reply,
    /// Set by the registry when it forwarded this publish (it counts them).
    pub via_registry: bool,
}

/// Deliver a message that is already in history, in order with the rest.
/// Its id and timestamp are kept; its audience is recorded as for any
/// other message.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Stored {
    /// The stored row.
    pub row: messages::Model,
    /// Set by the registry when it forwarded this message (it counts them).
    pub via_registry: bool,
}

/// Answers once every message received before it is handled (shutdown
/// uses it to know all publishes reached the writer).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Barrier;

impl Handler<Barrier> for Channel {
    type Result = ();

    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) {}
}

/// What an operator sees of a channel actor (`GET /api/realtime/actors`).
#[derive(Clone, Debug)]
pub struct ActorView {
    /// The resolved name.
    pub name: Arc<str>,
    /// Subscribed sockets.
    pub subscribers: usize,
    /// Logical presence members (a user with two sockets is one).
    pub presence_members: usize,
    /// Messages delivered since the actor started.
    pub messages_delivered: u64,
    /// Messages accepted and not yet durable (or waiting behind one).
    pub pending_writes: usize,
    /// When it last handled a join, leave or message.
    pub last_activity_at: DateTime<Utc>,
    /// When the actor started.
    pub created_at: DateTime<Utc>,
    /// With [`Inspect::detail`]: the subscribed sockets' ids and the
    /// presence members as subscribers see them (a JSON array).
    pub detail: Option<(Vec<Arc<str>>, Arc<str>)>,
}

/// Asks a channel what it holds; answered between two messages, so a
/// channel that is busy answers late (callers bound their wait).
#[derive(actix::Message)]
#[rtype(result = "ActorView")]
pub struct Inspect {
    /// Also list the subscribers and presence members.
    pub detail: bool,
}

impl Handler<Inspect> for Channel {
    type Result = actix::MessageResult<Inspect>;

    fn handle(&mut self, inspect: Inspect, _: &mut Context<Self>) -> Self::Result {
        let detail = inspect.detail.then(|| {
            let mut sockets: Vec<Arc<str>> = self
                .subscribers
                .values()
                .map(|subscriber| subscriber.socket_id.clone())
                .collect();
            sockets.sort_unstable();
            (sockets, self.members_json())
        });
        actix::MessageResult(ActorView {
            name: self.name.clone(),
            subscribers: self.subscribers.len(),
            presence_members: self.presence.len(),
            messages_delivered: self.n_delivered,
            pending_writes: self.pending.len(),
            last_activity_at: self.last_activity_at,
            created_at: self.created_at,
            detail,
        })
    }
}

/// The registry retires an idle channel.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Retire;

/// A message in the channel's queue, from either way in.
struct Pending {
    id: Uuid,
    /// The stored row, kept only for a REST publisher, who gets it back.
    row: Option<messages::Model>,
    /// Sealed with the offset when delivered.
    frame: OpenFrame,
    /// Known once durable.
    seq: Option<i64>,
    /// For a message stored in history (not an ephemeral channel's), the
    /// audience its row was stored with: this channel's subscribers when
    /// it stamped the message (0 for rows others stored). Delivery records
    /// only the difference, so a row is not written a second time when
    /// everyone who was there got it.
    stored_audience: Option<i32>,
    /// `None` for [`Stored`] messages: nobody waits for them.
    reply: Option<Reply>,
    /// `None` until the writer answers; `Stored` messages start durable.
    outcome: Option<Result<(), PublishError>>,
    /// What goes to the channel's webhook URLs once durable.
    webhook: Webhook,
    /// When the channel accepted it (the publish-to-delivery histogram).
    accepted_at: Instant,
}

/// A pending message's webhooks.
enum Webhook {
    /// The channel has no webhook URLs (or the message came stored).
    None,
    /// Ready for the dispatcher, with the definition whose URLs get it.
    Ready(WebhookMessage, Arc<ChannelDef>),
    /// The dispatcher is full: the message waits in the backlog, and was
    /// not copied for it.
    Deferred,
}

struct PresenceEvent {
    seq: u64,
    frame: Frame,
    /// The joiner, who is told nothing of its own join.
    except: Option<u64>,
}

/// Sends the queued presence events (the channel notifies itself).
#[derive(actix::Message)]
#[rtype(result = "()")]
struct FlushPresence;

/// Delivers what is ready (the channel notifies itself after ephemeral
/// messages).
#[derive(actix::Message)]
#[rtype(result = "()")]
struct DeliverReady;

impl Handler<DeliverReady> for Channel {
    type Result = ();

    fn handle(&mut self, _: DeliverReady, ctx: &mut Context<Self>) {
        self.delivery_scheduled = false;
        self.deliver_ready(ctx);
    }
}

struct PresenceEntry {
    /// The member (`{presenceId, type, joinedAt}`) as JSON: encoded once,
    /// for every subscribe ack and presence event after it, and kept only
    /// as text (a `Value` of it cost about 350 bytes per member).
    encoded: Box<str>,
    /// 0 while the member lingers: its last socket dropped, and it leaves
    /// when the grace ends (`Channel::lingering`) unless a socket of it
    /// joins again.
    n_sockets: u32,
}

/// One channel name's live state.
pub struct Channel {
    /// The resolved name, for example `order:123`.
    name: Arc<str>,
    registry: Addr<ChannelRegistry>,
    writer: Addr<MessageWriter>,
    /// Where durable messages go for their webhooks.
    webhooks: Webhooks,
    /// Subscribed sockets by subscriber id; changed by Join and Leave, and
    /// when a subscriber is found too slow or gone.
    subscribers: HashMap<u64, Subscriber>,
    /// Present members by presence id (shared with the subscribers'
    /// `Member`), with how many sockets hold each.
    presence: HashMap<Arc<str>, PresenceEntry>,
    /// Members whose last socket dropped, with the timer that ends their
    /// leave grace (apart from `presence`, whose entries it would grow).
    lingering: HashMap<Arc<str>, SpawnHandle>,
    /// Accepted messages in channel order, until delivered or failed.
    pending: VecDeque<Pending>,
    /// Most messages `pending` may hold (`limits.max_pending_per_channel`).
    max_pending: usize,
    /// Presence events waiting to go out, coalesced per mailbox turn so a
    /// burst of joins costs each subscriber one push, not one per join.
    presence_outbox: Vec<PresenceEvent>,
    /// Sequence number of the last presence event.
    presence_seq: u64,
    /// For each subscriber that joined while presence events wait, the
    /// presence sequence number when it joined: it gets only the events
    /// after that (its snapshot has the rest). Emptied by each flush, as
    /// everyone then has every event.
    subscribed_since: HashMap<u64, u64>,
    /// Joins and messages received through the registry; it compares
    /// this with what it forwarded before retiring the channel.
    n_received: u64,
    /// This channel as the writer's recipient of `Persisted`; made once,
    /// not per message.
    persisted_to: Option<PersistedTo>,
    /// Messages delivered since the actor started (for inspection).
    n_delivered: u64,
    /// When the actor started, and last handled a join, leave or message.
    created_at: DateTime<Utc>,
    last_activity_at: DateTime<Utc>,
    /// The `seq` of the last message delivered (at start: the highest
    /// committed then, as nothing before it will come through here).
    last_seq: i64,
    /// Whether delivered messages carry their offset.
    offsets: bool,
    /// How long a member whose connection dropped stays present.
    leave_grace: std::time::Duration,
    /// How long presence events gather before they are sent.
    presence_batch: std::time::Duration,
    /// A [`DeliverReady`] is on its way.
    delivery_scheduled: bool,
    /// Publish outcomes for sockets, sent at the end of the turn in one
    /// event per socket: one event per ack filled a busy publisher's
    /// mailbox and evicted it.
    socket_replies: HashMap<Arc<Recipient<SubscriberEvent>>, Vec<Published>>,
    /// Most presence members.
    max_members: usize,
    /// Cluster presence (PostgreSQL): where this node's members are
    /// announced and other nodes' members loaded.
    cluster: Option<PresenceLink>,
    /// Other nodes' members of this channel.
    remote: RemoteMembers,
    /// Where ephemeral messages go to reach every node (PostgreSQL).
    relay: Option<RelayLink>,
    /// This channel as the relay's recipient; made once.
    relay_done_to: Option<Recipient<RelayDone>>,
    /// Ephemeral messages handed to the relay, waiting for its answer:
    /// their id, who to tell, and the row a REST publisher gets back.
    relaying: VecDeque<(Uuid, Reply, Option<messages::Model>)>,
    /// While the other nodes' members are first loaded: the joins that wait
    /// for them, so the first snapshot is complete.
    joins_waiting: Option<Vec<Subscriber>>,
    /// While they are (re)loaded: their changes heard meanwhile, applied
    /// after the load.
    remote_waiting: Option<Vec<RemoteChanges>>,
    /// Load them again once the load under way ends.
    reload_wanted: bool,
}

/// How a channel runs, the same for all of them.
#[derive(Clone, Copy, Debug)]
pub struct ChannelSettings {
    /// Most messages waiting to be durable (`limits.max_pending_per_channel`).
    pub max_pending: usize,
    /// Delivered messages carry their offset (`recovery.enabled`).
    pub offsets: bool,
    /// How long a member whose connection dropped stays present
    /// (`presence.leave_grace_ms`).
    pub leave_grace: std::time::Duration,
    /// How long presence events gather before they are sent
    /// (`presence.batch_ms`).
    pub presence_batch: std::time::Duration,
    /// Most presence members (`limits.max_presence_members`).
    pub max_members: usize,
}

impl Channel {
    /// A channel for `name` with no subscribers yet.
    pub fn new(
        name: Arc<str>,
        registry: Addr<ChannelRegistry>,
        writer: Addr<MessageWriter>,
        webhooks: Webhooks,
        settings: ChannelSettings,
        committed_seq: i64,
        cluster: Option<ChannelLinks>,
    ) -> Self {
        let (cluster, relay) = match cluster {
            Some(links) => (Some(links.presence), Some(links.relay)),
            None => (None, None),
        };
        Channel {
            cluster,
            remote: RemoteMembers::new(),
            relay,
            relay_done_to: None,
            relaying: VecDeque::new(),
            joins_waiting: None,
            remote_waiting: None,
            reload_wanted: false,
            name,
            registry,
            writer,
            webhooks,
            subscribers: HashMap::new(),
            presence: HashMap::new(),
            lingering: HashMap::new(),
            pending: VecDeque::new(),
            max_pending: settings.max_pending,
            presence_outbox: Vec::new(),
            presence_seq: 0,
            subscribed_since: HashMap::new(),
            n_received: 0,
            persisted_to: None,
            n_delivered: 0,
            created_at: Utc::now(),
            last_activity_at: Utc::now(),
            last_seq: committed_seq,
            offsets: settings.offsets,
            leave_grace: settings.leave_grace,
            presence_batch: settings.presence_batch,
            delivery_scheduled: false,
            socket_replies: HashMap::new(),
            max_members: settings.max_members,
        }
    }

    /// Everyone present, on this node and the others, as a JSON array:
    /// made for each join (copying the members' kept text), not cached, as
    /// a cache would hold a second copy of every member.
    fn members_json(&self) -> Arc<str> {
        let mut json = String::with_capacity(
            2 + self
                .presence
                .values()
                .map(|entry| entry.encoded.len() + 1)
                .sum::<usize>(),
        );
        json.push('[');
        for entry in self.presence.values() {
            json.push_str(&entry.encoded);
            json.push(',');
        }
        for (presence_id, nodes) in &self.remote {
            if let (false, Some(member)) = (
                self.presence.contains_key(presence_id.as_str()),
                nodes.values().next(),
            ) {
                json.push_str(&member.to_string());
                json.push(',');
            }
        }
        if json.ends_with(',') {
            json.pop();
        }
        json.push(']');
        json.into()
    }

    /// How many members are present, on this node and the others.
    fn n_members(&self) -> usize {
        if self.remote.is_empty() {
            return self.presence.len();
        }
        self.presence.len()
            + self
                .remote
                .keys()
                .filter(|presence_id| !self.presence.contains_key(presence_id.as_str()))
                .count()
    }

    /// A presence event about `member` (its JSON text).
    fn presence_frame(&self, event: &str, member: &str) -> Frame {
        let meta = delivery::Meta {
            channel: &self.name,
            message_id: Uuid::new_v4(),
            sender: Sender::SYSTEM,
            timestamp: Utc::now(),
        };
        delivery::presence_event(event, member, &meta)
    }

    /// Pushes to each subscriber the event `event_for` picks for it (none
    /// when it returns `None`); returns how many took it. A subscriber
    /// whose mailbox is full is too slow: it is told it was evicted, and
    /// it leaves.
    fn push_events(
        &mut self,
        event_for: impl Fn(u64) -> Option<SubscriberEvent>,
        ctx: &mut Context<Self>,
    ) -> usize {
        let mut n_sent = 0;
        let mut too_slow = Vec::new();
        let mut gone = Vec::new();
        for (id, subscriber) in &self.subscribers {
            let Some(event) = event_for(*id) else {
                continue;
            };
            match subscriber.events.try_send(event) {
                Ok(()) => n_sent += 1,
                Err(actix::dev::SendError::Full(_)) => too_slow.push(*id),
                Err(actix::dev::SendError::Closed(_)) => gone.push(*id),
            }
        }
        if !too_slow.is_empty() {
            tracing::warn!(channel = %self.name, n_sessions = too_slow.len(), "subscribers too slow; evicting them");
        }
        // Both kinds of client will most likely come back (recover), so
        // their members linger as after a dropped connection.
        for id in too_slow {
            if let Some(subscriber) = self.subscribers.get(&id) {
                // do_send: the mailbox is full, and this must get through.
                subscriber.events.do_send(SubscriberEvent::Evicted);
            }
            self.remove_subscriber(id, true, ctx);
        }
        // Sessions that ended without their leave reaching us.
        for id in gone {
            self.remove_subscriber(id, true, ctx);
        }
        n_sent
    }

    /// Pushes `frames` (messages, with their offsets `seqs`) to every
    /// subscriber in one event each, and counts them; returns how many
    /// subscribers took them.
    fn fan_out(
        &mut self,
        frames: Vec<Frame>,
        seqs: Vec<Option<i64>>,
        ctx: &mut Context<Self>,
    ) -> usize {
        // Presence events gathered so far go first: a message never
        // overtakes the join of its sender.
        self.flush_presence(ctx);
        let n = frames.len() as u64;
        let messages = Arc::new(Delivered {
            channel: self.name.clone(),
            frames,
            seqs,
        });
        let n_sent = self.push_events(|_| Some(SubscriberEvent::Messages(messages.clone())), ctx);
        METRICS.messages_delivered.add(n);
        METRICS.socket_deliveries.add(n * n_sent as u64);
        self.n_delivered += n;
        n_sent
    }

    /// Queues a presence event; the first one schedules the flush, at the
    /// end of the batch time (or of this turn). Members of a busy room then
    /// get a burst of joins in one write each.
    fn queue_presence(&mut self, frame: Frame, except: Option<u64>, ctx: &mut Context<Self>) {
        self.presence_seq += 1;
        self.presence_outbox.push(PresenceEvent {
            seq: self.presence_seq,
            frame,
            except,
        });
        if self.presence_outbox.len() == 1 {
            if self.presence_batch.is_zero() {
                ctx.notify(FlushPresence);
            } else {
                ctx.notify_later(FlushPresence, self.presence_batch);
            }
        }
    }

    /// Removes a subscriber; its member leaves with its last socket, at
    /// once, or (`dropped`) once the leave grace ends without a socket of
    /// it joining again.
    fn remove_subscriber(&mut self, id: u64, dropped: bool, ctx: &mut Context<Self>) {
        let Some(subscriber) = self.subscribers.remove(&id) else {
            return;
        };
        METRICS.subscriptions.sub(1);
        self.subscribed_since.remove(&id);
        let presence_id = subscriber.member.presence_id;
        let Some(entry) = self.presence.get_mut(&presence_id) else {
            return;
        };
        entry.n_sockets = entry.n_sockets.saturating_sub(1);
        if entry.n_sockets > 0 {
            return;
        }
        if dropped && !self.leave_grace.is_zero() {
            let grace = self.leave_grace;
            let lingers = presence_id.clone();
            let timer = ctx.run_later(grace, move |channel, ctx| {
                channel.end_grace(&lingers, ctx);
            });
            self.lingering.insert(presence_id, timer);
            return;
        }
        self.member_left(&presence_id, ctx);
    }

    /// The leave grace of `presence_id` ended: it leaves unless it came
    /// back.
    fn end_grace(&mut self, presence_id: &str, ctx: &mut Context<Self>) {
        self.lingering.remove(presence_id);
        if let Some(entry) = self.presence.get(presence_id) {
            if entry.n_sockets == 0 {
                self.member_left(presence_id, ctx);
            }
        }
        self.report_if_idle();
    }

    /// `presence_id` leaves: the others are told.
    fn member_left(&mut self, presence_id: &str, ctx: &mut Context<Self>) {
        let Some(entry) = self.presence.remove(presence_id) else {
            return;
        };
        if let Some(timer) = self.lingering.remove(presence_id) {
            ctx.cancel_future(timer);
        }
        if let Some(cluster) = &self.cluster {
            cluster.announce(&self.name, presence_id, None);
        }
        // Still present on another node: nobody saw it leave.
        if !self.remote.contains_key(presence_id) {
            self.tell_presence("presence:leave", &entry.encoded, None, ctx);
        }
    }

    /// Queues a presence event about `member` (its JSON text) for the
    /// subscribers (but `except`), if there are any.
    fn tell_presence(
        &mut self,
        event: &str,
        member: &str,
        except: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        // Nobody is left to tell when the channel is empty.
        if !self.subscribers.is_empty() {
            let frame = self.presence_frame(event, member);
            self.queue_presence(frame, except, ctx);
        }
    }

    /// Delivers the durable messages at the front of the queue, in order.
    fn deliver_ready(&mut self, ctx: &mut Context<Self>) {
        let mut frames = Vec::new();
        let mut seqs = Vec::new();
        let mut delivered = Vec::new();
        while let Some(front) = self.pending.front() {
            match &front.outcome {
                None => break,
                Some(Ok(())) => {
                    // unwrap: front() just returned Some.
                    let pending = self.pending.pop_front().unwrap();
                    METRICS
                        .publish_delivery
                        .observe_micros(pending.accepted_at.elapsed());
                    if let Some(seq) = pending.seq {
                        self.last_seq = self.last_seq.max(seq);
                    }
                    let offset = pending.seq.filter(|_| self.offsets);
                    frames.push(pending.frame.seal(offset));
                    seqs.push(offset);
                    delivered.push((
                        pending.id,
                        pending.row,
                        pending.reply,
                        pending.webhook,
                        pending.stored_audience,
                    ));
                }
                Some(Err(_)) => {
                    METRICS.messages_failed.inc();
                    // unwrap: front() just returned Some.
                    let pending = self.pending.pop_front().unwrap();
                    if let (Some(reply), Some(Err(err))) = (pending.reply, pending.outcome) {
                        self.send_reply(reply, Err(err));
                    }
                }
            }
        }
        if !delivered.is_empty() {
            let n_sent = self.fan_out(frames, seqs, ctx) as i32;
            let corrections: Vec<(Uuid, i32)> = delivered
                .iter()
                .filter_map(|(id, .., stored_audience)| Some((*id, n_sent - (*stored_audience)?)))
                .filter(|(_, difference)| *difference != 0)
                .collect();
            if !corrections.is_empty() {
                self.writer.do_send(RecordAudience(corrections));
            }
            // Sockets first; webhooks are handed over after, never waited on.
            for (id, row, reply, webhook, _) in delivered {
                match webhook {
                    Webhook::None => {}
                    Webhook::Ready(message, definition) => {
                        self.webhooks.dispatch(message, definition)
                    }
                    Webhook::Deferred => self.webhooks.defer(),
                }
                let Some(reply) = reply else { continue };
                let row = row.map(|row| messages::Model {
                    ws_audience_count: n_sent,
                    ..row
                });
                self.send_reply(reply, Ok((id, row)));
            }
        }
        // After the messages, so a publisher sees its message before the ack.
        for (to, replies) in self.socket_replies.drain() {
            to.do_send(SubscriberEvent::Published(replies));
        }
        self.report_if_idle();
    }

    /// Sends a publish's outcome: the message id (and, for REST, the
    /// stored row with its audience), or why it failed.
    ///
    /// A socket's outcome waits for the end of the turn (see
    /// `socket_replies`); a refusal outside a delivery schedules one.
    fn send_reply(
        &mut self,
        reply: Reply,
        result: Result<(Uuid, Option<messages::Model>), PublishError>,
    ) {
        match reply {
            Reply::Socket { to, ack_id } => {
                if ack_id.is_none() && result.is_ok() {
                    return;
                }
                self.socket_replies.entry(to).or_default().push(Published {
                    ack_id,
                    channel: self.name.clone(),
                    result: result.map(|(id, _)| id),
                });
            }
            Reply::Http(tx) => {
                let row = result.and_then(|(_, row)| {
                    row.ok_or_else(|| {
                        PublishError::Internal("the stored message was not kept".into())
                    })
                });
                let _ = tx.send(row);
            }
        }
    }

    /// The history row of `message`, as this channel stamped it.
    fn row_of(
        &self,
        id: Uuid,
        created_at: DateTime<Utc>,
        message: Outgoing,
        n_webhooks: usize,
    ) -> messages::Model {
        messages::Model {
            id,
            event_name: message.event,
            channel_id: Some(message.channel.id),
            channel_name: self.name.to_string(),
            payload: Value::Object(message.payload),
            sender_type: message.sender.sender_type.as_str().to_owned(),
            sender_id: message.sender.sender_id,
            ws_audience_count: 0,
            wh_audience_count: n_webhooks as i32,
            wh_delivered_count: 0,
            created_at,
            seq: None,
        }
    }

    /// An ephemeral channel's message: delivered as soon as everything
    /// before it is, never stored, posted or given an offset.
    fn publish_ephemeral(
        &mut self,
        id: Uuid,
        created_at: DateTime<Utc>,
        message: Outgoing,
        frame: OpenFrame,
        reply: Reply,
        ctx: &mut Context<Self>,
    ) {
        METRICS.messages_ephemeral.inc();
        // A REST publisher gets the message back as it would be stored.
        let row = matches!(reply, Reply::Http(_)).then(|| self.row_of(id, created_at, message, 0));
        if self.relay.is_some() {
            return self.relay_ephemeral(id, frame, reply, row, ctx);
        }
        self.pending.push_back(Pending {
            id,
            row,
            frame,
            seq: None,
            stored_audience: None,
            reply: Some(reply),
            outcome: Some(Ok(())),
            webhook: Webhook::None,
            accepted_at: Instant::now(),
        });
        // Delivered at the end of this mailbox turn, with every other
        // ephemeral message of the turn: one push per subscriber for a
        // burst, as a durable batch is (one push per message filled the
        // subscribers' mailboxes and evicted them).
        self.schedule_delivery(ctx);
    }

    /// Hands an ephemeral message to the relay (PostgreSQL): every node,
    /// this one included, delivers it when PostgreSQL hands it back, so
    /// all see one order. The publisher hears once it is sent.
    fn relay_ephemeral(
        &mut self,
        id: Uuid,
        frame: OpenFrame,
        reply: Reply,
        row: Option<messages::Model>,
        ctx: &mut Context<Self>,
    ) {
        if self.relaying.len() >= self.max_pending {
            return self.refuse_over_capacity(reply, "relayed", ctx);
        }
        let Frame::Text(packet) = frame.seal(None) else {
            unreachable!("a delivery frame is text")
        };
        let done = self
            .relay_done_to
            .get_or_insert_with(|| ctx.address().recipient())
            .clone();
        if let Some(relay) = &self.relay {
            relay.relay(self.name.clone(), packet, done);
        }
        self.relaying.push_back((id, reply, row));
    }

    /// Refuses a publish: `limits.max_pending_per_channel` messages wait
    /// to be `done` (stored, relayed) already.
    fn refuse_over_capacity(&mut self, reply: Reply, done: &str, ctx: &mut Context<Self>) {
        METRICS.publishes_rate_limited.inc();
        METRICS.refused(crate::metrics::Limit::ChannelPending);
        self.send_reply(
            reply,
            Err(PublishError::RateLimited(format!(
                "channel is over capacity: messages are not being {done} fast enough; retry later"
            ))),
        );
        self.schedule_delivery(ctx);
    }

    /// Delivers what is ready at the end of this mailbox turn (once).
    fn schedule_delivery(&mut self, ctx: &mut Context<Self>) {
        if !self.delivery_scheduled {
            self.delivery_scheduled = true;
            ctx.notify(DeliverReady);
        }
    }

    fn report_if_idle(&self) {
        // With other nodes, a lingering member keeps its channel: they see
        // it until its grace ends here.
        let others_watch = self
            .cluster
            .as_ref()
            .is_some_and(|cluster| !cluster.alone() || !self.remote.is_empty());
        if self.subscribers.is_empty()
            && self.pending.is_empty()
            && self.relaying.is_empty()
            && self.joins_waiting.is_none()
            && (self.presence.is_empty() || !others_watch)
        {
            self.registry.do_send(Idle {
                name: self.name.clone(),
                n_received: self.n_received,
            });
        }
    }
}

impl Actor for Channel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.cluster.is_some() {
            // The first subscribe is answered once the other nodes'
            // members are known.
            self.joins_waiting = Some(Vec::new());
            self.load_remote(ctx);
        }
    }
}

impl Handler<Join> for Channel {
    type Result = ();

    fn handle(&mut self, Join(subscriber): Join, ctx: &mut Context<Self>) {
        self.last_activity_at = Utc::now();
        self.n_received += 1;
        if let Some(waiting) = &mut self.joins_waiting {
            waiting.push(subscriber);
            return;
        }
        self.join(subscriber, ctx);
    }
}

impl Channel {
    fn join(&mut self, subscriber: Subscriber, ctx: &mut Context<Self>) {
        let id = subscriber.id;
        if !subscriber.events.connected() {
            // The socket closed while its join was on the way.
            self.report_if_idle();
            return;
        }
        let new_member = !self.subscribers.contains_key(&id)
            && !self.presence.contains_key(&subscriber.member.presence_id)
            && !self.remote.contains_key(&*subscriber.member.presence_id);
        if new_member && self.n_members() >= self.max_members {
            METRICS.refused(crate::metrics::Limit::PresenceMembers);
            subscriber.events.do_send(SubscriberEvent::JoinRefused {
                name: self.name.clone(),
                message: format!(
                    "the channel has {} members, the most it may have (limits.max_presence_members)",
                    self.max_members
                ),
            });
            self.report_if_idle();
            return;
        }
        let new_subscriber = !self.subscribers.contains_key(&id);
        if new_subscriber {
            let presence_id = subscriber.member.presence_id.clone();
            match self.presence.get_mut(&presence_id) {
                Some(entry) => {
                    // A lingering member is back within its grace: nobody
                    // saw it leave, so nobody sees it join.
                    if let Some(timer) = self.lingering.remove(&presence_id) {
                        ctx.cancel_future(timer);
                    }
                    entry.n_sockets += 1;
                }
                None => {
                    let member = json!({
                        "presenceId": presence_id,
                        "type": subscriber.member.kind.as_str(),
                        "joinedAt": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                    });
                    let encoded: Box<str> = member.to_string().into();
                    if let Some(cluster) = &self.cluster {
                        cluster.announce(&self.name, &presence_id, Some(member));
                    }
                    // Present on another node already: nobody sees it join.
                    if !self.remote.contains_key(&*presence_id) {
                        self.tell_presence("presence:join", &encoded, Some(id), ctx);
                    }
                    self.presence.insert(
                        presence_id,
                        PresenceEntry {
                            encoded,
                            n_sockets: 1,
                        },
                    );
                }
            }
            METRICS.subscriptions.inc();
            if !self.presence_outbox.is_empty() {
                self.subscribed_since.insert(id, self.presence_seq);
            }
        }
        let members = self.members_json();
        subscriber.events.do_send(SubscriberEvent::Joined(Joined {
            name: self.name.clone(),
            channel: ctx.address(),
            members,
            after_seq: self.last_seq,
        }));
        if new_subscriber {
            // Moved, not cloned: a clone of its recipient costs allocations.
            self.subscribers.insert(id, subscriber);
        }
    }
}

impl Handler<FlushPresence> for Channel {
    type Result = ();

    fn handle(&mut self, _: FlushPresence, ctx: &mut Context<Self>) {
        self.flush_presence(ctx);
    }
}

impl Channel {
    /// Sends the queued presence events (if any): all of them, shared, to
    /// those here before the first; to those who joined meanwhile, what
    /// came after their join, minus their own.
    fn flush_presence(&mut self, ctx: &mut Context<Self>) {
        let events = std::mem::take(&mut self.presence_outbox);
        let Some(first_seq) = events.first().map(|event| event.seq) else {
            return;
        };
        let all: Arc<[Frame]> = events.iter().map(|event| event.frame.clone()).collect();
        let joiners: HashSet<u64> = events.iter().filter_map(|event| event.except).collect();
        let since = std::mem::take(&mut self.subscribed_since);
        self.push_events(
            |id| {
                let joined_at = since.get(&id).copied().unwrap_or(0);
                if joined_at < first_seq && !joiners.contains(&id) {
                    // Here before the burst: every event, shared.
                    return Some(SubscriberEvent::Frames(all.clone()));
                }
                // Joined during the burst: what came after, minus its own join.
                let frames: Vec<Frame> = events
                    .iter()
                    .filter(|event| event.seq > joined_at && event.except != Some(id))
                    .map(|event| event.frame.clone())
                    .collect();
                (!frames.is_empty()).then(|| SubscriberEvent::Frames(frames.into()))
            },
            ctx,
        );
        // Everyone has every event now: `subscribed_since` stays empty (its
        // table freed) until the next burst.
    }
}

impl Handler<Leave> for Channel {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Context<Self>) {
        self.last_activity_at = Utc::now();
        // A join still waiting for the other nodes' members is dropped: a
        // closing socket's session may answer `connected()` a while longer,
        // and the join would stay with no one to leave it.
        if let Some(waiting) = &mut self.joins_waiting {
            waiting.retain(|subscriber| subscriber.id != leave.subscriber_id);
        }
        self.remove_subscriber(leave.subscriber_id, leave.dropped, ctx);
        self.report_if_idle();
    }
}

impl Handler<RelayDone> for Channel {
    type Result = ();

    /// The relay's answer for the oldest `n` messages handed to it.
    fn handle(&mut self, done: RelayDone, ctx: &mut Context<Self>) {
        for _ in 0..done.n {
            let Some((id, reply, row)) = self.relaying.pop_front() else {
                break;
            };
            let result = match &done.result {
                Ok(()) => Ok((id, row)),
                Err(err) => Err(err.clone()),
            };
            self.send_reply(reply, result);
        }
        // The replies go out at the end of the turn; then it may retire.
        self.schedule_delivery(ctx);
    }
}

/// Ephemeral messages of this channel heard from PostgreSQL (published on
/// any node, this one included), in order.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Relayed(pub Vec<Frame>);

impl Handler<Relayed> for Channel {
    type Result = ();

    fn handle(&mut self, Relayed(frames): Relayed, ctx: &mut Context<Self>) {
        METRICS.ephemeral_received.add(frames.len() as u64);
        if self.subscribers.is_empty() {
            return;
        }
        let seqs = vec![None; frames.len()];
        self.fan_out(frames, seqs, ctx);
        self.report_if_idle();
    }
}

impl Handler<Publish> for Channel {
    type Result = ();

    fn handle(&mut self, publish: Publish, ctx: &mut Context<Self>) {
        self.last_activity_at = Utc::now();
        if publish.via_registry {
            self.n_received += 1;
        }
        let Publish { message, reply, .. } = publish;
        if self.pending.len() >= self.max_pending {
            // The database is not keeping up: refuse rather than buffer
            // without bound.
            return self.refuse_over_capacity(reply, "stored", ctx);
        }
        let id = Uuid::now_v7();
        let created_at = crate::persistence::now();
        let meta = delivery::Meta {
            channel: &self.name,
            message_id: id,
            sender: message.sender,
            timestamp: created_at,
        };
        let frame = open_delivery(&message.event, &message.payload, &meta);
        if message.channel.ephemeral {
            return self.publish_ephemeral(id, created_at, message, frame, reply, ctx);
        }
        let n_webhooks = message.channel.webhook_urls.len();
        let webhook = if n_webhooks == 0 {
            Webhook::None
        } else if self.webhooks.is_overflowed() {
            Webhook::Deferred
        } else {
            let webhook = WebhookMessage {
                id,
                channel: self.name.clone(),
                event: message.event.clone(),
                // unwrap: a map of JSON values always serializes.
                body: serde_json::to_vec(&message.payload).unwrap().into(),
            };
            Webhook::Ready(webhook, message.channel.clone())
        };
        // Its webhook audience is also what puts it in the webhook backlog.
        // Stored with who should get it; delivery records a difference
        // if that changes before the message is durable.
        let stored_audience = self.subscribers.len() as i32;
        let row = messages::Model {
            ws_audience_count: stored_audience,
            ..self.row_of(id, created_at, message, n_webhooks)
        };
        METRICS.messages_accepted.inc();
        let kept = matches!(reply, Reply::Http(_)).then(|| row.clone());
        self.writer.do_send(Persist {
            row,
            notify: self
                .persisted_to
                .get_or_insert_with(|| Arc::new(ctx.address().recipient()))
                .clone(),
        });
        self.pending.push_back(Pending {
            id,
            row: kept,
            frame,
            seq: None,
            stored_audience: Some(stored_audience),
            reply: Some(reply),
            outcome: None,
            webhook,
            accepted_at: Instant::now(),
        });
    }
}

impl Handler<Stored> for Channel {
    type Result = ();

    fn handle(&mut self, stored: Stored, ctx: &mut Context<Self>) {
        self.last_activity_at = Utc::now();
        if stored.via_registry {
            self.n_received += 1;
        }
        let row = stored.row;
        // At or below where this channel began (or already delivered): a
        // row the writer counted as committed before the registry handed
        // it here, while this channel started after it. Its subscribers'
        // recoveries replay it from history; delivering it too would send
        // it twice.
        if row.seq.is_some_and(|seq| seq > 0 && seq <= self.last_seq) {
            return;
        }
        let frame = delivery::open_stored(&row);
        // Stored rows come in `seq` order, and a local message still
        // waiting for the writer will get a larger `seq` than this one (the
        // writer hands on what it did not write before its own batch), so
        // this row goes ahead of it: every node then shows the channel in
        // `seq` order.
        // Local messages become durable in order, so the waiting ones are
        // the last ones: counted from the back (at most
        // `max_pending_per_channel`), not searched from the front, where
        // rows of a busy node pile up by the thousand until delivered.
        let waiting = self
            .pending
            .iter()
            .rev()
            .take_while(|pending| pending.outcome.is_none())
            .count();
        let position = self.pending.len() - waiting;
        self.pending.insert(
            position,
            Pending {
                id: row.id,
                row: None,
                frame,
                seq: row.seq.filter(|seq| *seq > 0),
                // Its node stored it with that node's audience; this one
                // adds its own.
                stored_audience: Some(0),
                reply: None,
                outcome: Some(Ok(())),
                // Webhooks of stored messages are sent by whoever stored them
                // (the database listener hands them over itself).
                webhook: Webhook::None,
                accepted_at: Instant::now(),
            },
        );
        // Delivered at the end of this mailbox turn with every other row of
        // the turn: another node's batch arrives as one message per row,
        // and one push per row per subscriber filled their mailboxes and
        // evicted them (measured: 1.5 M of 2 M deliveries lost).
        self.schedule_delivery(ctx);
    }
}

impl Handler<Persisted> for Channel {
    type Result = ();

    fn handle(&mut self, persisted: Persisted, ctx: &mut Context<Self>) {
        // The ids come in channel order, so one forward pass finds them all.
        let mut index = self
            .pending
            .iter()
            .position(|p| p.outcome.is_none())
            .unwrap_or(0);
        for (i, id) in persisted.ids.iter().enumerate() {
            while index < self.pending.len() && self.pending[index].id != *id {
                index += 1;
            }
            if let Some(pending) = self.pending.get_mut(index) {
                pending.outcome = Some(persisted.result.clone());
                pending.seq = persisted.seqs.get(i).copied().flatten();
                index += 1;
            }
        }
        self.deliver_ready(ctx);
    }
}

impl Handler<Retire> for Channel {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        // Members still lingering leave with the channel (nobody watches
        // them: no subscriber here, no other node).
        if let Some(cluster) = &self.cluster {
            for presence_id in self.presence.keys() {
                cluster.announce(&self.name, presence_id, None);
            }
        }
        ctx.stop();
    }
}
