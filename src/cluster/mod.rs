//! Several server processes on one database (SPEC §10; ARCHITECTURE.md,
//! "Several nodes"). Each process is a node with a random id, entered in
//! the `nodes` table at start. The [`NodeAgent`] renews its heartbeat,
//! deletes the nodes whose heartbeat is older than
//! `cluster.node_timeout_ms` with their presence members (who leave on
//! every node), and when a node goes (dead or stopped) has the webhook
//! dispatcher take over its deliveries.
//!
//! On SQLite, which one process serves, the table only tells a second
//! process on the same file that it is not alone.
//!
//! # Layout
//! - [`presence`]: presence members across nodes (PostgreSQL).
//! - [`relay`]: ephemeral messages across nodes (PostgreSQL).

pub mod presence;
pub mod relay;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, WrapFuture};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};

use crate::config::{ClusterSettings, DatabaseSettings};
use crate::metrics::METRICS;
use crate::persistence::ephemeral;
use crate::persistence::nodes;
use crate::persistence::presence as presence_rows;
use crate::persistence::PersistenceError;
use crate::webhooks::Webhooks;

/// What each channel holds to take part in the cluster (PostgreSQL).
#[derive(Clone)]
pub struct ChannelLinks {
    /// Presence members across nodes.
    pub presence: presence::PresenceLink,
    /// Ephemeral messages across nodes.
    pub relay: relay::RelayLink,
}

/// How many nodes other than this one are alive, as the [`NodeAgent`]
/// last saw.
pub type Peers = Arc<AtomicUsize>;

/// Keeps this node alive in the `nodes` table and notices the others
/// that go.
pub struct NodeAgent {
    db: DatabaseConnection,
    node: Arc<str>,
    settings: ClusterSettings,
    webhooks: Webhooks,
    /// The live nodes at the last look.
    live: BTreeSet<String>,
    /// A look is under way.
    busy: bool,
    /// A look succeeded once.
    looked_once: bool,
    /// Kept up to date for the others to read.
    peers: Peers,
    /// For a connection of its own at shutdown.
    database: DatabaseSettings,
}

impl NodeAgent {
    /// Enters `node` in the table (warning on SQLite if another process
    /// uses the same file) and starts its agent.
    ///
    /// # Errors
    /// The table cannot be written.
    pub async fn start(
        db: DatabaseConnection,
        node: Arc<str>,
        settings: ClusterSettings,
        webhooks: Webhooks,
        peers: Peers,
        database: DatabaseSettings,
        arbiter: &actix::ArbiterHandle,
    ) -> Result<actix::Addr<NodeAgent>, PersistenceError> {
        let others = nodes::register(&db, &node).await?;
        let timeout = Duration::from_millis(settings.node_timeout_ms);
        let alive: Vec<_> = others
            .iter()
            .filter(|other| other.silent_for < timeout)
            .collect();
        if db.get_database_backend() == DbBackend::Sqlite {
            if let Some(other) = alive.first() {
                tracing::warn!(
                    other_node = %other.id,
                    silent_ms = other.silent_for.as_millis() as u64,
                    "another server process uses this SQLite database: SQLite serves one process, \
                     so each process delivers only the messages published through it. \
                     Run several servers on PostgreSQL (docs/postgresql.md)"
                );
            }
        } else {
            tracing::info!(%node, other_nodes = alive.len(), "joined the nodes sharing the database");
        }
        METRICS.cluster_nodes.set(alive.len() as u64 + 1);
        peers.store(alive.len(), Ordering::Relaxed);
        let agent = NodeAgent {
            db,
            node,
            settings,
            webhooks,
            live: BTreeSet::new(),
            busy: false,
            looked_once: false,
            peers,
            database,
        };
        // On an arbiter of its own, so a query cut off by a shutdown is
        // dropped inside a runtime.
        Ok(NodeAgent::start_in_arbiter(arbiter, move |_| agent))
    }

    /// Renews the heartbeat, expires the silent nodes, and looks at who is
    /// left.
    fn beat(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let db = self.db.clone();
        let node = self.node.clone();
        let timeout = Duration::from_millis(self.settings.node_timeout_ms);
        let first = !std::mem::replace(&mut self.looked_once, true);
        let look = async move {
            if !nodes::heartbeat(&db, &node).await? {
                tracing::warn!(%node, "this node was taken for dead (its heartbeat was late) and entered itself again; \
                    its webhook deliveries may have been sent by another node too");
            }
            let expired = nodes::expire(&db, timeout).await?;
            // The members of nodes gone leave everywhere (also of those
            // that expired while no node ran: looked at the first time).
            if (first || !expired.is_empty()) && db.get_database_backend() == DbBackend::Postgres {
                let n = presence_rows::remove_orphans(&db).await?;
                if n > 0 {
                    tracing::info!(n, "presence members of nodes gone left");
                }
            }
            // Large ephemeral messages wait in rows the nodes have read by now.
            if db.get_database_backend() == DbBackend::Postgres {
                ephemeral::forget_relayed(&db).await?;
            }
            let live = nodes::live(&db).await?;
            Ok::<_, PersistenceError>((expired, live))
        };
        ctx.spawn(look.into_actor(self).map(|looked, agent, _| {
            agent.busy = false;
            match looked {
                Ok((expired, live)) => agent.looked(expired, live),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot renew this node's heartbeat; trying again")
                }
            }
        }));
    }

    fn looked(&mut self, expired: Vec<nodes::Expired>, live: Vec<String>) {
        for node in &expired {
            if node.stopped {
                tracing::info!(node = %node.id, "a node that stopped left; its presence members leave");
            } else {
                METRICS.cluster_nodes_expired.inc();
                tracing::warn!(node = %node.id, timeout_ms = self.settings.node_timeout_ms,
                    "a node stopped answering; its members leave and its webhook deliveries move to the nodes left");
            }
        }
        let live: BTreeSet<String> = live.into_iter().collect();
        // A node that went, stopped or expired, may have left deliveries.
        let gone = self.live.difference(&live).next().is_some();
        if gone || !expired.is_empty() {
            self.webhooks.claim_orphans();
        }
        METRICS.cluster_nodes.set(live.len().max(1) as u64);
        let others = live.iter().filter(|id| **id != *self.node).count();
        self.peers.store(others, Ordering::Relaxed);
        self.live = live;
    }
}

/// Where the other nodes reach this node's API (known once it listens).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Advertise(pub String);

impl actix::Handler<Advertise> for NodeAgent {
    type Result = ();

    fn handle(&mut self, Advertise(url): Advertise, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let node = self.node.clone();
        ctx.spawn(
            async move {
                if let Err(err) = nodes::set_url(&db, &node, &url).await {
                    tracing::warn!(error = %err, "cannot record where this node's API is");
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for NodeAgent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = Duration::from_millis(self.settings.heartbeat_ms);
        ctx.run_interval(every, |agent, ctx| agent.beat(ctx));
        self.beat(ctx);
    }
}

/// The end of a graceful shutdown, once webhook requests ended: the agent
/// stops, and the node is marked as stopping, so its webhook deliveries
/// may be taken over at once; its row expires after `linger`.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// How long its presence members stay for the others.
    pub linger: Duration,
}

impl actix::Handler<Leave> for NodeAgent {
    type Result = actix::ResponseActFuture<Self, ()>;

    fn handle(&mut self, Leave { linger }: Leave, _: &mut Context<Self>) -> Self::Result {
        use actix::ActorContext;
        // No heartbeat from now on.
        self.busy = true;
        let node = self.node.clone();
        let timeout = Duration::from_millis(self.settings.node_timeout_ms);
        let mut database = self.database.clone();
        database.pool_size = 1;
        Box::pin(
            async move {
                // A connection of its own: at shutdown the pool's may belong
                // to HTTP workers whose runtimes are gone.
                let stopped = match crate::persistence::connect(&database).await {
                    Ok(db) => {
                        let stopped = nodes::stop(&db, &node, timeout, linger).await;
                        let _ = db.close().await;
                        stopped
                    }
                    Err(err) => Err(err.into()),
                };
                match stopped {
                    Ok(()) => tracing::info!("this node left the nodes sharing the database"),
                    Err(err) => tracing::warn!(error = %err,
                        "cannot mark this node as stopping; the others will find it silent"),
                }
            }
            .into_actor(self)
            .map(|(), _, ctx| ctx.stop()),
        )
    }
}
