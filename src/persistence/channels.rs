//! Channel definitions: list, get, create, update, delete; and the options
//! this server adds to them (`channel_options`).

use std::collections::HashMap;

use entity::channels::{self, Column, Entity as Channels};
use entity::webhook_urls::WebhookUrls;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QueryResult, Statement, TransactionTrait,
};
use uuid::Uuid;

use super::{now, PersistenceError};

/// A channel to create; validated by the caller.
#[derive(Clone, Debug)]
pub struct NewChannel {
    /// A valid pattern (see `crate::pattern`).
    pub pattern: String,
    /// Free text.
    pub description: Option<String>,
    /// Webhook URLs, already checked to be http(s).
    pub webhook_urls: Option<Vec<String>>,
    /// Whether it starts enabled.
    pub enabled: bool,
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears a
/// nullable one.
#[derive(Clone, Debug, Default)]
pub struct ChannelChanges {
    /// New pattern.
    pub pattern: Option<String>,
    /// New description, or `Some(None)` to clear it.
    pub description: Option<Option<String>>,
    /// New webhook URLs, or `Some(None)` to clear them.
    pub webhook_urls: Option<Option<Vec<String>>>,
    /// New enabled flag.
    pub enabled: Option<bool>,
}

/// Every channel, newest first.
///
/// # Errors
/// Database failures.
pub async fn list(db: &DatabaseConnection) -> Result<Vec<channels::Model>, PersistenceError> {
    Ok(Channels::find()
        .order_by_desc(Column::CreatedAt)
        .order_by_desc(Column::Id)
        .all(db)
        .await?)
}

/// One channel by id.
///
/// # Errors
/// [`PersistenceError::NotFound`] for an unknown id.
pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<channels::Model, PersistenceError> {
    Channels::find_by_id(id)
        .one(db)
        .await?
        .ok_or(PersistenceError::NotFound)
}

/// Creates a channel and returns it as stored.
///
/// # Errors
/// [`PersistenceError::Duplicate`] when the pattern exists already.
pub async fn create(
    db: &DatabaseConnection,
    new: NewChannel,
) -> Result<channels::Model, PersistenceError> {
    let created_at = now();
    let model = channels::Model {
        id: Uuid::new_v4(),
        pattern: new.pattern,
        description: new.description,
        webhook_urls: new.webhook_urls.map(WebhookUrls),
        enabled: new.enabled,
        created_at,
        updated_at: created_at,
    };
    let backend = db.get_database_backend();
    // Built by hand rather than from an ActiveModel because the webhook
    // column is bound differently per backend (see `WebhookUrls::to_value`).
    let insert = Query::insert()
        .into_table(Channels)
        .columns([
            Column::Id,
            Column::Pattern,
            Column::Description,
            Column::WebhookUrls,
            Column::Enabled,
            Column::CreatedAt,
            Column::UpdatedAt,
        ])
        .values([
            model.id.into(),
            model.pattern.clone().into(),
            model.description.clone().into(),
            Expr::value(WebhookUrls::to_value(model.webhook_urls.as_ref(), backend)),
            model.enabled.into(),
            model.created_at.into(),
            model.updated_at.into(),
        ])
        .map_err(|err| PersistenceError::Database(sea_orm::DbErr::Custom(err.to_string())))?
        .to_owned();
    db.execute(backend.build(&insert))
        .await
        .map_err(PersistenceError::from_write)?;
    Ok(model)
}

/// Applies `changes` to a channel and returns it as stored.
///
/// # Errors
/// [`PersistenceError::NotFound`] for an unknown id,
/// [`PersistenceError::Duplicate`] when the new pattern is taken.
pub async fn update(
    db: &DatabaseConnection,
    id: Uuid,
    changes: ChannelChanges,
) -> Result<channels::Model, PersistenceError> {
    let backend = db.get_database_backend();
    let mut update = Channels::update_many()
        .col_expr(Column::UpdatedAt, Expr::value(now()))
        .filter(Column::Id.eq(id));
    if let Some(pattern) = changes.pattern {
        update = update.col_expr(Column::Pattern, Expr::value(pattern));
    }
    if let Some(description) = changes.description {
        update = update.col_expr(Column::Description, Expr::value(description));
    }
    if let Some(urls) = changes.webhook_urls {
        let urls = urls.map(WebhookUrls);
        update = update.col_expr(
            Column::WebhookUrls,
            Expr::value(WebhookUrls::to_value(urls.as_ref(), backend)),
        );
    }
    if let Some(enabled) = changes.enabled {
        update = update.col_expr(Column::Enabled, Expr::value(enabled));
    }
    let result = update
        .exec(db)
        .await
        .map_err(PersistenceError::from_write)?;
    if result.rows_affected == 0 {
        return Err(PersistenceError::NotFound);
    }
    get(db, id).await
}

/// Deletes a channel. Its messages stay, with `channel_id` set to null by
/// the foreign key.
///
/// # Errors
/// [`PersistenceError::NotFound`] for an unknown id.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<(), PersistenceError> {
    let result = Channels::delete_by_id(id).exec(db).await?;
    if result.rows_affected == 0 {
        return Err(PersistenceError::NotFound);
    }
    Ok(())
}

/// What this server adds to a channel (`channel_options`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Messages are delivered live only: never stored, posted to webhooks
    /// or recovered.
    pub ephemeral: bool,
    /// Overrides the global retention for this channel's messages.
    pub retention: Retention,
}

/// How long a channel's messages are kept; `None` fields leave it to the
/// global `retentionDays`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete messages older than this many days.
    pub max_age_days: Option<i32>,
    /// Keep at most this many messages per resolved channel name.
    pub max_messages: Option<i64>,
}

impl Retention {
    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        self.max_age_days.is_some() || self.max_messages.is_some()
    }
}

/// A partial change of a channel's options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionChanges {
    /// New ephemeral flag.
    pub ephemeral: Option<bool>,
    /// New retention (`Retention::default()` clears it).
    pub retention: Option<Retention>,
}

impl OptionChanges {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.ephemeral.is_none() && self.retention.is_none()
    }
}

/// The options of every channel that has some.
///
/// # Errors
/// Database failures.
pub async fn all_options(
    db: &DatabaseConnection,
) -> Result<HashMap<Uuid, ChannelOptions>, PersistenceError> {
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT channel_id, ephemeral, retention_max_age_days, retention_max_messages FROM channel_options",
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "channel_id")?, options_of_row(row)?)))
        .collect()
}

/// The options of one channel (the defaults when it has none).
///
/// # Errors
/// Database failures.
pub async fn options<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
) -> Result<ChannelOptions, PersistenceError> {
    let row = db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT ephemeral, retention_max_age_days, retention_max_messages FROM channel_options WHERE channel_id = $1",
            [id.into()],
        ))
        .await?;
    match row {
        Some(row) => options_of_row(&row),
        None => Ok(ChannelOptions::default()),
    }
}

fn options_of_row(row: &QueryResult) -> Result<ChannelOptions, PersistenceError> {
    Ok(ChannelOptions {
        ephemeral: row.try_get("", "ephemeral")?,
        retention: Retention {
            max_age_days: row.try_get("", "retention_max_age_days")?,
            max_messages: row.try_get("", "retention_max_messages")?,
        },
    })
}

/// Applies `changes` to a channel's options and returns them.
///
/// # Errors
/// Database failures.
pub async fn set_options(
    db: &DatabaseConnection,
    id: Uuid,
    changes: OptionChanges,
) -> Result<ChannelOptions, PersistenceError> {
    let txn = db.begin().await?;
    super::write_lock_first(&txn).await?;
    let mut current = options(&txn, id).await?;
    if let Some(ephemeral) = changes.ephemeral {
        current.ephemeral = ephemeral;
    }
    if let Some(retention) = changes.retention {
        current.retention = retention;
    }
    txn.execute(Statement::from_sql_and_values(
        db.get_database_backend(),
        "INSERT INTO channel_options (channel_id, ephemeral, retention_max_age_days, retention_max_messages)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (channel_id) DO UPDATE SET ephemeral = excluded.ephemeral,
           retention_max_age_days = excluded.retention_max_age_days,
           retention_max_messages = excluded.retention_max_messages",
        [
            id.into(),
            current.ephemeral.into(),
            current.retention.max_age_days.into(),
            current.retention.max_messages.into(),
        ],
    ))
    .await
    .map_err(PersistenceError::from_write)?;
    txn.commit().await?;
    Ok(current)
}
