//! Wires the server together: opens the database, runs migrations, and
//! serves the HTTP app on a listener that the caller (main or a test) binds.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;

use actix_web::dev::Server;
use actix_web::{middleware, web, App};
use sea_orm::DatabaseConnection;

use crate::auth::Authenticator;
use crate::client::Client;
use crate::config::Settings;
use crate::engineio::admission::Admission;
use crate::engineio::upgrade::{self, HttpOptions, UpgradeRoutes};
use crate::engineio::{self, EngineServer};
use crate::persistence::sweeper::RetentionSweeper;
use crate::realtime::Realtime;
use crate::socketio::SocketIo;
use crate::{admin, api, persistence};

/// The realtime Socket.IO endpoint: its settings and open sessions.
pub type Sockets = EngineServer<SocketIo<Client>>;

/// What every request handler can reach. Built once, shared by all workers.
pub struct AppState {
    /// The connection pool.
    pub db: DatabaseConnection,
    /// The settings the server started with.
    pub settings: Arc<Settings>,
    /// The realtime pipeline.
    pub realtime: Arc<Realtime>,
    /// The `/socket.io/` endpoint. Its session table lets REST handlers
    /// find a session and talk to it through messages.
    pub sockets: Sockets,
    /// REST publishes by `Idempotency-Key`.
    pub idempotency: Arc<crate::api::idempotency::IdempotencyKeys>,
}

impl AppState {
    /// Connects to the database, applies pending migrations and starts the
    /// realtime pipeline's actors and the retention sweeper. Must run inside
    /// an actix system.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn open(settings: Settings) -> anyhow::Result<AppState> {
        let db = persistence::connect(&settings.database).await?;
        persistence::migrate(&db).await?;
        let auth = Arc::new(Authenticator::new(&settings.auth));
        let realtime = Arc::new(Realtime::start(&db, &settings, auth).await?);
        let hub = realtime.clone();
        let socketio_config = settings.engineio.socketio_config();
        let addresses = settings
            .limits
            .addresses(&settings.server.trusted_proxies)?;
        let mut engine = settings.engineio.engine_config();
        engine.polling_rate = settings.limits.polling_rate;
        // Session ids name their node, so a request routed to the wrong
        // node is told why it failed.
        engine.node_tag = Some(realtime.node.get(..4).unwrap_or(&realtime.node).into());
        let sockets = EngineServer::new(engine, move |head| {
            SocketIo::new(
                Client::new(hub.clone(), head.peer_addr),
                socketio_config.clone(),
            )
        })
        .with_admission(Admission::new(addresses));
        crate::memory_trim::start(Duration::from_millis(
            settings.server.memory_trim_interval_ms,
        ));
        RetentionSweeper::new(
            db.clone(),
            realtime.catalog.clone(),
            Duration::from_millis(settings.retention.sweep_interval_ms),
            settings.retention.sweep_batch_size,
        )
        .start();
        let idempotency = Arc::new(crate::api::idempotency::IdempotencyKeys::new(
            Duration::from_millis(settings.server.idempotency_window_ms),
            settings.server.idempotency_max_keys,
        ));
        Ok(AppState {
            db,
            idempotency,
            settings: Arc::new(settings),
            realtime,
            sockets,
        })
    }
}

/// A started server: the HTTP server (runs when awaited or spawned) and the
/// open realtime sessions, which shutdown closes first.
pub struct Running {
    /// The HTTP server; its handle stops it.
    pub server: Server,
    /// The Socket.IO sessions of `/socket.io/`.
    pub sessions: Arc<engineio::Registry<SocketIo<Client>>>,
}

/// Binds `address` (`host:port`; a name binds the first of its addresses
/// that can be bound) and listens with room for `backlog` connections not
/// yet accepted. std's `TcpListener::bind` listens with 128: a burst of
/// clients (a restart's reconnects) overflowed it, and a client whose
/// connection attempt is dropped retries only a second later.
///
/// # Errors
/// The address does not resolve, or none of its addresses can be bound.
pub fn listen(address: &str, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut failure = None;
    for addr in address.to_socket_addrs()? {
        let bound = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|socket| {
                // As std does on Unix: a restarted server binds while its
                // old connections linger in TIME_WAIT.
                #[cfg(unix)]
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
                Ok(TcpListener::from(socket))
            });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(err) => failure = Some(err),
        }
    }
    Err(failure.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// Where the other nodes reach this one (`cluster.advertise_url`, or made
/// from the listening address).
fn advertised_url(settings: &Settings, listener: &TcpListener) -> Option<String> {
    let configured = settings.cluster.advertise_url.trim();
    if !configured.is_empty() {
        return Some(configured.trim_end_matches('/').to_owned());
    }
    let local = listener.local_addr().ok()?;
    if !local.ip().is_unspecified() {
        return Some(format!("http://{local}"));
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())?;
    let host = host.trim();
    (!host.is_empty()).then(|| format!("http://{host}:{}", local.port()))
}

/// Starts serving `state` on `listener`. Signals are left to the caller
/// (`main` turns SIGINT/SIGTERM into [`shutdown`]).
///
/// # Errors
/// The listener cannot be used.
pub fn serve(listener: TcpListener, state: AppState) -> std::io::Result<Running> {
    let settings = state.settings.clone();
    if let Some(url) = advertised_url(&settings, &listener) {
        state
            .realtime
            .cluster
            .do_send(crate::cluster::Advertise(url));
    }
    let max_body_bytes = settings.server.max_body_bytes;
    let sockets = state.sockets.clone();
    let sessions = sockets.registry.clone();
    let state = web::Data::new(state);
    let routes = UpgradeRoutes::default().engine("/socket.io/", sockets.clone());
    let app = move || {
        App::new()
            .app_data(state.clone())
            // Engine.IO requests are not logged one by one: a WebSocket is a
            // request that lasts hours, and polling sends one every few
            // seconds per client. Sessions log their opening and close (debug).
            .wrap(middleware::Logger::new("%a \"%r\" %s %b %Dms").exclude("/socket.io/"))
            .wrap(middleware::from_fn(api::http_metrics::count))
            .configure(engineio::transport::configure(
                "/socket.io/",
                sockets.clone(),
            ))
            .configure(api::configure(max_body_bytes))
            .configure(admin::configure)
            .default_service(web::to(api::not_found))
    };
    let options = HttpOptions {
        workers: settings.server.workers,
        shutdown_timeout: settings.shutdown_grace(),
    };
    Ok(Running {
        server: upgrade::serve(app, routes, vec![listener], &options)?,
        sessions,
    })
}

/// Starts a graceful shutdown: stop accepting, close the sockets in equal
/// batches spread over `drain` (clients reconnect, and not all in the same
/// second), and let requests finish within `server.shutdown_grace_ms`.
/// Once the server future has resolved, the caller waits for
/// [`Realtime::drain`] so that every accepted message is written.
pub async fn shutdown(
    handle: actix_web::dev::ServerHandle,
    sessions: &engineio::Registry<SocketIo<Client>>,
    drain: Duration,
) {
    const TICK: Duration = Duration::from_millis(100);
    handle.pause().await;
    let open = sessions.all();
    let ticks = (drain.as_millis() / TICK.as_millis()).max(1) as usize;
    let per_tick = open.len().div_ceil(ticks).max(1);
    tracing::info!(sockets = open.len(), ?drain, "closing the sockets");
    for (i, batch) in open.chunks(per_tick).enumerate() {
        if i > 0 {
            actix_rt::time::sleep(TICK).await;
        }
        for (sid, _) in batch {
            sessions.close(sid.as_str(), engineio::CloseReason::ServerClose);
        }
    }
    // Any that opened meanwhile (the listener was paused).
    sessions.close_all(engineio::CloseReason::ServerClose);
    handle.stop(true).await;
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    use super::listen;

    /// 300 connections wait for the server to accept them, past std's
    /// 128: each connects at once rather than after a dropped attempt's
    /// one-second retry. Loopback only.
    #[test]
    fn connections_wait_in_the_backlog_it_was_given() {
        let listener = listen("127.0.0.1:0", 512).unwrap();
        let address = listener.local_addr().unwrap();
        let waiting: Vec<TcpStream> = (0..300)
            .map(|n| {
                TcpStream::connect_timeout(&address, Duration::from_millis(500))
                    .unwrap_or_else(|err| panic!("connection {n} not taken: {err}"))
            })
            .collect();
        assert_eq!(waiting.len(), 300);
        assert!(listen("127.0.0.1:no-port", 16).is_err());
    }
}
