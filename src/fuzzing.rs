//! Entry points for the fuzz targets in `fuzz/` (libFuzzer, run by
//! `scripts/fuzz`) and for `tests/fuzz_regressions.rs`, which replays
//! every input the fuzzers found worth keeping. Each takes arbitrary bytes
//! the way the server receives them from the network and must neither
//! panic nor break the invariant it checks; a failure panics, which the
//! fuzzer reports as a crash. Not part of the server's API.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::engineio::websocket::{FrameReader, ReadEvent, WsMessage};
use crate::pattern::{like_matches, validate_name, validate_pattern, PatternIndex};
use crate::protocol::{engineio, socketio};
use crate::publish::{check_event_name, PayloadLimits, PublishRequest};

/// A fuzz target: bytes in, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/` and the regression test know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("engineio", engineio_packets),
    ("socketio", socketio_packets),
    ("websocket", websocket_frames),
    ("pattern", channel_patterns),
    ("publish", publish_request),
];

/// The largest message the fuzzed WebSocket reader accepts: small, so
/// inputs can reach the limit.
const MAX_PAYLOAD: usize = 4096;

/// An Engine.IO packet (one WebSocket text frame) and a polling body:
/// whatever decodes encodes back to text that decodes the same.
pub fn engineio_packets(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(packet) = engineio::Packet::decode(text) {
            let again = engineio::Packet::decode(&packet.encode_text()).expect("re-decodes");
            assert_eq!(again, packet);
        }
    }
    if let Ok(packets) = engineio::decode_payload(data) {
        let frames: Vec<engineio::Frame> = packets.iter().map(engineio::Packet::encode).collect();
        let again = engineio::decode_payload(engineio::encode_payload(&frames).as_bytes())
            .expect("an encoded payload decodes");
        assert_eq!(again, packets);
    }
}

/// A Socket.IO session's messages: the input is split at `0xFF` bytes
/// into messages, text when valid UTF-8 and binary otherwise, fed to one
/// decoder (binary attachments bounded as the server bounds them). Every
/// packet that comes out has as many attachments as it announced.
pub fn socketio_packets(data: &[u8]) {
    let mut decoder = socketio::Decoder::with_limit(MAX_PAYLOAD);
    for message in data.split(|byte| *byte == 0xFF) {
        let received = match std::str::from_utf8(message) {
            Ok(text) => decoder.text(text),
            Err(_) => decoder.binary(Bytes::copy_from_slice(message)),
        };
        if let Ok(Some(received)) = received {
            assert_eq!(received.attachments.len(), received.packet.attachments);
            let again = socketio::Packet::decode(&received.packet.encode());
            assert!(again.is_ok(), "{:?} re-decodes", received.packet);
        }
    }
}

/// A client's bytes on a WebSocket, read as the server reads them, in
/// chunks of varying size: no message is larger than the limit, and text
/// messages are UTF-8 (the type guarantees it; reading must not panic).
pub fn websocket_frames(data: &[u8]) {
    let mut reader = FrameReader::new(MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    // The first byte picks the chunk size, as reads of a socket vary.
    let Some((chunk, rest)) = data.split_first() else {
        return;
    };
    for piece in rest.chunks(usize::from(*chunk).max(1)) {
        buf.extend_from_slice(piece);
        while let Some(event) = reader.next(&mut buf) {
            match event {
                ReadEvent::Message(WsMessage::Text(text)) => assert!(text.len() <= MAX_PAYLOAD),
                ReadEvent::Message(WsMessage::Binary(bytes)) => {
                    assert!(bytes.len() <= MAX_PAYLOAD);
                }
                ReadEvent::Ping(bytes) => assert!(bytes.len() <= MAX_PAYLOAD),
                ReadEvent::End => return,
            }
        }
    }
}

/// A channel pattern and a name, split at the first newline: the index
/// resolves the name to the pattern exactly when the pattern matches it.
pub fn channel_patterns(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, name) = text.split_once('\n').unwrap_or((text, text));
    let matches = like_matches(pattern, name);
    if !pattern.contains('%') {
        assert_eq!(matches, pattern == name, "{pattern:?} against {name:?}");
    }
    if validate_pattern(pattern).is_ok() && validate_name(name).is_ok() {
        let index = PatternIndex::new([(pattern.to_owned(), ())]);
        assert_eq!(
            index.resolve(name).is_some(),
            matches,
            "{pattern:?} against {name:?}"
        );
    }
}

/// A publish request's JSON (REST body or socket argument): parsing with
/// the default limits never panics, and what passes names a valid channel
/// and a publishable event.
pub fn publish_request(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let limits = PayloadLimits {
        max_depth: 32,
        max_keys: 1000,
    };
    if let Ok(request) = PublishRequest::parse(body, &limits) {
        assert!(validate_name(&request.channel).is_ok());
        assert!(check_event_name(&request.event).is_ok());
    }
}
