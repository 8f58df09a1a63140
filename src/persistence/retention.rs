//! The `config` singleton row: how many days of history to keep.

use entity::config::{Column, Entity as Config};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::{now, PersistenceError};

/// The id of the one row of `config`.
const ROW_ID: i32 = 1;

/// The retention in days, or `None` to keep messages forever.
///
/// # Errors
/// Database failures, or a missing row (the migration creates it).
pub async fn retention_days(db: &DatabaseConnection) -> Result<Option<i32>, PersistenceError> {
    let row = Config::find_by_id(ROW_ID)
        .one(db)
        .await?
        .ok_or(PersistenceError::NotFound)?;
    Ok(row.retention_days)
}

/// Sets the retention; `None` keeps messages forever.
///
/// # Errors
/// Database failures, or a missing row.
pub async fn set_retention_days(
    db: &DatabaseConnection,
    days: Option<i32>,
) -> Result<(), PersistenceError> {
    let result = Config::update_many()
        .col_expr(Column::RetentionDays, Expr::value(days))
        .col_expr(Column::UpdatedAt, Expr::value(now()))
        .filter(Column::Id.eq(ROW_ID))
        .exec(db)
        .await?;
    if result.rows_affected == 0 {
        return Err(PersistenceError::NotFound);
    }
    Ok(())
}

/// Rewrites the `config` row unchanged: the smallest write that commits,
/// with which the writer learns that the database takes writes again.
///
/// # Errors
/// Database failures: the database still takes no writes.
pub async fn probe_write(db: &DatabaseConnection) -> Result<(), PersistenceError> {
    Config::update_many()
        .col_expr(Column::UpdatedAt, Expr::col(Column::UpdatedAt).into())
        .filter(Column::Id.eq(ROW_ID))
        .exec(db)
        .await?;
    Ok(())
}
