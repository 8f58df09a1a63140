//! How deliveries look on the wire: each message and presence event is
//! encoded once, as the Engine.IO text frame every subscriber gets, with
//! the `meta` object of SPEC §5. A stored message also carries its offset
//! (its `seq`, as a string) as the event's last argument, which is what
//! `socket.io-client` keeps to recover a dropped connection; the offset is
//! known only once the message is durable, so a message is encoded open
//! ([`OpenFrame`]) and sealed with it then.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::protocol::engineio::Frame;
use crate::publish::{Sender, SenderType};
use entity::messages;

/// `meta` of a delivered message or presence event: `{channel, messageId,
/// senderType, senderId?, timestamp}`.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    /// The resolved channel name.
    pub channel: &'a str,
    /// The message's id.
    pub message_id: Uuid,
    /// Who sent it.
    pub sender: Sender,
    /// When it was published.
    pub timestamp: DateTime<Utc>,
}

impl Meta<'_> {
    /// As a JSON value.
    pub fn to_value(&self) -> Value {
        let mut meta = Map::new();
        meta.insert("channel".into(), Value::String(self.channel.to_owned()));
        meta.insert(
            "messageId".into(),
            Value::String(self.message_id.to_string()),
        );
        meta.insert(
            "senderType".into(),
            Value::String(self.sender.sender_type.as_str().into()),
        );
        if let Some(sender_id) = self.sender.sender_id {
            meta.insert("senderId".into(), Value::String(sender_id.to_string()));
        }
        meta.insert(
            "timestamp".into(),
            Value::String(self.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        Value::Object(meta)
    }

    /// Appends the JSON text of [`Meta::to_value`] to `out`, without
    /// building the value (a publish's frame is written in one buffer).
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut id = uuid::Uuid::encode_buffer();
        out.extend_from_slice(b"{\"channel\":");
        write_json_str(out, self.channel);
        out.extend_from_slice(b",\"messageId\":\"");
        out.extend_from_slice(
            self.message_id
                .hyphenated()
                .encode_lower(&mut id)
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"senderType\":");
        write_json_str(out, self.sender.sender_type.as_str());
        if let Some(sender_id) = self.sender.sender_id {
            out.extend_from_slice(b",\"senderId\":\"");
            out.extend_from_slice(sender_id.hyphenated().encode_lower(&mut id).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"timestamp\":\"");
        write_timestamp(out, &self.timestamp);
        out.extend_from_slice(b"\"}");
    }
}

/// Appends what `to_rfc3339_opts(Millis, true)` writes for years 0 to 9999,
/// digit by digit (chrono's `format` parses its pattern on every call, and
/// `write!` alone was 1% of an acked publish's server time).
fn write_timestamp(out: &mut Vec<u8>, timestamp: &DateTime<Utc>) {
    fn digits(out: &mut Vec<u8>, value: u32, width: usize) {
        let mut buffer = [b'0'; 4];
        let mut rest = value;
        for place in buffer[..width].iter_mut().rev() {
            *place = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&buffer[..width]);
    }
    let (date, time) = (timestamp.date_naive(), timestamp.time());
    digits(out, date.year().clamp(0, 9999) as u32, 4);
    out.push(b'-');
    digits(out, date.month(), 2);
    out.push(b'-');
    digits(out, date.day(), 2);
    out.push(b'T');
    digits(out, time.hour(), 2);
    out.push(b':');
    digits(out, time.minute(), 2);
    out.push(b':');
    // chrono keeps a leap second as nanoseconds past 10^9, and writes it
    // as second 60.
    let (second, nanos) = match time.nanosecond().checked_sub(1_000_000_000) {
        Some(nanos) => (60, nanos),
        None => (time.second(), time.nanosecond()),
    };
    digits(out, second, 2);
    out.push(b'.');
    digits(out, nanos / 1_000_000, 3);
    out.push(b'Z');
}

/// Appends `text` as a JSON string.
fn write_json_str(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// A presence event, `42[<event>,{"member":<member>,"meta":<meta>}]`, from
/// the member's JSON text (a channel keeps its members encoded, not as
/// values).
pub fn presence_event(event: &str, member: &str, meta: &Meta<'_>) -> Frame {
    let mut out = Vec::with_capacity(event.len() + member.len() + 200);
    out.extend_from_slice(b"42[");
    write_json_str(&mut out, event);
    out.extend_from_slice(b",{\"member\":");
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(b",\"meta\":");
    meta.write_json(&mut out);
    out.extend_from_slice(b"}]");
    Frame::Text(into_text(out).into())
}

/// Text written as JSON parts (and the member's text), so UTF-8.
fn into_text(out: Vec<u8>) -> String {
    String::from_utf8(out)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
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
/// payload into a new map (`{"a":1}` + meta → `{"a":1,"meta":{…}}`), all
/// written into the frame's one buffer. A payload key named `meta` is
/// replaced, as a map insert would.
pub fn open_delivery(event: &str, payload: &Map<String, Value>, meta: &Meta<'_>) -> OpenFrame {
    if payload.contains_key("meta") {
        let mut body = payload.clone();
        body.insert("meta".into(), meta.to_value());
        return open_event(event, &[&Value::Object(body).to_string()]);
    }
    let mut out = Vec::with_capacity(event.len() + 3 * payload.len() + 256 + SEAL_ROOM);
    out.extend_from_slice(b"42[");
    write_json_str(&mut out, event);
    out.push(b',');
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, payload);
    // The payload is `{…}`: drop its closing brace, then add meta and close.
    out.pop();
    if !payload.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"meta\":");
    meta.write_json(&mut out);
    out.push(b'}');
    OpenFrame(into_text(out))
}

/// `meta` of a stored row: its channel, id, sender and time.
pub fn stored_meta(row: &messages::Model) -> Meta<'_> {
    Meta {
        channel: &row.channel_name,
        message_id: row.id,
        sender: Sender {
            sender_type: SenderType::parse(&row.sender_type),
            sender_id: row.sender_id,
        },
        timestamp: row.created_at,
    }
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
pub fn encode_delivery(event: &str, payload: &Map<String, Value>, meta: &Meta<'_>) -> Frame {
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
    use chrono::TimeZone;
    use serde_json::json;

    /// The straightforward encoding the spliced one must equal.
    fn oracle(event: &str, payload: &Map<String, Value>, meta: &Meta<'_>) -> Frame {
        let mut body = payload.clone();
        body.insert("meta".into(), meta.to_value());
        encode_event(event, &Value::Object(body))
    }

    #[test]
    fn presence_event_equals_the_member_and_meta_as_values() {
        let member = json!({
            "presenceId": "caf\u{e9} \"quoted\"",
            "type": "anonymous",
            "joinedAt": "2026-12-03T07:00:00.000Z",
        });
        let meta = Meta {
            channel: "room:\u{1F600}",
            message_id: Uuid::new_v4(),
            sender: Sender::SYSTEM,
            timestamp: Utc.with_ymd_and_hms(2026, 12, 3, 7, 0, 1).unwrap(),
        };
        let plain = encode_event(
            "presence:join",
            &json!({ "member": member, "meta": meta.to_value() }),
        );
        let Frame::Text(plain) = plain else { panic!() };
        let Frame::Text(spliced) = presence_event("presence:join", &member.to_string(), &meta)
        else {
            panic!()
        };
        assert_eq!(spliced, plain);
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|day| day.and_hms_milli_opt(23, 59, 59, 1_500))
            .unwrap()
            .and_utc();
        for timestamp in [
            leap,
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.timestamp_micros(1_780_000_000_999_999).unwrap(),
            Utc::now(),
        ] {
            let mut out = Vec::new();
            write_timestamp(&mut out, &timestamp);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
    }

    #[test]
    fn delivery_encoding_equals_payload_plus_meta() {
        let user = Sender {
            sender_type: SenderType::User,
            sender_id: Some(Uuid::new_v4()),
        };
        let times = [
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            Utc.timestamp_micros(1_780_000_000_123_456).unwrap(),
            Utc::now(),
        ];
        for payload in [
            json!({}),
            json!({ "a": 1 }),
            json!({ "z": [1, { "b": "}" }], "a": "\"quoted\" }" }),
            json!({ "meta": "theirs", "after": true }),
        ] {
            let Value::Object(payload) = payload else {
                unreachable!()
            };
            for (event, channel, sender, timestamp) in [
                ("status", "order:1", user, times[0]),
                (
                    "with \"quotes\" and é",
                    "room:\"é\"\\",
                    Sender::SYSTEM,
                    times[1],
                ),
                ("e", "chat:lobby", user, times[2]),
            ] {
                let meta = Meta {
                    channel,
                    message_id: Uuid::now_v7(),
                    sender,
                    timestamp,
                };
                assert_eq!(
                    encode_delivery(event, &payload, &meta),
                    oracle(event, &payload, &meta),
                    "{payload:?}"
                );
            }
        }
    }

    #[test]
    fn a_sealed_frame_ends_with_its_offset_as_a_string() {
        let id = Uuid::nil();
        let meta = Meta {
            channel: "c",
            message_id: id,
            sender: Sender::SYSTEM,
            timestamp: Utc.with_ymd_and_hms(2026, 12, 3, 4, 5, 6).unwrap(),
        };
        let open = open_delivery("e", &Map::new(), &meta);
        assert_eq!(
            open.seal(Some(9_007_199_254_740_993)),
            Frame::Text(
                format!(
                    r#"42["e",{{"meta":{{"channel":"c","messageId":"{id}","senderType":"system","timestamp":"2026-12-03T04:05:06.000Z"}}}},"9007199254740993"]"#
                )
                .into()
            )
        );
    }
}
