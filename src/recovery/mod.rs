//! Connection state recovery (SPEC §9b, ARCHITECTURE.md "Recovery"): a
//! client whose connection dropped comes back with its private session id
//! (`pid`) and the offset of the last message it received, and gets its
//! subscriptions and every message it missed back, from history.
//!
//! # Layout
//! - [`log`]: what a session delivered and the client confirmed, and from
//!   it what the client missed.
//! - [`store`]: the sessions that can be recovered.

pub mod log;
pub mod store;

pub use log::{DeliveryLog, LogState};
pub use store::{HandOver, RecoveryStore, SessionState};
