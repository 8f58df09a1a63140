//! The `Session` actor: one Engine.IO connection, whatever its transport.
//!
//! It owns the transport state (a polling queue with its waiting GET, a
//! WebSocket outbox, or both during an upgrade), its heartbeat state (the
//! deadlines wait in the endpoint's `heartbeat` queues), and
//! the handler that gives the messages meaning. HTTP handlers and the
//! WebSocket reader talk to it only through messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::oneshot;

use super::admission::AddressTicket;
use super::heartbeat::{Beat, Heartbeat};
use super::websocket::{MessageTaken, PushError, WsLink, WsMessage};
use super::{CloseReason, EngineConfig, EngineHandler, Link, Message, Registry, SessionEvent, Sid};
use crate::protocol::engineio::{self, Frame, Packet};
use crate::rate_limit::TokenBucket;

/// The polling side: packets waiting for a GET, and the GET waiting for
/// packets.
struct Polling {
    queue: VecDeque<Frame>,
    waiting: Option<oneshot::Sender<String>>,
    /// A POST is being read (the protocol allows one at a time).
    posting: bool,
    /// `polling_rate`: GETs and POSTs a second.
    requests: TokenBucket,
}

impl Polling {
    fn new(config: &EngineConfig) -> Box<Self> {
        Box::new(Polling {
            queue: VecDeque::new(),
            waiting: None,
            posting: false,
            requests: TokenBucket::new(config.polling_rate, config.polling_rate.saturating_mul(2)),
        })
    }

    /// Spends one request of the session's rate.
    fn admit(&mut self) -> Result<(), RequestError> {
        if self.requests.try_take() {
            Ok(())
        } else {
            crate::metrics::METRICS.refused(crate::metrics::Limit::PollingRate);
            Err(RequestError::TooManyRequests)
        }
    }
}

impl Polling {
    /// Answers the waiting GET with everything queued, if both exist.
    fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        if let Some(waiting) = self.waiting.take() {
            let payload = engineio::encode_payload(self.queue.iter());
            self.queue.clear();
            let _ = waiting.send(payload);
        }
    }

    /// Answers the waiting GET with one packet, leaving the queue alone.
    fn release(&mut self, packet: &str) {
        if let Some(waiting) = self.waiting.take() {
            let _ = waiting.send(packet.to_owned());
        }
    }
}

/// The polling side is boxed: most sessions live on a WebSocket, and the
/// enum is as large as its largest variant in every one of them.
enum Transport {
    Polling(Box<Polling>),
    WebSocket(WsLink),
    /// A WebSocket joined a polling session; `probed` once it answered
    /// `2probe`. Packets queue on the polling side until the upgrade ends.
    Upgrading {
        polling: Box<Polling>,
        ws: WsLink,
        probed: bool,
    },
}

impl Transport {
    /// The polling side, while there is one (before and during an upgrade).
    fn polling(&mut self) -> Option<&mut Polling> {
        match self {
            Transport::Polling(polling) | Transport::Upgrading { polling, .. } => Some(polling),
            Transport::WebSocket(_) => None,
        }
    }
}

/// The transport and heartbeat state of a session, apart from its handler
/// so both can be borrowed at once.
pub struct Core {
    /// The session id.
    pub(crate) sid: Sid,
    /// Endpoint settings.
    config: Arc<EngineConfig>,
    /// Where packets go; changes on upgrade.
    transport: Transport,
    /// Set once the session starts closing; nothing is sent after.
    closing: Option<CloseReason>,
    /// What the session waits for: the time of its next ping, or the
    /// pong of the last one.
    awaiting: Heartbeat,
    /// Counts the session's heartbeat deadlines; only the latest counts.
    beat: u32,
}

const PING: &str = "2";
/// Messages (delivery batches, requests) a session may have waiting.
const MAILBOX_CAPACITY: usize = 256;
const CLOSE: &str = "1";
const NOOP: &str = "6";

impl Core {
    pub(crate) fn is_closed(&self) -> bool {
        self.closing.is_some()
    }

    /// The index of [`Self::transport_name`] in `metrics::TRANSPORTS`.
    fn transport_index(&self) -> usize {
        usize::from(matches!(self.transport, Transport::WebSocket(_)))
    }

    /// Frames queued and not yet taken by the transport.
    pub(crate) fn queued(&self) -> usize {
        match &self.transport {
            Transport::Polling(polling) | Transport::Upgrading { polling, .. } => {
                polling.queue.len()
            }
            Transport::WebSocket(ws) => ws.queued_frames(),
        }
    }

    pub(crate) fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::WebSocket(_) => "websocket",
            _ => "polling",
        }
    }

    /// Queues `frame` on the current transport.
    pub(crate) fn send<A>(&mut self, frame: Frame, ctx: &mut Context<A>) -> bool
    where
        A: Actor<Context = Context<A>>,
    {
        self.send_frames(std::slice::from_ref(&frame), ctx)
    }

    /// Queues `frames` on the current transport; on a WebSocket they are
    /// framed into the outbox in one go. Closes the session if its queue
    /// overflows.
    pub(crate) fn send_frames<A>(&mut self, frames: &[Frame], ctx: &mut Context<A>) -> bool
    where
        A: Actor<Context = Context<A>>,
    {
        if self.closing.is_some() {
            return false;
        }
        let overflow = match &mut self.transport {
            Transport::WebSocket(ws) => match ws.push(frames) {
                Ok(()) => false,
                Err(PushError::Full) => true,
                Err(PushError::Gone) => {
                    self.begin_close(CloseReason::TransportClose, ctx);
                    return false;
                }
            },
            Transport::Polling(polling) | Transport::Upgrading { polling, .. } => {
                if polling.queue.len() + frames.len() > self.config.max_buffered_packets {
                    true
                } else {
                    polling.queue.extend(frames.iter().cloned());
                    false
                }
            }
        };
        if let Transport::Polling(polling) = &mut self.transport {
            polling.flush();
        }
        if overflow {
            tracing::warn!(sid = %self.sid, "client queue full; closing session");
            self.begin_close(CloseReason::SlowClient, ctx);
            return false;
        }
        true
    }

    /// Starts closing: releases a waiting GET, closes a WebSocket, stops
    /// the timers and the actor. The handler hears of it in `stopped`.
    pub(crate) fn begin_close<A>(&mut self, reason: CloseReason, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(reason);
        // A client that asked to close gets a noop for its waiting GET; any
        // other close tells the client with a close packet.
        let answer = if reason == CloseReason::ClientClose {
            NOOP
        } else {
            CLOSE
        };
        match &mut self.transport {
            Transport::Polling(polling) => polling.release(answer),
            Transport::WebSocket(ws) => ws.close(),
            Transport::Upgrading { polling, ws, .. } => {
                polling.release(answer);
                ws.close();
            }
        }
        ctx.stop();
    }
}

/// One Engine.IO session and its handler.
pub struct Session<H: EngineHandler> {
    core: Core,
    handler: H,
    /// Where the session is listed; it removes itself when it stops.
    registry: Arc<Registry<H>>,
    /// The session's place in its client address's count, given back when
    /// the session ends.
    _ticket: Option<AddressTicket>,
}

impl<H: EngineHandler> Session<H> {
    /// Starts a session that began with a polling handshake.
    pub(crate) fn start_polling(
        sid: Sid,
        config: Arc<EngineConfig>,
        registry: Arc<Registry<H>>,
        handler: H,
        ticket: Option<AddressTicket>,
    ) -> actix::Addr<Self> {
        let polling = Polling::new(&config);
        Self::start(
            sid,
            config,
            registry,
            handler,
            Transport::Polling(polling),
            ticket,
        )
    }

    /// Starts a session that began on a WebSocket; the open packet is its
    /// first frame.
    pub(crate) fn start_websocket(
        sid: Sid,
        config: Arc<EngineConfig>,
        registry: Arc<Registry<H>>,
        handler: H,
        ws: WsLink,
        ticket: Option<AddressTicket>,
    ) -> actix::Addr<Self> {
        Self::start(
            sid,
            config,
            registry,
            handler,
            Transport::WebSocket(ws),
            ticket,
        )
    }

    fn start(
        sid: Sid,
        config: Arc<EngineConfig>,
        registry: Arc<Registry<H>>,
        handler: H,
        transport: Transport,
        ticket: Option<AddressTicket>,
    ) -> actix::Addr<Self> {
        let session = Session {
            _ticket: ticket,
            core: Core {
                sid: sid.clone(),
                config,
                transport,
                closing: None,
                awaiting: Heartbeat::NextPing,
                beat: 0,
            },
            handler,
            registry: registry.clone(),
        };
        let addr = session.start();
        registry.insert(sid, addr.downgrade());
        addr
    }

    /// The open packet of this session.
    pub(crate) fn open_packet(sid: &Sid, config: &EngineConfig, upgrades: &[&str]) -> String {
        let json = engineio::handshake_json(
            sid.as_str(),
            upgrades,
            config.ping_interval.as_millis() as u64,
            config.ping_timeout.as_millis() as u64,
            config.max_payload,
        );
        Packet::Open(json).encode_text()
    }

    pub(crate) fn with_handler<R>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut H, &mut Link<'_, H>) -> R,
    ) -> R {
        let mut link = Link {
            core: &mut self.core,
            ctx,
        };
        f(&mut self.handler, &mut link)
    }

    fn schedule_ping(&mut self, ctx: &mut Context<Self>) {
        let delay = self.core.config.ping_delay();
        self.await_heartbeat(Heartbeat::NextPing, delay, ctx);
    }

    /// Waits `delay` for `kind` (from the endpoint's heartbeat queue).
    fn await_heartbeat(&mut self, kind: Heartbeat, delay: Duration, ctx: &mut Context<Self>) {
        self.core.beat = self.core.beat.wrapping_add(1);
        self.core.awaiting = kind;
        let session = ctx.address().downgrade();
        self.registry
            .heartbeats
            .schedule(kind, delay, session, self.core.beat);
    }

    fn on_pong(&mut self, ctx: &mut Context<Self>) {
        if self.core.awaiting == Heartbeat::PongDue {
            self.handler.on_pong();
            self.schedule_ping(ctx);
        }
    }

    /// Handles one packet from the client, whichever transport brought it.
    fn on_packet(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        if self.core.is_closed() {
            return;
        }
        match packet {
            Packet::Pong(_) => self.on_pong(ctx),
            Packet::Ping(data) => {
                let pong = Packet::Pong(data).encode();
                self.core.send(pong, ctx);
            }
            Packet::Message(text) => self.with_handler(ctx, |handler, link| {
                handler.on_message(link, Message::Text(text))
            }),
            Packet::Binary(bytes) => self.with_handler(ctx, |handler, link| {
                handler.on_message(link, Message::Binary(bytes))
            }),
            Packet::Close => self.core.begin_close(CloseReason::ClientClose, ctx),
            Packet::Noop => {}
            Packet::Open(_) | Packet::Upgrade => {
                self.core.begin_close(CloseReason::ProtocolError, ctx)
            }
        }
    }

    /// A packet that arrived on the WebSocket of an upgrade in progress.
    fn on_upgrade_packet(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        let Transport::Upgrading {
            polling,
            ws,
            probed,
        } = &mut self.core.transport
        else {
            return;
        };
        match packet {
            Packet::Ping(data) if data == "probe" => {
                let _ = ws.push(&[Packet::Pong(data).encode()]);
                *probed = true;
                // Release the client's long poll so it can pause polling.
                polling.release(NOOP);
            }
            Packet::Upgrade if *probed => {
                let Transport::Upgrading {
                    mut polling, ws, ..
                } = std::mem::replace(
                    &mut self.core.transport,
                    Transport::Polling(Polling::new(&self.core.config)),
                )
                else {
                    return;
                };
                polling.release(NOOP);
                let queued = std::mem::take(&mut polling.queue);
                self.core.transport = Transport::WebSocket(ws);
                let connections = &crate::metrics::METRICS.connections;
                connections[0].sub(1);
                connections[1].inc();
                for frame in queued {
                    self.core.send(frame, ctx);
                }
                tracing::debug!(sid = %self.core.sid, "upgraded to websocket");
            }
            _ => self.core.begin_close(CloseReason::ProtocolError, ctx),
        }
    }
}

impl<H: EngineHandler> Actor for Session<H> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Fan-out uses try_send: a session this far behind is too slow.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        tracing::debug!(sid = %self.core.sid, transport = self.core.transport_name(), "session opened");
        crate::metrics::METRICS.sessions_opened.inc();
        crate::metrics::METRICS.connections[self.core.transport_index()].inc();
        if matches!(self.core.transport, Transport::WebSocket(_)) {
            let open = Self::open_packet(&self.core.sid, &self.core.config, &[]);
            self.core.send(Frame::Text(open.into()), ctx);
        }
        // The session runs until it stops itself (it always does, on
        // close): this never-ending future, which allocates nothing, keeps
        // it running though nobody need hold a strong address to it.
        ctx.spawn(actix::fut::wrap_future::<_, Self>(
            std::future::pending::<()>(),
        ));
        self.schedule_ping(ctx);
        self.with_handler(ctx, |handler, link| handler.on_open(link));
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        self.registry.remove(&self.core.sid);
        let reason = self.core.closing.unwrap_or(CloseReason::ServerClose);
        crate::metrics::METRICS.sessions_closed[crate::metrics::close_reason_index(reason)].inc();
        crate::metrics::METRICS.connections[self.core.transport_index()].sub(1);
        tracing::debug!(sid = %self.core.sid, reason = reason.as_str(), "session closed");
        self.with_handler(ctx, |handler, link| handler.on_close(link, reason));
    }
}

impl<H: EngineHandler> Handler<Beat> for Session<H> {
    type Result = ();

    fn handle(&mut self, Beat { kind, beat }: Beat, ctx: &mut Context<Self>) {
        if self.core.is_closed() || beat != self.core.beat || kind != self.core.awaiting {
            // A deadline the session moved past.
            return;
        }
        match kind {
            Heartbeat::NextPing => {
                self.core
                    .send(Frame::Text(ByteString::from_static(PING)), ctx);
                self.handler.on_ping_sent();
                let timeout = self.core.config.ping_timeout;
                self.await_heartbeat(Heartbeat::PongDue, timeout, ctx);
            }
            Heartbeat::PongDue => self.core.begin_close(CloseReason::PingTimeout, ctx),
        }
    }
}

/// An error that a polling or upgrade request gets as HTTP 400
/// `{"code": n, "message": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Code 1: no open session has this id.
    UnknownSid,
    /// Code 3: the request does not fit the session's state.
    BadRequest,
    /// Over `polling_rate`: 429, the session stays.
    TooManyRequests,
}

/// What a long-polling GET gets.
#[derive(Debug)]
pub enum PollAnswer {
    /// Packets were queued: here they are.
    Ready(String),
    /// Nothing queued: wait on this for the next packets.
    Wait(oneshot::Receiver<String>),
}

/// A long-polling GET.
#[derive(actix::Message)]
#[rtype(result = "Result<PollAnswer, RequestError>")]
pub struct PollGet;

impl<H: EngineHandler> Handler<PollGet> for Session<H> {
    type Result = Result<PollAnswer, RequestError>;

    fn handle(&mut self, _: PollGet, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.is_closed() {
            return Err(RequestError::UnknownSid);
        }
        let polling = match &mut self.core.transport {
            Transport::Polling(polling) => polling,
            Transport::Upgrading { probed: true, .. } => {
                // Polling is on its way out: release the client at once.
                return Ok(PollAnswer::Ready(NOOP.to_owned()));
            }
            Transport::Upgrading { polling, .. } => polling,
            Transport::WebSocket(_) => return Err(RequestError::BadRequest),
        };
        polling.admit()?;
        if polling.waiting.is_some() {
            // Two GETs at once break the protocol: the first gets a close
            // packet, this one a 400, and the session ends.
            self.core.begin_close(CloseReason::ProtocolError, ctx);
            return Err(RequestError::BadRequest);
        }
        if !polling.queue.is_empty() {
            let payload = engineio::encode_payload(polling.queue.iter());
            polling.queue.clear();
            return Ok(PollAnswer::Ready(payload));
        }
        let (tx, rx) = oneshot::channel();
        polling.waiting = Some(tx);
        Ok(PollAnswer::Wait(rx))
    }
}

/// The client went away while its GET was waiting.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct PollAbandoned;

impl<H: EngineHandler> Handler<PollAbandoned> for Session<H> {
    type Result = ();

    fn handle(&mut self, _: PollAbandoned, ctx: &mut Context<Self>) {
        if matches!(self.core.transport, Transport::Polling(_)) {
            self.core.begin_close(CloseReason::TransportClose, ctx);
        }
    }
}

/// A long-polling POST body.
#[derive(actix::Message)]
#[rtype(result = "Result<(), RequestError>")]
pub struct PollPost(pub Bytes);

/// A POST begins: may its body be read? One at a time, within the rate.
#[derive(actix::Message)]
#[rtype(result = "Result<(), RequestError>")]
pub struct PollPostBegin;

impl<H: EngineHandler> Handler<PollPostBegin> for Session<H> {
    type Result = Result<(), RequestError>;

    fn handle(&mut self, _: PollPostBegin, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.is_closed() {
            return Err(RequestError::UnknownSid);
        }
        let Some(polling) = self.core.transport.polling() else {
            return Err(RequestError::BadRequest);
        };
        polling.admit()?;
        if polling.posting {
            // Two POSTs at once break the protocol, as two GETs do.
            self.core.begin_close(CloseReason::ProtocolError, ctx);
            return Err(RequestError::BadRequest);
        }
        polling.posting = true;
        Ok(())
    }
}

/// A POST begun with [`PollPostBegin`] ended without a body to hand over
/// (the client went away, or its body was broken).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct PollPostEnded;

impl<H: EngineHandler> Handler<PollPostEnded> for Session<H> {
    type Result = ();

    fn handle(&mut self, _: PollPostEnded, _: &mut Context<Self>) {
        if let Some(polling) = self.core.transport.polling() {
            polling.posting = false;
        }
    }
}

impl<H: EngineHandler> Handler<PollPost> for Session<H> {
    type Result = Result<(), RequestError>;

    fn handle(&mut self, PollPost(body): PollPost, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.is_closed() {
            return Err(RequestError::UnknownSid);
        }
        let Some(polling) = self.core.transport.polling() else {
            return Err(RequestError::BadRequest);
        };
        polling.posting = false;
        match engineio::decode_payload(&body) {
            Ok(packets) => {
                for packet in packets {
                    self.on_packet(packet, ctx);
                }
                Ok(())
            }
            Err(err) => {
                tracing::debug!(sid = %self.core.sid, error = %err, "malformed polling payload");
                self.core.begin_close(CloseReason::ProtocolError, ctx);
                Err(RequestError::BadRequest)
            }
        }
    }
}

/// The POST body was larger than `max_payload`.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct PollOversize;

impl<H: EngineHandler> Handler<PollOversize> for Session<H> {
    type Result = ();

    fn handle(&mut self, _: PollOversize, ctx: &mut Context<Self>) {
        self.core.begin_close(CloseReason::ProtocolError, ctx);
    }
}

/// A WebSocket asks to take over a polling session.
#[derive(actix::Message)]
#[rtype(result = "Result<(), RequestError>")]
pub struct WsAttach(pub WsLink);

impl<H: EngineHandler> Handler<WsAttach> for Session<H> {
    type Result = Result<(), RequestError>;

    fn handle(&mut self, WsAttach(ws): WsAttach, _: &mut Context<Self>) -> Self::Result {
        if self.core.is_closed() {
            ws.close();
            return Err(RequestError::UnknownSid);
        }
        match std::mem::replace(
            &mut self.core.transport,
            Transport::Polling(Polling::new(&self.core.config)),
        ) {
            Transport::Polling(polling) => {
                self.core.transport = Transport::Upgrading {
                    polling,
                    ws,
                    probed: false,
                };
                Ok(())
            }
            other => {
                // Already on a WebSocket, or upgrading: the newcomer gets
                // its handshake answered and is then closed at once, as the
                // reference server does (a stock `ws` client reports any
                // non-101 answer as an error, not a close). Its reader's
                // messages carry an id the session ignores.
                self.core.transport = other;
                ws.close();
                Ok(())
            }
        }
    }
}

/// A message read from one of the session's WebSockets.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct WsIncoming {
    /// Which WebSocket it came from.
    pub link_id: u64,
    /// The message.
    pub message: WsMessage,
    /// Dropped once the message is handled: the connection then reads the
    /// next.
    pub taken: MessageTaken,
}

impl<H: EngineHandler> Handler<WsIncoming> for Session<H> {
    type Result = ();

    fn handle(&mut self, incoming: WsIncoming, ctx: &mut Context<Self>) {
        let (is_active, is_upgrading) = match &self.core.transport {
            Transport::WebSocket(ws) => (ws.id == incoming.link_id, false),
            Transport::Upgrading { ws, .. } => (false, ws.id == incoming.link_id),
            Transport::Polling(_) => (false, false),
        };
        if !is_active && !is_upgrading {
            return;
        }
        let packet = match incoming.message {
            WsMessage::Text(text) => match Packet::decode(&text) {
                Ok(packet) => packet,
                Err(err) => {
                    tracing::debug!(sid = %self.core.sid, error = %err, "malformed websocket packet");
                    self.core.begin_close(CloseReason::ProtocolError, ctx);
                    return;
                }
            },
            WsMessage::Binary(bytes) => Packet::Binary(bytes),
        };
        if is_active {
            self.on_packet(packet, ctx);
        } else {
            self.on_upgrade_packet(packet, ctx);
        }
    }
}

/// One of the session's WebSockets ended (closed, failed, or broke the
/// framing rules).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct WsGone {
    /// Which WebSocket.
    pub link_id: u64,
}

impl<H: EngineHandler> Handler<WsGone> for Session<H> {
    type Result = ();

    fn handle(&mut self, gone: WsGone, ctx: &mut Context<Self>) {
        match &self.core.transport {
            Transport::WebSocket(ws) if ws.id == gone.link_id => {
                self.core.begin_close(CloseReason::TransportClose, ctx);
            }
            Transport::Upgrading { ws, .. } if ws.id == gone.link_id => {
                // The upgrade failed: stay on polling.
                if let Transport::Upgrading { polling, .. } = std::mem::replace(
                    &mut self.core.transport,
                    Transport::Polling(Polling::new(&self.core.config)),
                ) {
                    self.core.transport = Transport::Polling(polling);
                }
            }
            _ => {}
        }
    }
}

/// What an operator sees of a session: its transport, what waits to be
/// sent, and what its handler tells ([`EngineHandler::describe`]).
#[derive(Clone, Debug)]
pub struct SessionView {
    /// `polling` or `websocket` (`polling` during an upgrade).
    pub transport: &'static str,
    /// Frames queued for the client and not yet written.
    pub queued_frames: usize,
    /// The handler's description.
    pub app: serde_json::Value,
}

/// Asks a session for its [`SessionView`].
#[derive(actix::Message)]
#[rtype(result = "SessionView")]
pub struct Inspect;

impl<H: EngineHandler> Handler<Inspect> for Session<H> {
    type Result = actix::MessageResult<Inspect>;

    fn handle(&mut self, _: Inspect, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(SessionView {
            transport: self.core.transport_name(),
            queued_frames: self.core.queued(),
            app: self.handler.describe(),
        })
    }
}

/// Closes the session from outside (an admin, or server shutdown).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Close(pub CloseReason);

impl<H: EngineHandler> Handler<Close> for Session<H> {
    type Result = ();

    fn handle(&mut self, Close(reason): Close, ctx: &mut Context<Self>) {
        self.core.begin_close(reason, ctx);
    }
}

impl<H: EngineHandler> Handler<SessionEvent<H::Event>> for Session<H> {
    type Result = ();

    fn handle(&mut self, SessionEvent(event): SessionEvent<H::Event>, ctx: &mut Context<Self>) {
        if self.core.is_closed() {
            return;
        }
        self.with_handler(ctx, |handler, link| handler.on_event(link, event));
    }
}
