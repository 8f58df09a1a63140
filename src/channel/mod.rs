//! Channels: one `Channel` actor per resolved channel name with at least
//! one subscriber (`order:123`), found or created by the `ChannelRegistry`.
//!
//! A channel owns its subscribers, its presence table (one logical member
//! per user, however many sockets) and the order of its messages: it
//! stamps each message, hands it to the `MessageWriter`, and delivers it
//! once durable, encoded once and shared by every subscriber.
//!
//! # Layout
//! - [`catalog`]: channel definitions in memory, for name resolution.
//! - [`registry`]: the `ChannelRegistry` actor.

pub mod catalog;
pub mod registry;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Recipient};
use chrono::{DateTime, SecondsFormat, Utc};
use entity::messages;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::client::{ClientAddr, ClientEvent};
use crate::engineio::session::{Close, PushMany};
use crate::engineio::{CloseReason, SessionEvent};
use crate::metrics::METRICS;
use crate::persistence::writer::{MessageWriter, Persist, Persisted, RecordAudience};
use crate::protocol::engineio::Frame;
use registry::{ChannelRegistry, Idle};

/// Encodes an event once, as the Engine.IO message every subscriber gets:
/// `42[<event>,<body>]`, built directly rather than through a Socket.IO
/// `Packet` so the body is serialized once and never copied.
pub fn encode_event(event: &str, body: &Value) -> Frame {
    event_frame(event, &[&body.to_string()])
}

/// Encodes a delivered message once: the payload's fields plus `meta`,
/// spliced into the payload's own serialization instead of copying the
/// payload into a new map (`{"a":1}` + meta → `{"a":1,"meta":{…}}`). A
/// payload key named `meta` is replaced, as a map insert would.
pub fn encode_delivery(event: &str, payload: &Map<String, Value>, meta: &Value) -> Frame {
    if payload.contains_key("meta") {
        let mut body = payload.clone();
        body.insert("meta".into(), meta.clone());
        return encode_event(event, &Value::Object(body));
    }
    // unwrap: a map of JSON values always serializes.
    let body = serde_json::to_string(payload).unwrap();
    // `body` is `{…}`: drop its closing brace, then add meta and close.
    let separator = if payload.is_empty() {
        "\"meta\":"
    } else {
        ",\"meta\":"
    };
    event_frame(
        event,
        &[&body[..body.len() - 1], separator, &meta.to_string(), "}"],
    )
}

/// `42[<event as JSON>,<body parts>]` as one text frame.
fn event_frame(event: &str, body_parts: &[&str]) -> Frame {
    let event = serde_json::to_string(event).unwrap_or_else(|_| "\"\"".into());
    let body_len: usize = body_parts.iter().map(|part| part.len()).sum();
    let mut text = String::with_capacity(event.len() + body_len + 5);
    text.push_str("42[");
    text.push_str(&event);
    text.push(',');
    for part in body_parts {
        text.push_str(part);
    }
    text.push(']');
    Frame::Text(text.into())
}

/// Who sent a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// `user` or `system`.
    pub sender_type: &'static str,
    /// The user's id, for authenticated users.
    pub sender_id: Option<Uuid>,
}

/// A publish on its way to a channel.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The event name.
    pub event: String,
    /// The JSON object published.
    pub payload: Map<String, Value>,
    /// Who published it.
    pub sender: Sender,
    /// The channel definition the name resolved to at publish time.
    pub channel_id: Uuid,
}

/// A message as delivered: what a REST publisher gets back.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The stored row, with its audience count.
    pub row: messages::Model,
}

/// Why a publish failed after it reached the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishFailure {
    /// `INTERNAL_ERROR` and the like.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

/// Where the outcome of a publish goes.
#[derive(Debug)]
pub enum Reply {
    /// The publishing socket: an ack if it asked for one; a
    /// `realtime:error` if it did not and the publish failed.
    Socket {
        /// The publishing session.
        client: ClientAddr,
        /// The Socket.IO ack id to answer, if any.
        ack_id: Option<u64>,
        /// The channel name, for the error event.
        channel: Arc<str>,
    },
    /// A REST request waiting for the result.
    Http(oneshot::Sender<Result<Delivered, PublishFailure>>),
}

impl Reply {
    /// Sends the outcome: the message id (and, for REST, the stored row
    /// with its audience), or why it failed.
    fn send(self, result: Result<(Uuid, Option<messages::Model>), PublishFailure>) {
        match self {
            Reply::Socket {
                client,
                ack_id,
                channel,
            } => match (ack_id, result) {
                (None, Ok(_)) => {}
                (ack_id, result) => client.do_send(SessionEvent(ClientEvent::Published {
                    ack_id,
                    channel,
                    result: result.map(|(id, _)| id),
                })),
            },
            Reply::Http(tx) => {
                let delivered = result.and_then(|(_, row)| {
                    row.map(|row| Delivered { row })
                        .ok_or_else(|| PublishFailure {
                            code: "INTERNAL_ERROR",
                            message: "the stored message was not kept for the reply".to_owned(),
                        })
                });
                let _ = tx.send(delivered);
            }
        }
    }
}

/// A presence member: `{"presenceId", "type", "joinedAt"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// User id (`type: user`) or socket id (`type: anonymous`).
    pub presence_id: String,
    /// `user` or `anonymous`.
    pub kind: &'static str,
}

/// A socket subscribing to a channel.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// Unique per socket for the life of the process.
    pub id: u64,
    /// The socket's session.
    pub client: ClientAddr,
    /// Who the socket counts as in presence.
    pub member: Member,
}

/// Subscribe a socket; the answer goes to the socket as `Joined`.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Join(pub Subscriber);

/// Unsubscribe a socket.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The subscriber's id.
    pub subscriber_id: u64,
}

/// Publish a message through the channel.
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

/// Answers once every message received before it is handled (shutdown
/// uses it to know all publishes reached the writer).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Barrier;

impl Handler<Barrier> for Channel {
    type Result = ();

    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) {}
}

/// The registry retires an idle channel.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Retire;

struct Pending {
    id: Uuid,
    /// The stored row, kept only for a REST publisher, who gets it back.
    row: Option<messages::Model>,
    frame: Frame,
    reply: Reply,
    /// `None` until the writer answers.
    outcome: Option<Result<(), String>>,
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

struct PresenceEntry {
    member: Value,
    /// `member` as JSON, encoded once for every subscribe ack after it.
    encoded: Box<str>,
    n_sockets: usize,
}

/// One channel name's live state.
pub struct Channel {
    /// The resolved name, for example `order:123`.
    name: Arc<str>,
    registry: Addr<ChannelRegistry>,
    writer: Addr<MessageWriter>,
    /// Subscribed sockets by subscriber id; changed by Join and Leave.
    subscribers: HashMap<u64, Subscriber>,
    /// Present members by presence id, with how many sockets hold each.
    presence: HashMap<String, PresenceEntry>,
    /// The JSON array of `presence` members for subscribe acks; rebuilt
    /// only after presence changed, so a burst of joins into a big channel
    /// costs one copy of each member per join, not one encoding.
    members_json: Option<Arc<str>>,
    /// Accepted messages in channel order, until delivered or failed.
    pending: VecDeque<Pending>,
    /// Most messages `pending` may hold (`limits.max_pending_per_channel`).
    max_pending: usize,
    /// Presence events waiting to go out, coalesced per mailbox turn so a
    /// burst of joins costs each subscriber one push, not one per join.
    presence_outbox: Vec<PresenceEvent>,
    /// Sequence number of the last presence event.
    presence_seq: u64,
    /// For each subscriber, the presence sequence number when it joined:
    /// it gets only the events after that (its snapshot has the rest).
    subscribed_since: HashMap<u64, u64>,
    /// Joins and publishes received through the registry; it compares
    /// this with what it forwarded before retiring the channel.
    n_received: u64,
    /// This channel as the writer's recipient of `Persisted`; made once,
    /// not per message.
    persisted_to: Option<Recipient<Persisted>>,
}

impl Channel {
    /// A channel for `name` with no subscribers yet.
    pub fn new(
        name: Arc<str>,
        registry: Addr<ChannelRegistry>,
        writer: Addr<MessageWriter>,
        max_pending: usize,
    ) -> Self {
        Channel {
            name,
            registry,
            writer,
            subscribers: HashMap::new(),
            presence: HashMap::new(),
            members_json: None,
            pending: VecDeque::new(),
            max_pending,
            presence_outbox: Vec::new(),
            presence_seq: 0,
            subscribed_since: HashMap::new(),
            n_received: 0,
            persisted_to: None,
        }
    }

    fn meta(&self, message_id: Uuid, sender: &Sender, timestamp: DateTime<Utc>) -> Value {
        let mut meta = Map::new();
        meta.insert("channel".into(), Value::String(self.name.to_string()));
        meta.insert("messageId".into(), Value::String(message_id.to_string()));
        meta.insert(
            "senderType".into(),
            Value::String(sender.sender_type.into()),
        );
        if let Some(sender_id) = sender.sender_id {
            meta.insert("senderId".into(), Value::String(sender_id.to_string()));
        }
        meta.insert(
            "timestamp".into(),
            Value::String(timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        Value::Object(meta)
    }

    /// Everyone present, as a JSON array.
    fn members_json(&mut self) -> &Arc<str> {
        let presence = &self.presence;
        self.members_json.get_or_insert_with(|| {
            let mut json = String::with_capacity(
                2 + presence
                    .values()
                    .map(|entry| entry.encoded.len() + 1)
                    .sum::<usize>(),
            );
            json.push('[');
            for (i, entry) in presence.values().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&entry.encoded);
            }
            json.push(']');
            json.into()
        })
    }

    fn presence_frame(&self, event: &str, member: &Value) -> Frame {
        let meta = self.meta(
            Uuid::new_v4(),
            &Sender {
                sender_type: "system",
                sender_id: None,
            },
            Utc::now(),
        );
        encode_event(event, &json!({ "member": member, "meta": meta }))
    }

    /// Pushes to each subscriber the frames `frames_for` picks for it
    /// (none when it returns `None`); returns how many took them. A
    /// subscriber whose mailbox is full is too slow: its session is closed,
    /// and it leaves.
    fn push_frames(
        &mut self,
        frames_for: impl Fn(u64) -> Option<Arc<[Frame]>>,
        ctx: &mut Context<Self>,
    ) -> usize {
        let mut n_sent = 0;
        let mut too_slow = Vec::new();
        let mut gone = Vec::new();
        for (id, subscriber) in &self.subscribers {
            let Some(frames) = frames_for(*id) else {
                continue;
            };
            match subscriber.client.try_send(PushMany(frames)) {
                Ok(()) => n_sent += 1,
                Err(actix::dev::SendError::Full(_)) => too_slow.push(*id),
                Err(actix::dev::SendError::Closed(_)) => gone.push(*id),
            }
        }
        if !too_slow.is_empty() {
            tracing::warn!(channel = %self.name, n_sessions = too_slow.len(), "subscribers too slow; closing their sessions");
        }
        for id in too_slow {
            if let Some(subscriber) = self.subscribers.get(&id) {
                subscriber.client.do_send(Close(CloseReason::SlowClient));
            }
            self.remove_subscriber(id, ctx);
        }
        // Sessions that ended without their leave reaching us.
        for id in gone {
            self.remove_subscriber(id, ctx);
        }
        n_sent
    }

    /// Queues a presence event; the first one of a turn schedules the flush.
    fn queue_presence(&mut self, frame: Frame, except: Option<u64>, ctx: &mut Context<Self>) {
        self.presence_seq += 1;
        self.presence_outbox.push(PresenceEvent {
            seq: self.presence_seq,
            frame,
            except,
        });
        if self.presence_outbox.len() == 1 {
            ctx.notify(FlushPresence);
        }
    }

    fn remove_subscriber(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(subscriber) = self.subscribers.remove(&id) else {
            return;
        };
        self.subscribed_since.remove(&id);
        let presence_id = subscriber.member.presence_id;
        let gone = match self.presence.get_mut(&presence_id) {
            Some(entry) if entry.n_sockets > 1 => {
                entry.n_sockets -= 1;
                None
            }
            Some(_) => {
                self.members_json = None;
                self.presence.remove(&presence_id).map(|entry| entry.member)
            }
            None => None,
        };
        // Nobody is left to tell when the channel is empty.
        if let Some(member) = gone.filter(|_| !self.subscribers.is_empty()) {
            let frame = self.presence_frame("presence:leave", &member);
            self.queue_presence(frame, None, ctx);
        }
    }

    /// Delivers the durable messages at the front of the queue, in order.
    fn deliver_ready(&mut self, ctx: &mut Context<Self>) {
        let mut frames = Vec::new();
        let mut delivered = Vec::new();
        while let Some(front) = self.pending.front() {
            match &front.outcome {
                None => break,
                Some(Ok(())) => {
                    // unwrap: front() just returned Some.
                    let pending = self.pending.pop_front().unwrap();
                    frames.push(pending.frame);
                    delivered.push((pending.id, pending.row, pending.reply));
                }
                Some(Err(err)) => {
                    METRICS.messages_failed.inc();
                    let failure = PublishFailure {
                        code: "INTERNAL_ERROR",
                        message: format!("message could not be stored: {err}"),
                    };
                    // unwrap: front() just returned Some.
                    self.pending.pop_front().unwrap().reply.send(Err(failure));
                }
            }
        }
        if !delivered.is_empty() {
            let frames: Arc<[Frame]> = frames.into();
            let n_sent = self.push_frames(|_| Some(frames.clone()), ctx) as i32;
            METRICS.messages_delivered.add(delivered.len() as u64);
            METRICS
                .socket_deliveries
                .add(delivered.len() as u64 * n_sent as u64);
            if n_sent > 0 {
                let counts = delivered.iter().map(|(id, _, _)| (*id, n_sent)).collect();
                self.writer.do_send(RecordAudience(counts));
            }
            for (id, row, reply) in delivered {
                let row = row.map(|row| messages::Model {
                    ws_audience_count: n_sent,
                    ..row
                });
                reply.send(Ok((id, row)));
            }
        }
        self.report_if_idle();
    }

    fn report_if_idle(&self) {
        if self.subscribers.is_empty() && self.pending.is_empty() {
            self.registry.do_send(Idle {
                name: self.name.clone(),
                n_received: self.n_received,
            });
        }
    }
}

impl Actor for Channel {
    type Context = Context<Self>;
}

impl Handler<Join> for Channel {
    type Result = ();

    fn handle(&mut self, Join(subscriber): Join, ctx: &mut Context<Self>) {
        self.n_received += 1;
        let id = subscriber.id;
        if !subscriber.client.connected() {
            // The socket closed while its join was on the way.
            self.report_if_idle();
            return;
        }
        if !self.subscribers.contains_key(&id) {
            let presence_id = subscriber.member.presence_id.clone();
            match self.presence.get_mut(&presence_id) {
                Some(entry) => entry.n_sockets += 1,
                None => {
                    let member = json!({
                        "presenceId": presence_id,
                        "type": subscriber.member.kind,
                        "joinedAt": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                    });
                    // The first subscriber has nobody to tell.
                    if !self.subscribers.is_empty() {
                        let frame = self.presence_frame("presence:join", &member);
                        self.queue_presence(frame, Some(id), ctx);
                    }
                    self.members_json = None;
                    self.presence.insert(
                        presence_id,
                        PresenceEntry {
                            encoded: member.to_string().into(),
                            member,
                            n_sockets: 1,
                        },
                    );
                }
            }
            self.subscribers.insert(id, subscriber.clone());
            self.subscribed_since.insert(id, self.presence_seq);
        }
        let members = self.members_json().clone();
        subscriber.client.do_send(SessionEvent(ClientEvent::Joined {
            name: self.name.clone(),
            channel: ctx.address(),
            members,
        }));
    }
}

impl Handler<FlushPresence> for Channel {
    type Result = ();

    fn handle(&mut self, _: FlushPresence, ctx: &mut Context<Self>) {
        let events = std::mem::take(&mut self.presence_outbox);
        let Some(first_seq) = events.first().map(|event| event.seq) else {
            return;
        };
        let all: Arc<[Frame]> = events.iter().map(|event| event.frame.clone()).collect();
        let joiners: std::collections::HashSet<u64> =
            events.iter().filter_map(|event| event.except).collect();
        let since = std::mem::take(&mut self.subscribed_since);
        self.push_frames(
            |id| {
                let joined_at = since.get(&id).copied().unwrap_or(0);
                if joined_at < first_seq && !joiners.contains(&id) {
                    // Here before the burst: every event, shared.
                    return Some(all.clone());
                }
                // Joined during the burst: what came after, minus its own join.
                let frames: Vec<Frame> = events
                    .iter()
                    .filter(|event| event.seq > joined_at && event.except != Some(id))
                    .map(|event| event.frame.clone())
                    .collect();
                (!frames.is_empty()).then(|| frames.into())
            },
            ctx,
        );
        // Removals during the push took their entries out of `since`'s copy
        // only; keep the live subscribers'.
        self.subscribed_since = since
            .into_iter()
            .filter(|(id, _)| self.subscribers.contains_key(id))
            .collect();
    }
}

impl Handler<Leave> for Channel {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Context<Self>) {
        self.remove_subscriber(leave.subscriber_id, ctx);
        self.report_if_idle();
    }
}

impl Handler<Publish> for Channel {
    type Result = ();

    fn handle(&mut self, publish: Publish, ctx: &mut Context<Self>) {
        if publish.via_registry {
            self.n_received += 1;
        }
        let Publish { message, reply, .. } = publish;
        if self.pending.len() >= self.max_pending {
            METRICS.publishes_rate_limited.inc();
            // The database is not keeping up: refuse rather than buffer
            // without bound.
            reply.send(Err(PublishFailure {
                code: "RATE_LIMITED",
                message: "channel is over capacity: messages are not being stored fast enough; retry later"
                    .to_owned(),
            }));
            return;
        }
        let id = Uuid::now_v7();
        let created_at = crate::persistence::now();
        let meta = self.meta(id, &message.sender, created_at);
        let frame = encode_delivery(&message.event, &message.payload, &meta);
        let row = messages::Model {
            id,
            event_name: message.event,
            channel_id: Some(message.channel_id),
            channel_name: self.name.to_string(),
            payload: Value::Object(message.payload),
            sender_type: message.sender.sender_type.to_owned(),
            sender_id: message.sender.sender_id,
            ws_audience_count: 0,
            wh_audience_count: 0,
            wh_delivered_count: 0,
            created_at,
        };
        METRICS.messages_accepted.inc();
        let kept = matches!(reply, Reply::Http(_)).then(|| row.clone());
        self.writer.do_send(Persist {
            row,
            notify: self
                .persisted_to
                .get_or_insert_with(|| ctx.address().recipient())
                .clone(),
        });
        self.pending.push_back(Pending {
            id,
            row: kept,
            frame,
            reply,
            outcome: None,
        });
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
        for id in &persisted.ids {
            while index < self.pending.len() && self.pending[index].id != *id {
                index += 1;
            }
            if let Some(pending) = self.pending.get_mut(index) {
                pending.outcome = Some(persisted.result.clone());
                index += 1;
            }
        }
        self.deliver_ready(ctx);
    }
}

impl Handler<Retire> for Channel {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward encoding the spliced one must equal.
    fn oracle(event: &str, payload: &Map<String, Value>, meta: &Value) -> Frame {
        let mut body = payload.clone();
        body.insert("meta".into(), meta.clone());
        encode_event(event, &Value::Object(body))
    }

    #[test]
    fn delivery_encoding_equals_payload_plus_meta() {
        let meta = json!({ "channel": "order:1", "messageId": "x", "senderType": "user" });
        for payload in [
            json!({}),
            json!({ "a": 1 }),
            json!({ "z": [1, { "b": "}" }], "a": "\"quoted\" }" }),
            json!({ "meta": "theirs", "after": true }),
        ] {
            let Value::Object(payload) = payload else {
                unreachable!()
            };
            for event in ["status", "with \"quotes\" and é"] {
                assert_eq!(
                    encode_delivery(event, &payload, &meta),
                    oracle(event, &payload, &meta),
                    "{payload:?}"
                );
            }
        }
        assert_eq!(
            encode_delivery("e", &Map::new(), &json!({ "m": 1 })),
            Frame::Text(r#"42["e",{"meta":{"m":1}}]"#.into())
        );
    }
}
