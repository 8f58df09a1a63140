//! The `RetentionSweeper` actor: every `retention.sweep_interval_ms` it
//! reads `retention_days` from the config row and deletes older messages,
//! then applies each channel's own retention (`maxAgeDays` instead of the
//! global age, `maxMessages` per resolved name), a batch at a time so that
//! no statement holds the table for long.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, WrapFuture};
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::messages::{self, AgeScope};
use super::{retention, PersistenceError};
use crate::channel::catalog::{ChannelCatalog, ChannelDef};

/// Deletes expired history on a timer.
pub struct RetentionSweeper {
    db: DatabaseConnection,
    /// The channels, for their own retention.
    catalog: Arc<ChannelCatalog>,
    interval: Duration,
    batch_size: u64,
    /// True while a sweep runs; a tick that finds one running is skipped.
    sweeping: bool,
}

impl RetentionSweeper {
    /// A sweeper over `db` and the channels of `catalog`, every
    /// `interval`, `batch_size` rows per DELETE.
    pub fn new(
        db: DatabaseConnection,
        catalog: Arc<ChannelCatalog>,
        interval: Duration,
        batch_size: u64,
    ) -> Self {
        RetentionSweeper {
            db,
            catalog,
            interval,
            batch_size: batch_size.max(1),
            sweeping: false,
        }
    }
}

/// One sweep: how many messages it deleted.
async fn sweep(
    db: &DatabaseConnection,
    channels: &[Arc<ChannelDef>],
    batch_size: u64,
) -> Result<u64, PersistenceError> {
    let own_age: Vec<Uuid> = channels
        .iter()
        .filter(|def| def.retention.max_age_days.is_some())
        .map(|def| def.id)
        .collect();
    let mut deleted = 0;
    if let Some(days) = retention::retention_days(db).await? {
        deleted += by_age(db, days, AgeScope::AllBut(&own_age), batch_size).await?;
    }
    for def in channels {
        if let Some(days) = def.retention.max_age_days {
            deleted += by_age(db, days, AgeScope::Channel(def.id), batch_size).await?;
        }
        if let Some(max) = def.retention.max_messages {
            deleted += messages::delete_beyond_count(db, def.id, max, batch_size).await?;
        }
    }
    Ok(deleted)
}

/// Deletes the messages of `scope` older than `days`, a batch at a time.
async fn by_age(
    db: &DatabaseConnection,
    days: i32,
    scope: AgeScope<'_>,
    batch_size: u64,
) -> Result<u64, PersistenceError> {
    let Some(cutoff) = cutoff(days) else {
        // Further back than time goes: nothing is that old.
        return Ok(0);
    };
    let mut deleted = 0;
    loop {
        let n = messages::delete_expired(db, cutoff, scope, batch_size).await?;
        deleted += n;
        if n < batch_size {
            return Ok(deleted);
        }
    }
}

/// `days` before now, if that is a representable time (the API accepts any
/// positive number of days).
fn cutoff(days: i32) -> Option<DateTime<Utc>> {
    Utc::now().checked_sub_signed(chrono::TimeDelta::try_days(i64::from(days))?)
}

impl Actor for RetentionSweeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.interval, |sweeper, ctx| {
            if sweeper.sweeping {
                return;
            }
            sweeper.sweeping = true;
            let db = sweeper.db.clone();
            let batch_size = sweeper.batch_size;
            let channels = sweeper.catalog.with_retention();
            ctx.spawn(
                async move { sweep(&db, &channels, batch_size).await }
                    .into_actor(sweeper)
                    .map(|result, sweeper, _| {
                        sweeper.sweeping = false;
                        match result {
                            Ok(0) => {}
                            Ok(deleted) => {
                                tracing::info!(deleted, "retention: expired messages deleted")
                            }
                            Err(err) => tracing::error!(error = %err, "retention sweep failed"),
                        }
                    }),
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_longer_than_time_goes_back_deletes_nothing() {
        assert!(cutoff(30).is_some_and(|cutoff| cutoff < Utc::now()));
        // The REST API accepts any positive retention; the sweep must not
        // panic on one past chrono's range (found by the REST fuzzer).
        assert_eq!(cutoff(i32::MAX), None);
    }
}
