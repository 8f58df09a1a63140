//! The `RetentionSweeper` actor: every `retention.sweep_interval_ms` it
//! reads `retention_days` from the config row and deletes older messages,
//! a batch at a time so that no statement holds the table for long.

use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, WrapFuture};
use chrono::Utc;
use sea_orm::DatabaseConnection;

use super::{messages, retention, PersistenceError};

/// Deletes expired history on a timer.
pub struct RetentionSweeper {
    db: DatabaseConnection,
    interval: Duration,
    batch_size: u64,
    /// True while a sweep runs; a tick that finds one running is skipped.
    sweeping: bool,
}

impl RetentionSweeper {
    /// A sweeper over `db`, every `interval`, `batch_size` rows per DELETE.
    pub fn new(db: DatabaseConnection, interval: Duration, batch_size: u64) -> Self {
        RetentionSweeper {
            db,
            interval,
            batch_size: batch_size.max(1),
            sweeping: false,
        }
    }
}

/// One sweep: how many messages it deleted.
async fn sweep(db: &DatabaseConnection, batch_size: u64) -> Result<u64, PersistenceError> {
    let Some(days) = retention::retention_days(db).await? else {
        return Ok(0);
    };
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
    let mut deleted = 0;
    loop {
        let n = messages::delete_older_than(db, cutoff, batch_size).await?;
        deleted += n;
        if n < batch_size {
            return Ok(deleted);
        }
    }
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
            ctx.spawn(
                async move { sweep(&db, batch_size).await }
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
