//! `realtime:publish` (SPEC §5): the socket's rate, the shared request
//! parse, the subscription and permission checks, then straight to the
//! channel actor; the ack comes back once the message is durable.

use serde_json::{json, Value};

use actix::Addr;

use super::{Client, NAMESPACE};
use crate::channel::{Channel, Publish, Published, Reply};
use crate::metrics::METRICS;
use crate::publish::{Outgoing, PublishError, PublishRequest};
use crate::socketio::Socket;

impl Client {
    pub(super) fn on_publish(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        args: Vec<Value>,
        ack_id: Option<u64>,
    ) {
        let body = args.into_iter().next().unwrap_or(Value::Null);
        let channel_name = body
            .get("channel")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match self.prepare_publish(body) {
            Ok((channel, message)) => channel.do_send(Publish {
                message,
                reply: Reply::Socket {
                    to: socket.address().recipient(),
                    ack_id,
                },
                via_registry: false,
            }),
            Err(err) => Self::publish_failed(socket, ack_id, channel_name.as_deref(), &err),
        }
    }

    /// Checks a publish in the order a client can fix them: its rate, the
    /// request, the subscription, the permission, the channel still
    /// enabled.
    fn prepare_publish(&mut self, body: Value) -> Result<(Addr<Channel>, Outgoing), PublishError> {
        if !self.publish_bucket.try_take() {
            METRICS.publishes_rate_limited.inc();
            let rate = self.hub.limits.publish_rate;
            return Err(PublishError::RateLimited(format!(
                "more than {rate} publishes per second; slow down"
            )));
        }
        let request = PublishRequest::parse(body)?;
        let Some((channel, can_publish)) = self.joined(&request.channel) else {
            return Err(PublishError::NotSubscribed(format!(
                "subscribe to {:?} before publishing to it",
                request.channel
            )));
        };
        if !can_publish {
            return Err(PublishError::Unauthorized(
                "not allowed to publish on this channel".into(),
            ));
        }
        let definition = self.hub.catalog.resolve(&request.channel).ok_or_else(|| {
            PublishError::Unauthorized("the channel is disabled or was deleted".into())
        })?;
        Ok((
            channel.clone(),
            Outgoing {
                event: request.event,
                payload: request.payload,
                sender: self.sender,
                channel: definition,
            },
        ))
    }

    /// The channel's answer: the ack, or the failure.
    pub(super) fn on_published(socket: &mut Socket<'_, '_, Self>, published: Published) {
        match published.result {
            Ok(message_id) => {
                if let Some(ack_id) = published.ack_id {
                    socket.ack(
                        NAMESPACE,
                        ack_id,
                        vec![json!({ "ok": true, "messageId": message_id })],
                    );
                }
            }
            Err(err) => {
                Self::publish_failed(socket, published.ack_id, Some(&published.channel), &err)
            }
        }
    }

    /// Tells the publisher its publish failed: in the ack if it asked for
    /// one, else as `realtime:error`.
    pub(super) fn publish_failed(
        socket: &mut Socket<'_, '_, Self>,
        ack_id: Option<u64>,
        channel: Option<&str>,
        err: &PublishError,
    ) {
        match ack_id {
            Some(ack_id) => Self::refuse_event(socket, ack_id, err.code(), &err.to_string()),
            None => Self::emit_error(socket, channel, err.code(), &err.to_string()),
        }
    }
}
