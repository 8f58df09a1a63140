//! How deliveries look on the wire: each message and presence event is
//! encoded once, as the Engine.IO text frame every subscriber gets, with
//! the `meta` object of SPEC §5.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::protocol::engineio::Frame;
use crate::publish::Sender;

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

/// Encodes a delivered message once: the payload's fields plus `meta`,
/// spliced into the payload's own serialization instead of copying the
/// payload into a new map (`{"a":1}` + meta → `{"a":1,"meta":{…}}`). A
/// payload key named `meta` is replaced, as a map insert would.
pub fn encode_delivery(event: &str, payload: &Map<String, Value>, meta: &Value) -> Frame {
    if payload.contains_key("meta") {
        let mut body = payload.clone();
        body.insert("meta".into(), meta.clone());
        return encode_event(event, &Value::Object(body));
    }
    // unwrap: a map of JSON values always serializes.
    let body = serde_json::to_string(payload).unwrap();
    // `body` is `{…}`: drop its closing brace, then add meta and close.
    let separator = if payload.is_empty() {
        "\"meta\":"
    } else {
        ",\"meta\":"
    };
    event_frame(
        event,
        &[&body[..body.len() - 1], separator, &meta.to_string(), "}"],
    )
}

/// `42[<event as JSON>,<body parts>]` as one text frame.
fn event_frame(event: &str, body_parts: &[&str]) -> Frame {
    let event = serde_json::to_string(event).unwrap_or_else(|_| "\"\"".into());
    let body_len: usize = body_parts.iter().map(|part| part.len()).sum();
    let mut text = String::with_capacity(event.len() + body_len + 5);
    text.push_str("42[");
    text.push_str(&event);
    text.push(',');
    for part in body_parts {
        text.push_str(part);
    }
    text.push(']');
    Frame::Text(text.into())
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
}
