//! sea-orm entities for the tables of the realtime schema.
//!
//! The same entities serve SQLite and PostgreSQL: they carry no schema name.
//! On PostgreSQL the server puts `realtime` first on the connection's
//! `search_path`, so `channels` means `realtime.channels` there.
//!
//! # Layout
//! - [`channels`]: channel patterns with webhooks and an enabled flag.
//! - [`messages`]: the message history with delivery counts.
//! - [`config`]: the singleton row with the retention setting.
//! - [`webhook_pending`]: messages whose webhooks have not finished.
//! - [`webhook_urls`]: the `text[]` column type that SQLite stores as JSON.

pub mod channels;
pub mod config;
pub mod messages;
pub mod prelude;
pub mod webhook_pending;
pub mod webhook_urls;
