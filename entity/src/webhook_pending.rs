//! `webhook_pending` (PostgreSQL): messages whose webhook deliveries have
//! not finished. A row is written in the same transaction as its message
//! and deleted once every URL answered or gave up, so deliveries survive a
//! crash. SQLite marks the message row instead (`messages.wh_pending`).

use sea_orm::entity::prelude::*;

/// One message still owed to its channel's webhook URLs.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_pending")]
pub struct Model {
    /// The message (deleting it deletes this row).
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: Uuid,
    /// The node that sends it; another takes it over only once this one
    /// is gone (`NULL`: anyone may).
    pub node: Option<String>,
}

/// Relations of a pending delivery.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The message to deliver.
    #[sea_orm(
        belongs_to = "super::messages::Entity",
        from = "Column::MessageId",
        to = "super::messages::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Messages,
}

impl ActiveModelBehavior for ActiveModel {}
