//! The durable webhook backlog: the messages whose webhook deliveries have
//! not finished. On PostgreSQL a `webhook_pending` row naming the node that
//! sends them; on SQLite (one process) a mark on the message row itself
//! (`messages.wh_pending`, in the partial index `idx_messages_wh_pending`).
//! Either is written in the writer's batch, with its message; this module
//! reads the backlog after a restart or an overflow, and finishes messages
//! in batches.

use chrono::{DateTime, Utc};
use entity::messages::{self, Column, Entity as Messages};
use entity::webhook_pending::{self, Entity as Pending};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::messages::{update_counts, Count};
use super::PersistenceError;

/// How a message's webhook deliveries ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookOutcome {
    /// The message.
    pub message_id: Uuid,
    /// How many URLs it was posted to (`whAudienceCount`).
    pub audience: i32,
    /// How many answered 2xx (`whDeliveredCount`).
    pub delivered: i32,
}

/// Most ids bound in one statement, under SQLite's parameter limit.
const MAX_IDS: usize = 1000;

/// SQLite's backlog mark on a message row.
const SQLITE_PENDING: &str = "wh_pending IS NOT NULL";

/// Up to `limit` messages pending for `node` (see
/// [`super::nodes::claim_webhooks`]; on SQLite all of them), oldest first,
/// after `after` (the `(created_at, id)` of the last one of the previous
/// page).
///
/// # Errors
/// Database failures.
pub async fn pending_page(
    db: &DatabaseConnection,
    node: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: u64,
) -> Result<Vec<messages::Model>, PersistenceError> {
    let mut select = if db.get_database_backend() == DbBackend::Postgres {
        Messages::find().filter(
            Column::Id.in_subquery(
                Query::select()
                    .column(webhook_pending::Column::MessageId)
                    .from(Pending)
                    .and_where(webhook_pending::Column::Node.eq(node))
                    .to_owned(),
            ),
        )
    } else {
        Messages::find().filter(Expr::cust(SQLITE_PENDING))
    };
    if let Some((created_at, id)) = after {
        select = select.filter(
            Expr::col(Column::CreatedAt)
                .gt(created_at)
                .or(Expr::col(Column::CreatedAt)
                    .eq(created_at)
                    .and(Expr::col(Column::Id).gt(id))),
        );
    }
    Ok(select
        .order_by_asc(Column::CreatedAt)
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// How many messages wait for their webhooks.
///
/// # Errors
/// Database failures.
pub async fn count_pending(db: &DatabaseConnection) -> Result<u64, PersistenceError> {
    if db.get_database_backend() == DbBackend::Postgres {
        return Ok(Pending::find().count(db).await?);
    }
    Ok(Messages::find()
        .filter(Expr::cust(SQLITE_PENDING))
        .count(db)
        .await?)
}

/// Marks messages' webhooks done on PostgreSQL: records their counts and
/// takes them out of the backlog. (On SQLite the writer's batch does it,
/// in the same transaction as its rows: [`super::sqlite_batch::write`].)
///
/// # Errors
/// Database failures.
pub async fn finish<C: ConnectionTrait>(
    conn: &C,
    outcomes: &[WebhookOutcome],
) -> Result<(), PersistenceError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let audience: Vec<(Uuid, i32)> = outcomes
        .iter()
        .map(|outcome| (outcome.message_id, outcome.audience))
        .collect();
    let delivered: Vec<(Uuid, i32)> = outcomes
        .iter()
        .map(|outcome| (outcome.message_id, outcome.delivered))
        .collect();
    update_counts(conn, Column::WhAudienceCount, &audience, Count::Set).await?;
    update_counts(conn, Column::WhDeliveredCount, &delivered, Count::Set).await?;
    for chunk in outcomes.chunks(MAX_IDS) {
        Pending::delete_many()
            .filter(
                webhook_pending::Column::MessageId
                    .is_in(chunk.iter().map(|outcome| outcome.message_id)),
            )
            .exec(conn)
            .await?;
    }
    Ok(())
}
