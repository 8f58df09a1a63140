//! `Client`: the realtime Socket.IO handler of one connection. It admits
//! the connection (SPEC §3), then serves `realtime:subscribe`,
//! `realtime:unsubscribe` and `realtime:publish` (SPEC §5) by talking to
//! the channel registry and the channel actors, and passes on what the
//! channels send it. Its state dies with the connection: on disconnect it
//! leaves every channel.
//!
//! # Layout
//! - [`connection`]: admitting a CONNECT, and who the socket then is.
//! - [`subscribe`]: subscribing and unsubscribing.
//! - [`publish`]: publishing and its outcome.

mod connection;
mod history;
mod publish;
mod recover;
mod subscribe;

use std::net::SocketAddr as PeerAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Context, Handler};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::channel::{Member, SubscriberEvent};
use crate::engineio::session::Session;
use crate::engineio::{CloseReason, SessionEvent, Sid};
use crate::list_map::ListMap;
use crate::permissions::Decision;
use crate::publish::Sender;
use crate::rate_limit::TokenBucket;
use crate::realtime::Realtime;
use crate::recovery::{DeliveryLog, HandOver};
use crate::socketio::{
    Admission, DisconnectReason, Event, Refusal, Socket, SocketAddr, SocketHandler, SocketIo,
};
pub use connection::UserSockets;
pub use subscribe::Authorization;
use subscribe::Subscriptions;

/// The address of a realtime client session.
pub type ClientAddr = SocketAddr<Client>;

/// The only namespace realtime clients use.
const NAMESPACE: &str = "/";

/// What reaches a client from other actors.
#[derive(Debug)]
pub enum ClientEvent {
    /// The permission hook decided a subscribe.
    Authorized {
        /// The requested name.
        name: String,
        /// What it decided.
        authorization: Authorization,
    },
    /// The permission hook decided the first waiting publish of a channel.
    PublishAuthorized {
        /// The channel's name.
        name: String,
        /// What it decided.
        decision: Decision,
        /// The policy generation the decision was taken under.
        generation: u64,
    },
    /// One of the socket's channels tells it something.
    Channel(SubscriberEvent),
    /// Whether (and how) the session asked for can be recovered.
    Recovery(Result<recover::Plan, ()>),
    /// A page of missed messages, or why it could not be read.
    Replayed(Result<Vec<entity::messages::Model>, String>),
    /// Another connection recovers this session.
    HandOver(tokio::sync::oneshot::Sender<crate::recovery::SessionState>),
    /// The answer to a `realtime:history`.
    History {
        /// The request's ack id.
        ack_id: u64,
        /// `{ok, channel, messages}` or `{ok: false, channel, error}`.
        answer: Value,
    },
}

/// A recovering connection asks this session for its state.
impl Handler<HandOver> for Session<SocketIo<Client>> {
    type Result = ();

    fn handle(&mut self, HandOver(to): HandOver, ctx: &mut Context<Self>) {
        <Self as Handler<SessionEvent<ClientEvent>>>::handle(
            self,
            SessionEvent(ClientEvent::HandOver(to)),
            ctx,
        );
    }
}

/// Channels hold a session as a recipient of their events; they reach the
/// client like any other [`SessionEvent`].
impl Handler<SubscriberEvent> for Session<SocketIo<Client>> {
    type Result = ();

    fn handle(&mut self, event: SubscriberEvent, ctx: &mut Context<Self>) {
        <Self as Handler<SessionEvent<ClientEvent>>>::handle(
            self,
            SessionEvent(ClientEvent::Channel(event)),
            ctx,
        );
    }
}

/// One realtime connection.
pub struct Client {
    hub: Arc<Realtime>,
    /// Set once CONNECT is accepted.
    principal: Option<Principal>,
    /// Unique per connection; the channels key their subscribers by it.
    subscriber_id: u64,
    /// The presence identity, known once the socket id is.
    member: Option<Member>,
    /// The Socket.IO socket id, once connected.
    socket_id: Arc<str>,
    /// By channel name, in every state from request to live.
    subscriptions: Subscriptions,
    /// The socket's publish rate (`limits.publish_rate`, `publish_burst`).
    publish_bucket: TokenBucket,
    /// When the connection was made, and from where (inspection).
    connected_at: DateTime<Utc>,
    remote_address: Option<PeerAddr>,
    /// The private session id, when recovery is on.
    pid: Option<Arc<str>>,
    /// What was delivered and confirmed, when recovery is on.
    log: Option<DeliveryLog>,
    /// A recovery's replay, while it runs (boxed: most sockets never have
    /// one).
    replay: Option<Box<recover::Replay>>,
    /// After a replay, per channel, the highest `seq` the client has (its
    /// floor, or the last message replayed): a live message at or below it
    /// reached the client already (a node can hear of another node's row
    /// after the replay read it), until the live flow passes it.
    replayed_through: ListMap<Arc<str>, i64>,
    /// The session's state went to a connection that recovered it.
    handed_over: bool,
    /// `realtime:history` requests being answered.
    history_in_flight: usize,
    /// This socket's place among its user's sockets, given back on drop.
    _user_socket: Option<connection::UserSocket>,
    /// Where channels answer this socket's publishes, made at its first.
    reply_to: Option<Arc<actix::Recipient<SubscriberEvent>>>,
}

impl Client {
    /// A client of `hub`, not yet connected, of a connection from
    /// `remote_address`.
    pub fn new(hub: Arc<Realtime>, remote_address: Option<PeerAddr>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Client {
            principal: None,
            subscriber_id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            member: None,
            socket_id: "".into(),
            subscriptions: Subscriptions::default(),
            publish_bucket: TokenBucket::new(hub.limits.publish_rate, hub.limits.publish_burst),
            hub,
            connected_at: Utc::now(),
            remote_address,
            pid: None,
            log: None,
            replay: None,
            replayed_through: ListMap::default(),
            handed_over: false,
            history_in_flight: 0,
            _user_socket: None,
            reply_to: None,
        }
    }

    /// What the socket's messages carry as `senderType`/`senderId`
    /// (worked out per publish rather than kept: it is cheap, and every
    /// byte of an idle socket counts).
    fn sender(&self) -> Sender {
        self.principal.as_ref().map_or(Sender::SYSTEM, Sender::of)
    }

    /// Emits `realtime:error {channel?, code, message}`.
    fn emit_error(
        socket: &mut Socket<'_, '_, Self>,
        channel: Option<&str>,
        code: &str,
        message: &str,
    ) {
        let mut body = Map::new();
        if let Some(channel) = channel {
            body.insert("channel".into(), Value::String(channel.to_owned()));
        }
        body.insert("code".into(), Value::String(code.to_owned()));
        body.insert("message".into(), Value::String(message.to_owned()));
        socket.emit(NAMESPACE, "realtime:error", vec![Value::Object(body)]);
    }
}

/// The `channel` string of a `{channel}` argument.
fn channel_arg(args: &[Value]) -> Option<&str> {
    args.first()?
        .get("channel")?
        .as_str()
        .filter(|name| !name.is_empty())
}

impl SocketHandler for Client {
    type Event = ClientEvent;

    fn accepts_namespace(&self, namespace: &str) -> bool {
        namespace == NAMESPACE
    }

    fn on_connect(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        auth: Option<&Value>,
    ) -> Result<Admission, Refusal> {
        let principal = connection::admit(&self.hub.auth, auth)?;
        self._user_socket = self
            .hub
            .user_sockets
            .admit(&principal, self.hub.limits.max_sockets_per_user)?;
        self.principal = Some(principal);
        if self.hub.recovery.is_none() {
            return Ok(Admission::Now { pid: None });
        }
        if let Some((pid, offset)) = recover::recovery_request(auth) {
            self.plan_recovery(socket, pid, offset);
            return Ok(Admission::Later);
        }
        let pid = recover::new_pid();
        self.pid = Some(pid.as_str().into());
        Ok(Admission::Now { pid: Some(pid) })
    }

    fn on_connected(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        _auth: Option<Value>,
    ) {
        self.start_session(socket);
    }

    fn on_event(&mut self, socket: &mut Socket<'_, '_, Self>, _namespace: &str, event: Event) {
        if !event.attachments.is_empty() {
            let message = "binary attachments are not supported; send JSON";
            return match event.ack_id {
                Some(ack_id) => Self::refuse_event(socket, ack_id, "INVALID_INPUT", message),
                None => Self::emit_error(socket, None, "INVALID_INPUT", message),
            };
        }
        match event.name.as_str() {
            "realtime:subscribe" => self.on_subscribe(socket, &event.args, event.ack_id),
            "realtime:unsubscribe" => self.on_unsubscribe(socket, &event.args, event.ack_id),
            "realtime:publish" => self.on_publish(socket, event.args, event.ack_id),
            "realtime:history" => self.on_history(socket, &event.args, event.ack_id),
            other => {
                let message = format!("unknown event {other:?}");
                match event.ack_id {
                    Some(ack_id) => {
                        Self::refuse_event(socket, ack_id, "REALTIME_INVALID_EVENT", &message)
                    }
                    None => Self::emit_error(socket, None, "REALTIME_INVALID_EVENT", &message),
                }
            }
        }
    }

    fn on_app_event(&mut self, socket: &mut Socket<'_, '_, Self>, event: ClientEvent) {
        match event {
            ClientEvent::Authorized {
                name,
                authorization,
            } => self.on_authorized(socket, name, authorization),
            ClientEvent::PublishAuthorized {
                name,
                decision,
                generation,
            } => self.on_publish_authorized(socket, &name, decision, generation),
            ClientEvent::Channel(SubscriberEvent::Frames(frames)) => {
                socket.send_frames(&frames);
            }
            ClientEvent::Channel(SubscriberEvent::Messages(delivered)) => {
                if let Some(delivered) = self.hold_during_replay(socket, delivered) {
                    self.send_delivered(socket, &delivered);
                }
            }
            ClientEvent::Recovery(plan) => self.on_recovery(socket, plan),
            ClientEvent::Replayed(page) => self.on_replayed(socket, page),
            ClientEvent::HandOver(to) => self.on_hand_over(socket, to),
            ClientEvent::History { ack_id, answer } => {
                self.on_history_answer(socket, ack_id, answer)
            }
            ClientEvent::Channel(SubscriberEvent::Evicted) => {
                socket.close(CloseReason::SlowClient);
            }
            ClientEvent::Channel(SubscriberEvent::Joined(joined)) => self.on_joined(socket, joined),
            ClientEvent::Channel(SubscriberEvent::JoinRefused { name, message }) => {
                self.on_join_refused(socket, &name, &message)
            }
            ClientEvent::Channel(SubscriberEvent::Published(replies)) => {
                for published in replies {
                    Self::on_published(socket, published)
                }
            }
        }
    }

    fn describe(&self) -> Value {
        let Some(principal) = &self.principal else {
            // Not connected to the namespace yet: nothing to show.
            return Value::Null;
        };
        let mut channels: Vec<&str> = self
            .subscriptions
            .iter()
            .filter(|(_, subscription)| subscription.is_live())
            .map(|(name, _)| name.as_str())
            .collect();
        channels.sort_unstable();
        let user_id = match principal {
            Principal::Jwt {
                sub,
                role: crate::auth::Role::Authenticated,
                ..
            } => Some(sub.as_str()),
            _ => None,
        };
        json!({
            "id": self.socket_id,
            "role": principal.role().as_str(),
            "userId": user_id,
            "channels": channels,
            "connectedAt": self.connected_at,
            "remoteAddress": self.remote_address.map(|address| address.to_string()),
        })
    }

    fn on_disconnect(
        &mut self,
        _socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        reason: DisconnectReason,
    ) {
        self.end_session(reason);
        self.leave_all(recover::is_recoverable(reason));
    }

    fn on_ping_sent(&mut self) {
        if let Some(log) = &mut self.log {
            log.ping_sent();
        }
    }

    fn on_pong(&mut self) {
        if let Some(log) = &mut self.log {
            if log.pong_received() {
                self.checkpoint();
            }
        }
    }
}

impl Client {
    /// The CONNECT was answered: the socket is live (known to the recovery
    /// store by its private id, when recovery is on), and, with
    /// `auth.disconnect_on_expiry`, closed when its token expires.
    fn start_session(&mut self, socket: &mut Socket<'_, '_, Self>) {
        let socket_id: Arc<str> = socket
            .socket_id(NAMESPACE)
            .map_or_else(|| "".into(), Sid::shared);
        self.member = self
            .principal
            .as_ref()
            .map(|principal| connection::member(principal, &socket_id));
        self.socket_id = socket_id;
        if let (Some(store), Some(pid)) = (&self.hub.recovery, &self.pid) {
            self.log = Some(DeliveryLog::new(self.hub.recovery_settings.max_unconfirmed));
            store.register(
                pid.clone(),
                self.subscriber_id,
                socket.address().recipient::<HandOver>().downgrade(),
            );
        }
        if self.hub.disconnect_on_expiry {
            let delay = self.principal.as_ref().and_then(connection::expiry_delay);
            if let Some(delay) = delay {
                // The transport, not a Socket.IO DISCONNECT: the client
                // reconnects, with a fresh token if it can get one.
                socket.run_later(delay, |_, socket| {
                    tracing::debug!("token expired; closing the connection");
                    socket.close(CloseReason::ServerClose);
                });
            }
        }
    }

    /// Answers an event the client wanted acknowledged with an error.
    pub(super) fn refuse_event(
        socket: &mut Socket<'_, '_, Self>,
        ack_id: u64,
        code: &str,
        message: &str,
    ) {
        socket.ack(
            NAMESPACE,
            ack_id,
            vec![serde_json::json!({ "ok": false, "error": { "code": code, "message": message } })],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Client;
    use crate::engineio::session::Session;
    use crate::socketio::SocketIo;

    /// The session actor's state, with actix's context around it, is the
    /// bulk of what tokio allocates per socket, in steps of 128 bytes (the
    /// task cell is aligned so). At 1,032 bytes the cell is 1,152; a few
    /// bytes more would cost every idle socket 128 more
    /// (docs/benchmarks.md, "Idle sockets under 4 KB"). Grown on purpose?
    /// Measure the RSS per idle socket and move this bound with the note.
    #[test]
    fn a_session_stays_within_its_task_cell_step() {
        type Actor = Session<SocketIo<Client>>;
        let size = std::mem::size_of::<actix::dev::ContextFut<Actor, actix::Context<Actor>>>();
        assert!(size <= 1032, "the session's future is {size} bytes");
    }
}
