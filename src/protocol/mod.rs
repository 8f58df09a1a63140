//! The wire protocols, as pure functions: text and bytes in, packets or a
//! decode error out. Nothing here does I/O or knows about actix.
//!
//! # Layout
//! - [`engineio`]: Engine.IO v4 packets and HTTP long-polling payloads.
//! - [`socketio`]: Socket.IO v5 packets, carried inside Engine.IO messages,
//!   with binary attachments.

pub mod engineio;
pub mod socketio;
