//! `config`: the singleton row (id 1) of runtime settings kept in the database.

use sea_orm::entity::prelude::*;

/// The realtime settings that the REST API changes at run time.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "config")]
pub struct Model {
    /// Always 1: the table holds one row.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    /// Messages older than this many days are swept; null keeps them forever.
    pub retention_days: Option<i32>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// The config row relates to nothing.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
