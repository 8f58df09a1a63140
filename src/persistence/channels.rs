//! Channel definitions: list, get, create, update, delete.

use entity::channels::{self, Column, Entity as Channels};
use entity::webhook_urls::WebhookUrls;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
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
