//! The channel definitions in memory: which names resolve to which enabled
//! channel. Read on every subscribe and publish, rebuilt from the database
//! whenever the REST API changes a channel, so a change applies at once.
//! Definitions are shared (`Arc`), never copied per publish.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::pattern::PatternIndex;
use crate::persistence::channels::Retention;
use crate::persistence::{self, PersistenceError};

/// What the pipeline needs to know of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelDef {
    /// The channel's id, stored with each message.
    pub id: Uuid,
    /// Its pattern.
    pub pattern: String,
    /// Where its messages are posted.
    pub webhook_urls: Vec<String>,
    /// Its messages are delivered live only: not stored, posted or
    /// recovered.
    pub ephemeral: bool,
    /// How long its messages are kept, if not the global retention.
    pub retention: Retention,
}

/// The enabled channels, indexed for resolution and by id. Readers take a
/// snapshot (an `Arc`) and never wait for a rebuild.
#[derive(Default)]
pub struct ChannelCatalog {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Reloads started so far: each takes the next number.
    reloads: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Snapshot {
    by_pattern: PatternIndex<Arc<ChannelDef>>,
    by_id: HashMap<Uuid, Arc<ChannelDef>>,
    /// The number of the reload that built it.
    reload: u64,
}

impl ChannelCatalog {
    /// Loads the enabled channels from the database.
    ///
    /// # Errors
    /// Database failures.
    pub async fn load(db: &DatabaseConnection) -> Result<ChannelCatalog, PersistenceError> {
        let catalog = ChannelCatalog::default();
        catalog.reload(db).await?;
        Ok(catalog)
    }

    /// Rebuilds the index from the database. Reloads may overlap (the REST
    /// API after a change, the listener told of one by another node): one
    /// that started earlier never replaces one that started later, whose
    /// read saw at least as much.
    ///
    /// # Errors
    /// Database failures; the previous index stays in place.
    pub async fn reload(&self, db: &DatabaseConnection) -> Result<(), PersistenceError> {
        let reload = self
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let channels = persistence::channels::list(db).await?;
        let options = persistence::channels::all_options(db).await?;
        let definitions: Vec<Arc<ChannelDef>> = channels
            .into_iter()
            .filter(|channel| channel.enabled)
            .map(|channel| {
                let options = options.get(&channel.id).copied().unwrap_or_default();
                Arc::new(ChannelDef {
                    id: channel.id,
                    pattern: channel.pattern,
                    webhook_urls: channel.webhook_urls.map(|urls| urls.0).unwrap_or_default(),
                    ephemeral: options.ephemeral,
                    retention: options.retention,
                })
            })
            .collect();
        let snapshot = Snapshot {
            reload,
            by_id: definitions
                .iter()
                .map(|def| (def.id, def.clone()))
                .collect(),
            by_pattern: PatternIndex::new(
                definitions
                    .into_iter()
                    .map(|def| (def.pattern.clone(), def)),
            ),
        };
        let mut current = self.snapshot.write();
        if current.reload < reload {
            *current = Arc::new(snapshot);
        }
        Ok(())
    }

    /// The enabled channel that `name` resolves to.
    pub fn resolve(&self, name: &str) -> Option<Arc<ChannelDef>> {
        let snapshot = self.snapshot.read().clone();
        snapshot
            .by_pattern
            .resolve(name)
            .map(|(_, def)| def.clone())
    }

    /// The enabled channel with this id.
    pub fn by_id(&self, id: Uuid) -> Option<Arc<ChannelDef>> {
        self.snapshot.read().by_id.get(&id).cloned()
    }

    /// The enabled channels with a retention of their own.
    pub fn with_retention(&self) -> Vec<Arc<ChannelDef>> {
        self.snapshot
            .read()
            .by_id
            .values()
            .filter(|def| def.retention.is_set())
            .cloned()
            .collect()
    }
}
