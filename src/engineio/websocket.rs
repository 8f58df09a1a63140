//! A WebSocket after its handshake.
//!
//! The connection leaves the HTTP server's dispatcher at the upgrade (see
//! [`super::upgrade`]), so it no longer carries the dispatcher's two 8 KiB
//! buffers nor its extra queue. Two small tasks serve it:
//! - the writer takes whatever the session has put in the [`Outbox`] —
//!   frames already encoded back to back — and writes it in one call, so a
//!   burst of deliveries costs one system call, not one per frame;
//! - the reader decodes client frames (actix-http's RFC 6455 parser) and
//!   hands each message to the session, waiting for it to be taken, so a
//!   flooding client is slowed down by TCP instead of buffered.
//!
//! An idle socket holds no buffers: the outbox and the read buffer are
//! released whenever they run empty.

use std::future::poll_fn;
use std::io;
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
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

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

/// What the session has queued and the writer not yet taken.
#[derive(Default)]
struct OutboxState {
    /// Encoded frames, back to back.
    bytes: BytesMut,
    /// How many frames `bytes` holds.
    frames: usize,
    /// An empty buffer the writer gave back, to fill next instead of
    /// growing a new one from nothing (only while the socket is busy).
    spare: BytesMut,
    /// The session asked to close: write what is queued, then a close frame.
    closing: bool,
    /// The writer has ended; nothing more will be written.
    finished: bool,
    writer: Option<Waker>,
    reader: Option<Waker>,
}

/// The queue between a session and the task writing its WebSocket.
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
            state.writer = Some(cx.waker().clone());
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
        state.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready once the writer has ended, so the reader stops too.
    fn poll_finished(&self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if state.finished {
            return Poll::Ready(());
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn finish(&self) {
        let reader = {
            let mut state = self.state.lock();
            state.finished = true;
            state.bytes = BytesMut::new();
            state.spare = BytesMut::new();
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// Queues a control frame (a pong) outside the frame count.
    fn push_control(&self, opcode: u8, payload: &[u8]) {
        let writer = {
            let mut state = self.state.lock();
            if state.finished || state.closing {
                return;
            }
            encode_frame(&mut state.bytes, opcode, payload);
            state.writer.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
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
            state.writer.take()
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

    /// Asks the writer to send what is queued, then close the WebSocket.
    pub fn close(&self) {
        let writer = {
            let mut state = self.outbox.state.lock();
            state.closing = true;
            state.writer.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

/// Serves an upgraded connection for the session at `addr` with a writer
/// and a reader. `leftover` holds bytes the client sent right after its
/// request.
pub(crate) fn run<H: EngineHandler>(
    io: TcpStream,
    leftover: BytesMut,
    addr: Addr<Session<H>>,
    link_id: u64,
    outbox: Arc<Outbox>,
    max_payload: usize,
) {
    let (read_half, write_half) = io.into_split();
    actix_rt::spawn(write_loop(write_half, outbox.clone()));
    actix_rt::spawn(read_loop(
        read_half,
        outbox,
        addr,
        link_id,
        leftover,
        max_payload,
    ));
}

/// Writes whatever the session queues, until it asks to close or the
/// connection fails.
async fn write_loop(mut io: OwnedWriteHalf, outbox: Arc<Outbox>) {
    let mut written = Ok(());
    while written.is_ok() {
        let (bytes, closing) = poll_fn(|cx| outbox.poll_take(cx)).await;
        if !bytes.is_empty() {
            // A client that stopped reading fills the socket and the write
            // waits; once the session gives up on it (a slow client), the
            // write gets CLOSE_LINGER more, then the connection is dropped.
            written = tokio::select! {
                written = io.write_all(&bytes) => written,
                () = async {
                    poll_fn(|cx| outbox.poll_closing(cx)).await;
                    tokio::time::sleep(CLOSE_LINGER).await;
                } => Err(io::ErrorKind::TimedOut.into()),
            };
        }
        outbox.recycle(bytes);
        if closing {
            if written.is_ok() {
                let _ = tokio::time::timeout(CLOSE_LINGER, io.write_all(&CLOSE_FRAME)).await;
            }
            break;
        }
    }
    // The reader stops too; dropping both halves closes the connection
    // (the server closes first, as RFC 6455 §7.1.1 asks).
    outbox.finish();
}

/// A fragmented message being reassembled.
struct Partial {
    text: bool,
    bytes: BytesMut,
}

/// Reads frames until the client closes or breaks the framing rules. Each
/// message waits until the session has taken it. Once the writer has sent
/// its close frame, the reader lingers a little, discarding data, so the
/// client can finish its close handshake instead of writing into a reset
/// connection.
async fn read_loop<H: EngineHandler>(
    io: OwnedReadHalf,
    outbox: Arc<Outbox>,
    addr: Addr<Session<H>>,
    link_id: u64,
    mut buf: BytesMut,
    max_payload: usize,
) {
    let mut reader = FrameReader::new(max_payload);
    // Set when the session is over: the reader ends by then at the latest.
    let mut linger_until: Option<Instant> = None;
    'connection: loop {
        while let Some(event) = reader.next(&mut buf) {
            match event {
                ReadEvent::Message(message) if linger_until.is_none() => {
                    if addr.send(WsIncoming { link_id, message }).await.is_err() {
                        linger_until = Some(Instant::now() + CLOSE_LINGER);
                    }
                }
                ReadEvent::Message(_) => {}
                ReadEvent::Ping(bytes) => outbox.push_control(OP_PONG, &bytes),
                ReadEvent::End => break 'connection,
            }
        }
        if buf.is_empty() {
            // Idle sockets keep no read buffer.
            buf = BytesMut::new();
        }
        let deadline = linger_until.unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            () = poll_fn(|cx| outbox.poll_finished(cx)), if linger_until.is_none() => {
                linger_until = Some(Instant::now() + CLOSE_LINGER);
                continue;
            }
            () = tokio::time::sleep_until(deadline), if linger_until.is_some() => break,
            ready = io.readable() => if ready.is_err() { break },
        }
        match read_some(&io, &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    addr.do_send(WsGone { link_id });
}

/// Reads what the socket has (up to one chunk) onto the end of `buf`,
/// which grows only by what arrived.
fn read_some(io: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = io.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
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
