//! `channels`: one row per channel pattern (`order:%`, `chat:lobby`).

use sea_orm::entity::prelude::*;

use crate::webhook_urls::WebhookUrls;

/// A channel definition.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channels")]
pub struct Model {
    /// Random uuid given at creation.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The pattern names are matched against; unique.
    #[sea_orm(unique)]
    pub pattern: String,
    /// Free text for operators.
    pub description: Option<String>,
    /// Where messages of this channel are posted; `text[]` on PostgreSQL.
    pub webhook_urls: Option<WebhookUrls>,
    /// A disabled channel delivers nothing and accepts no subscribers.
    pub enabled: bool,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Relations of a channel.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The messages published through this channel.
    #[sea_orm(has_many = "super::messages::Entity")]
    Messages,
}

impl Related<super::messages::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Messages.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
