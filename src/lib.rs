//! A self-hosted, drop-in compatible server for the InsForge Realtime API.
//!
//! # Layout
//! - [`config`]: settings from TOML and the environment.
//! - [`auth`]: API keys, anon keys and JWTs.
//! - [`pattern`]: channel pattern validation and name resolution.
//! - [`persistence`]: every database query, and the group-commit writer.
//! - [`channel`]: channel actors, their registry and the channel catalog.
//! - [`client`]: the realtime Socket.IO handler of one connection.
//! - [`publish`]: a publish request, its sender, and the publish error.
//! - [`rate_limit`]: the token bucket of per-socket publish rates.
//! - [`realtime`]: the hub the handlers share, and system publishing.
//! - [`permissions`]: the subscribe/publish permission hook.
//! - [`webhooks`]: posting durable messages to channels' webhook URLs.
//! - [`cluster`]: several server processes on one database.
//! - [`api`]: the REST admin surface.
//! - [`protocol`]: Engine.IO and Socket.IO codecs, pure.
//! - [`engineio`]: the Engine.IO server: session actors and transports.
//! - [`socketio`]: the Socket.IO layer over Engine.IO sessions.
//! - [`metrics`]: process-wide counters for `GET /metrics`.
//! - [`server`]: wiring: database, state, HTTP server.
//! - [`conformance`]: the protocol conformance server on the same layers.

pub mod admin;
pub mod api;
pub mod auth;
pub mod channel;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conformance;
pub mod db_listener;
pub mod engineio;
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod list_map;
pub mod memory_trim;
pub mod metrics;
pub mod pattern;
pub mod permissions;
pub mod persistence;
pub mod protocol;
pub mod publish;
pub mod rate_limit;
pub mod realtime;
pub mod recovery;
pub mod scheduling;
pub mod server;
pub mod socketio;
pub mod webhooks;
