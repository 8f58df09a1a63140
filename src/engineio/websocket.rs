//! A WebSocket after its handshake.
//!
//! The connection leaves the HTTP server's dispatcher at the upgrade (see
//! [`super::upgrade`]), so it no longer carries the dispatcher's two 8 KiB
//! buffers nor its extra queue. One small task ([`Connection`]) serves
//! both directions:
//! - it takes whatever the session has put in the [`Outbox`] — frames
//!   already encoded back to back — and writes it in one call, so a burst
//!   of deliveries costs one system call, not one per frame;
//! - it decodes client frames (actix-http's RFC 6455 parser) and hands
//!   each message to the session, reading the next only once the session
//!   took it, so a flooding client is slowed down by TCP instead of
//!   buffered.
//!
//! One task rather than a reader and a writer: each task is a separate
//! allocation of its whole state, and at thousands of idle sockets the two
//! were a sixth of the server's memory. An idle socket holds no buffers:
//! the outbox and the read buffer are released whenever they run empty.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use actix::Addr;
use actix_codec::Decoder as _;
use actix_http::ws::{Codec, Frame as WsFrame, Item};
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::session::{Session, WsGone, WsIncoming};
use super::EngineHandler;
use crate::protocol::engineio::Frame;

/// A message read from a WebSocket, after reassembling fragments.
#[derive(Debug)]
pub enum WsMessage {
    /// A text message (valid UTF-8).
    Text(ByteString),
    /// A binary message.
    Binary(Bytes),
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;
/// A close frame without a status: the session is over.
const CLOSE_FRAME: [u8; 2] = [0x80 | OP_CLOSE, 0];
/// Bytes read from the socket per call.
const READ_CHUNK: usize = 4096;
/// How long a closed WebSocket waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Largest write buffer kept for reuse.
const MAX_SPARE: usize = 256 * 1024;

/// Longest header of a server frame (no mask).
const MAX_HEADER: usize = 10;

/// Appends one unmasked, unfragmented server frame to `out`.
fn encode_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + MAX_HEADER);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(payload);
}

/// Why frames could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The client is this many frames behind already.
    Full,
    /// The connection is gone.
    Gone,
}

/// What the session has queued and the connection not yet taken.
#[derive(Default)]
struct OutboxState {
    /// Encoded frames, back to back.
    bytes: BytesMut,
    /// How many frames `bytes` holds.
    frames: usize,
    /// An empty buffer the connection gave back, to fill next instead of
    /// growing a new one from nothing (only while the socket is busy).
    spare: BytesMut,
    /// The session asked to close: write what is queued, then a close frame.
    closing: bool,
    /// Writing has ended; nothing more will be written.
    finished: bool,
    /// A message read from the client is on its way to the session.
    message_in_flight: bool,
    /// The connection's task, waiting for any of the above.
    task: Option<Waker>,
}

impl OutboxState {
    /// Wakes the connection's task when this state changes.
    fn wait(&mut self, cx: &TaskContext<'_>) {
        if !self
            .task
            .as_ref()
            .is_some_and(|task| task.will_wake(cx.waker()))
        {
            self.task = Some(cx.waker().clone());
        }
    }
}

/// The queue between a session and the task serving its WebSocket.
#[derive(Default)]
pub struct Outbox {
    state: Mutex<OutboxState>,
}

impl Outbox {
    /// Takes everything queued, waiting until there is something (or a
    /// close). Returns the bytes and whether to close after them.
    fn poll_take(&self, cx: &mut TaskContext<'_>) -> Poll<(BytesMut, bool)> {
        let mut state = self.state.lock();
        if state.bytes.is_empty() && !state.closing {
            state.wait(cx);
            return Poll::Pending;
        }
        state.frames = 0;
        let spare = std::mem::take(&mut state.spare);
        let bytes = std::mem::replace(&mut state.bytes, spare);
        Poll::Ready((bytes, state.closing))
    }

    /// Takes back a written buffer for reuse while more is queued; an
    /// outbox that ran empty keeps nothing, so idle sockets hold no memory.
    fn recycle(&self, mut written: BytesMut) {
        written.clear();
        let mut state = self.state.lock();
        if !state.bytes.is_empty() && written.capacity() <= MAX_SPARE {
            state.spare = written;
        }
    }

    /// Ready once the session has asked to close.
    fn poll_closing(&self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if state.closing {
            return Poll::Ready(());
        }
        state.wait(cx);
        Poll::Pending
    }

    /// Ready once no message is on its way to the session.
    fn poll_message_taken(&self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if !state.message_in_flight {
            return Poll::Ready(());
        }
        state.wait(cx);
        Poll::Pending
    }

    /// Writing has ended: queued bytes are dropped, and further pushes fail.
    fn finish(&self) {
        let mut state = self.state.lock();
        state.finished = true;
        state.bytes = BytesMut::new();
        state.spare = BytesMut::new();
    }

    /// Queues a control frame (a pong) outside the frame count.
    fn push_control(&self, opcode: u8, payload: &[u8]) {
        let writer = {
            let mut state = self.state.lock();
            if state.finished || state.closing {
                return;
            }
            encode_frame(&mut state.bytes, opcode, payload);
            state.task.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

/// Travels with a client's message to the session ([`WsIncoming`]): once
/// dropped (the session handled the message, or its mailbox is gone), the
/// connection reads the next one.
pub struct MessageTaken(Arc<Outbox>);

impl MessageTaken {
    fn new(outbox: &Arc<Outbox>) -> Self {
        outbox.state.lock().message_in_flight = true;
        MessageTaken(outbox.clone())
    }
}

impl Drop for MessageTaken {
    fn drop(&mut self) {
        let task = {
            let mut state = self.0.state.lock();
            state.message_in_flight = false;
            state.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl std::fmt::Debug for MessageTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageTaken")
    }
}

/// The session's end of one WebSocket: queues frames for its writer,
/// bounded in frames.
pub struct WsLink {
    /// Tells this WebSocket's messages apart from those of another one
    /// (a refused second upgrade, say).
    pub id: u64,
    outbox: Arc<Outbox>,
    /// Most frames that may wait for the writer.
    max_frames: usize,
}

impl std::fmt::Debug for WsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsLink").field("id", &self.id).finish()
    }
}

impl WsLink {
    /// A link with a fresh id, holding at most `max_frames` unwritten
    /// frames, and the outbox its writer reads. `preamble` (the handshake
    /// response) goes out first, in the same write as the first frames.
    pub fn new(max_frames: usize, preamble: &[u8]) -> (WsLink, Arc<Outbox>) {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let outbox = Arc::new(Outbox {
            state: Mutex::new(OutboxState {
                bytes: BytesMut::from(preamble),
                ..OutboxState::default()
            }),
        });
        let link = WsLink {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            outbox: outbox.clone(),
            max_frames: max_frames.max(1),
        };
        (link, outbox)
    }

    /// Queues `frames`, all or none.
    pub fn push(&self, frames: &[Frame]) -> Result<(), PushError> {
        let writer = {
            let mut state = self.outbox.state.lock();
            if state.finished || state.closing {
                return Err(PushError::Gone);
            }
            if state.frames + frames.len() > self.max_frames {
                return Err(PushError::Full);
            }
            // Room for all of them at once: growing frame by frame copied
            // the queued bytes again at every doubling.
            let headers = frames.len() * MAX_HEADER;
            state
                .bytes
                .reserve(frames.iter().map(Frame::len).sum::<usize>() + headers);
            for frame in frames {
                match frame {
                    Frame::Text(text) => encode_frame(&mut state.bytes, OP_TEXT, text.as_bytes()),
                    Frame::Binary(bytes) => encode_frame(&mut state.bytes, OP_BINARY, bytes),
                }
            }
            state.frames += frames.len();
            state.task.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Frames waiting for the writer.
    pub fn queued_frames(&self) -> usize {
        self.outbox.state.lock().frames
    }

    /// Asks the connection to send what is queued, then close the
    /// WebSocket.
    pub fn close(&self) {
        let writer = {
            let mut state = self.outbox.state.lock();
            state.closing = true;
            state.task.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

/// A session that lets go of its link will write no more: the connection
/// closes (else a WebSocket whose upgrade failed would stay open, its task
/// waiting for frames that never come).
impl Drop for WsLink {
    fn drop(&mut self) {
        self.close();
    }
}

/// Serves an upgraded connection for the session at `addr`. `leftover`
/// holds bytes the client sent right after its request.
pub(crate) fn run<H: EngineHandler>(
    io: TcpStream,
    leftover: BytesMut,
    addr: Addr<Session<H>>,
    link_id: u64,
    outbox: Arc<Outbox>,
    max_payload: usize,
) {
    actix_rt::spawn(Connection {
        io,
        outbox,
        session: addr,
        link_id,
        reader: FrameReader::new(max_payload),
        read_buf: leftover,
        reading: true,
        write_buf: BytesMut::new(),
        written: 0,
        closing: false,
        writing: true,
        deadline: None,
    });
}

/// One upgraded connection, both directions, as one future (so one task):
/// it writes what the session queues until the session asks to close (then
/// the close frame) or writing fails, and reads until the client closes or
/// breaks the framing rules. Once writing has ended it keeps reading for
/// [`CLOSE_LINGER`], discarding messages, so the client can finish its
/// close handshake instead of writing into a reset connection; dropping
/// the stream then closes it (the server closes first, as RFC 6455 §7.1.1
/// asks).
struct Connection<H: EngineHandler> {
    io: TcpStream,
    outbox: Arc<Outbox>,
    session: Addr<Session<H>>,
    link_id: u64,
    reader: FrameReader,
    /// Bytes read and not yet decoded.
    read_buf: BytesMut,
    /// Until the client closed, broke the framing rules, or the lingering
    /// ended; the session is told when it stops ([`WsGone`]).
    reading: bool,
    /// Bytes taken from the outbox and not all written yet (the close
    /// frame last, once the session asked to close), and how many were.
    write_buf: BytesMut,
    written: usize,
    /// `write_buf` ends with the close frame.
    closing: bool,
    /// Until everything is written or writing failed.
    writing: bool,
    /// While writing: set once the session asked to close, when writing
    /// gives up on a client that does not read. After: when reading stops.
    /// (Boxed: only closing connections have one.)
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<H: EngineHandler> Future for Connection<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let wrote = this.writing && this.poll_write(cx);
            let read = this.reading && this.poll_read(cx);
            let timed_out = this
                .deadline
                .as_mut()
                .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
            if timed_out {
                if this.writing {
                    this.stop_writing();
                } else {
                    this.stop_reading();
                }
            }
            if !this.writing && !this.reading {
                return Poll::Ready(());
            }
            if !wrote && !read && !timed_out {
                return Poll::Pending;
            }
        }
    }
}

impl<H: EngineHandler> Connection<H> {
    /// Writes what is queued; returns whether anything changed.
    fn poll_write(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let mut progress = false;
        loop {
            if self.written == self.write_buf.len() {
                if self.closing {
                    self.stop_writing();
                    return true;
                }
                let written = std::mem::take(&mut self.write_buf);
                if written.capacity() > 0 {
                    self.outbox.recycle(written);
                }
                self.written = 0;
                let Poll::Ready((bytes, closing)) = self.outbox.poll_take(cx) else {
                    return progress;
                };
                self.write_buf = bytes;
                if closing {
                    self.write_buf.extend_from_slice(&CLOSE_FRAME);
                    self.closing = true;
                    if self.deadline.is_none() {
                        self.set_deadline();
                    }
                }
                progress = true;
            }
            match self.io.try_write(&self.write_buf[self.written..]) {
                // Nothing taken of a non-empty buffer: the socket is done.
                Ok(0) => {
                    self.stop_writing();
                    return true;
                }
                Ok(n) => {
                    self.written += n;
                    progress = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    match self.io.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => {
                            self.stop_writing();
                            return true;
                        }
                        Poll::Pending => {}
                    }
                    // A client that stopped reading fills the socket and the
                    // write waits; once the session gives up on it (a slow
                    // client), the write gets CLOSE_LINGER more.
                    if self.deadline.is_none() && self.outbox.poll_closing(cx).is_ready() {
                        self.set_deadline();
                        return true;
                    }
                    return progress;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stop_writing();
                    return true;
                }
            }
        }
    }

    /// Reads and hands on what the client sent; returns whether anything
    /// changed.
    fn poll_read(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let mut progress = false;
        loop {
            // The session takes one message at a time (while lingering,
            // messages are dropped, so there is nothing to wait for).
            if self.writing && self.outbox.poll_message_taken(cx).is_pending() {
                return progress;
            }
            match self.reader.next(&mut self.read_buf) {
                Some(ReadEvent::Message(message)) => {
                    if self.writing {
                        self.session.do_send(WsIncoming {
                            link_id: self.link_id,
                            message,
                            taken: MessageTaken::new(&self.outbox),
                        });
                    }
                    progress = true;
                    continue;
                }
                Some(ReadEvent::Ping(bytes)) => {
                    self.outbox.push_control(OP_PONG, &bytes);
                    progress = true;
                    continue;
                }
                Some(ReadEvent::End) => {
                    self.stop_reading();
                    return true;
                }
                None => {}
            }
            if self.read_buf.is_empty() {
                // Idle sockets keep no read buffer.
                self.read_buf = BytesMut::new();
            }
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return progress,
                Poll::Ready(Err(_)) => {
                    self.stop_reading();
                    return true;
                }
                Poll::Ready(Ok(())) => {}
            }
            match read_some(&self.io, &mut self.read_buf) {
                Ok(0) => {
                    self.stop_reading();
                    return true;
                }
                Ok(_) => progress = true,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.stop_reading();
                    return true;
                }
            }
        }
    }

    /// Nothing more is written; reading lingers, if it still runs.
    fn stop_writing(&mut self) {
        self.writing = false;
        self.write_buf = BytesMut::new();
        self.outbox.finish();
        self.deadline = None;
        if self.reading {
            self.set_deadline();
        }
    }

    /// Nothing more is read; the session hears of it.
    fn stop_reading(&mut self) {
        self.reading = false;
        self.read_buf = BytesMut::new();
        self.session.do_send(WsGone {
            link_id: self.link_id,
        });
    }

    /// [`CLOSE_LINGER`] from now.
    fn set_deadline(&mut self) {
        self.deadline = Some(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
    }
}

/// Reads what the socket has (up to one chunk) onto the end of `buf`,
/// which grows only by what arrived.
fn read_some(io: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = io.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// A fragmented message being reassembled.
struct Partial {
    text: bool,
    bytes: BytesMut,
}

/// What the client's bytes mean for the connection, frame by frame.
#[derive(Debug)]
pub enum ReadEvent {
    /// A whole message, reassembled from its fragments.
    Message(WsMessage),
    /// A ping: answer with a pong carrying these bytes.
    Ping(Bytes),
    /// The client closed, or broke the framing rules (RFC 6455 §7.1.7:
    /// fail the connection).
    End,
}

/// Turns the bytes a client sends into messages: actix-http's RFC 6455
/// parser for frames (masking, lengths, control frames, `max_payload` per
/// frame), then reassembly of fragments up to `max_payload` in all. Pure:
/// no socket, so it can be tested and fuzzed on its own.
pub struct FrameReader {
    codec: Codec,
    partial: Option<Partial>,
    max_payload: usize,
}

impl FrameReader {
    /// A reader of messages of at most `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        FrameReader {
            codec: Codec::new().max_size(max_payload),
            partial: None,
            max_payload,
        }
    }

    /// The next event in `buf` (consuming its bytes), or `None` when more
    /// bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Option<ReadEvent> {
        loop {
            let frame = match self.codec.decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(err) => {
                    tracing::debug!(error = %err, "websocket framing error");
                    return Some(ReadEvent::End);
                }
            };
            if let Some(event) = self.on_frame(frame) {
                return Some(event);
            }
        }
    }

    /// What one frame means; `None` for a fragment or a pong.
    fn on_frame(&mut self, frame: WsFrame) -> Option<ReadEvent> {
        let whole = |text: bool, bytes: Bytes| {
            if !text {
                return ReadEvent::Message(WsMessage::Binary(bytes));
            }
            match ByteString::try_from(bytes) {
                Ok(text) => ReadEvent::Message(WsMessage::Text(text)),
                // RFC 6455 §8.1: invalid UTF-8 in a text message fails the
                // connection.
                Err(_) => ReadEvent::End,
            }
        };
        let fragmented = self.partial.is_some();
        match frame {
            // RFC 6455 §5.4: the fragments of a message are not interleaved
            // with another message (control frames aside).
            WsFrame::Text(_) | WsFrame::Binary(_) if fragmented => Some(ReadEvent::End),
            WsFrame::Text(bytes) => Some(whole(true, bytes)),
            WsFrame::Binary(bytes) => Some(whole(false, bytes)),
            WsFrame::Continuation(item) => {
                let last = matches!(item, Item::Last(_));
                match item {
                    Item::FirstText(_) | Item::FirstBinary(_) if fragmented => Some(ReadEvent::End),
                    Item::FirstText(bytes) => self.start(true, &bytes),
                    Item::FirstBinary(bytes) => self.start(false, &bytes),
                    Item::Continue(bytes) | Item::Last(bytes) => {
                        let Some(message) = self.partial.as_mut() else {
                            return Some(ReadEvent::End);
                        };
                        if message.bytes.len() + bytes.len() > self.max_payload {
                            tracing::debug!("fragmented websocket message over max_payload");
                            return Some(ReadEvent::End);
                        }
                        message.bytes.extend_from_slice(&bytes);
                        if !last {
                            return None;
                        }
                        let Partial { text, bytes } = self.partial.take().expect("checked above");
                        Some(whole(text, bytes.freeze()))
                    }
                }
            }
            WsFrame::Ping(bytes) => Some(ReadEvent::Ping(bytes)),
            WsFrame::Pong(_) => None,
            WsFrame::Close(_) => Some(ReadEvent::End),
        }
    }

    /// The first fragment of a message.
    fn start(&mut self, text: bool, bytes: &[u8]) -> Option<ReadEvent> {
        self.partial = Some(Partial {
            text,
            bytes: BytesMut::from(bytes),
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7u8, 1, 2, 3];
        let mut frame = vec![(u8::from(fin) << 7) | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn events(reader: &mut FrameReader, bytes: &[u8]) -> Vec<String> {
        let mut buf = BytesMut::from(bytes);
        let mut seen = Vec::new();
        while let Some(event) = reader.next(&mut buf) {
            let end = matches!(event, ReadEvent::End);
            seen.push(match event {
                ReadEvent::Message(WsMessage::Text(text)) => format!("text {text}"),
                ReadEvent::Message(WsMessage::Binary(bytes)) => format!("binary {}", bytes.len()),
                ReadEvent::Ping(bytes) => format!("ping {}", bytes.len()),
                ReadEvent::End => "end".to_owned(),
            });
            if end {
                break;
            }
        }
        seen
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut bytes = client_frame(false, OP_TEXT, b"42[\"e\",");
        bytes.extend(client_frame(true, 0x9, b"hi"));
        bytes.extend(client_frame(false, 0x0, b"{}"));
        bytes.extend(client_frame(true, 0x0, b"]"));
        let mut reader = FrameReader::new(1024);
        assert_eq!(events(&mut reader, &bytes), ["ping 2", "text 42[\"e\",{}]"]);
    }

    #[test]
    fn a_message_inside_another_ones_fragments_fails_the_connection() {
        let mut bytes = client_frame(false, OP_TEXT, b"4a");
        bytes.extend(client_frame(true, OP_TEXT, b"4b"));
        assert_eq!(events(&mut FrameReader::new(1024), &bytes), ["end"]);
        let mut bytes = client_frame(false, OP_TEXT, b"4a");
        bytes.extend(client_frame(false, OP_BINARY, b"4b"));
        assert_eq!(events(&mut FrameReader::new(1024), &bytes), ["end"]);
    }

    #[test]
    fn reassembly_stops_at_max_payload_and_bad_utf8() {
        let mut bytes = client_frame(false, OP_BINARY, &[0; 60]);
        bytes.extend(client_frame(true, 0x0, &[0; 60]));
        assert_eq!(events(&mut FrameReader::new(100), &bytes), ["end"]);
        let bytes = client_frame(true, OP_TEXT, &[0xff, 0xfe]);
        assert_eq!(events(&mut FrameReader::new(100), &bytes), ["end"]);
        let bytes = client_frame(true, 0x0, b"orphan");
        assert_eq!(events(&mut FrameReader::new(100), &bytes), ["end"]);
    }

    #[test]
    fn frames_use_the_shortest_length_form() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = BytesMut::new();
            encode_frame(&mut out, OP_TEXT, &vec![b'x'; len]);
            assert_eq!(out.len(), header + len, "payload of {len}");
            assert_eq!(out[0], 0x81);
        }
    }

    #[test]
    fn a_full_outbox_refuses_the_whole_batch() {
        let (link, outbox) = WsLink::new(3, b"");
        let frame = Frame::Text(ByteString::from_static("4hi"));
        assert_eq!(link.push(&[frame.clone(), frame.clone()]), Ok(()));
        assert_eq!(
            link.push(&[frame.clone(), frame.clone()]),
            Err(PushError::Full)
        );
        assert_eq!(outbox.state.lock().frames, 2);
        link.close();
        assert_eq!(link.push(&[frame]), Err(PushError::Gone));
    }
}
