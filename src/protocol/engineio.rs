//! Engine.IO v4 packets (`../shared/reference/engine.io-protocol-v4.md`).
//!
//! A packet is a type digit followed by its data: `0` open, `1` close,
//! `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop. Over WebSocket
//! each packet is one frame, and binary messages are binary frames as they
//! are. Over HTTP long-polling several packets are joined with the record
//! separator `\x1e`, and a binary message is written `b<base64>`:
//!
//! ```text
//! 4hello\x1e2\x1ebAQIDBA==
//! ```

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use bytestring::ByteString;

/// The separator of packets in a long-polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// One Engine.IO packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// `0{...}`: the handshake, with its JSON.
    Open(String),
    /// `1`: the transport is closing.
    Close,
    /// `2`, or `2probe` during an upgrade.
    Ping(String),
    /// `3`, or `3probe` during an upgrade.
    Pong(String),
    /// `4…`: a text message.
    Message(String),
    /// A binary message: a binary frame, or `b<base64>` when polling.
    Binary(Bytes),
    /// `5`: the upgrade to WebSocket is complete.
    Upgrade,
    /// `6`: nothing; ends a pending poll during an upgrade.
    Noop,
}

/// Why text or bytes are not an Engine.IO packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Nothing at all where a packet was expected.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A `b…` packet whose data is not base64.
    #[error("invalid base64 in binary packet")]
    InvalidBase64,
    /// A polling body that is not UTF-8.
    #[error("payload is not valid utf-8")]
    InvalidUtf8,
}

impl Packet {
    /// Decodes one packet from its text form (a WebSocket text frame, or one
    /// record of a polling payload).
    ///
    /// # Errors
    /// [`DecodeError`] for empty text, an unknown type or bad base64.
    pub fn decode(text: &str) -> Result<Packet, DecodeError> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or(DecodeError::Empty)?;
        let data = chars.as_str();
        Ok(match kind {
            '0' => Packet::Open(data.to_owned()),
            '1' => Packet::Close,
            '2' => Packet::Ping(data.to_owned()),
            '3' => Packet::Pong(data.to_owned()),
            '4' => Packet::Message(data.to_owned()),
            '5' => Packet::Upgrade,
            '6' => Packet::Noop,
            'b' => Packet::Binary(
                BASE64
                    .decode(data)
                    .map_err(|_| DecodeError::InvalidBase64)?
                    .into(),
            ),
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// The packet as it goes out: text, or raw bytes for binary messages.
    pub fn encode(&self) -> Frame {
        match self {
            Packet::Binary(bytes) => Frame::Binary(bytes.clone()),
            other => Frame::Text(other.encode_text().into()),
        }
    }

    /// The text form of the packet (`b<base64>` for binary messages).
    pub fn encode_text(&self) -> String {
        match self {
            Packet::Open(json) => format!("0{json}"),
            Packet::Close => "1".to_owned(),
            Packet::Ping(data) => format!("2{data}"),
            Packet::Pong(data) => format!("3{data}"),
            Packet::Message(text) => format!("4{text}"),
            Packet::Binary(bytes) => format!("b{}", BASE64.encode(bytes)),
            Packet::Upgrade => "5".to_owned(),
            Packet::Noop => "6".to_owned(),
        }
    }
}

/// An encoded outgoing packet. Cloning shares the bytes, so one broadcast
/// packet is encoded once and queued to every recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete text packet, type digit included: `42["event",{}]`.
    Text(ByteString),
    /// The bytes of a binary message.
    Binary(Bytes),
}

impl Frame {
    /// A text message packet (`4` + `text`).
    pub fn message(text: &str) -> Frame {
        let mut packet = String::with_capacity(text.len() + 1);
        packet.push('4');
        packet.push_str(text);
        Frame::Text(packet.into())
    }

    /// How many bytes the frame takes on a WebSocket.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether the frame carries nothing (never true of a valid packet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Joins frames into one long-polling payload.
pub fn encode_payload<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> String {
    let mut payload = String::new();
    for (index, frame) in frames.into_iter().enumerate() {
        if index > 0 {
            payload.push(RECORD_SEPARATOR);
        }
        match frame {
            Frame::Text(text) => payload.push_str(text),
            Frame::Binary(bytes) => {
                payload.push('b');
                BASE64.encode_string(bytes, &mut payload);
            }
        }
    }
    payload
}

/// Splits a long-polling request body into packets.
///
/// # Errors
/// The body is not UTF-8, or one of its records is not a packet.
pub fn decode_payload(body: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
    text.split(RECORD_SEPARATOR).map(Packet::decode).collect()
}

/// The JSON of the open packet, keys in the order the protocol lists them.
pub fn handshake_json(
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> String {
    serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(text: &str, expected: Packet) {
        assert_eq!(
            Packet::decode(text),
            Ok(expected.clone()),
            "decoding {text:?}"
        );
        assert_eq!(expected.encode_text(), text, "encoding {expected:?}");
    }

    #[test]
    fn packets_from_the_spec() {
        check("0{\"sid\":\"x\"}", Packet::Open("{\"sid\":\"x\"}".into()));
        check("1", Packet::Close);
        check("2", Packet::Ping(String::new()));
        check("2probe", Packet::Ping("probe".into()));
        check("3probe", Packet::Pong("probe".into()));
        check("4hello", Packet::Message("hello".into()));
        check("4", Packet::Message(String::new()));
        check("4€", Packet::Message("€".into()));
        check("5", Packet::Upgrade);
        check("6", Packet::Noop);
        check(
            "bAQIDBA==",
            Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(Packet::decode(""), Err(DecodeError::Empty));
        assert_eq!(Packet::decode("7"), Err(DecodeError::UnknownType('7')));
        assert_eq!(Packet::decode("x4"), Err(DecodeError::UnknownType('x')));
        assert_eq!(Packet::decode("b!!!"), Err(DecodeError::InvalidBase64));
    }

    #[test]
    fn payload_from_the_spec() {
        let packets = decode_payload(b"4hello\x1e2\x1e4world").unwrap();
        assert_eq!(
            packets,
            vec![
                Packet::Message("hello".into()),
                Packet::Ping(String::new()),
                Packet::Message("world".into())
            ]
        );
        let frames = [
            Frame::message("hello"),
            Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ];
        assert_eq!(encode_payload(&frames), "4hello\x1ebAQIDBA==");
        assert_eq!(
            decode_payload(b"4hello\x1e"),
            Err(DecodeError::Empty),
            "trailing separator"
        );
        assert_eq!(decode_payload(&[0x34, 0xff]), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn binary_packets_encode_as_frames() {
        let packet = Packet::Binary(Bytes::from_static(b"\x00\x01"));
        assert_eq!(
            packet.encode(),
            Frame::Binary(Bytes::from_static(b"\x00\x01"))
        );
        assert_eq!(
            Packet::Ping(String::new()).encode(),
            Frame::Text("2".into())
        );
    }

    #[test]
    fn handshake_has_exactly_the_five_keys_in_order() {
        assert_eq!(
            handshake_json("abc", &["websocket"], 300, 200, 1_000_000),
            r#"{"sid":"abc","upgrades":["websocket"],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#
        );
    }

    fn packet_strategy() -> impl Strategy<Value = Packet> {
        let text = "[^\x1e]{0,40}";
        prop_oneof![
            text.prop_map(Packet::Open),
            Just(Packet::Close),
            text.prop_map(Packet::Ping),
            text.prop_map(Packet::Pong),
            text.prop_map(Packet::Message),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Packet::Binary(b.into())),
            Just(Packet::Upgrade),
            Just(Packet::Noop),
        ]
    }

    proptest! {
        #[test]
        fn text_round_trip(packet in packet_strategy()) {
            prop_assert_eq!(Packet::decode(&packet.encode_text()), Ok(packet));
        }

        #[test]
        fn payload_round_trip(packets in proptest::collection::vec(packet_strategy(), 1..8)) {
            let frames: Vec<Frame> = packets.iter().map(|p| match p {
                Packet::Binary(bytes) => Frame::Binary(bytes.clone()),
                other => Frame::Text(other.encode_text().into()),
            }).collect();
            let body = encode_payload(&frames);
            prop_assert_eq!(decode_payload(body.as_bytes()), Ok(packets));
        }

        #[test]
        fn arbitrary_input_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_payload(&body);
            if let Ok(text) = std::str::from_utf8(&body) {
                let _ = Packet::decode(text);
            }
        }
    }
}
