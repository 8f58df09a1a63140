//! Wires the server together: opens the database, runs migrations, and
//! serves the HTTP app on a listener that the caller (main or a test) binds.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use sea_orm::DatabaseConnection;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::{api, persistence};

/// What every request handler can reach. Built once, shared by all workers.
pub struct AppState {
    /// The connection pool.
    pub db: DatabaseConnection,
    /// Verifies API keys, anon keys and JWTs.
    pub auth: Arc<Authenticator>,
    /// The settings the server started with.
    pub settings: Arc<Settings>,
}

impl AppState {
    /// Connects to the database and applies pending migrations.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn open(settings: Settings) -> anyhow::Result<AppState> {
        let db = persistence::connect(&settings.database).await?;
        persistence::migrate(&db).await?;
        Ok(AppState {
            db,
            auth: Arc::new(Authenticator::new(&settings.auth)),
            settings: Arc::new(settings),
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
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(middleware::Logger::new("%a \"%r\" %s %b %Dms"))
            .configure(api::configure(max_body_bytes))
            .default_service(web::to(api::not_found))
    })
    .shutdown_timeout(settings.shutdown_grace().as_secs().max(1))
    .listen(listener)?;
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    Ok(server.run())
}
