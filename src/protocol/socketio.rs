//! Socket.IO v5 packets (`../shared/reference/socket.io-protocol-v5.md`),
//! each carried in one Engine.IO message:
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]
//! 2["foo"]                      EVENT on "/"
//! 2/admin,12["bar"]             EVENT on "/admin" asking for ack 12
//! 51-["baz",{"_placeholder":true,"num":0}]   + one binary message
//! ```
//!
//! Binary packets arrive in several Engine.IO messages: the text packet,
//! then one binary message per attachment. [`Decoder`] keeps that
//! "waiting for attachments" state explicit.

use bytes::Bytes;
use serde_json::Value;

/// The namespace a packet without one belongs to.
pub const MAIN_NAMESPACE: &str = "/";

/// Most binary attachments one packet may announce.
pub const MAX_ATTACHMENTS: usize = 64;

/// The packet types of the protocol, with their wire digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// `0`: connect to a namespace (client), or its acceptance (server).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event: `["name", ...args]`.
    Event,
    /// `3`: the answer to an event that asked for one.
    Ack,
    /// `4`: a refused connect: `{"message": …, "data"?: …}`.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl PacketKind {
    fn digit(self) -> char {
        match self {
            PacketKind::Connect => '0',
            PacketKind::Disconnect => '1',
            PacketKind::Event => '2',
            PacketKind::Ack => '3',
            PacketKind::ConnectError => '4',
            PacketKind::BinaryEvent => '5',
            PacketKind::BinaryAck => '6',
        }
    }

    fn from_digit(c: char) -> Option<PacketKind> {
        Some(match c {
            '0' => PacketKind::Connect,
            '1' => PacketKind::Disconnect,
            '2' => PacketKind::Event,
            '3' => PacketKind::Ack,
            '4' => PacketKind::ConnectError,
            '5' => PacketKind::BinaryEvent,
            '6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }

    fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

/// One Socket.IO packet. Binary attachments travel beside it; `data` holds
/// `{"_placeholder":true,"num":N}` where they belong.
#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    /// The packet type.
    pub kind: PacketKind,
    /// `/` or a namespace such as `/admin`.
    pub namespace: String,
    /// The ack id, when an answer is asked for (events) or given (acks).
    pub ack_id: Option<u64>,
    /// The JSON payload, if any.
    pub data: Option<Value>,
    /// How many binary attachments follow (binary kinds only).
    pub attachments: usize,
}

/// Why text is not a Socket.IO packet, or a binary message came unasked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty text.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type.
    #[error("unknown packet type")]
    UnknownType,
    /// A binary packet without a valid `N-` attachment count.
    #[error("invalid attachment count")]
    InvalidAttachments,
    /// An ack id too large to be one.
    #[error("invalid ack id")]
    InvalidAckId,
    /// The payload is not JSON.
    #[error("invalid json payload")]
    InvalidJson,
    /// The payload does not fit the packet type (an event that is not a
    /// non-empty array starting with its name, an ack that is not an array…).
    #[error("invalid payload for packet type")]
    InvalidPayload,
    /// A placeholder that names no attachment.
    #[error("invalid binary placeholder")]
    InvalidPlaceholder,
    /// Attachments that add up to more than the decoder's limit.
    #[error("binary attachments too large")]
    AttachmentsTooLarge,
    /// A binary message when no attachment was expected.
    #[error("unexpected binary attachment")]
    UnexpectedBinary,
    /// A text packet while attachments of the previous one were awaited.
    #[error("text packet while waiting for binary attachments")]
    UnexpectedText,
}

impl Packet {
    /// A CONNECT (or its acceptance) on `namespace` with optional data.
    pub fn connect(namespace: &str, data: Option<Value>) -> Packet {
        Packet::new(PacketKind::Connect, namespace, None, data)
    }

    /// An EVENT `[name, ...args]` on `namespace`.
    pub fn event(namespace: &str, name: &str, args: impl IntoIterator<Item = Value>) -> Packet {
        let mut array = vec![Value::String(name.to_owned())];
        array.extend(args);
        Packet::new(
            PacketKind::Event,
            namespace,
            None,
            Some(Value::Array(array)),
        )
    }

    /// An ACK for `ack_id` with `args`.
    pub fn ack(namespace: &str, ack_id: u64, args: Vec<Value>) -> Packet {
        Packet::new(
            PacketKind::Ack,
            namespace,
            Some(ack_id),
            Some(Value::Array(args)),
        )
    }

    /// A CONNECT_ERROR with `{"message": message}` plus `data` if given.
    pub fn connect_error(namespace: &str, message: &str, data: Option<Value>) -> Packet {
        let mut body = serde_json::Map::new();
        body.insert("message".into(), Value::String(message.to_owned()));
        if let Some(data) = data {
            body.insert("data".into(), data);
        }
        Packet::new(
            PacketKind::ConnectError,
            namespace,
            None,
            Some(Value::Object(body)),
        )
    }

    fn new(kind: PacketKind, namespace: &str, ack_id: Option<u64>, data: Option<Value>) -> Packet {
        Packet {
            kind,
            namespace: namespace.to_owned(),
            ack_id,
            data,
            attachments: 0,
        }
    }

    /// The event name and arguments of an EVENT or BINARY_EVENT.
    pub fn event_parts(&self) -> Option<(&str, &[Value])> {
        match (&self.kind, &self.data) {
            (PacketKind::Event | PacketKind::BinaryEvent, Some(Value::Array(items))) => {
                let (name, args) = items.split_first()?;
                Some((name.as_str()?, args))
            }
            _ => None,
        }
    }

    /// The wire text of the packet (without the Engine.IO `4`).
    pub fn encode(&self) -> String {
        let payload = self.data.as_ref().map(Value::to_string);
        let mut out = String::with_capacity(16 + payload.as_ref().map_or(0, String::len));
        out.push(self.kind.digit());
        if self.kind.is_binary() {
            out.push_str(&self.attachments.to_string());
            out.push('-');
        }
        Self::push_header_tail(&mut out, &self.namespace, self.ack_id);
        if let Some(payload) = payload {
            out.push_str(&payload);
        }
        out
    }

    /// The wire text of a packet without attachments whose data is
    /// already encoded (`data_json` must be valid JSON).
    pub fn encode_with_data(
        kind: PacketKind,
        namespace: &str,
        ack_id: Option<u64>,
        data_json: &str,
    ) -> String {
        debug_assert!(!kind.is_binary());
        let mut out = String::with_capacity(24 + namespace.len() + data_json.len());
        out.push(kind.digit());
        Self::push_header_tail(&mut out, namespace, ack_id);
        out.push_str(data_json);
        out
    }

    fn push_header_tail(out: &mut String, namespace: &str, ack_id: Option<u64>) {
        if namespace != MAIN_NAMESPACE {
            out.push_str(namespace);
            out.push(',');
        }
        if let Some(id) = ack_id {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(out, "{id}");
        }
    }

    /// Decodes the text of one packet. A binary packet comes back with its
    /// attachment count; its attachments are still to come.
    ///
    /// # Errors
    /// [`DecodeError`] for anything that is not a valid packet.
    pub fn decode(text: &str) -> Result<Packet, DecodeError> {
        let first = text.chars().next().ok_or(DecodeError::Empty)?;
        let kind = PacketKind::from_digit(first).ok_or(DecodeError::UnknownType)?;
        let mut rest = &text[1..];

        let mut attachments = 0;
        if kind.is_binary() {
            let (count, after) = rest
                .split_once('-')
                .ok_or(DecodeError::InvalidAttachments)?;
            if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(DecodeError::InvalidAttachments);
            }
            attachments = count
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_ATTACHMENTS)
                .ok_or(DecodeError::InvalidAttachments)?;
            rest = after;
        }

        let mut namespace = MAIN_NAMESPACE;
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            namespace = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }

        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let ack_id = if digits > 0 {
            let id = rest[..digits]
                .parse::<u64>()
                .map_err(|_| DecodeError::InvalidAckId)?;
            rest = &rest[digits..];
            Some(id)
        } else {
            None
        };

        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Value>(rest).map_err(|_| DecodeError::InvalidJson)?)
        };

        let packet = Packet {
            kind,
            namespace: namespace.to_owned(),
            ack_id,
            data,
            attachments,
        };
        packet.check_payload()?;
        Ok(packet)
    }

    /// The payload rules of each packet type.
    fn check_payload(&self) -> Result<(), DecodeError> {
        let valid = match (self.kind, &self.data) {
            (PacketKind::Connect, None | Some(Value::Object(_))) => true,
            (PacketKind::Disconnect, None) => true,
            (PacketKind::ConnectError, Some(Value::Object(_) | Value::String(_))) => true,
            (PacketKind::Event | PacketKind::BinaryEvent, Some(Value::Array(items))) => {
                matches!(items.first(), Some(Value::String(_)))
            }
            (PacketKind::Ack | PacketKind::BinaryAck, Some(Value::Array(_))) => {
                self.ack_id.is_some()
            }
            _ => false,
        };
        if valid {
            Ok(())
        } else {
            Err(DecodeError::InvalidPayload)
        }
    }
}

/// A binary attachment's placeholder: `{"_placeholder":true,"num":N}`.
pub fn placeholder(num: usize) -> Value {
    serde_json::json!({ "_placeholder": true, "num": num })
}

/// Checks that every placeholder in `value` names one of `n_attachments`.
fn check_placeholders(value: &Value, n_attachments: usize) -> Result<(), DecodeError> {
    match value {
        Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
            match map.get("num").and_then(Value::as_u64) {
                Some(num) if (num as usize) < n_attachments => Ok(()),
                _ => Err(DecodeError::InvalidPlaceholder),
            }
        }
        Value::Object(map) => map
            .values()
            .try_for_each(|v| check_placeholders(v, n_attachments)),
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_placeholders(v, n_attachments)),
        _ => Ok(()),
    }
}

/// A complete packet with its binary attachments in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The packet; placeholders stand where attachments belong.
    pub packet: Packet,
    /// The attachments, `num` 0 first.
    pub attachments: Vec<Bytes>,
}

/// Turns the Engine.IO messages of one connection into Socket.IO packets,
/// holding a binary packet until all its attachments have arrived.
#[derive(Debug)]
pub struct Decoder {
    /// The binary packet being completed and the attachments so far.
    /// (Boxed: a decoder is part of every session, and binary packets
    /// are rare.)
    pending: Option<Box<Received>>,
    /// Bytes of attachments held for `pending`.
    pending_bytes: usize,
    /// Most attachment bytes one packet may carry in all.
    max_attachment_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::with_limit(usize::MAX)
    }
}

impl Decoder {
    /// A decoder that refuses packets whose attachments add up to more
    /// than `max_attachment_bytes`.
    pub fn with_limit(max_attachment_bytes: usize) -> Self {
        Decoder {
            pending: None,
            pending_bytes: 0,
            max_attachment_bytes,
        }
    }

    /// Feeds one text message.
    ///
    /// # Errors
    /// A malformed packet, or text while attachments were awaited.
    pub fn text(&mut self, text: &str) -> Result<Option<Received>, DecodeError> {
        if self.pending.is_some() {
            return Err(DecodeError::UnexpectedText);
        }
        let packet = Packet::decode(text)?;
        if let Some(data) = &packet.data {
            check_placeholders(data, packet.attachments)?;
        }
        let received = Received {
            attachments: Vec::with_capacity(packet.attachments),
            packet,
        };
        if received.packet.attachments > 0 {
            self.pending = Some(Box::new(received));
            Ok(None)
        } else {
            Ok(Some(received))
        }
    }

    /// Feeds one binary message.
    ///
    /// # Errors
    /// [`DecodeError::UnexpectedBinary`] when no attachment was expected.
    pub fn binary(&mut self, bytes: Bytes) -> Result<Option<Received>, DecodeError> {
        let pending = self.pending.as_mut().ok_or(DecodeError::UnexpectedBinary)?;
        self.pending_bytes += bytes.len();
        if self.pending_bytes > self.max_attachment_bytes {
            self.pending = None;
            return Err(DecodeError::AttachmentsTooLarge);
        }
        pending.attachments.push(bytes);
        if pending.attachments.len() == pending.packet.attachments {
            self.pending_bytes = 0;
            Ok(self.pending.take().map(|received| *received))
        } else {
            Ok(None)
        }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn pre_encoded_data_matches_the_encoder() {
        for (namespace, ack_id) in [("/", 7), ("/admin", 12)] {
            let args = vec![json!({ "ok": true, "members": [{ "id": "a" }] })];
            let data = Value::Array(args.clone()).to_string();
            assert_eq!(
                Packet::encode_with_data(PacketKind::Ack, namespace, Some(ack_id), &data),
                Packet::ack(namespace, ack_id, args).encode()
            );
        }
    }

    fn check(text: &str, expected: Packet) {
        assert_eq!(
            Packet::decode(text),
            Ok(expected.clone()),
            "decoding {text:?}"
        );
        assert_eq!(expected.encode(), text, "encoding");
    }

    fn packet(
        kind: PacketKind,
        ns: &str,
        id: Option<u64>,
        data: Option<Value>,
        n: usize,
    ) -> Packet {
        Packet {
            kind,
            namespace: ns.into(),
            ack_id: id,
            data,
            attachments: n,
        }
    }

    #[test]
    fn examples_from_the_spec() {
        use PacketKind::*;
        check("0", packet(Connect, "/", None, None, 0));
        check(
            "0/admin,{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}",
            packet(
                Connect,
                "/admin",
                None,
                Some(json!({"sid": "oSO0OpakMV_3jnilAAAA"})),
                0,
            ),
        );
        check(
            "4{\"message\":\"Not authorized\"}",
            packet(
                ConnectError,
                "/",
                None,
                Some(json!({"message": "Not authorized"})),
                0,
            ),
        );
        check(
            "2[\"foo\"]",
            packet(Event, "/", None, Some(json!(["foo"])), 0),
        );
        check(
            "2/admin,[\"bar\"]",
            packet(Event, "/admin", None, Some(json!(["bar"])), 0),
        );
        check(
            "51-[\"baz\",{\"_placeholder\":true,\"num\":0}]",
            packet(
                BinaryEvent,
                "/",
                None,
                Some(json!(["baz", placeholder(0)])),
                1,
            ),
        );
        check(
            "212[\"foo\"]",
            packet(Event, "/", Some(12), Some(json!(["foo"])), 0),
        );
        check(
            "3/admin,13[\"bar\"]",
            packet(Ack, "/admin", Some(13), Some(json!(["bar"])), 0),
        );
        check("312[]", packet(Ack, "/", Some(12), Some(json!([])), 0));
        check("1", packet(Disconnect, "/", None, None, 0));
        check("1/admin,", packet(Disconnect, "/admin", None, None, 0));
    }

    #[test]
    fn namespace_without_trailing_comma() {
        let decoded = Packet::decode("0/custom").unwrap();
        assert_eq!(decoded.namespace, "/custom");
        assert_eq!(decoded.data, None);
        assert_eq!(Packet::decode("1/custom").unwrap().namespace, "/custom");
    }

    #[test]
    fn key_order_is_kept() {
        let decoded = Packet::decode(r#"0{"token":"123","a":1,"Z":2}"#).unwrap();
        assert_eq!(
            Packet::event("/", "auth", [decoded.data.unwrap()]).encode(),
            r#"2["auth",{"token":"123","a":1,"Z":2}]"#
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        let cases = [
            ("", DecodeError::Empty),
            ("a", DecodeError::UnknownType),
            ("7", DecodeError::UnknownType),
            ("2{}", DecodeError::InvalidPayload),
            ("2[]", DecodeError::InvalidPayload),
            ("2[1]", DecodeError::InvalidPayload),
            ("2", DecodeError::InvalidPayload),
            ("2abc[\"x\"]", DecodeError::InvalidJson),
            ("2[\"x\"", DecodeError::InvalidJson),
            ("3[]", DecodeError::InvalidPayload),
            ("1{}", DecodeError::InvalidPayload),
            ("0[]", DecodeError::InvalidPayload),
            ("4", DecodeError::InvalidPayload),
            ("5[\"x\"]", DecodeError::InvalidAttachments),
            ("5x-[\"x\"]", DecodeError::InvalidAttachments),
            ("5-[\"x\"]", DecodeError::InvalidAttachments),
            (
                "599999999999999999999-[\"x\"]",
                DecodeError::InvalidAttachments,
            ),
            ("299999999999999999999999[\"x\"]", DecodeError::InvalidAckId),
        ];
        for (text, error) in cases {
            assert_eq!(Packet::decode(text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn decoder_reassembles_attachments_in_order() {
        let mut decoder = Decoder::default();
        let header = r#"452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        // The Engine.IO layer strips the leading `4`.
        assert_eq!(decoder.text(&header[1..]), Ok(None));
        assert!(decoder.is_waiting());
        assert_eq!(decoder.text("2[\"x\"]"), Err(DecodeError::UnexpectedText));
        assert_eq!(decoder.binary(Bytes::from_static(b"\x01")), Ok(None));
        let received = decoder
            .binary(Bytes::from_static(b"\x02\x03"))
            .unwrap()
            .unwrap();
        assert_eq!(received.packet.ack_id, Some(789));
        assert_eq!(
            received.attachments,
            vec![Bytes::from_static(b"\x01"), Bytes::from_static(b"\x02\x03")]
        );
        assert_eq!(received.packet.encode(), &header[1..]);
        assert!(!decoder.is_waiting());
        assert_eq!(
            decoder.binary(Bytes::new()),
            Err(DecodeError::UnexpectedBinary)
        );
    }

    #[test]
    fn attachments_are_bounded_in_total() {
        let mut decoder = Decoder::with_limit(5);
        let header = r#"52-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        assert_eq!(decoder.text(header), Ok(None));
        assert_eq!(decoder.binary(Bytes::from_static(b"abc")), Ok(None));
        assert_eq!(
            decoder.binary(Bytes::from_static(b"def")),
            Err(DecodeError::AttachmentsTooLarge)
        );
        assert!(!decoder.is_waiting());
    }

    #[test]
    fn placeholders_must_name_an_attachment() {
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.text(r#"51-["x",{"_placeholder":true,"num":1}]"#),
            Err(DecodeError::InvalidPlaceholder)
        );
        assert_eq!(
            decoder.text(r#"2["x",{"_placeholder":true,"num":0}]"#),
            Err(DecodeError::InvalidPlaceholder)
        );
    }

    #[test]
    fn event_parts() {
        let event = Packet::event("/", "realtime:publish", [json!({"a": 1})]);
        assert_eq!(
            event.event_parts(),
            Some(("realtime:publish", &[json!({"a": 1})][..]))
        );
        assert_eq!(Packet::connect("/", None).event_parts(), None);
    }

    fn json_strategy() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z€\"\\\\]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,5}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn packet_strategy() -> impl Strategy<Value = Packet> {
        let namespace = prop_oneof![Just("/".to_string()), "/[a-z]{1,6}"];
        (
            namespace,
            proptest::option::of(0u64..1_000_000),
            json_strategy(),
            "[a-z:]{1,12}",
            0usize..3,
        )
            .prop_flat_map(|(ns, id, value, name, kind)| {
                let packet = match kind {
                    0 => Packet {
                        ack_id: None,
                        ..Packet::event(&ns, &name, [value])
                    },
                    1 => Packet {
                        ack_id: id,
                        ..Packet::event(&ns, &name, [value])
                    },
                    _ => Packet::ack(&ns, id.unwrap_or(0), vec![value]),
                };
                Just(packet)
            })
    }

    proptest! {
        #[test]
        fn round_trip(packet in packet_strategy()) {
            prop_assert_eq!(Packet::decode(&packet.encode()), Ok(packet));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,64}") {
            let mut decoder = Decoder::default();
            let _ = decoder.text(&text);
        }

        #[test]
        fn mutated_packets_never_panic(packet in packet_strategy(), cut in 0usize..64, junk in "[0-9a-z/,\\[\\]{}\"-]{0,6}") {
            let mut text = packet.encode();
            let cut = cut.min(text.len());
            let cut = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.insert_str(cut, &junk);
            let mut decoder = Decoder::default();
            let _ = decoder.text(&text);
        }
    }
}
