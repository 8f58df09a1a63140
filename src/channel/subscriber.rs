//! The channel's side of a subscription: who subscribes ([`Subscriber`],
//! [`Member`]) and everything a channel tells a subscriber
//! ([`SubscriberEvent`]). The channel knows its subscribers only as
//! recipients of these events, so any actor can subscribe: a socket
//! session in the product, a plain test actor in tests.

use std::sync::Arc;

use actix::{Addr, Recipient};
use uuid::Uuid;

use super::Channel;
use crate::protocol::engineio::Frame;
use crate::publish::PublishError;

/// How a member appears in presence (`type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberKind {
    /// A signed-in user; one member however many sockets.
    User,
    /// An anon key or an API key: one member per socket.
    Anonymous,
}

impl MemberKind {
    /// `user` or `anonymous`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::Anonymous => "anonymous",
        }
    }
}

/// A presence member: shown as `{"presenceId", "type", "joinedAt"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// User id (`user`) or socket id (`anonymous`); shared by the
    /// socket's subscriptions and the channels' presence tables.
    pub presence_id: Arc<str>,
    /// User or anonymous.
    pub kind: MemberKind,
}

/// A socket subscribing to a channel.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// Unique per socket for the life of the process.
    pub id: u64,
    /// The socket's id (`socket.id` on the client), for inspection.
    pub socket_id: Arc<str>,
    /// Where the channel's events for this socket go. One recipient for
    /// every kind of event keeps a subscription small.
    pub events: Recipient<SubscriberEvent>,
    /// Who the socket counts as in presence.
    pub member: Member,
}

/// The channel added a subscriber: the answer to [`super::Join`].
#[derive(Debug)]
pub struct Joined {
    /// The channel's name.
    pub name: Arc<str>,
    /// The channel actor, for publishes and the final leave.
    pub channel: Addr<Channel>,
    /// Everyone present, the new subscriber included, as a JSON array.
    pub members: Arc<str>,
    /// The `seq` after which the channel's messages reach the new
    /// subscriber: the last one it delivered before the join (or, for a
    /// channel that delivered nothing yet, the highest committed when it
    /// started).
    pub after_seq: i64,
}

/// Durable messages of one channel, in its delivery order, encoded once
/// and shared by every subscriber.
#[derive(Debug)]
pub struct Delivered {
    /// The channel's name.
    pub channel: Arc<str>,
    /// One frame per message.
    pub frames: Vec<Frame>,
    /// Each message's `seq` (its offset), in the same order.
    pub seqs: Vec<Option<i64>>,
}

/// How a socket's publish ended.
#[derive(Debug)]
pub struct Published {
    /// The Socket.IO ack id to answer, if the client asked for one.
    pub ack_id: Option<u64>,
    /// The channel's name, for a `realtime:error`.
    pub channel: Arc<str>,
    /// The stored message's id, or why it failed.
    pub result: Result<Uuid, PublishError>,
}

/// What a channel tells one of its subscribers.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub enum SubscriberEvent {
    /// Presence events to send as they are, each encoded once and shared
    /// by every subscriber.
    Frames(Arc<[Frame]>),
    /// Durable messages to send.
    Messages(Arc<Delivered>),
    /// The subscriber fell so far behind that its mailbox was full; the
    /// channel has dropped it. Its connection should close (the client
    /// reconnects and can catch up from history).
    Evicted,
    /// The answer to a join.
    Joined(Joined),
    /// A join the channel refused: it has `limits.max_presence_members`
    /// members already.
    JoinRefused {
        /// The channel's name.
        name: Arc<str>,
        /// Why, for the client.
        message: String,
    },
    /// The outcomes of this subscriber's publishes, in order: told when
    /// one failed, or when the client asked for an ack.
    Published(Vec<Published>),
}
