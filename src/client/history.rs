//! `realtime:history {channel, before?, limit?}` (SPEC §9c): the newest
//! messages of a channel from stored history, newest last, each as it is
//! delivered live (`{event, payload, meta, offset}`), paged back with
//! `before` (an offset). Allowed exactly when the socket may subscribe to
//! the channel; read by the persistence layer, never by the channel actor.

use serde_json::{json, Map, Value};

use super::{Client, ClientEvent, NAMESPACE};
use crate::channel::delivery;
use crate::engineio::SessionEvent;
use crate::pattern::validate_name;
use crate::permissions::Decision;
use crate::socketio::Socket;

/// Messages per answer unless the client asks for fewer (or more, up to
/// [`MAX_LIMIT`]).
const DEFAULT_LIMIT: u64 = 50;
/// Most messages per answer.
const MAX_LIMIT: u64 = 100;
/// History requests one socket may have in flight; more are refused.
const MAX_IN_FLIGHT: usize = 4;

/// A parsed history request.
struct HistoryRequest {
    channel: String,
    before: Option<i64>,
    limit: u64,
}

impl HistoryRequest {
    fn parse(args: &[Value]) -> Result<HistoryRequest, String> {
        let Some(Value::Object(body)) = args.first() else {
            return Err("expected {channel, before?, limit?}".into());
        };
        let channel = match body.get("channel") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err("channel: expected a channel name".into()),
        };
        validate_name(&channel).map_err(|err| format!("channel: {err}"))?;
        let before = match body.get("before") {
            None | Some(Value::Null) => None,
            Some(Value::String(offset)) => match offset.parse::<i64>() {
                Ok(offset) if offset > 0 => Some(offset),
                _ => return Err("before: expected an offset (a string of digits)".into()),
            },
            Some(_) => return Err("before: expected an offset (a string of digits)".into()),
        };
        let limit = match body.get("limit") {
            None | Some(Value::Null) => DEFAULT_LIMIT,
            Some(value) => match value.as_u64() {
                Some(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
                _ => return Err(format!("limit: expected an integer from 1 to {MAX_LIMIT}")),
            },
        };
        Ok(HistoryRequest {
            channel,
            before,
            limit,
        })
    }
}

impl Client {
    pub(super) fn on_history(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        args: &[Value],
        ack_id: Option<u64>,
    ) {
        let Some(ack_id) = ack_id else {
            let message = "realtime:history answers with an ack: emit it with a callback";
            return Self::emit_error(socket, None, "INVALID_INPUT", message);
        };
        let request = match HistoryRequest::parse(args) {
            Ok(request) => request,
            Err(message) => return Self::refuse_event(socket, ack_id, "INVALID_INPUT", &message),
        };
        let refuse = |socket: &mut Socket<'_, '_, Self>, code: &str, message: &str| {
            socket.ack(
                NAMESPACE,
                ack_id,
                vec![json!({
                    "ok": false,
                    "channel": request.channel,
                    "error": { "code": code, "message": message },
                })],
            );
        };
        if self.history_in_flight >= MAX_IN_FLIGHT {
            crate::metrics::METRICS.refused(crate::metrics::Limit::HistoryInFlight);
            let message = format!("at most {MAX_IN_FLIGHT} history requests at a time");
            return refuse(socket, "RATE_LIMITED", &message);
        }
        let Some(definition) = self.hub.catalog.resolve(&request.channel) else {
            return refuse(
                socket,
                "REALTIME_UNAUTHORIZED",
                "no enabled channel matches this name",
            );
        };
        let Some(principal) = self.principal.clone() else {
            return refuse(socket, "REALTIME_UNAUTHORIZED", "not connected");
        };
        self.history_in_flight += 1;
        let hub = self.hub.clone();
        let client = socket.address();
        actix::spawn(async move {
            let decision = hub
                .permissions
                .may_subscribe(&principal, &request.channel, &definition)
                .await;
            let answer = match decision {
                Decision::Allow => match crate::persistence::messages::history_page(
                    &hub.db,
                    &request.channel,
                    request.before,
                    request.limit,
                )
                .await
                {
                    Ok(rows) => {
                        let messages: Vec<Value> =
                            rows.into_iter().rev().map(as_delivered).collect();
                        json!({ "ok": true, "channel": request.channel, "messages": messages })
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "could not read history");
                        failure(
                            &request.channel,
                            "INTERNAL_ERROR",
                            "history could not be read; retry later",
                        )
                    }
                },
                Decision::Deny => failure(
                    &request.channel,
                    "REALTIME_UNAUTHORIZED",
                    "not allowed to subscribe to this channel",
                ),
                Decision::Unavailable => failure(
                    &request.channel,
                    "INTERNAL_ERROR",
                    "the permission check failed; retry later",
                ),
            };
            client.do_send(SessionEvent(ClientEvent::History { ack_id, answer }));
        });
    }

    pub(super) fn on_history_answer(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        ack_id: u64,
        answer: Value,
    ) {
        self.history_in_flight = self.history_in_flight.saturating_sub(1);
        socket.ack(NAMESPACE, ack_id, vec![answer]);
    }
}

fn failure(channel: &str, code: &str, message: &str) -> Value {
    json!({ "ok": false, "channel": channel, "error": { "code": code, "message": message } })
}

/// A stored message as a subscriber got it live: its event, its payload,
/// its `meta`, and its offset.
fn as_delivered(row: entity::messages::Model) -> Value {
    let meta = delivery::stored_meta(&row).to_value();
    let payload = match row.payload {
        Value::Object(payload) => Value::Object(payload),
        _ => Value::Object(Map::new()),
    };
    json!({
        "event": row.event_name,
        "payload": payload,
        "meta": meta,
        "offset": row.seq.map(|seq| seq.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = HistoryRequest::parse(&[json!({ "channel": "chat:1" })]).unwrap();
        assert_eq!((ok.before, ok.limit), (None, DEFAULT_LIMIT));
        let paged =
            HistoryRequest::parse(&[json!({ "channel": "chat:1", "before": "42", "limit": 100 })])
                .unwrap();
        assert_eq!((paged.before, paged.limit), (Some(42), 100));
        for (body, field) in [
            (json!({}), "channel"),
            (json!({ "channel": "" }), "channel"),
            (json!({ "channel": 5 }), "channel"),
            (json!({ "channel": "chat:1", "before": 42 }), "before"),
            (json!({ "channel": "chat:1", "before": "-3" }), "before"),
            (json!({ "channel": "chat:1", "before": "x" }), "before"),
            (json!({ "channel": "chat:1", "limit": 0 }), "limit"),
            (json!({ "channel": "chat:1", "limit": 101 }), "limit"),
            (json!({ "channel": "chat:1", "limit": "5" }), "limit"),
        ] {
            let err = HistoryRequest::parse(std::slice::from_ref(&body))
                .err()
                .unwrap();
            assert!(err.starts_with(field), "{body}: {err}");
        }
        assert!(HistoryRequest::parse(&[]).is_err());
    }
}
