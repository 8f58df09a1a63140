//! `realtime:subscribe` and `realtime:unsubscribe` (SPEC §5): resolve the
//! name, ask the permission hook, join the channel through the registry,
//! and answer with the presence snapshot.

use std::collections::VecDeque;
use std::time::Instant;

use actix::{Addr, WeakAddr};
use serde_json::{json, Value};

use super::{channel_arg, Client, ClientEvent, NAMESPACE};
use crate::channel::registry::{JoinChannel, LeaveChannel};
use crate::channel::{Channel, Join, Joined, Leave, Subscriber};
use crate::engineio::SessionEvent;
use crate::pattern::validate_name;
use crate::permissions::{Action, Decision, Request};
use crate::publish::Outgoing;
use crate::socketio::Socket;

/// A subscription, from request to live.
pub(super) enum Subscription {
    /// Waiting for the permission hook.
    Authorizing { acks: Vec<u64> },
    /// Waiting for the channel to add us; `cancelled` if the client
    /// unsubscribed meanwhile.
    Joining { acks: Vec<u64>, cancelled: bool },
    /// Live. The channel's address is weak: the registry keeps the
    /// channel alive while anyone subscribes, and a strong address costs
    /// two allocations of its own per subscription.
    Joined {
        channel: WeakAddr<Channel>,
        publish: PublishGate,
    },
}

/// The publish permission of one live subscription: the last decision,
/// and the publishes that wait (in order) while it is being taken.
#[derive(Default)]
pub(super) struct PublishGate {
    /// Allowed or not, when, under which policy generation.
    pub(super) decided: Option<(bool, Instant, u64)>,
    /// Publishes waiting for the check in flight, with their ack ids.
    pub(super) waiting: VecDeque<(Outgoing, Option<u64>)>,
}

/// A socket's subscriptions by channel name (a list: most sockets hold
/// one or two, and `limits.max_channels_per_socket` bounds it).
pub(super) type Subscriptions = crate::list_map::ListMap<String, Subscription>;

impl Subscription {
    /// Whether the socket is in the channel now.
    pub(super) fn is_live(&self) -> bool {
        matches!(self, Subscription::Joined { .. })
    }
}

impl PublishGate {
    /// The last decision, if it was taken under `generation` less than
    /// `cache` ago.
    pub(super) fn fresh_decision(
        &self,
        generation: u64,
        cache: std::time::Duration,
    ) -> Option<Decision> {
        let (allowed, at, taken_under) = self.decided?;
        (taken_under == generation && at.elapsed() < cache).then_some(if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        })
    }
}

/// What the permission hook said of a subscribe.
#[derive(Debug)]
pub enum Authorization {
    /// Subscribing is allowed.
    Granted,
    /// The subscribe policy denies it.
    Denied,
    /// The hook could not decide.
    Unavailable,
}

impl Client {
    /// Answers a subscribe with `{ok: false, channel, error}`, as an ack
    /// when the client asked for one, else as `realtime:error`.
    fn refuse_subscribe(
        socket: &mut Socket<'_, '_, Self>,
        ack_id: Option<u64>,
        channel: &str,
        code: &'static str,
        message: &str,
    ) {
        match ack_id {
            Some(ack_id) => {
                socket.ack(
                    NAMESPACE,
                    ack_id,
                    vec![json!({ "ok": false, "channel": channel, "error": { "code": code, "message": message } })],
                );
            }
            None => Self::emit_error(socket, Some(channel), code, message),
        }
    }

    pub(super) fn on_subscribe(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        args: &[Value],
        ack_id: Option<u64>,
    ) {
        let Some(name) = channel_arg(args) else {
            return Self::refuse_subscribe(
                socket,
                ack_id,
                "",
                "INVALID_INPUT",
                "expected {channel: string}",
            );
        };
        let name = name.to_owned();
        if let Err(err) = validate_name(&name) {
            return Self::refuse_subscribe(
                socket,
                ack_id,
                &name,
                "INVALID_INPUT",
                &err.to_string(),
            );
        }
        match self.subscriptions.get_mut(&name) {
            Some(Subscription::Authorizing { acks } | Subscription::Joining { acks, .. }) => {
                acks.extend(ack_id);
                return;
            }
            Some(Subscription::Joined { publish, .. }) => {
                // Already live: join again (the channel keeps one entry per
                // socket) for a fresh snapshot. Through the registry, which
                // counts joins before it retires a channel. The publish
                // decision is taken again; publishes waiting for the old
                // one are answered now rather than lost.
                let waiting = std::mem::take(&mut publish.waiting);
                let err = crate::publish::PublishError::Internal(
                    "the subscription was renewed before this publish was authorized; publish again"
                        .into(),
                );
                for (_, ack_id) in waiting {
                    Self::publish_failed(socket, ack_id, Some(&name), &err);
                }
                if let Some(subscriber) = self.subscriber(socket) {
                    self.join(name, subscriber, ack_id.into_iter().collect());
                }
                return;
            }
            None => {}
        }
        if self.subscriptions.len() >= self.hub.limits.max_channels_per_socket {
            crate::metrics::METRICS.refused(crate::metrics::Limit::ChannelsPerSocket);
            let limit = self.hub.limits.max_channels_per_socket;
            let message = format!("a socket may subscribe to at most {limit} channels");
            return Self::refuse_subscribe(socket, ack_id, &name, "INVALID_INPUT", &message);
        }
        let Some(channel) = self.hub.catalog.resolve(&name) else {
            return Self::refuse_subscribe(
                socket,
                ack_id,
                &name,
                "REALTIME_UNAUTHORIZED",
                "no enabled channel matches this name",
            );
        };
        let Some(principal) = self.principal.clone() else {
            return Self::refuse_subscribe(
                socket,
                ack_id,
                &name,
                "REALTIME_UNAUTHORIZED",
                "not connected",
            );
        };
        let permissions = self.hub.permissions.clone();
        match permissions.quick(&principal, Action::Subscribe) {
            Some(Decision::Allow) => {
                if let Some(subscriber) = self.subscriber(socket) {
                    self.join(name, subscriber, ack_id.into_iter().collect());
                }
                return;
            }
            Some(Decision::Deny) => {
                return Self::refuse_subscribe(
                    socket,
                    ack_id,
                    &name,
                    "REALTIME_UNAUTHORIZED",
                    "not allowed to subscribe",
                );
            }
            Some(Decision::Unavailable) | None => {}
        }
        self.subscriptions.insert(
            name.clone(),
            Subscription::Authorizing {
                acks: ack_id.into_iter().collect(),
            },
        );
        let client = socket.address();
        let check = permissions.check(&principal, Request::Subscribe, &name, &channel);
        actix::spawn(async move {
            let authorization = match check.await {
                Decision::Allow => Authorization::Granted,
                Decision::Deny => Authorization::Denied,
                Decision::Unavailable => Authorization::Unavailable,
            };
            client.do_send(SessionEvent(ClientEvent::Authorized {
                name,
                authorization,
            }));
        });
    }

    pub(super) fn on_authorized(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        name: String,
        authorization: Authorization,
    ) {
        let Some(Subscription::Authorizing { acks }) = self.subscriptions.remove(&name) else {
            return;
        };
        let refusal = match authorization {
            Authorization::Granted => match self.subscriber(socket) {
                Some(subscriber) => return self.join(name, subscriber, acks),
                None => ("REALTIME_UNAUTHORIZED", "not connected"),
            },
            Authorization::Denied => ("REALTIME_UNAUTHORIZED", "not allowed to subscribe"),
            Authorization::Unavailable => {
                ("INTERNAL_ERROR", "the permission check failed; retry later")
            }
        };
        for ack_id in acks {
            Self::refuse_subscribe(socket, Some(ack_id), &name, refusal.0, refusal.1);
        }
    }

    /// This socket as a subscriber, once it is connected.
    pub(super) fn subscriber(&self, socket: &Socket<'_, '_, Self>) -> Option<Subscriber> {
        Some(Subscriber {
            id: self.subscriber_id,
            socket_id: self.socket_id.clone(),
            events: socket.address().recipient(),
            member: self.member.clone()?,
        })
    }

    /// Asks the registry to add `subscriber` to `name` (it counts joins
    /// before it retires a channel) and waits for `Joined`.
    pub(super) fn join(&mut self, name: String, subscriber: Subscriber, acks: Vec<u64>) {
        self.hub.registry.do_send(JoinChannel {
            name: name.clone(),
            join: Join(subscriber),
        });
        self.subscriptions.insert(
            name,
            Subscription::Joining {
                acks,
                cancelled: false,
            },
        );
    }

    pub(super) fn on_joined(&mut self, socket: &mut Socket<'_, '_, Self>, joined: Joined) {
        let Joined {
            name,
            channel,
            members,
            after_seq,
        } = joined;
        let Some(Subscription::Joining { acks, cancelled }) =
            self.subscriptions.remove(name.as_ref())
        else {
            return;
        };
        // The members come encoded from the channel; the rest of the answer
        // is spliced around them.
        let answer = format!(
            r#"[{{"ok":true,"channel":{},"presence":{{"members":{members}}}}}]"#,
            Value::String(name.to_string())
        );
        for ack_id in acks {
            socket.ack_encoded(NAMESPACE, ack_id, &answer);
        }
        if cancelled {
            channel.do_send(Leave {
                subscriber_id: self.subscriber_id,
                dropped: false,
            });
        } else {
            if let Some(log) = &mut self.log {
                log.subscribed(&name, after_seq);
            }
            self.subscriptions.insert(
                name.to_string(),
                Subscription::Joined {
                    channel: channel.downgrade(),
                    publish: PublishGate::default(),
                },
            );
            self.checkpoint();
        }
        self.on_replay_join(socket, &name);
    }

    /// The channel refused the join (it is full): the waiting subscribes
    /// are answered with `RATE_LIMITED`.
    pub(super) fn on_join_refused(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        name: &str,
        message: &str,
    ) {
        let Some(Subscription::Joining { acks, .. }) = self.subscriptions.remove(name) else {
            return;
        };
        for ack_id in acks {
            Self::refuse_subscribe(socket, Some(ack_id), name, "RATE_LIMITED", message);
        }
        self.on_replay_join_refused(socket, name);
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        args: &[Value],
        ack_id: Option<u64>,
    ) {
        let Some(name) = channel_arg(args) else {
            return Self::emit_error(socket, None, "INVALID_INPUT", "expected {channel: string}");
        };
        match self.subscriptions.get_mut(name) {
            Some(Subscription::Joined { channel, publish }) => {
                if let Some(channel) = channel.upgrade() {
                    channel.do_send(Leave {
                        subscriber_id: self.subscriber_id,
                        dropped: false,
                    });
                }
                if let Some(log) = &mut self.log {
                    log.unsubscribed(name);
                }
                let waiting = std::mem::take(&mut publish.waiting);
                self.subscriptions.remove(name);
                self.checkpoint();
                let err = crate::publish::PublishError::NotSubscribed(
                    "unsubscribed before the publish was authorized".into(),
                );
                for (_, ack_id) in waiting {
                    Self::publish_failed(socket, ack_id, Some(name), &err);
                }
            }
            Some(Subscription::Joining { cancelled, .. }) => *cancelled = true,
            Some(Subscription::Authorizing { .. }) => {
                self.subscriptions.remove(name);
            }
            None => {}
        }
        if let Some(ack_id) = ack_id {
            socket.ack(
                NAMESPACE,
                ack_id,
                vec![json!({ "ok": true, "channel": name })],
            );
        }
    }

    /// Leaves every channel (the connection closed); `dropped` when it
    /// was not the client's choice, so its presence lingers for the grace.
    pub(super) fn leave_all(&mut self, dropped: bool) {
        let leave = Leave {
            subscriber_id: self.subscriber_id,
            dropped,
        };
        for (name, subscription) in self.subscriptions.drain() {
            match subscription {
                Subscription::Joined { channel, .. } => {
                    if let Some(channel) = channel.upgrade() {
                        channel.do_send(leave);
                    }
                }
                // The join may have reached the channel after the socket was
                // last seen there: leave through the registry, behind it.
                Subscription::Joining { .. } => {
                    self.hub.registry.do_send(LeaveChannel { name, leave })
                }
                Subscription::Authorizing { .. } => {}
            }
        }
    }

    /// The live channel and publish gate of `name`, if subscribed (and the
    /// channel still runs, as it does while anyone subscribes).
    pub(super) fn joined(&mut self, name: &str) -> Option<(Addr<Channel>, &mut PublishGate)> {
        match self.subscriptions.get_mut(name)? {
            Subscription::Joined { channel, publish } => Some((channel.upgrade()?, publish)),
            _ => None,
        }
    }
}
