//! How deliveries look on the wire: each message and presence event is
//! encoded once, as the Engine.IO text frame every subscriber gets, with
//! the `meta` object of SPEC §5. A stored message also carries its offset
//! (its `seq`, as a string) as the event's last argument, which is what
//! `socket.io-client` keeps to recover a dropped connection; the offset is
//! known only once the message is durable, so a message is encoded open
//! ([`OpenFrame`]) and sealed with it then.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::protocol::engineio::Frame;
use crate::publish::{Sender, SenderType};
use entity::messages;

/// `meta` of a delivered message or presence event: `{channel, messageId,
/// senderType, senderId?, timestamp}`.
pub fn meta(channel: &str, message_id: Uuid, sender: &Sender, timestamp: DateTime<Utc>) -> Value {
    let mut meta = Map::new();
    meta.insert("channel".into(), Value::String(channel.to_owned()));
    meta.insert("messageId".into(), Value::String(message_id.to_string()));
    meta.insert(
        "senderType".into(),
        Value::String(sender.sender_type.as_str().into()),
    );
    if let Some(sender_id) = sender.sender_id {
        meta.insert("senderId".into(), Value::String(sender_id.to_string()));
    }
    meta.insert(
        "timestamp".into(),
        Value::String(timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    Value::Object(meta)
}

/// Encodes an event once, as the Engine.IO message every subscriber gets:
/// `42[<event>,<body>]`, built directly rather than through a Socket.IO
/// `Packet` so the body is serialized once and never copied.
pub fn encode_event(event: &str, body: &Value) -> Frame {
    event_frame(event, &[&body.to_string()])
}

/// A delivered message's frame without its closing bracket:
/// `42[<event>,<body>`, waiting for its offset.
#[derive(Debug)]
pub struct OpenFrame(String);

/// Room reserved in an open frame for `,"<offset>"]`, so sealing it never
/// copies the text.
const SEAL_ROOM: usize = 24;

impl OpenFrame {
    /// Closes the frame, with `offset` as the event's last argument if
    /// given: `42[<event>,<body>,"<offset>"]`.
    pub fn seal(mut self, offset: Option<i64>) -> Frame {
        if let Some(offset) = offset {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(self.0, ",\"{offset}\"");
        }
        self.0.push(']');
        Frame::Text(self.0.into())
    }
}

/// Encodes a delivered message once: the payload's fields plus `meta`,
/// spliced into the payload's own serialization instead of copying the
/// payload into a new map (`{"a":1}` + meta → `{"a":1,"meta":{…}}`). A
/// payload key named `meta` is replaced, as a map insert would.
pub fn open_delivery(event: &str, payload: &Map<String, Value>, meta: &Value) -> OpenFrame {
    if payload.contains_key("meta") {
        let mut body = payload.clone();
        body.insert("meta".into(), meta.clone());
        return open_event(event, &[&Value::Object(body).to_string()]);
    }
    // unwrap: a map of JSON values always serializes.
    let body = serde_json::to_string(payload).unwrap();
    // `body` is `{…}`: drop its closing brace, then add meta and close.
    let separator = if payload.is_empty() {
        "\"meta\":"
    } else {
        ",\"meta\":"
    };
    open_event(
        event,
        &[&body[..body.len() - 1], separator, &meta.to_string(), "}"],
    )
}

/// `meta` of a stored row: its channel, id, sender and time.
pub fn stored_meta(row: &messages::Model) -> Value {
    let sender = Sender {
        sender_type: SenderType::parse(&row.sender_type),
        sender_id: row.sender_id,
    };
    meta(&row.channel_name, row.id, &sender, row.created_at)
}

/// A stored row as its subscribers get it (its id and time kept). A
/// payload that is not an object (SQL can store any JSON) spreads into
/// nothing, as `{...payload, meta}` does in InsForge.
pub fn open_stored(row: &messages::Model) -> OpenFrame {
    let empty = Map::new();
    let payload = row.payload.as_object().unwrap_or(&empty);
    open_delivery(&row.event_name, payload, &stored_meta(row))
}

/// [`open_delivery`], sealed without an offset.
pub fn encode_delivery(event: &str, payload: &Map<String, Value>, meta: &Value) -> Frame {
    open_delivery(event, payload, meta).seal(None)
}

/// `42[<event as JSON>,<body parts>`.
fn open_event(event: &str, body_parts: &[&str]) -> OpenFrame {
    let event = serde_json::to_string(event).unwrap_or_else(|_| "\"\"".into());
    let body_len: usize = body_parts.iter().map(|part| part.len()).sum();
    let mut text = String::with_capacity(event.len() + body_len + 4 + SEAL_ROOM);
    text.push_str("42[");
    text.push_str(&event);
    text.push(',');
    for part in body_parts {
        text.push_str(part);
    }
    OpenFrame(text)
}

/// `42[<event as JSON>,<body parts>]` as one text frame.
fn event_frame(event: &str, body_parts: &[&str]) -> Frame {
    open_event(event, body_parts).seal(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The straightforward encoding the spliced one must equal.
    fn oracle(event: &str, payload: &Map<String, Value>, meta: &Value) -> Frame {
        let mut body = payload.clone();
        body.insert("meta".into(), meta.clone());
        encode_event(event, &Value::Object(body))
    }

    #[test]
    fn delivery_encoding_equals_payload_plus_meta() {
        let meta = json!({ "channel": "order:1", "messageId": "x", "senderType": "user" });
        for payload in [
            json!({}),
            json!({ "a": 1 }),
            json!({ "z": [1, { "b": "}" }], "a": "\"quoted\" }" }),
            json!({ "meta": "theirs", "after": true }),
        ] {
            let Value::Object(payload) = payload else {
                unreachable!()
            };
            for event in ["status", "with \"quotes\" and é"] {
                assert_eq!(
                    encode_delivery(event, &payload, &meta),
                    oracle(event, &payload, &meta),
                    "{payload:?}"
                );
            }
        }
        assert_eq!(
            encode_delivery("e", &Map::new(), &json!({ "m": 1 })),
            Frame::Text(r#"42["e",{"meta":{"m":1}}]"#.into())
        );
    }

    #[test]
    fn a_sealed_frame_ends_with_its_offset_as_a_string() {
        let open = open_delivery("e", &Map::new(), &json!({ "m": 1 }));
        assert_eq!(
            open.seal(Some(9_007_199_254_740_993)),
            Frame::Text(r#"42["e",{"meta":{"m":1}},"9007199254740993"]"#.into())
        );
    }
}
