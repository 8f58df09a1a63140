//! The `realtime` command: `serve` (the default), `migrate`, `token`, `keys`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use realtime::auth::{self, Authenticator, Role};
use realtime::config::{LogFormat, Settings};
use realtime::persistence;
use realtime::server::{self, AppState};
use tracing_subscriber::EnvFilter;

/// A self-hosted server for the InsForge Realtime API.
#[derive(Parser)]
#[command(name = "realtime", version, about)]
struct Cli {
    /// A TOML file overlaid on the defaults.
    #[arg(long, global = true, env = "REALTIME_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST and realtime API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a signed development JWT.
    Token {
        /// The role claim.
        #[arg(long, value_enum, default_value = "authenticated")]
        role: TokenRole,
        /// The subject (user id); a random uuid when omitted.
        #[arg(long)]
        sub: Option<String>,
        /// An e-mail claim.
        #[arg(long)]
        email: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Print a new random key to put in the configuration.
    Keys {
        /// `api` for an admin key (ik_…), `anon` for an anon key (anon_…),
        /// `webhook` for a webhook signing secret (whsec_…).
        #[arg(long, value_enum, default_value = "api")]
        kind: KeyKind,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TokenRole {
    Authenticated,
    Anon,
    ProjectAdmin,
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyKind {
    Api,
    Anon,
    Webhook,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keys { kind }) = cli.command {
        let key = match kind {
            KeyKind::Api => auth::generate_key("ik_"),
            KeyKind::Anon => auth::generate_key("anon_"),
            KeyKind::Webhook => realtime::webhooks::signing::generate_secret(),
        };
        println!("{key}");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("realtime: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token {
            role,
            sub,
            email,
            ttl,
        } => {
            let role = match role {
                TokenRole::Authenticated => Role::Authenticated,
                TokenRole::Anon => Role::Anon,
                TokenRole::ProjectAdmin => Role::ProjectAdmin,
            };
            let sub = sub.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let token = Authenticator::new(&settings.auth).mint(role, &sub, email.as_deref(), ttl);
            println!("{token}");
            ExitCode::SUCCESS
        }
        Command::Migrate => run_async(migrate(settings)),
        Command::Serve | Command::Keys { .. } => run_async(serve(settings)),
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match actix_web::rt::System::new().block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("realtime: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(settings: &Settings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    init_tracing(&settings);
    let db = persistence::connect(&settings.database).await?;
    persistence::migrate(&db).await?;
    tracing::info!(database = %redact(&settings.database.url), "migrations applied");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    init_tracing(&settings);
    // Before any other thread starts: they inherit the policy.
    realtime::scheduling::apply(settings.server.batch_scheduling);
    if settings.uses_development_secrets() {
        tracing::warn!("running with the development jwt_secret or API key from config/default.toml; set your own before exposing this server");
    }
    let address = format!("{}:{}", settings.server.host, settings.server.port);
    let database = redact(&settings.database.url);
    // Bind first: a taken port fails before any actor has started.
    let listener = server::listen(&address, settings.server.listen_backlog)
        .map_err(|err| anyhow::anyhow!("cannot listen on {address}: {err}"))?;
    let state = AppState::open(settings).await?;
    tracing::info!(%address, %database, "realtime server listening");
    let realtime = state.realtime.clone();
    let grace = state.settings.shutdown_grace();
    let drain = std::time::Duration::from_millis(state.settings.server.drain_ms);
    let running = server::serve(listener, state)?;
    let handle = running.server.handle();
    let sessions = running.sessions.clone();
    let webhooks = realtime.webhooks.clone();
    actix_web::rt::spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down: closing sockets and finishing requests");
        // Webhook requests in flight may finish; none starts any more.
        webhooks.stop_starting();
        server::shutdown(handle, &sessions, drain).await;
    });
    running.server.await?;
    // Messages accepted before the stop may still be on their way to the
    // database: nothing accepted is lost.
    realtime.shutdown(grace).await;
    tracing::info!("realtime server stopped; accepted messages written");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The database URL without its password, for logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
