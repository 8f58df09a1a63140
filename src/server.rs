//! Wires the server together: opens the database, runs migrations, and
//! serves the HTTP app on a listener that the caller (main or a test) binds.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use sea_orm::DatabaseConnection;

use crate::auth::Authenticator;
use crate::client::Client;
use crate::config::Settings;
use crate::engineio::{self, EngineServer};
use crate::realtime::Realtime;
use crate::socketio::SocketIo;
use crate::{api, persistence};

/// What every request handler can reach. Built once, shared by all workers.
pub struct AppState {
    /// The connection pool.
    pub db: DatabaseConnection,
    /// Verifies API keys, anon keys and JWTs.
    pub auth: Arc<Authenticator>,
    /// The settings the server started with.
    pub settings: Arc<Settings>,
    /// The realtime pipeline.
    pub realtime: Arc<Realtime>,
}

impl AppState {
    /// Connects to the database, applies pending migrations and starts the
    /// realtime pipeline's actors. Must run inside an actix system.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn open(settings: Settings) -> anyhow::Result<AppState> {
        let db = persistence::connect(&settings.database).await?;
        persistence::migrate(&db).await?;
        let auth = Arc::new(Authenticator::new(&settings.auth));
        let realtime = Arc::new(Realtime::start(&db, &settings, auth.clone()).await?);
        Ok(AppState {
            db,
            auth,
            settings: Arc::new(settings),
            realtime,
        })
    }
}

/// Starts serving `state` on `listener`. The returned [`Server`] runs when
/// awaited or spawned; its handle stops it. SIGINT and SIGTERM start a
/// graceful shutdown that waits up to `server.shutdown_grace_ms`.
///
/// # Errors
/// The listener cannot be used.
pub fn serve(listener: TcpListener, state: AppState) -> std::io::Result<Server> {
    let settings = state.settings.clone();
    let max_body_bytes = settings.server.max_body_bytes;
    let hub = state.realtime.clone();
    let socketio_config = settings.engineio.socketio_config();
    let sockets = EngineServer::new(settings.engineio.engine_config(), move |_| {
        SocketIo::new(Client::new(hub.clone()), socketio_config.clone())
    });
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(middleware::Logger::new("%a \"%r\" %s %b %Dms"))
            .configure(engineio::transport::configure(
                "/socket.io/",
                sockets.clone(),
            ))
            .configure(api::configure(max_body_bytes))
            .default_service(web::to(api::not_found))
    })
    .shutdown_timeout(settings.shutdown_grace().as_secs().max(1))
    // Small realtime frames must leave at once, not wait for Nagle's
    // algorithm to meet the peer's delayed ACK (a 40 ms stall).
    .tcp_nodelay(true)
    .listen(listener)?;
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    Ok(server.run())
}
