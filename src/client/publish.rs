//! `realtime:publish` (SPEC §5): the socket's rate, the shared request
//! parse, the subscription and permission checks, then straight to the
//! channel actor; the ack comes back once the message is durable.

use serde_json::Value;

use std::sync::Arc;
use std::time::Instant;

use actix::Recipient;

use super::subscribe::Subscription;
use super::{Client, ClientEvent, NAMESPACE};
use crate::channel::catalog::ChannelDef;
use crate::channel::{Publish, Published, Reply, SubscriberEvent};
use crate::engineio::SessionEvent;
use crate::metrics::METRICS;
use crate::permissions::{Action, Decision, Request};
use crate::publish::{Outgoing, PublishError, PublishRequest};
use crate::socketio::Socket;

/// Publishes of one channel that may wait for a permission check; past
/// that, more are refused (the socket's rate limit usually comes first).
const MAX_WAITING_PUBLISHES: usize = 256;

fn denied() -> PublishError {
    PublishError::Unauthorized("not allowed to publish on this channel".into())
}

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
            Ok((name, message)) => self.authorize_publish(socket, name, message, ack_id),
            Err(err) => Self::publish_failed(socket, ack_id, channel_name.as_deref(), &err),
        }
    }

    /// Checks a publish in the order a client can fix them: its rate, the
    /// request, the subscription, the channel still enabled. The
    /// permission comes next ([`Self::authorize_publish`]).
    fn prepare_publish(&mut self, body: Value) -> Result<(String, Outgoing), PublishError> {
        if !self.publish_bucket.try_take() {
            METRICS.publishes_rate_limited.inc();
            METRICS.refused(crate::metrics::Limit::PublishRate);
            let rate = self.hub.limits.publish_rate;
            return Err(PublishError::RateLimited(format!(
                "more than {rate} publishes per second; slow down"
            )));
        }
        let request = PublishRequest::parse(body, &self.hub.limits.payload())?;
        let live = self
            .subscriptions
            .get(&request.channel)
            .is_some_and(Subscription::is_live);
        if !live {
            return Err(PublishError::NotSubscribed(format!(
                "subscribe to {:?} before publishing to it",
                request.channel
            )));
        }
        let definition = self.hub.catalog.resolve(&request.channel).ok_or_else(|| {
            PublishError::Unauthorized("the channel is disabled or was deleted".into())
        })?;
        Ok((
            request.channel,
            Outgoing {
                event: request.event,
                payload: request.payload,
                sender: self.sender(),
                channel: definition,
            },
        ))
    }

    /// Sends `message` to its channel once the publish permission allows
    /// it: at once when the hook answers without I/O or the socket's last
    /// decision for this channel is still fresh (`publish_cache_ms`, same
    /// policy generation); otherwise after a check, queued behind any
    /// publishes of this channel already waiting, so they stay in order.
    fn authorize_publish(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        name: String,
        message: Outgoing,
        ack_id: Option<u64>,
    ) {
        let Some(principal) = &self.principal else {
            let err = PublishError::Unauthorized("not connected".into());
            return Self::publish_failed(socket, ack_id, Some(&name), &err);
        };
        // The hot path: an atomic load and, with no policy in the way, an
        // answer without I/O; nothing is cloned.
        let generation = self.hub.permissions.generation();
        let quick = self.hub.permissions.quick(principal, Action::Publish);
        let cache = self.hub.publish_cache;
        let reply_to = self.reply_to(socket);
        let Some((channel, gate)) = self.joined(&name) else {
            return;
        };
        if gate.waiting.is_empty() {
            let decision = quick.or_else(|| gate.fresh_decision(generation, cache));
            match decision {
                Some(Decision::Allow) => {
                    return channel.do_send(Publish {
                        message,
                        reply: Reply::Socket {
                            to: reply_to,
                            ack_id,
                        },
                        via_registry: false,
                    });
                }
                Some(Decision::Deny) => {
                    return Self::publish_failed(socket, ack_id, Some(&name), &denied())
                }
                Some(Decision::Unavailable) | None => {}
            }
        } else if gate.waiting.len() >= MAX_WAITING_PUBLISHES {
            let err = PublishError::RateLimited(
                "too many publishes waiting for their permission check; slow down".into(),
            );
            return Self::publish_failed(socket, ack_id, Some(&name), &err);
        }
        let first = gate.waiting.is_empty();
        let request = first.then(|| Request::Publish {
            event: message.event.clone(),
            payload: message.payload.clone(),
        });
        let definition = message.channel.clone();
        gate.waiting.push_back((message, ack_id));
        if let (Some(request), Some(principal)) = (request, self.principal.clone()) {
            self.spawn_publish_check(socket, &principal, request, name, &definition, generation);
        }
    }

    fn spawn_publish_check(
        &self,
        socket: &mut Socket<'_, '_, Self>,
        principal: &crate::auth::Principal,
        request: Request,
        name: String,
        definition: &ChannelDef,
        generation: u64,
    ) {
        let check = self
            .hub
            .permissions
            .check(principal, request, &name, definition);
        let client = socket.address();
        actix::spawn(async move {
            let decision = check.await;
            client.do_send(SessionEvent(ClientEvent::PublishAuthorized {
                name,
                decision,
                generation,
            }));
        });
    }

    /// A publish check answered: the first waiting publish goes (or
    /// fails); the others share the decision while it is fresh, else the
    /// next one is checked in turn.
    pub(super) fn on_publish_authorized(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        name: &str,
        decision: Decision,
        generation: u64,
    ) {
        let cache = self.hub.publish_cache;
        let Some((channel, gate)) = self.joined(name) else {
            // Unsubscribed meanwhile: its waiting publishes were answered.
            return;
        };
        if decision != Decision::Unavailable {
            gate.decided = Some((decision == Decision::Allow, Instant::now(), generation));
        }
        let mut answered = Vec::new();
        while let Some((message, ack_id)) = gate.waiting.pop_front() {
            answered.push((message, ack_id));
            // A decision that is not kept (publish_cache_ms = 0, or the
            // check failed) answers only the publish it was taken for.
            if gate.fresh_decision(generation, cache).is_none() {
                break;
            }
        }
        let next = gate.waiting.front().map(|(message, _)| {
            (
                Request::Publish {
                    event: message.event.clone(),
                    payload: message.payload.clone(),
                },
                message.channel.clone(),
            )
        });
        let reply_to = self.reply_to(socket);
        for (message, ack_id) in answered {
            match decision {
                Decision::Allow => channel.do_send(Publish {
                    message,
                    reply: Reply::Socket {
                        to: reply_to.clone(),
                        ack_id,
                    },
                    via_registry: false,
                }),
                Decision::Deny => Self::publish_failed(socket, ack_id, Some(name), &denied()),
                Decision::Unavailable => {
                    let err =
                        PublishError::Internal("the permission check failed; retry later".into());
                    Self::publish_failed(socket, ack_id, Some(name), &err);
                }
            }
        }
        if let (Some((request, definition)), Some(principal)) = (next, self.principal.clone()) {
            let generation = self.hub.permissions.generation();
            self.spawn_publish_check(
                socket,
                &principal,
                request,
                name.to_owned(),
                &definition,
                generation,
            );
        }
    }

    /// Where channels answer this socket's publishes: one recipient, made
    /// once (making one allocates, and a socket may publish thousands of
    /// times a second).
    fn reply_to(&mut self, socket: &Socket<'_, '_, Self>) -> Arc<Recipient<SubscriberEvent>> {
        self.reply_to
            .get_or_insert_with(|| Arc::new(socket.address().recipient()))
            .clone()
    }

    /// The channel's answer: the ack, or the failure.
    pub(super) fn on_published(socket: &mut Socket<'_, '_, Self>, published: Published) {
        match published.result {
            Ok(message_id) => {
                if let Some(ack_id) = published.ack_id {
                    // Written as text, without `format!`: every acked
                    // publish answers this.
                    let mut id = uuid::Uuid::encode_buffer();
                    let answer = [
                        r#"[{"ok":true,"messageId":""#,
                        message_id.hyphenated().encode_lower(&mut id),
                        r#""}]"#,
                    ]
                    .concat();
                    socket.ack_encoded(NAMESPACE, ack_id, &answer);
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
