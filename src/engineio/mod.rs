//! The Engine.IO v4 server: sessions over HTTP long-polling and WebSocket,
//! the upgrade between them, and the heartbeat.
//!
//! What rides on a session is up to an [`EngineHandler`]: the Socket.IO
//! layer (`crate::socketio`) in the product, a plain echo in the
//! conformance server.
//!
//! # Layout
//! - [`session`]: the `Session` actor, one per client connection.
//! - [`transport`]: the actix-web handlers for polling requests.
//! - [`upgrade`]: the HTTP listener, which takes WebSocket requests out of
//!   actix-web and answers their handshake.
//! - [`websocket`]: an upgraded connection: its reader and writer tasks and
//!   the outbox between the session and the writer.

pub mod admission;
mod heartbeat;
pub mod session;
pub mod transport;
pub mod upgrade;
pub mod websocket;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, AsyncContext, Context, SpawnHandle, WeakAddr};
use actix_web::dev::RequestHead;
use bytes::Bytes;
use parking_lot::RwLock;

use crate::protocol::engineio::Frame;
use session::{Core, Session};

/// A session id: 20 random URL-safe characters, as engine.io makes them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sid(Arc<str>);

impl Sid {
    /// A fresh random id.
    pub fn random() -> Sid {
        use base64::Engine as _;
        let bytes: [u8; 15] = rand::random();
        Sid(base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(bytes)
            .into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's text itself, for holders that keep it (no copy).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// An id given before (a recovered socket keeps its id).
    pub fn restored(id: &str) -> Sid {
        Sid(id.into())
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.0)
    }
}

/// The settings of one Engine.IO endpoint.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How often the server pings. Advertised as `pingInterval`.
    pub ping_interval: Duration,
    /// How long a pong may take. Advertised as `pingTimeout`.
    pub ping_timeout: Duration,
    /// Largest message or polling body accepted, in bytes.
    pub max_payload: usize,
    /// Most packets queued for one client; a client that falls further
    /// behind is disconnected.
    pub max_buffered_packets: usize,
    /// Origins allowed for browsers (CORS); `*` allows any.
    pub cors_origins: Vec<String>,
    /// Long-polling requests per second per session (bursts of twice as
    /// many); 0 for no limit.
    pub polling_rate: u32,
    /// Begins every session id of this server, when several serve one
    /// service: a request for an id that another server made is told so
    /// (the load balancer is not sticky), instead of only "unknown".
    pub node_tag: Option<Arc<str>>,
}

impl EngineConfig {
    /// A new session id (with this server's tag first, if any).
    pub fn new_sid(&self) -> Sid {
        match &self.node_tag {
            Some(tag) => Sid(format!("{tag}{}", Sid::random()).into()),
            None => Sid::random(),
        }
    }

    /// Whether `sid` was made by another server of the service.
    pub fn made_elsewhere(&self, sid: &str) -> bool {
        self.node_tag
            .as_deref()
            .is_some_and(|tag| !sid.starts_with(tag))
    }

    /// When the next ping goes out after the last one was answered (or the
    /// handshake). Pings leave a little early, up to 20 ms, so that a
    /// missing pong closes the session strictly before interval + timeout
    /// even when timers fire late; clients accept early pings.
    pub fn ping_delay(&self) -> Duration {
        let margin = (self.ping_interval / 10).min(Duration::from_millis(20));
        self.ping_interval - margin
    }

    /// Whether `origin` may make cross-origin requests.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed == origin)
    }
}

/// A message that reached the session: text or binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The data of a `4…` packet.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet.
    ClientClose,
    /// The connection dropped, or a pending poll was abandoned.
    TransportClose,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The client broke the protocol.
    ProtocolError,
    /// The client did not read fast enough and its queue overflowed.
    SlowClient,
    /// The server (or its handler) closed the session.
    ServerClose,
}

impl CloseReason {
    /// A short lowercase description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client close",
            CloseReason::TransportClose => "transport close",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::SlowClient => "slow client",
            CloseReason::ServerClose => "server close",
        }
    }
}

/// The application side of a session. It runs inside the session actor,
/// so its methods are called one at a time and need no locks.
pub trait EngineHandler: Sized + Unpin + 'static {
    /// Messages other actors send to this handler through the session's
    /// address (see [`SessionEvent`]).
    type Event: Send + 'static;

    /// The handshake is done and the open packet is queued.
    fn on_open(&mut self, link: &mut Link<'_, Self>);

    /// A message arrived from the client.
    fn on_message(&mut self, link: &mut Link<'_, Self>, message: Message);

    /// Something sent the session a [`SessionEvent`].
    fn on_event(&mut self, link: &mut Link<'_, Self>, event: Self::Event);

    /// The session ended; nothing more can be sent.
    fn on_close(&mut self, link: &mut Link<'_, Self>, reason: CloseReason);

    /// A ping went out, behind everything sent so far.
    fn on_ping_sent(&mut self) {}

    /// The client answered the last ping: it has received everything sent
    /// before it (transports deliver in order).
    fn on_pong(&mut self) {}

    /// What the application shows of this session to an operator (the
    /// admin API); `null` by default.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Wraps an application message for a session's handler.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct SessionEvent<E>(pub E);

/// What a handler can do with its session while one of its methods runs.
pub struct Link<'a, H: EngineHandler> {
    pub(crate) core: &'a mut Core,
    pub(crate) ctx: &'a mut Context<Session<H>>,
}

impl<H: EngineHandler> Link<'_, H> {
    /// The session id.
    pub fn sid(&self) -> &Sid {
        &self.core.sid
    }

    /// Queues a frame for the client. Returns false if the session is
    /// closed, or closes it because the client's queue is full.
    pub fn send(&mut self, frame: Frame) -> bool {
        self.core.send(frame, self.ctx)
    }

    /// Queues several frames at once (a channel's delivery batch, encoded
    /// once for every recipient). Returns false as [`Link::send`] does.
    pub fn send_frames(&mut self, frames: &[Frame]) -> bool {
        self.core.send_frames(frames, self.ctx)
    }

    /// Closes the session; the client sees its transport close.
    pub fn close(&mut self, reason: CloseReason) {
        self.core.begin_close(reason, self.ctx);
    }

    /// Whether the session is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Frames queued for the client and not yet written to its
    /// connection (or fetched by its poll).
    pub fn queued(&self) -> usize {
        self.core.queued()
    }

    /// The session's address, for other actors to send events to.
    pub fn address(&self) -> Addr<Session<H>> {
        self.ctx.address()
    }

    /// The transport in use: `polling` or `websocket`.
    pub fn transport_name(&self) -> &'static str {
        self.core.transport_name()
    }

    /// Runs `callback` on the handler after `delay`, unless cancelled.
    pub fn run_later(
        &mut self,
        delay: Duration,
        callback: impl FnOnce(&mut H, &mut Link<'_, H>) + 'static,
    ) -> SpawnHandle {
        self.ctx.run_later(delay, move |session, ctx| {
            session.with_handler(ctx, callback);
        })
    }

    /// Cancels a callback from [`Link::run_later`].
    pub fn cancel(&mut self, handle: SpawnHandle) {
        self.ctx.cancel_future(handle);
    }
}

/// Every open session of one endpoint by id, shared by all HTTP workers.
/// Polling requests and upgrades find their session here. It holds weak
/// addresses: a session removes itself when it stops, and a strong
/// address costs two allocations of its own per idle socket.
pub struct Registry<H: EngineHandler> {
    sessions: RwLock<HashMap<Sid, WeakAddr<Session<H>>>>,
    /// When each session pings, and when its pong is overdue.
    heartbeats: Arc<heartbeat::Heartbeats<H>>,
}

impl<H: EngineHandler> Default for Registry<H> {
    fn default() -> Self {
        Registry {
            sessions: RwLock::new(HashMap::new()),
            heartbeats: Arc::default(),
        }
    }
}

impl<H: EngineHandler> Registry<H> {
    /// The session with this id, if it is open.
    pub fn get(&self, sid: &str) -> Option<Addr<Session<H>>> {
        self.sessions.read().get(sid).and_then(WeakAddr::upgrade)
    }

    pub(crate) fn insert(&self, sid: Sid, addr: WeakAddr<Session<H>>) {
        self.sessions.write().insert(sid, addr);
    }

    pub(crate) fn remove(&self, sid: &Sid) {
        self.sessions.write().remove(sid);
    }

    /// Closes the session `sid` if it is open (an admin's disconnect): the
    /// client sees its transport close and reconnects by itself. Returns
    /// whether such a session was open.
    pub fn close(&self, sid: &str, reason: CloseReason) -> bool {
        match self.get(sid) {
            Some(addr) => {
                addr.do_send(session::Close(reason));
                true
            }
            None => false,
        }
    }

    /// Closes every open session (server shutdown): clients see their
    /// transport close and reconnect elsewhere or later.
    pub fn close_all(&self, reason: CloseReason) {
        for addr in self.sessions.read().values().filter_map(WeakAddr::upgrade) {
            addr.do_send(session::Close(reason));
        }
    }

    /// Every open session (inspection).
    pub fn all(&self) -> Vec<(Sid, Addr<Session<H>>)> {
        self.sessions
            .read()
            .iter()
            .filter_map(|(sid, addr)| Some((sid.clone(), addr.upgrade()?)))
            .collect()
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::borrow::Borrow<str> for Sid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Makes the handler of each new session from its handshake request.
pub type HandlerFactory<H> = Arc<dyn Fn(&RequestHead) -> H + Send + Sync>;

/// One Engine.IO endpoint: its settings, its sessions and how to make
/// handlers. Cloned into every HTTP worker.
pub struct EngineServer<H: EngineHandler> {
    /// The endpoint's settings.
    pub config: Arc<EngineConfig>,
    /// The open sessions.
    pub registry: Arc<Registry<H>>,
    pub(crate) factory: HandlerFactory<H>,
    /// Who may open a session (per-address limits).
    pub admission: Arc<admission::Admission>,
}

impl<H: EngineHandler> Clone for EngineServer<H> {
    fn clone(&self) -> Self {
        EngineServer {
            config: self.config.clone(),
            registry: self.registry.clone(),
            factory: self.factory.clone(),
            admission: self.admission.clone(),
        }
    }
}

impl<H: EngineHandler> EngineServer<H> {
    /// An endpoint with `config` whose sessions get handlers from `factory`,
    /// open to every address.
    pub fn new(
        config: EngineConfig,
        factory: impl Fn(&RequestHead) -> H + Send + Sync + 'static,
    ) -> Self {
        EngineServer {
            config: Arc::new(config),
            registry: Arc::new(Registry::default()),
            factory: Arc::new(factory),
            admission: admission::Admission::unlimited(),
        }
    }

    /// The same endpoint, admitting new sessions by `admission`.
    pub fn with_admission(mut self, admission: Arc<admission::Admission>) -> Self {
        self.admission = admission;
        self
    }
}
