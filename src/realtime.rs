//! The realtime hub: everything the socket handlers and the REST publish
//! endpoint share — the channel catalog, the channel registry, the message
//! writer, the authenticator and the permission hook — and the publish
//! entry point for back-end services.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::auth::Authenticator;
use crate::channel::catalog::ChannelCatalog;
use crate::channel::registry::{ChannelRegistry, PublishTo, SyncChannels};
use crate::channel::{Delivered, Outgoing, Publish, PublishFailure, Reply, Sender};
use crate::config::{LimitSettings, Settings};
use crate::permissions::{AllowAll, PermissionHook};
use crate::persistence::writer::{Drain, MessageWriter};
use crate::persistence::PersistenceError;

/// Why a publish was refused before or after it reached a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishError {
    /// A code from the SPEC: `INVALID_INPUT`, `REALTIME_INVALID_EVENT`,
    /// `REALTIME_UNAUTHORIZED`, `INTERNAL_ERROR`…
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl PublishError {
    /// An error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        PublishError {
            code,
            message: message.into(),
        }
    }
}

impl From<PublishFailure> for PublishError {
    fn from(failure: PublishFailure) -> Self {
        PublishError::new(failure.code, failure.message)
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

/// Checks an event name a client wants to publish.
///
/// # Errors
/// `REALTIME_INVALID_EVENT` for empty, long or reserved names.
pub fn check_event_name(event: &str) -> Result<(), PublishError> {
    if event.is_empty() || event.len() > MAX_EVENT_LEN {
        return Err(PublishError::new(
            "REALTIME_INVALID_EVENT",
            format!("event must be 1 to {MAX_EVENT_LEN} characters"),
        ));
    }
    if RESERVED_EVENTS.contains(&event)
        || event.starts_with("realtime:")
        || event.starts_with("presence:")
    {
        return Err(PublishError::new(
            "REALTIME_INVALID_EVENT",
            format!("event name {event:?} is reserved"),
        ));
    }
    Ok(())
}

/// The shared state of the realtime pipeline.
pub struct Realtime {
    /// Enabled channel definitions, for resolution.
    pub catalog: Arc<ChannelCatalog>,
    /// Name → channel actor.
    pub registry: Addr<ChannelRegistry>,
    /// Group commit of messages.
    pub writer: Addr<MessageWriter>,
    /// Verifies credentials on CONNECT.
    pub auth: Arc<Authenticator>,
    /// Subscribe and publish decisions.
    pub permissions: Arc<dyn PermissionHook>,
    /// Per-socket and per-channel limits (`[limits]`).
    pub limits: LimitSettings,
}

impl Realtime {
    /// Loads the catalog and starts the writer and registry actors. Must run
    /// inside an actix system.
    ///
    /// # Errors
    /// The channel table cannot be read.
    pub async fn start(
        db: &sea_orm::DatabaseConnection,
        settings: &Settings,
        auth: Arc<Authenticator>,
    ) -> Result<Realtime, PersistenceError> {
        let catalog = Arc::new(ChannelCatalog::load(db).await?);
        let database = &settings.database;
        let writer = MessageWriter::new(
            db.clone(),
            database.batch_size,
            Duration::from_millis(database.batch_window_ms),
        );
        let writer = MessageWriter::start_in_arbiter(&actix::Arbiter::new().handle(), |_| writer);
        let n_threads = match settings.pipeline.channel_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let registry = ChannelRegistry::new(
            writer.clone(),
            n_threads,
            settings.limits.max_pending_per_channel,
        )
        .start_on_own_thread();
        Ok(Realtime {
            catalog,
            registry,
            writer,
            auth,
            permissions: Arc::new(AllowAll),
            limits: settings.limits.clone(),
        })
    }

    /// Publishes as the system (REST and back-end services): resolves the
    /// name, stores the message, delivers it to live subscribers, and
    /// returns the stored row with its audience.
    ///
    /// # Errors
    /// [`PublishError`] with `INVALID_INPUT`, `REALTIME_INVALID_EVENT`,
    /// `REALTIME_CHANNEL_NOT_FOUND` or `INTERNAL_ERROR`.
    pub async fn publish_system(
        &self,
        name: &str,
        event: &str,
        payload: Map<String, Value>,
    ) -> Result<Delivered, PublishError> {
        crate::pattern::validate_name(name)
            .map_err(|err| PublishError::new("INVALID_INPUT", format!("channel: {err}")))?;
        check_event_name(event)?;
        let channel = self.catalog.resolve(name).ok_or_else(|| {
            PublishError::new(
                "REALTIME_CHANNEL_NOT_FOUND",
                format!("no enabled channel matches {name:?}"),
            )
        })?;
        let (tx, rx) = oneshot::channel();
        let publish = Publish {
            message: Outgoing {
                event: event.to_owned(),
                payload,
                sender: Sender {
                    sender_type: "system",
                    sender_id: None,
                },
                channel_id: channel.id,
            },
            reply: Reply::Http(tx),
            via_registry: false,
        };
        self.registry.do_send(PublishTo {
            name: name.to_owned(),
            publish,
        });
        match rx.await {
            Ok(result) => result.map_err(PublishError::from),
            Err(_) => Err(PublishError::new(
                "INTERNAL_ERROR",
                "the channel stopped before answering",
            )),
        }
    }

    /// Waits until every message accepted so far is written: first every
    /// channel hands on what it received, then the writer commits it.
    pub async fn drain(&self) {
        let _ = self.registry.send(SyncChannels).await;
        let _ = self.writer.send(Drain).await;
    }
}
