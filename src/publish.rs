//! The vocabulary of a publish before it reaches a channel: the one parse
//! of a publish request (sockets and REST share it), who sent it, the
//! message on its way, and the one error type for everything that can
//! stop it.

use std::sync::Arc;

use actix_web::http::StatusCode;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::channel::catalog::ChannelDef;
use crate::pattern::validate_name;

/// Why a publish failed, wherever it failed: in the request, in the
/// permission check, in the channel or in the database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// A field is missing or has the wrong type.
    #[error("{0}")]
    InvalidInput(String),
    /// The event name is empty, too long or reserved.
    #[error("{0}")]
    InvalidEvent(String),
    /// A socket published to a channel it has not subscribed to.
    #[error("{0}")]
    NotSubscribed(String),
    /// The publish policy says no, or the channel was disabled.
    #[error("{0}")]
    Unauthorized(String),
    /// No enabled channel matches the name (REST).
    #[error("{0}")]
    ChannelNotFound(String),
    /// The publisher, or the channel, is over its rate.
    #[error("{0}")]
    RateLimited(String),
    /// The message could not be stored in time (`database.publish_timeout_ms`)
    /// and never will be: the database is unreachable, locked or full. The
    /// writer logs the database's words; callers only see this message.
    #[error("the database is unavailable: the message was not stored; retry later")]
    DatabaseUnavailable,
    /// An ephemeral message could not be handed to PostgreSQL, which
    /// carries it to every node (this one included).
    #[error("the database, which carries ephemeral messages between nodes, is unavailable: the message was not delivered; retry later")]
    RelayUnavailable,
    /// The server failed in a way the caller cannot fix.
    #[error("{0}")]
    Internal(String),
}

impl PublishError {
    /// The code callers see: `INVALID_INPUT`, `REALTIME_INVALID_EVENT`…
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::InvalidInput(_) => "INVALID_INPUT",
            PublishError::InvalidEvent(_) => "REALTIME_INVALID_EVENT",
            PublishError::NotSubscribed(_) => "REALTIME_NOT_SUBSCRIBED",
            PublishError::Unauthorized(_) => "REALTIME_UNAUTHORIZED",
            PublishError::ChannelNotFound(_) => "REALTIME_CHANNEL_NOT_FOUND",
            PublishError::RateLimited(_) => "RATE_LIMITED",
            PublishError::DatabaseUnavailable | PublishError::RelayUnavailable => {
                "DATABASE_UNAVAILABLE"
            }
            PublishError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status of a REST publish that failed this way.
    pub fn status(&self) -> StatusCode {
        match self {
            PublishError::InvalidInput(_)
            | PublishError::InvalidEvent(_)
            | PublishError::NotSubscribed(_) => StatusCode::BAD_REQUEST,
            PublishError::Unauthorized(_) => StatusCode::FORBIDDEN,
            PublishError::ChannelNotFound(_) => StatusCode::NOT_FOUND,
            PublishError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            PublishError::DatabaseUnavailable | PublishError::RelayUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            PublishError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Event names that clients may not publish: the server's own events and
/// the ones socket.io-client reserves.
const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Longest event name, in bytes.
pub const MAX_EVENT_LEN: usize = 255;

/// Checks an event name someone wants to publish.
///
/// # Errors
/// [`PublishError::InvalidEvent`] for empty, long or reserved names.
pub fn check_event_name(event: &str) -> Result<(), PublishError> {
    if event.is_empty() || event.len() > MAX_EVENT_LEN {
        return Err(PublishError::InvalidEvent(format!(
            "event must be 1 to {MAX_EVENT_LEN} characters"
        )));
    }
    if RESERVED_EVENTS.contains(&event)
        || event.starts_with("realtime:")
        || event.starts_with("presence:")
    {
        return Err(PublishError::InvalidEvent(format!(
            "event name {event:?} is reserved"
        )));
    }
    Ok(())
}

/// `{channel, event, payload}`, checked: what a socket's
/// `realtime:publish` and the REST publish body both carry.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishRequest {
    /// The channel name, valid as a name (not yet resolved).
    pub channel: String,
    /// The event name, not reserved.
    pub event: String,
    /// The JSON object to publish; `{}` when absent.
    pub payload: Map<String, Value>,
}

impl PublishRequest {
    /// Checks a request body.
    ///
    /// # Errors
    /// [`PublishError::InvalidInput`] for a missing or mistyped field or an
    /// invalid channel name, [`PublishError::InvalidEvent`] for the event.
    pub fn parse(body: Value, limits: &PayloadLimits) -> Result<PublishRequest, PublishError> {
        let invalid = |message: &str| PublishError::InvalidInput(message.to_owned());
        let Value::Object(mut body) = body else {
            return Err(invalid(
                "expected an object {channel: string, event: string, payload?: object}",
            ));
        };
        let Some(Value::String(channel)) = body.remove("channel") else {
            return Err(invalid("channel: Expected string"));
        };
        let Some(Value::String(event)) = body.remove("event") else {
            return Err(invalid("event: Expected string"));
        };
        let payload = match body.remove("payload") {
            None => Map::new(),
            Some(Value::Object(payload)) => payload,
            Some(_) => return Err(invalid("payload: Expected object")),
        };
        limits.check(&payload)?;
        validate_name(&channel)
            .map_err(|err| PublishError::InvalidInput(format!("channel: {err}")))?;
        check_event_name(&event)?;
        Ok(PublishRequest {
            channel,
            event,
            payload,
        })
    }
}

/// How big a payload may be in shape (`[limits]`).
#[derive(Clone, Copy, Debug)]
pub struct PayloadLimits {
    /// Deepest nesting of objects and arrays (the payload itself is 1).
    pub max_depth: usize,
    /// Most object keys, at every depth.
    pub max_keys: usize,
}

impl PayloadLimits {
    /// Checks a payload in one walk, without recursion: no NUL character
    /// in any key or text (PostgreSQL's jsonb cannot hold U+0000: refused
    /// here, for every database alike, rather than failing a whole batch),
    /// nesting and keys within the limits (a refusal by a limit is
    /// counted).
    fn check(&self, payload: &Map<String, Value>) -> Result<(), PublishError> {
        let nul = || {
            PublishError::InvalidInput(
                "payload: text must not contain the NUL character (\\u0000)".into(),
            )
        };
        let mut keys = 0;
        let mut stack: Vec<(&Value, usize)> = Vec::new();
        // The object to open next, with its depth (the payload is 1).
        let mut object = Some((payload, 1));
        loop {
            if let Some((map, depth)) = object.take() {
                self.check_depth(depth)?;
                keys += map.len();
                if keys > self.max_keys {
                    crate::metrics::METRICS.refused(crate::metrics::Limit::PayloadKeys);
                    return Err(PublishError::InvalidInput(format!(
                        "payload: more than {} keys (limits.max_payload_keys)",
                        self.max_keys
                    )));
                }
                for (key, value) in map {
                    if key.contains('\0') {
                        return Err(nul());
                    }
                    stack.push((value, depth + 1));
                }
            }
            let Some((value, depth)) = stack.pop() else {
                return Ok(());
            };
            match value {
                Value::String(text) if text.contains('\0') => return Err(nul()),
                Value::Object(map) => object = Some((map, depth)),
                Value::Array(items) => {
                    self.check_depth(depth)?;
                    stack.extend(items.iter().map(|item| (item, depth + 1)));
                }
                _ => {}
            }
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), PublishError> {
        if depth <= self.max_depth {
            return Ok(());
        }
        crate::metrics::METRICS.refused(crate::metrics::Limit::PayloadDepth);
        Err(PublishError::InvalidInput(format!(
            "payload: nested deeper than {} levels (limits.max_payload_depth)",
            self.max_depth
        )))
    }
}

/// Whether a user or the system sent a message (`meta.senderType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderType {
    /// A socket of a user or of an anon key.
    User,
    /// An API-key socket, a REST publish or SQL.
    System,
}

impl SenderType {
    /// The name stored and sent: `user` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            SenderType::User => "user",
            SenderType::System => "system",
        }
    }

    /// Reads a stored sender type; anything but `user` is the system.
    pub fn parse(text: &str) -> SenderType {
        if text == "user" {
            SenderType::User
        } else {
            SenderType::System
        }
    }
}

/// Who sent a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    /// User or system.
    pub sender_type: SenderType,
    /// The user's id, for authenticated users whose `sub` is a uuid.
    pub sender_id: Option<Uuid>,
}

impl Sender {
    /// The system: REST and SQL publishes, API-key sockets.
    pub const SYSTEM: Sender = Sender {
        sender_type: SenderType::System,
        sender_id: None,
    };

    /// The sender a socket's messages carry: users and anon keys are
    /// `user` (with `senderId` for authenticated users whose `sub` is a
    /// uuid), API keys are the `system`.
    pub fn of(principal: &Principal) -> Sender {
        match principal {
            Principal::ApiKey => Sender::SYSTEM,
            Principal::AnonKey => Sender {
                sender_type: SenderType::User,
                sender_id: None,
            },
            Principal::Jwt { sub, role, .. } => Sender {
                sender_type: SenderType::User,
                sender_id: (*role == Role::Authenticated)
                    .then(|| Uuid::parse_str(sub).ok())
                    .flatten(),
            },
        }
    }
}

/// A checked publish on its way to the channel it resolved to.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The event name.
    pub event: String,
    /// The JSON object published.
    pub payload: Map<String, Value>,
    /// Who published it.
    pub sender: Sender,
    /// The channel definition the name resolved to at publish time.
    pub channel: Arc<ChannelDef>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: PayloadLimits = PayloadLimits {
        max_depth: 4,
        max_keys: 10,
    };

    #[test]
    fn payloads_deeper_or_wider_than_the_limits_are_refused() {
        let request = |payload: Value| {
            PublishRequest::parse(
                json!({"channel": "a:b", "event": "e", "payload": payload}),
                &LIMITS,
            )
        };
        // Depth 4: the payload, an object, an array, an object.
        assert!(request(json!({"a": {"b": [{"c": 1}]}})).is_ok());
        let err = request(json!({"a": {"b": [{"c": [1]}]}})).unwrap_err();
        assert_eq!(err.code(), "INVALID_INPUT");
        assert!(err.to_string().contains("max_payload_depth"), "{err}");
        // Ten keys in all is fine, eleven is not, however they nest.
        let ten: Map<String, Value> = (0..10).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(request(Value::Object(ten.clone())).is_ok());
        let err = request(json!({"a": {"b": Value::Object(ten)}})).unwrap_err();
        assert!(err.to_string().contains("max_payload_keys"), "{err}");
        // Arrays count for depth, not for keys.
        assert!(request(json!({"a": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]})).is_ok());
    }

    fn parse_err(body: Value) -> PublishError {
        PublishRequest::parse(body, &LIMITS).unwrap_err()
    }

    #[test]
    fn nul_characters_in_a_payload_are_refused_at_any_depth() {
        for payload in [
            json!({"a": "x\u{0}y"}),
            json!({"a\u{0}": 1}),
            json!({"a": [1, {"b": ["\u{0}"]}]}),
        ] {
            let err = PublishRequest::parse(
                json!({"channel": "a:b", "event": "e", "payload": payload}),
                &LIMITS,
            )
            .unwrap_err();
            assert_eq!(err.code(), "INVALID_INPUT", "{payload}");
        }
        assert!(PublishRequest::parse(
            json!({"channel": "a:b", "event": "e", "payload": {"a": "\\u0000 as text is fine"}}),
            &LIMITS
        )
        .is_ok());
    }

    #[test]
    fn a_good_request_parses() {
        let request = PublishRequest::parse(
            json!({"channel": "order:1", "event": "e", "payload": {"a": 1}}),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(request.channel, "order:1");
        assert_eq!(request.payload["a"], 1);
        let bare =
            PublishRequest::parse(json!({"channel": "order:1", "event": "e"}), &LIMITS).unwrap();
        assert!(bare.payload.is_empty());
    }

    #[test]
    fn each_field_is_checked_with_its_code() {
        for (body, code, message) in [
            (json!([1]), "INVALID_INPUT", "expected an object"),
            (json!({"event": "e"}), "INVALID_INPUT", "channel:"),
            (
                json!({"channel": 1, "event": "e"}),
                "INVALID_INPUT",
                "channel:",
            ),
            (json!({"channel": "a:b"}), "INVALID_INPUT", "event:"),
            (
                json!({"channel": "a:b", "event": "e", "payload": [1]}),
                "INVALID_INPUT",
                "payload:",
            ),
            (
                json!({"channel": "a b", "event": "e"}),
                "INVALID_INPUT",
                "channel:",
            ),
            (
                json!({"channel": "a:b", "event": "realtime:x"}),
                "REALTIME_INVALID_EVENT",
                "reserved",
            ),
            (
                json!({"channel": "a:b", "event": ""}),
                "REALTIME_INVALID_EVENT",
                "1 to 255",
            ),
        ] {
            let err = parse_err(body.clone());
            assert_eq!(err.code(), code, "{body}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{body}");
            assert!(err.to_string().contains(message), "{body}: {err}");
        }
    }

    #[test]
    fn statuses_follow_the_codes() {
        assert_eq!(
            PublishError::RateLimited("x".into()).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            PublishError::DatabaseUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            PublishError::DatabaseUnavailable.code(),
            "DATABASE_UNAVAILABLE"
        );
        assert!(!PublishError::DatabaseUnavailable
            .to_string()
            .contains("database error"));
        assert_eq!(
            PublishError::ChannelNotFound("x".into()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
