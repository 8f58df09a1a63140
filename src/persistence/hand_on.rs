//! Handing durable messages to channels in `seq` order, whoever stored
//! them (ARCHITECTURE.md, "The message sequence"). The writer keeps a
//! cursor: every `seq` at or below it has been handed on. Rows above it
//! that the writer did not write (another node's batches, rows SQL stored,
//! holes a failed statement left) are read from the log and handed on
//! before the writer's own next batch, or on their own when the database
//! listener says there are some ([`CatchUp`]).

use std::collections::HashSet;

use actix::Recipient;
use entity::messages;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::messages::log_after;
use super::writer::{Persisted, PersistedTo};
use super::PersistenceError;

/// Rows read from the log per query.
const PAGE: u64 = 500;
/// Most rows one catch-up pass reads before letting a flush run.
const MAX_PER_PASS: usize = 5_000;

/// For the channel registry: hand `stored` to their live channels, in
/// order, then deliver `persisted` to the channels that wait for them.
/// Going through the registry keeps both in one order per channel.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct HandOn {
    /// Rows this node did not write, in `seq` order.
    pub stored: Vec<messages::Model>,
    /// The writer's own batch, by channel, to deliver after them.
    pub persisted: Vec<(PersistedTo, Persisted)>,
}

/// Tells the writer that rows it did not write may be waiting in the log.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct CatchUp;

/// Connects the writer to the channel registry that [`HandOn`] goes to.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct ConnectRegistry(pub Recipient<HandOn>);

/// The rows above `after` (and below `before`) that must be handed on: all
/// of them but those whose publishers were refused (`refused`, writes in
/// doubt, deleted soon). Without `before`, at most about [`MAX_PER_PASS`]
/// (whole pages): the caller comes back for the rest.
///
/// # Errors
/// Database failures; nothing is handed on then.
pub async fn rows_to_hand_on(
    db: &DatabaseConnection,
    after: i64,
    before: Option<i64>,
    refused: &HashSet<Uuid>,
) -> Result<Vec<messages::Model>, PersistenceError> {
    let mut rows = Vec::new();
    let mut cursor = after;
    loop {
        let page = log_after(db, cursor, before, PAGE).await?;
        let full = page.len() as u64 == PAGE;
        if let Some(last) = page.last().and_then(|row| row.seq) {
            cursor = last;
        }
        rows.extend(page.into_iter().filter(|row| !refused.contains(&row.id)));
        // A gap (`before`) is read whole: the batch after it waits for it.
        if !full || (before.is_none() && rows.len() >= MAX_PER_PASS) {
            return Ok(rows);
        }
    }
}
