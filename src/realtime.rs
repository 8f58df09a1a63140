//! The realtime hub: everything the socket handlers and the REST publish
//! endpoint share — the channel catalog, the channel registry, the message
//! writer, the webhook dispatcher, the authenticator and the permission
//! hook — the publish entry point for back-end services, and the end of a
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use entity::messages;
use sea_orm::ConnectionTrait;
use tokio::sync::oneshot;

use crate::auth::Authenticator;
use crate::channel::catalog::ChannelCatalog;
use crate::channel::registry::{ChannelRegistry, PublishTo, SyncChannels};
use crate::channel::{ChannelSettings, Publish, Reply};
use crate::cluster::presence::PresenceLink;
use crate::cluster::relay::RelayLink;
use crate::cluster::{self, ChannelLinks, NodeAgent, Peers};
use crate::config::{LimitSettings, RecoverySettings, Settings};
use crate::db_listener::DatabaseListener;
use crate::permissions::{PermissionHook, PostgresPolicies, SqlitePolicies};
use crate::persistence::checkpoint::Checkpointer;
use crate::persistence::hand_on::ConnectRegistry;
use crate::persistence::writer::{CommittedSeq, Drain, MessageWriter, WriterHealth};
use crate::persistence::PersistenceError;
use crate::publish::{Outgoing, PublishError, PublishRequest, Sender};
use crate::recovery::RecoveryStore;
use crate::webhooks::{WebhookDispatcher, Webhooks};

/// The shared state of the realtime pipeline.
pub struct Realtime {
    /// Enabled channel definitions, for resolution.
    pub catalog: Arc<ChannelCatalog>,
    /// Name → channel actor.
    pub registry: Addr<ChannelRegistry>,
    /// Group commit of messages.
    pub writer: Addr<MessageWriter>,
    /// Whether the writer's writes commit (`/health`).
    pub writes: WriterHealth,
    /// This process's id among the nodes sharing the database.
    pub node: Arc<str>,
    /// Keeps this node alive among them.
    pub cluster: Addr<NodeAgent>,
    /// `presence.leave_grace_ms`: how long this node's members stay for
    /// the other nodes after a graceful shutdown.
    pub leave_grace: Duration,
    /// Posts durable messages to their channels' webhook URLs.
    pub webhooks: Webhooks,
    /// Verifies credentials on CONNECT.
    pub auth: Arc<Authenticator>,
    /// Subscribe and publish decisions.
    pub permissions: Arc<dyn PermissionHook>,
    /// Per-socket and per-channel limits (`[limits]`).
    pub limits: LimitSettings,
    /// How long a socket's publish decision for a channel is reused
    /// (`permissions.publish_cache_ms`).
    pub publish_cache: Duration,
    /// Where history is read back (recovery replays).
    pub db: sea_orm::DatabaseConnection,
    /// Sessions that can be recovered, when recovery is on.
    pub recovery: Option<Arc<RecoveryStore>>,
    /// `[recovery]`.
    pub recovery_settings: RecoverySettings,
    /// Close a socket's transport when its JWT expires
    /// (`auth.disconnect_on_expiry`).
    pub disconnect_on_expiry: bool,
    /// Open sockets per signed-in user (`limits.max_sockets_per_user`).
    pub user_sockets: Arc<crate::client::UserSockets>,
    /// Missed messages a replay reads at a time, and how many frames a
    /// client's queue may hold before it reads more: a quarter of the
    /// queue's bound each (`engineio.max_buffered_packets`), so a replay
    /// never overflows it.
    pub replay_batch: usize,
}

impl Realtime {
    /// Loads the catalog and starts the writer and registry actors (and, on
    /// SQLite, the WAL checkpointer). Must run inside an actix system.
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
        let committed = CommittedSeq::new(
            crate::persistence::messages::max_seq(db)
                .await?
                .unwrap_or(0)
                .max(0),
        );
        // This process among the nodes that share the database.
        let node: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let mut writer = MessageWriter::new(
            db.clone(),
            database.batch_size,
            Duration::from_millis(database.batch_window_ms),
            committed.clone(),
        )
        .with_publish_timeout(Duration::from_millis(database.publish_timeout_ms))
        .with_node(node.clone());
        // SQLite: the log is copied into the file off the writer's path.
        if let Some((checkpointer, start_over)) = Checkpointer::new(db) {
            checkpointer.start();
            writer = writer.with_log_start_over(start_over);
        }
        let writes = writer.health();
        let writer = MessageWriter::start_in_arbiter(&actix::Arbiter::new().handle(), |_| writer);
        let webhooks = WebhookDispatcher::start(
            settings.webhooks.clone(),
            db.clone(),
            node.clone(),
            catalog.clone(),
            writer.clone(),
        );
        let n_threads = match settings.pipeline.channel_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let registry = ChannelRegistry::new(
            writer.clone(),
            webhooks.clone(),
            n_threads,
            ChannelSettings {
                max_pending: settings.limits.max_pending_per_channel,
                offsets: settings.recovery.enabled,
                leave_grace: Duration::from_millis(settings.presence.leave_grace_ms),
                presence_batch: Duration::from_millis(settings.presence.batch_ms),
                max_members: settings.limits.max_presence_members,
            },
            committed.clone(),
            catalog.clone(),
        );
        let peers = Peers::default();
        // The cluster's actors and the session writer run here: a query
        // of theirs cut off at shutdown is dropped inside a runtime.
        let background = actix::Arbiter::new().handle();
        // The database listener's state, for the ephemeral relay.
        let listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let registry = if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            registry.with_cluster(ChannelLinks {
                presence: PresenceLink::start(db.clone(), node.clone(), peers.clone(), &background),
                relay: RelayLink::start(
                    db.clone(),
                    node.clone(),
                    Duration::from_millis(settings.database.publish_timeout_ms),
                    listening.clone(),
                    &background,
                ),
            })
        } else {
            registry
        }
        .start_on_own_thread();
        // Rows the writer did not write reach channels through the registry.
        writer.do_send(ConnectRegistry(registry.clone().recipient()));
        let cluster = NodeAgent::start(
            db.clone(),
            node.clone(),
            settings.cluster.clone(),
            webhooks.clone(),
            peers.clone(),
            settings.database.clone(),
            &background,
        )
        .await?;
        let recovery = if settings.recovery.enabled {
            let store = RecoveryStore::new(
                db.clone(),
                settings.database.clone(),
                Duration::from_millis(settings.recovery.window_ms),
                peers.clone(),
                node.clone(),
            );
            match store.forget_expired().await {
                Ok(n) if n > 0 => {
                    tracing::info!(n, "forgot sessions saved for recovery that expired")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "could not forget expired saved sessions"),
            }
            let store = Arc::new(store);
            // PostgreSQL: sessions are saved as they drop, for any node.
            store.start_writing(&background);
            Some(store)
        } else {
            None
        };
        let permissions: Arc<dyn PermissionHook> =
            if db.get_database_backend() == sea_orm::DbBackend::Postgres {
                let policies = PostgresPolicies::open(database, &settings.permissions).await?;
                DatabaseListener {
                    db: db.clone(),
                    url: database.url.clone(),
                    catalog: catalog.clone(),
                    registry: registry.clone(),
                    webhooks: webhooks.clone(),
                    poll: Duration::from_millis(database.sql_publish_poll_ms),
                    sql_publish: database.sql_publish,
                    permissions: policies.clone(),
                    refresh: Duration::from_millis(settings.permissions.refresh_ms),
                    writer: writer.clone(),
                    node: node.clone(),
                    recovery: recovery.clone(),
                    listening,
                }
                .spawn()
                .map_err(|err| {
                    PersistenceError::Database(sea_orm::DbErr::Custom(format!(
                        "cannot start the database listener: {err}"
                    )))
                })?;
                policies
            } else {
                SqlitePolicies::open(db, &settings.permissions).await?
            };
        Ok(Realtime {
            db: db.clone(),
            recovery,
            recovery_settings: settings.recovery.clone(),
            replay_batch: (settings.engineio.max_buffered_packets / 4).clamp(1, 500),
            disconnect_on_expiry: settings.auth.disconnect_on_expiry,
            user_sockets: Arc::default(),
            catalog,
            registry,
            writer,
            writes,
            node,
            cluster,
            leave_grace: Duration::from_millis(settings.presence.leave_grace_ms),
            webhooks,
            auth,
            permissions,
            limits: settings.limits.clone(),
            publish_cache: Duration::from_millis(settings.permissions.publish_cache_ms),
        })
    }

    /// Publishes as the system (REST and back-end services): resolves the
    /// name, stores the message, delivers it to live subscribers, and
    /// returns the stored row with its audience.
    ///
    /// # Errors
    /// [`PublishError::ChannelNotFound`] when no enabled channel matches,
    /// else what the channel or the writer reported.
    pub async fn publish_system(
        &self,
        request: PublishRequest,
    ) -> Result<messages::Model, PublishError> {
        let channel = self.catalog.resolve(&request.channel).ok_or_else(|| {
            PublishError::ChannelNotFound(format!(
                "no enabled channel matches {:?}",
                request.channel
            ))
        })?;
        let (tx, rx) = oneshot::channel();
        let publish = Publish {
            message: Outgoing {
                event: request.event,
                payload: request.payload,
                sender: Sender::SYSTEM,
                channel,
            },
            reply: Reply::Http(tx),
            via_registry: false,
        };
        self.registry.do_send(PublishTo {
            name: request.channel,
            publish,
        });
        rx.await.unwrap_or_else(|_| {
            Err(PublishError::Internal(
                "the channel stopped before answering".into(),
            ))
        })
    }

    /// Waits until every message accepted so far is written: first every
    /// channel hands on what it received, then the writer commits it.
    pub async fn drain(&self) {
        let _ = self.registry.send(SyncChannels).await;
        let _ = self.writer.send(Drain).await;
    }

    /// The end of a graceful shutdown, once no request comes in any more:
    /// every accepted message is written, webhook requests in flight get
    /// `grace` to finish, and what finished is recorded. Deliveries left
    /// over stay in the webhook backlog for the next start.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.drain().await;
        self.webhooks.shutdown(grace).await;
        let _ = self.writer.send(Drain).await;
        // What the dispatcher did not send may now be sent by another node.
        let _ = self
            .cluster
            .send(cluster::Leave {
                linger: self.leave_grace,
            })
            .await;
        // The sessions closed before this: their clients can recover from
        // the next process.
        if let Some(store) = &self.recovery {
            match store.save_all().await {
                Ok(n) => tracing::info!(n, "sessions saved for recovery after the restart"),
                Err(err) => tracing::error!(error = %err, "could not save sessions for recovery"),
            }
        }
    }
}
