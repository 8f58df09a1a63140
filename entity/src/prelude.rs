//! Short names for the entities, as sea-orm's generator writes them.

pub use super::channels::Entity as Channels;
pub use super::config::Entity as Config;
pub use super::messages::Entity as Messages;
