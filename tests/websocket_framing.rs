//! RFC 6455 on the wire, below any WebSocket library: the server's own
//! connection code (handshake, fragments, control frames, close handshake,
//! framing errors) against hand-made frames on a plain TCP stream, using
//! the conformance server's echo endpoint.

mod common;

use std::time::Duration;

use common::wire::ConformanceServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A frame from the client: masked, as RFC 6455 requires.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_with(fin, opcode, payload, true)
}

fn client_frame_with(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// What the server sent: a frame, or the end of the connection.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    Frame { opcode: u8, payload: Vec<u8> },
    End,
}

struct RawWs {
    stream: TcpStream,
    buffer: Vec<u8>,
}

const HANDSHAKE_TAIL: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl RawWs {
    /// Sends the upgrade request for `path_and_query` (followed by `extra`
    /// bytes in the same write) and returns the status line, headers and
    /// the connection.
    async fn open(
        server: &ConformanceServer,
        path_and_query: &str,
        extra: &[u8],
    ) -> (String, RawWs) {
        let address = server.base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await.unwrap();
        let mut request =
            format!("GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nOrigin: http://app.test\r\n{HANDSHAKE_TAIL}")
                .into_bytes();
        request.extend_from_slice(extra);
        stream.write_all(&request).await.unwrap();
        let mut ws = RawWs {
            stream,
            buffer: Vec::new(),
        };
        let head = loop {
            if let Some(end) = ws.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(ws.buffer[..end].to_vec()).unwrap();
                ws.buffer.drain(..end + 4);
                break head;
            }
            assert!(ws.fill().await, "closed during the handshake");
        };
        (head, ws)
    }

    /// Opens an Engine.IO WebSocket and reads its open packet.
    async fn engine(server: &ConformanceServer, extra: &[u8]) -> RawWs {
        let (head, mut ws) =
            RawWs::open(server, "/engine.io/?EIO=4&transport=websocket", extra).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        match ws.next().await {
            Received::Frame {
                opcode: TEXT,
                payload,
            } => assert_eq!(payload[0], b'0'),
            other => panic!("expected the open packet, got {other:?}"),
        }
        ws
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing from the server in 5 s"),
        }
    }

    /// The next frame other than an Engine.IO ping (which it answers).
    async fn next(&mut self) -> Received {
        loop {
            let received = self.next_raw().await;
            if received
                == (Received::Frame {
                    opcode: TEXT,
                    payload: b"2".to_vec(),
                })
            {
                self.send(&client_frame(true, TEXT, b"3")).await;
                continue;
            }
            return received;
        }
    }

    async fn next_raw(&mut self) -> Received {
        loop {
            if self.buffer.len() >= 2 {
                assert_eq!(self.buffer[1] & 0x80, 0, "server frames are not masked");
                let (len, header) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                        4,
                    ),
                    126 => (usize::MAX, 0),
                    len => (len as usize, 2),
                };
                if len != usize::MAX && self.buffer.len() >= header + len {
                    let opcode = self.buffer[0] & 0x0f;
                    let payload = self.buffer[header..header + len].to_vec();
                    self.buffer.drain(..header + len);
                    return Received::Frame { opcode, payload };
                }
            }
            if !self.fill().await {
                return Received::End;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed; the test checks what it read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Asserts the server ends the connection (a close frame, then EOF, or
    /// EOF alone), skipping data it sent before.
    async fn expect_closed(&mut self) {
        loop {
            match self.next().await {
                Received::End => return,
                Received::Frame { opcode: CLOSE, .. } => {
                    assert_eq!(
                        self.next_raw().await,
                        Received::End,
                        "EOF after the close frame"
                    );
                    return;
                }
                Received::Frame { .. } => {}
            }
        }
    }
}

fn text(payload: &str) -> Received {
    Received::Frame {
        opcode: TEXT,
        payload: payload.as_bytes().to_vec(),
    }
}

#[actix_rt::test]
async fn fragments_are_reassembled_and_pings_answered_between_them() {
    let server = ConformanceServer::start();
    let mut ws = RawWs::engine(&server, b"").await;
    ws.send(&client_frame(false, TEXT, b"4hel")).await;
    ws.send(&client_frame(true, PING, b"are you there")).await;
    ws.send(&client_frame(false, CONTINUATION, b"lo, ")).await;
    ws.send(&client_frame(true, CONTINUATION, "wörld".as_bytes()))
        .await;
    assert_eq!(
        ws.next().await,
        Received::Frame {
            opcode: PONG,
            payload: b"are you there".to_vec()
        }
    );
    assert_eq!(ws.next().await, text("4hello, wörld"));
    // Binary fragments too.
    ws.send(&client_frame(false, BINARY, &[1, 2])).await;
    ws.send(&client_frame(true, CONTINUATION, &[3])).await;
    assert_eq!(
        ws.next().await,
        Received::Frame {
            opcode: BINARY,
            payload: vec![1, 2, 3]
        }
    );
}

#[actix_rt::test]
async fn frames_split_across_reads_and_sent_with_the_request() {
    let server = ConformanceServer::start();
    // A frame in the same write as the upgrade request.
    let mut ws = RawWs::engine(&server, &client_frame(true, TEXT, b"4early")).await;
    assert_eq!(ws.next().await, text("4early"));
    // A large frame (16-bit length) dribbled out a few bytes at a time.
    let big = format!("4{}", "y".repeat(300));
    let frame = client_frame(true, TEXT, big.as_bytes());
    for piece in frame.chunks(7) {
        ws.send(piece).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(ws.next().await, text(&big));
}

#[actix_rt::test]
async fn client_close_is_answered_with_a_close_frame() {
    let server = ConformanceServer::start();
    let mut ws = RawWs::engine(&server, b"").await;
    ws.send(&client_frame(true, CLOSE, &1000u16.to_be_bytes()))
        .await;
    loop {
        match ws.next().await {
            Received::Frame { opcode: CLOSE, .. } => break,
            Received::Frame { .. } => {}
            Received::End => panic!("closed without a close frame"),
        }
    }
    assert_eq!(ws.next_raw().await, Received::End);
}

#[actix_rt::test]
async fn framing_errors_close_the_connection() {
    let server = ConformanceServer::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unmasked frame",
            client_frame_with(true, TEXT, b"4hi", false),
        ),
        (
            "invalid UTF-8 text",
            client_frame(true, TEXT, &[b'4', 0xff, 0xfe]),
        ),
        (
            "continuation without a start",
            client_frame(true, CONTINUATION, b"4x"),
        ),
        ("reserved opcode", client_frame(true, 0x3, b"4x")),
        ("fragmented ping", client_frame(false, PING, b"x")),
        (
            "control frame over 125 bytes",
            client_frame(true, PING, &[0; 126]),
        ),
        ("reserved bits", {
            let mut frame = client_frame(true, TEXT, b"4x");
            frame[0] |= 0x40;
            frame
        }),
    ];
    for (case, frame) in cases {
        let mut ws = RawWs::engine(&server, b"").await;
        ws.send(&frame).await;
        ws.expect_closed().await;
        // The endpoint still serves others.
        let mut other = RawWs::engine(&server, b"").await;
        other.send(&client_frame(true, TEXT, b"4ok")).await;
        assert_eq!(other.next().await, text("4ok"), "after {case}");
    }
}

/// A WebSocket that breaks the framing rules while upgrading a polling
/// session fails the upgrade: the session stays on polling, and the server
/// closes that WebSocket rather than keep it open with nothing to send.
#[actix_rt::test]
async fn a_websocket_whose_upgrade_fails_is_closed_and_polling_goes_on() {
    let server = ConformanceServer::start();
    let (polling, _) = common::wire::Polling::open(&server, "/engine.io/").await;
    let (head, mut ws) = RawWs::open(
        &server,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={}", polling.sid),
        b"",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.send(&client_frame_with(true, TEXT, b"2probe", false))
        .await;
    ws.expect_closed().await;
    // The session still answers on polling: an echo goes through.
    polling.send("4after").await;
    assert_eq!(polling.receive().await, "4after");
}

#[actix_rt::test]
async fn a_message_over_max_payload_in_fragments_closes() {
    let server = ConformanceServer::start();
    let mut ws = RawWs::engine(&server, b"").await;
    let piece = vec![b'z'; 60_000];
    ws.send(&client_frame(false, TEXT, b"4")).await;
    // 17 × 60,000 bytes: each fragment is small, the message is not.
    for _ in 0..17 {
        ws.send(&client_frame(false, CONTINUATION, &piece)).await;
    }
    ws.send(&client_frame(true, CONTINUATION, b"")).await;
    ws.expect_closed().await;
}

#[actix_rt::test]
async fn upgrade_refusals_are_json_with_cors() {
    let server = ConformanceServer::start();
    let (head, mut ws) = RawWs::open(
        &server,
        "/engine.io/?EIO=4&transport=websocket&sid=nope",
        b"",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://app.test"),
        "{head}"
    );
    while ws.fill().await {}
    assert_eq!(
        String::from_utf8(ws.buffer.clone()).unwrap(),
        r#"{"code":1,"message":"Session ID unknown"}"#
    );
    let (head, mut ws) = RawWs::open(&server, "/elsewhere", b"").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    while ws.fill().await {}
    let body: serde_json::Value = serde_json::from_slice(&ws.buffer).unwrap();
    assert_eq!(body["statusCode"], 404);
}
