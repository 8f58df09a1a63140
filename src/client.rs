//! `Client`: the realtime Socket.IO handler of one connection. It admits
//! the connection (SPEC §3), then serves `realtime:subscribe`,
//! `realtime:unsubscribe` and `realtime:publish` (SPEC §5) by talking to
//! the channel registry and the channel actors. Its state dies with the
//! connection: on disconnect it leaves every channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::{AuthError, Principal, Role};
use crate::channel::catalog::ChannelDef;
use crate::channel::registry::JoinChannel;
use crate::channel::{
    Channel, Join, Leave, Member, Outgoing, Publish, PublishFailure, Reply, Sender, Subscriber,
};
use crate::engineio::SessionEvent;
use crate::pattern::validate_name;
use crate::permissions::Action;
use crate::realtime::{check_event_name, PublishError, Realtime};
use crate::socketio::{DisconnectReason, Event, Refusal, Socket, SocketAddr, SocketHandler};

/// The address of a realtime client session.
pub type ClientAddr = SocketAddr<Client>;

/// The only namespace realtime clients use.
const NAMESPACE: &str = "/";

/// What the channel actors and permission checks tell a client.
#[derive(Debug)]
pub enum ClientEvent {
    /// The permission hook decided a subscribe.
    Authorized {
        /// The requested name.
        name: String,
        /// The channel it resolved to, if subscribing is allowed.
        channel: Option<ChannelDef>,
        /// Whether publishing is allowed too (kept for the subscription).
        can_publish: bool,
    },
    /// The channel added this socket; `members` is its presence snapshot.
    Joined {
        /// The channel name.
        name: Arc<str>,
        /// The channel actor, for publishes and the final leave.
        channel: Addr<Channel>,
        /// Everyone present, this socket's member included, as a JSON array.
        members: Arc<str>,
    },
    /// A publish is durable and delivered (told only if an ack was asked),
    /// or failed (always told).
    Published {
        /// The client's ack id, if it asked for one.
        ack_id: Option<u64>,
        /// The channel it was published to.
        channel: Arc<str>,
        /// The message id, or why it failed.
        result: Result<Uuid, PublishFailure>,
    },
}

enum Subscription {
    /// Waiting for the permission hook.
    Authorizing { acks: Vec<u64> },
    /// Waiting for the channel to add us; `cancelled` if the client
    /// unsubscribed meanwhile.
    Joining {
        acks: Vec<u64>,
        can_publish: bool,
        cancelled: bool,
    },
    /// Live.
    Joined {
        channel: Addr<Channel>,
        can_publish: bool,
    },
}

/// One realtime connection.
pub struct Client {
    hub: Arc<Realtime>,
    /// Set once CONNECT is accepted.
    principal: Option<Principal>,
    /// Unique per connection; the channels key their subscribers by it.
    subscriber_id: u64,
    /// The presence identity, known once the socket id is.
    member: Option<Member>,
    /// By channel name, in every state from request to live.
    subscriptions: HashMap<String, Subscription>,
    /// Publish tokens left and when they were last counted.
    publish_bucket: (f64, Instant),
}

impl Client {
    /// A client of `hub`, not yet connected.
    pub fn new(hub: Arc<Realtime>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Client {
            principal: None,
            subscriber_id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            member: None,
            subscriptions: HashMap::new(),
            publish_bucket: (f64::from(hub.limits.publish_burst), Instant::now()),
            hub,
        }
    }

    fn sender(&self) -> Sender {
        match &self.principal {
            Some(Principal::ApiKey) | None => Sender {
                sender_type: "system",
                sender_id: None,
            },
            Some(Principal::AnonKey) => Sender {
                sender_type: "user",
                sender_id: None,
            },
            Some(Principal::Jwt { sub, role, .. }) => Sender {
                sender_type: "user",
                sender_id: (*role == Role::Authenticated)
                    .then(|| Uuid::parse_str(sub).ok())
                    .flatten(),
            },
        }
    }

    fn subscriber(&self, client: ClientAddr) -> Option<Subscriber> {
        Some(Subscriber {
            id: self.subscriber_id,
            client,
            member: self.member.clone()?,
        })
    }

    fn error(socket: &mut Socket<'_, '_, Self>, channel: Option<&str>, err: &PublishError) {
        let mut body = Map::new();
        if let Some(channel) = channel {
            body.insert("channel".into(), Value::String(channel.to_owned()));
        }
        body.insert("code".into(), Value::String(err.code.to_owned()));
        body.insert("message".into(), Value::String(err.message.clone()));
        socket.emit(NAMESPACE, "realtime:error", vec![Value::Object(body)]);
    }

    fn subscribe_refused(
        socket: &mut Socket<'_, '_, Self>,
        ack_id: u64,
        channel: &str,
        code: &str,
        message: &str,
    ) {
        socket.ack(
            NAMESPACE,
            ack_id,
            vec![json!({ "ok": false, "channel": channel, "error": { "code": code, "message": message } })],
        );
    }

    fn on_subscribe(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        args: &[Value],
        ack_id: Option<u64>,
    ) {
        let Some(name) = channel_arg(args) else {
            if let Some(ack_id) = ack_id {
                Self::subscribe_refused(
                    socket,
                    ack_id,
                    "",
                    "INVALID_INPUT",
                    "expected {channel: string}",
                );
            } else {
                Self::error(
                    socket,
                    None,
                    &PublishError::new("INVALID_INPUT", "expected {channel: string}"),
                );
            }
            return;
        };
        let name = name.to_owned();
        let refuse =
            |socket: &mut Socket<'_, '_, Self>, code: &'static str, message: &str| match ack_id {
                Some(ack_id) => Self::subscribe_refused(socket, ack_id, &name, code, message),
                None => Self::error(
                    socket,
                    Some(&name),
                    &PublishError::new(code, message.to_owned()),
                ),
            };
        if let Err(err) = validate_name(&name) {
            return refuse(socket, "INVALID_INPUT", &err.to_string());
        }
        match self.subscriptions.get_mut(&name) {
            Some(Subscription::Authorizing { acks } | Subscription::Joining { acks, .. }) => {
                acks.extend(ack_id);
                return;
            }
            Some(Subscription::Joined { can_publish, .. }) => {
                // Already live: join again (the channel keeps one entry per
                // socket) for a fresh snapshot. Through the registry, which
                // counts joins before it retires a channel.
                let can_publish = *can_publish;
                if let Some(subscriber) = self.subscriber(socket.address()) {
                    self.join(name, subscriber, ack_id.into_iter().collect(), can_publish);
                }
                return;
            }
            None => {}
        }
        if self.subscriptions.len() >= self.hub.limits.max_channels_per_socket {
            let limit = self.hub.limits.max_channels_per_socket;
            return refuse(
                socket,
                "INVALID_INPUT",
                &format!("a socket may subscribe to at most {limit} channels"),
            );
        }
        let Some(channel) = self.hub.catalog.resolve(&name) else {
            return refuse(
                socket,
                "REALTIME_UNAUTHORIZED",
                "no enabled channel matches this name",
            );
        };
        let Some(principal) = self.principal.clone() else {
            return refuse(socket, "REALTIME_UNAUTHORIZED", "not connected");
        };
        self.subscriptions.insert(
            name.clone(),
            Subscription::Authorizing {
                acks: ack_id.into_iter().collect(),
            },
        );
        let permissions = self.hub.permissions.clone();
        let client = socket.address();
        actix::spawn(async move {
            let can_subscribe = permissions
                .check(&principal, Action::Subscribe, &name, &channel)
                .await;
            let can_publish = can_subscribe
                && permissions
                    .check(&principal, Action::Publish, &name, &channel)
                    .await;
            client.do_send(SessionEvent(ClientEvent::Authorized {
                name,
                channel: can_subscribe.then_some(channel),
                can_publish,
            }));
        });
    }

    fn on_authorized(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        name: String,
        channel: Option<ChannelDef>,
        can_publish: bool,
    ) {
        let Some(Subscription::Authorizing { acks }) = self.subscriptions.remove(&name) else {
            return;
        };
        let subscriber = self.subscriber(socket.address());
        let (Some(_), Some(subscriber)) = (channel, subscriber) else {
            for ack_id in acks {
                Self::subscribe_refused(
                    socket,
                    ack_id,
                    &name,
                    "REALTIME_UNAUTHORIZED",
                    "not allowed to subscribe",
                );
            }
            return;
        };
        self.join(name, subscriber, acks, can_publish);
    }

    /// Asks the registry to add `subscriber` to `name` (it counts joins
    /// before it retires a channel) and waits for `Joined`.
    fn join(&mut self, name: String, subscriber: Subscriber, acks: Vec<u64>, can_publish: bool) {
        self.hub.registry.do_send(JoinChannel {
            name: name.clone(),
            join: Join(subscriber),
        });
        self.subscriptions.insert(
            name,
            Subscription::Joining {
                acks,
                can_publish,
                cancelled: false,
            },
        );
    }

    fn on_joined(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        name: Arc<str>,
        channel: Addr<Channel>,
        members: Arc<str>,
    ) {
        let Some(Subscription::Joining {
            acks,
            can_publish,
            cancelled,
        }) = self.subscriptions.remove(name.as_ref())
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
            });
        } else {
            self.subscriptions.insert(
                name.to_string(),
                Subscription::Joined {
                    channel,
                    can_publish,
                },
            );
        }
    }

    fn on_unsubscribe(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        args: &[Value],
        ack_id: Option<u64>,
    ) {
        let Some(name) = channel_arg(args) else {
            Self::error(
                socket,
                None,
                &PublishError::new("INVALID_INPUT", "expected {channel: string}"),
            );
            return;
        };
        match self.subscriptions.get_mut(name) {
            Some(Subscription::Joined { channel, .. }) => {
                channel.do_send(Leave {
                    subscriber_id: self.subscriber_id,
                });
                self.subscriptions.remove(name);
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

    fn on_publish(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        args: Vec<Value>,
        ack_id: Option<u64>,
    ) {
        let channel_name = args
            .first()
            .and_then(|arg| arg.get("channel"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let prepared = self
            .take_publish_token()
            .and_then(|()| self.prepare_publish(args));
        match prepared {
            Ok((channel, message)) => {
                let reply = Reply::Socket {
                    client: socket.address(),
                    ack_id,
                    channel: channel_name.unwrap_or_default().into(),
                };
                channel.do_send(Publish {
                    message,
                    reply,
                    via_registry: false,
                });
            }
            Err(err) => Self::publish_failed(socket, ack_id, channel_name.as_deref(), &err),
        }
    }

    /// Tells the publisher its publish failed: in the ack if it asked for
    /// one, else as `realtime:error`.
    fn publish_failed(
        socket: &mut Socket<'_, '_, Self>,
        ack_id: Option<u64>,
        channel: Option<&str>,
        err: &PublishError,
    ) {
        match ack_id {
            Some(ack_id) => {
                socket.ack(
                    NAMESPACE,
                    ack_id,
                    vec![json!({ "ok": false, "error": { "code": err.code, "message": err.message } })],
                );
            }
            None => Self::error(socket, channel, err),
        }
    }

    /// Spends one publish from the socket's token bucket
    /// (`limits.publish_rate` per second, `limits.publish_burst` at most).
    fn take_publish_token(&mut self) -> Result<(), PublishError> {
        let rate = self.hub.limits.publish_rate;
        if rate == 0 {
            return Ok(());
        }
        let burst = f64::from(self.hub.limits.publish_burst);
        let now = Instant::now();
        let refill = now.duration_since(self.publish_bucket.1).as_secs_f64() * f64::from(rate);
        self.publish_bucket = ((self.publish_bucket.0 + refill).min(burst), now);
        if self.publish_bucket.0 < 1.0 {
            crate::metrics::METRICS.publishes_rate_limited.inc();
            return Err(PublishError::new(
                "RATE_LIMITED",
                format!("more than {rate} publishes per second; slow down"),
            ));
        }
        self.publish_bucket.0 -= 1.0;
        Ok(())
    }

    fn prepare_publish(&self, args: Vec<Value>) -> Result<(Addr<Channel>, Outgoing), PublishError> {
        let invalid = || {
            PublishError::new(
                "INVALID_INPUT",
                "expected {channel: string, event: string, payload: object}",
            )
        };
        let Some(Value::Object(mut body)) = args.into_iter().next() else {
            return Err(invalid());
        };
        let (Some(Value::String(name)), Some(Value::String(event))) =
            (body.remove("channel"), body.remove("event"))
        else {
            return Err(invalid());
        };
        let payload = match body.remove("payload") {
            Some(Value::Object(payload)) => payload,
            None => Map::new(),
            Some(_) => {
                return Err(PublishError::new(
                    "INVALID_INPUT",
                    "payload must be a JSON object",
                ))
            }
        };
        check_event_name(&event)?;
        let Some(Subscription::Joined {
            channel,
            can_publish,
        }) = self.subscriptions.get(&name)
        else {
            return Err(PublishError::new(
                "REALTIME_NOT_SUBSCRIBED",
                format!("subscribe to {name:?} before publishing to it"),
            ));
        };
        if !can_publish {
            return Err(PublishError::new(
                "REALTIME_UNAUTHORIZED",
                "not allowed to publish on this channel",
            ));
        }
        let definition = self.hub.catalog.resolve(&name).ok_or_else(|| {
            PublishError::new(
                "REALTIME_UNAUTHORIZED",
                "the channel is disabled or was deleted",
            )
        })?;
        Ok((
            channel.clone(),
            Outgoing {
                event,
                payload,
                sender: self.sender(),
                channel_id: definition.id,
            },
        ))
    }

    fn leave_all(&mut self) {
        for (_, subscription) in self.subscriptions.drain() {
            if let Subscription::Joined { channel, .. } = subscription {
                channel.do_send(Leave {
                    subscriber_id: self.subscriber_id,
                });
            }
            // Joins still in flight find the session gone and are dropped.
        }
    }
}

/// The `channel` string of a `{channel}` argument.
fn channel_arg(args: &[Value]) -> Option<&str> {
    args.first()?
        .get("channel")?
        .as_str()
        .filter(|name| !name.is_empty())
}

impl SocketHandler for Client {
    type Event = ClientEvent;

    fn accepts_namespace(&self, namespace: &str) -> bool {
        namespace == NAMESPACE
    }

    fn on_connect(
        &mut self,
        _socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        auth: Option<&Value>,
    ) -> Result<(), Refusal> {
        // `apiKey` first, as InsForge: only a bad API key is reported as
        // such; every other failure is "invalid credentials".
        let field = |name: &str| {
            auth.and_then(|auth| auth.get(name))
                .filter(|value| !value.is_null() && value.as_str() != Some(""))
        };
        let verified = match (field("apiKey"), field("token")) {
            (Some(key), _) => match key.as_str() {
                Some(key) => self.hub.auth.verify_api_key(key),
                None => Err(AuthError::InvalidApiKey),
            },
            (None, Some(token)) => match token.as_str() {
                Some(token) => self.hub.auth.verify(token).map_err(|err| match err {
                    AuthError::InvalidApiKey => AuthError::InvalidToken("unknown key".into()),
                    other => other,
                }),
                None => Err(AuthError::InvalidToken("token must be a string".into())),
            },
            (None, None) => Err(AuthError::Missing),
        };
        match verified {
            Ok(principal) => {
                self.principal = Some(principal);
                Ok(())
            }
            Err(err) => {
                let (code, message) = match &err {
                    AuthError::Missing => (
                        "AUTH_INVALID_CREDENTIALS",
                        "missing credentials: send auth {token} or {apiKey}".to_owned(),
                    ),
                    AuthError::InvalidApiKey => {
                        ("AUTH_INVALID_API_KEY", "invalid api key".to_owned())
                    }
                    AuthError::UnknownAnonKey => {
                        ("AUTH_INVALID_CREDENTIALS", "unknown anon key".to_owned())
                    }
                    AuthError::InvalidToken(reason) => (
                        "AUTH_INVALID_CREDENTIALS",
                        format!("invalid token: {reason}"),
                    ),
                };
                Err(Refusal {
                    message,
                    data: Some(json!({ "code": code })),
                })
            }
        }
    }

    fn on_connected(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        namespace: &str,
        _auth: Option<Value>,
    ) {
        let socket_id = socket
            .socket_id(namespace)
            .map(|sid| sid.to_string())
            .unwrap_or_default();
        self.member = Some(match &self.principal {
            Some(Principal::Jwt { sub, role, .. }) if *role != Role::Anon => Member {
                presence_id: sub.clone(),
                kind: "user",
            },
            _ => Member {
                presence_id: socket_id,
                kind: "anonymous",
            },
        });
    }

    fn on_event(&mut self, socket: &mut Socket<'_, '_, Self>, _namespace: &str, event: Event) {
        if !event.attachments.is_empty() {
            let err = PublishError::new(
                "INVALID_INPUT",
                "binary attachments are not supported; send JSON",
            );
            return Self::publish_failed(socket, event.ack_id, None, &err);
        }
        match event.name.as_str() {
            "realtime:subscribe" => self.on_subscribe(socket, &event.args, event.ack_id),
            "realtime:unsubscribe" => self.on_unsubscribe(socket, &event.args, event.ack_id),
            "realtime:publish" => self.on_publish(socket, event.args, event.ack_id),
            other => {
                let err =
                    PublishError::new("REALTIME_INVALID_EVENT", format!("unknown event {other:?}"));
                match event.ack_id {
                    Some(ack_id) => {
                        socket.ack(
                            NAMESPACE,
                            ack_id,
                            vec![json!({ "ok": false, "error": { "code": err.code, "message": err.message } })],
                        );
                    }
                    None => Self::error(socket, None, &err),
                }
            }
        }
    }

    fn on_app_event(&mut self, socket: &mut Socket<'_, '_, Self>, event: ClientEvent) {
        match event {
            ClientEvent::Authorized {
                name,
                channel,
                can_publish,
            } => self.on_authorized(socket, name, channel, can_publish),
            ClientEvent::Joined {
                name,
                channel,
                members,
            } => self.on_joined(socket, name, channel, members),
            ClientEvent::Published {
                ack_id,
                channel,
                result,
            } => match result {
                Ok(message_id) => {
                    if let Some(ack_id) = ack_id {
                        socket.ack(
                            NAMESPACE,
                            ack_id,
                            vec![json!({ "ok": true, "messageId": message_id })],
                        );
                    }
                }
                Err(failure) => Self::publish_failed(
                    socket,
                    ack_id,
                    Some(&channel),
                    &PublishError::from(failure),
                ),
            },
        }
    }

    fn on_disconnect(
        &mut self,
        _socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        _reason: DisconnectReason,
    ) {
        self.leave_all();
    }
}
