//! `messages`: the history of every published message and its delivery counts.

use sea_orm::entity::prelude::*;

/// One published message.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    /// Time-ordered uuid (v7) given by the server when the message is accepted.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The event the message was published under.
    pub event_name: String,
    /// The channel definition it resolved to; null once that channel is deleted.
    pub channel_id: Option<Uuid>,
    /// The resolved channel name, for example `order:123`.
    pub channel_name: String,
    /// The JSON object the publisher sent.
    pub payload: Json,
    /// `user` or `system`.
    pub sender_type: String,
    /// The publishing user's id, for authenticated users only.
    pub sender_id: Option<Uuid>,
    /// How many sockets the message was delivered to.
    pub ws_audience_count: i32,
    /// How many webhook URLs the message was to be posted to.
    pub wh_audience_count: i32,
    /// How many of those answered 2xx.
    pub wh_delivered_count: i32,
    /// When the server accepted the message.
    pub created_at: DateTimeUtc,
    /// The message's place in the order messages became visible, across
    /// channels (ARCHITECTURE.md, "The message sequence"). `None` until the
    /// writer (or, for rows inserted by SQL, the sequencer) numbers it; on
    /// PostgreSQL a negative value marks a row inserted by SQL that waits
    /// for its number.
    pub seq: Option<i64>,
}

/// Relations of a message.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The channel the message resolved to, while it exists.
    #[sea_orm(
        belongs_to = "super::channels::Entity",
        from = "Column::ChannelId",
        to = "super::channels::Column::Id",
        on_update = "NoAction",
        on_delete = "SetNull"
    )]
    Channels,
}

impl Related<super::channels::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Channels.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
