//! The Socket.IO v5 server layer: namespaces, CONNECT with an auth object,
//! events, acks both ways and binary attachments, on top of an Engine.IO
//! session. What the events mean is up to a [`SocketHandler`]: the
//! realtime handlers in the product, echo handlers in the conformance
//! server.
//!
//! Any protocol violation (an undecodable packet, an event before CONNECT,
//! a CONNECT twice) closes the whole connection, as the reference server
//! does. A connection that joins no namespace within the connect timeout is
//! closed too.

use std::time::Duration;

use actix::{Addr, SpawnHandle};
use bytes::Bytes;
use serde_json::Value;

use crate::engineio::session::Session;
use crate::engineio::{CloseReason, EngineHandler, Link, Message, Sid};
use crate::list_map::ListMap;
use crate::protocol::engineio::Frame;
use crate::protocol::socketio::{Decoder, Packet, PacketKind, Received};

/// The address of a session that speaks Socket.IO through handler `A`.
pub type SocketAddr<A> = Addr<Session<SocketIo<A>>>;

/// An event from the client.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The event name, the first element of the packet's array.
    pub name: String,
    /// The remaining elements; placeholders stand for attachments.
    pub args: Vec<Value>,
    /// Binary attachments, `num` 0 first.
    pub attachments: Vec<Bytes>,
    /// Set when the client asks for an acknowledgement.
    pub ack_id: Option<u64>,
}

/// A refused CONNECT: sent as `44{"message": …, "data": …}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Why, for people.
    pub message: String,
    /// Details for programs, such as `{"code": "AUTH_INVALID_CREDENTIALS"}`.
    pub data: Option<Value>,
}

/// How a handler takes a CONNECT it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Answer now, with a new socket id, and with `pid` (the private id of
    /// connection state recovery) if given.
    Now {
        /// The private session id to send beside the socket id.
        pid: Option<String>,
    },
    /// The handler answers later, with [`Socket::accept`] or
    /// [`Socket::refuse`]; until then the namespace takes no packets.
    Later,
}

/// Why a namespace socket ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT for the namespace.
    ClientDisconnect,
    /// The server disconnected the namespace.
    ServerDisconnect,
    /// The whole connection closed.
    Closed(CloseReason),
}

/// The application behind the Socket.IO layer. Its methods run inside the
/// session actor, one at a time.
pub trait SocketHandler: Sized + Unpin + 'static {
    /// Messages other actors send to the handler through the session
    /// (`SessionEvent`).
    type Event: Send + 'static;

    /// Whether clients may connect to `namespace`; others get
    /// `Invalid namespace`.
    fn accepts_namespace(&self, namespace: &str) -> bool;

    /// Decides a CONNECT to an accepted namespace, with the client's auth
    /// object if it sent one.
    ///
    /// # Errors
    /// A [`Refusal`] becomes the CONNECT_ERROR the client sees.
    fn on_connect(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        namespace: &str,
        auth: Option<&Value>,
    ) -> Result<Admission, Refusal>;

    /// The CONNECT was answered ([`Admission::Now`]); the namespace socket
    /// is live.
    fn on_connected(
        &mut self,
        _socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        _auth: Option<Value>,
    ) {
    }

    /// An event on a connected namespace.
    fn on_event(&mut self, socket: &mut Socket<'_, '_, Self>, namespace: &str, event: Event);

    /// An ACK from the client for an event the server emitted with an id;
    /// `attachments` are those of a BINARY_ACK.
    fn on_ack(
        &mut self,
        _socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        _ack_id: u64,
        _args: Vec<Value>,
        _attachments: Vec<Bytes>,
    ) {
    }

    /// A message from another actor.
    fn on_app_event(&mut self, _socket: &mut Socket<'_, '_, Self>, _event: Self::Event) {}

    /// A namespace socket ended.
    fn on_disconnect(
        &mut self,
        _socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        _reason: DisconnectReason,
    ) {
    }

    /// What an operator sees of this connection (the admin API); `null`
    /// by default.
    fn describe(&self) -> Value {
        Value::Null
    }

    /// A ping went out behind everything sent so far.
    fn on_ping_sent(&mut self) {}

    /// The client answered the last ping: it has everything sent before.
    fn on_pong(&mut self) {}
}

/// The Socket.IO layer's settings.
#[derive(Clone, Debug)]
pub struct SocketIoConfig {
    /// How long a new connection may take to join a namespace.
    pub connect_timeout: Duration,
    /// Most bytes of binary attachments one packet may carry in all.
    pub max_attachment_bytes: usize,
}

/// The namespace sockets of one connection and what the handler may do
/// with them.
pub struct Socket<'l, 'c, A: SocketHandler> {
    link: &'l mut Link<'c, SocketIo<A>>,
    namespaces: &'l mut ListMap<String, Sid>,
    connecting: &'l mut ListMap<String, ()>,
    next_ack_id: &'l mut u64,
    connect_timer: &'l mut Option<SpawnHandle>,
}

impl<A: SocketHandler> Socket<'_, '_, A> {
    /// The Engine.IO session id.
    pub fn session_id(&self) -> &Sid {
        self.link.sid()
    }

    /// The Socket.IO id of the socket on `namespace`, if connected.
    pub fn socket_id(&self, namespace: &str) -> Option<&Sid> {
        self.namespaces.get(namespace)
    }

    /// The transport in use: `polling` or `websocket`.
    pub fn transport_name(&self) -> &'static str {
        self.link.transport_name()
    }

    /// The session's address, for other actors.
    pub fn address(&self) -> SocketAddr<A> {
        self.link.address()
    }

    /// Sends a packet, then its attachments.
    pub fn send_packet(&mut self, packet: &Packet, attachments: Vec<Bytes>) -> bool {
        let mut sent = self.link.send(Frame::message(&packet.encode()));
        for attachment in attachments {
            sent &= self.link.send(Frame::Binary(attachment));
        }
        sent
    }

    /// Sends already encoded frames (the fan-out path).
    pub fn send_frames(&mut self, frames: &[Frame]) -> bool {
        self.link.send_frames(frames)
    }

    /// Frames queued for the client and not yet written.
    pub fn queued(&self) -> usize {
        self.link.queued()
    }

    /// Answers a CONNECT the handler took [`Admission::Later`]: the socket
    /// gets `sid` (a new one if `None`) and the client `pid` if given.
    /// Returns the socket id, or `None` if no CONNECT to `namespace` waits.
    pub fn accept(&mut self, namespace: &str, sid: Option<Sid>, pid: Option<&str>) -> Option<Sid> {
        // No CONNECT to `namespace` waits: nothing to accept.
        self.connecting.remove(namespace)?;
        if let Some(timer) = self.connect_timer.take() {
            self.link.cancel(timer);
        }
        let sid = sid.unwrap_or_else(Sid::random);
        answer_connect(self.link, self.namespaces, namespace, sid.clone(), pid);
        Some(sid)
    }

    /// Refuses a CONNECT the handler took [`Admission::Later`].
    pub fn refuse(&mut self, namespace: &str, refusal: Refusal) {
        if self.connecting.remove(namespace).is_some() {
            let packet = Packet::connect_error(namespace, &refusal.message, refusal.data);
            self.link.send(Frame::message(&packet.encode()));
        }
    }

    /// Emits `name` with `args` on `namespace`.
    pub fn emit(&mut self, namespace: &str, name: &str, args: Vec<Value>) -> bool {
        self.send_packet(&Packet::event(namespace, name, args), Vec::new())
    }

    /// Emits with binary attachments; `args` hold their placeholders.
    pub fn emit_binary(
        &mut self,
        namespace: &str,
        name: &str,
        args: Vec<Value>,
        attachments: Vec<Bytes>,
    ) -> bool {
        let mut packet = Packet::event(namespace, name, args);
        if !attachments.is_empty() {
            packet.kind = PacketKind::BinaryEvent;
            packet.attachments = attachments.len();
        }
        self.send_packet(&packet, attachments)
    }

    /// Emits and asks for an ack; the answer reaches
    /// [`SocketHandler::on_ack`] with the returned id.
    pub fn emit_with_ack(&mut self, namespace: &str, name: &str, args: Vec<Value>) -> u64 {
        let id = *self.next_ack_id;
        *self.next_ack_id += 1;
        let mut packet = Packet::event(namespace, name, args);
        packet.ack_id = Some(id);
        self.send_packet(&packet, Vec::new());
        id
    }

    /// Answers the client's event `ack_id` with `args`.
    pub fn ack(&mut self, namespace: &str, ack_id: u64, args: Vec<Value>) -> bool {
        self.ack_binary(namespace, ack_id, args, Vec::new())
    }

    /// Answers with `args_json`, the arguments already encoded as a JSON
    /// array.
    pub fn ack_encoded(&mut self, namespace: &str, ack_id: u64, args_json: &str) -> bool {
        let text = Packet::encode_with_data(PacketKind::Ack, namespace, Some(ack_id), args_json);
        self.link.send(Frame::message(&text))
    }

    /// Answers with binary attachments; `args` hold their placeholders.
    pub fn ack_binary(
        &mut self,
        namespace: &str,
        ack_id: u64,
        args: Vec<Value>,
        attachments: Vec<Bytes>,
    ) -> bool {
        let mut packet = Packet::ack(namespace, ack_id, args);
        if !attachments.is_empty() {
            packet.kind = PacketKind::BinaryAck;
            packet.attachments = attachments.len();
        }
        self.send_packet(&packet, attachments)
    }

    /// Ends the socket on `namespace` with a DISCONNECT packet. The stock
    /// client does not reconnect after this; use [`Socket::close`] for that.
    pub fn disconnect(&mut self, namespace: &str) {
        if self.namespaces.remove(namespace).is_some() {
            let packet = Packet {
                kind: PacketKind::Disconnect,
                namespace: namespace.to_owned(),
                ack_id: None,
                data: None,
                attachments: 0,
            };
            self.send_packet(&packet, Vec::new());
        }
    }

    /// Closes the whole connection for `reason`; the stock client
    /// reconnects.
    pub fn close(&mut self, reason: CloseReason) {
        self.link.close(reason);
    }

    /// Runs `callback` after `delay`, unless cancelled.
    pub fn run_later(
        &mut self,
        delay: Duration,
        callback: impl FnOnce(&mut A, &mut Socket<'_, '_, A>) + 'static,
    ) -> SpawnHandle {
        self.link
            .run_later(delay, move |sio, link| sio.with_app(link, callback))
    }
}

/// The Engine.IO handler that speaks Socket.IO and hands events to `A`.
pub struct SocketIo<A: SocketHandler> {
    app: A,
    /// How long a new connection may take to join a namespace.
    connect_timeout: Duration,
    /// Reassembles binary packets; dies with the connection.
    decoder: Decoder,
    /// Connected namespaces and their socket ids (a list: the handler
    /// accepts few namespaces).
    namespaces: ListMap<String, Sid>,
    /// Namespaces whose CONNECT the handler will answer later.
    connecting: ListMap<String, ()>,
    /// The next id for server-initiated acks.
    next_ack_id: u64,
    /// Closes the connection if no namespace is joined in time.
    connect_timer: Option<SpawnHandle>,
}

impl<A: SocketHandler> SocketIo<A> {
    /// The layer over `app`.
    pub fn new(app: A, config: SocketIoConfig) -> Self {
        SocketIo {
            app,
            decoder: Decoder::with_limit(config.max_attachment_bytes),
            connect_timeout: config.connect_timeout,
            namespaces: ListMap::default(),
            connecting: ListMap::default(),
            next_ack_id: 0,
            connect_timer: None,
        }
    }

    /// The application handler.
    pub fn app(&self) -> &A {
        &self.app
    }

    fn with_app<R>(
        &mut self,
        link: &mut Link<'_, Self>,
        f: impl FnOnce(&mut A, &mut Socket<'_, '_, A>) -> R,
    ) -> R {
        let mut socket = Socket {
            link,
            namespaces: &mut self.namespaces,
            connecting: &mut self.connecting,
            next_ack_id: &mut self.next_ack_id,
            connect_timer: &mut self.connect_timer,
        };
        f(&mut self.app, &mut socket)
    }

    fn violation(&mut self, link: &mut Link<'_, Self>, what: &str) {
        tracing::debug!(sid = %link.sid(), what, "socket.io protocol violation; closing");
        link.close(CloseReason::ProtocolError);
    }

    fn on_packet(&mut self, link: &mut Link<'_, Self>, received: Received) {
        let Received {
            packet,
            attachments,
        } = received;
        let namespace = packet.namespace.clone();
        let connected = self.namespaces.contains_key(&namespace);
        match packet.kind {
            PacketKind::Connect if connected || self.connecting.contains_key(&namespace) => {
                self.violation(link, "connect twice")
            }
            PacketKind::Connect => self.on_connect(link, &namespace, packet.data),
            PacketKind::Disconnect if connected => {
                self.namespaces.remove(&namespace);
                self.with_app(link, |app, socket| {
                    app.on_disconnect(socket, &namespace, DisconnectReason::ClientDisconnect)
                });
            }
            PacketKind::Event | PacketKind::BinaryEvent if connected => {
                let Some(Value::Array(mut items)) = packet.data else {
                    return self.violation(link, "event without array");
                };
                let Value::String(name) = items.remove(0) else {
                    return self.violation(link, "event without name");
                };
                let event = Event {
                    name,
                    args: items,
                    attachments,
                    ack_id: packet.ack_id,
                };
                self.with_app(link, |app, socket| app.on_event(socket, &namespace, event));
            }
            PacketKind::Ack | PacketKind::BinaryAck if connected => {
                let (Some(id), Some(Value::Array(args))) = (packet.ack_id, packet.data) else {
                    return self.violation(link, "ack without id");
                };
                self.with_app(link, |app, socket| {
                    app.on_ack(socket, &namespace, id, args, attachments)
                });
            }
            _ => self.violation(link, "packet for a namespace that is not connected"),
        }
    }

    fn on_connect(&mut self, link: &mut Link<'_, Self>, namespace: &str, auth: Option<Value>) {
        if !self.app.accepts_namespace(namespace) {
            let refusal = Packet::connect_error(namespace, "Invalid namespace", None);
            link.send(Frame::message(&refusal.encode()));
            return;
        }
        let decision = self.with_app(link, |app, socket| {
            app.on_connect(socket, namespace, auth.as_ref())
        });
        let pid = match decision {
            Err(refusal) => {
                let packet = Packet::connect_error(namespace, &refusal.message, refusal.data);
                link.send(Frame::message(&packet.encode()));
                return;
            }
            Ok(Admission::Later) => {
                self.connecting.insert(namespace.to_owned(), ());
                return;
            }
            Ok(Admission::Now { pid }) => pid,
        };
        if let Some(timer) = self.connect_timer.take() {
            link.cancel(timer);
        }
        answer_connect(
            link,
            &mut self.namespaces,
            namespace,
            Sid::random(),
            pid.as_deref(),
        );
        self.with_app(link, |app, socket| {
            app.on_connected(socket, namespace, auth)
        });
    }
}

/// Makes `namespace` live with socket id `sid` and sends the CONNECT
/// answer: `{"sid": …}`, and `"pid"` when given.
fn answer_connect<A: SocketHandler>(
    link: &mut Link<'_, SocketIo<A>>,
    namespaces: &mut ListMap<String, Sid>,
    namespace: &str,
    sid: Sid,
    pid: Option<&str>,
) {
    let mut data = serde_json::Map::new();
    data.insert("sid".into(), sid.as_str().into());
    if let Some(pid) = pid {
        data.insert("pid".into(), pid.into());
    }
    let answer = Packet::connect(namespace, Some(Value::Object(data)));
    namespaces.insert(namespace.to_owned(), sid);
    link.send(Frame::message(&answer.encode()));
}

impl<A: SocketHandler> EngineHandler for SocketIo<A> {
    type Event = A::Event;

    fn describe(&self) -> Value {
        self.app.describe()
    }

    fn on_open(&mut self, link: &mut Link<'_, Self>) {
        self.connect_timer = Some(link.run_later(self.connect_timeout, |sio, link| {
            sio.connect_timer = None;
            if sio.namespaces.is_empty() {
                tracing::debug!(sid = %link.sid(), "no socket.io connect in time; closing");
                link.close(CloseReason::ProtocolError);
            }
        }));
    }

    fn on_message(&mut self, link: &mut Link<'_, Self>, message: Message) {
        let decoded = match message {
            Message::Text(text) => self.decoder.text(&text),
            Message::Binary(bytes) => self.decoder.binary(bytes),
        };
        match decoded {
            Ok(Some(received)) => self.on_packet(link, received),
            Ok(None) => {}
            Err(err) => self.violation(link, &err.to_string()),
        }
    }

    fn on_event(&mut self, link: &mut Link<'_, Self>, event: A::Event) {
        self.with_app(link, |app, socket| app.on_app_event(socket, event));
    }

    fn on_ping_sent(&mut self) {
        self.app.on_ping_sent();
    }

    fn on_pong(&mut self) {
        self.app.on_pong();
    }

    fn on_close(&mut self, link: &mut Link<'_, Self>, reason: CloseReason) {
        let namespaces: Vec<String> = self
            .namespaces
            .drain()
            .map(|(namespace, _)| namespace)
            .collect();
        for namespace in namespaces {
            self.with_app(link, |app, socket| {
                app.on_disconnect(socket, &namespace, DisconnectReason::Closed(reason))
            });
        }
    }
}
