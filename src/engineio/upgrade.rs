//! The HTTP listener, and WebSocket upgrades taken out of it.
//!
//! actix-web serves every ordinary request (the REST API, long-polling).
//! A request that asks for a WebSocket is handed, with its connection, to
//! [`UpgradeRoutes`] instead of the app: the route checks it, answers 101
//! or an Engine.IO error itself, and from then on the connection belongs to
//! [`super::websocket`]. Leaving actix-http's dispatcher after the
//! handshake saves its two 8 KiB buffers and one queue hop per frame on
//! every socket, which is most of what an idle socket costs (see
//! docs/benchmarks.md).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_codec::Framed;
use actix_http::body::MessageBody;
use actix_http::h1;
use actix_http::header::{self, HeaderValue};
use actix_http::{HttpMessage as _, HttpService, Request, Response};
use actix_server::Server;
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::AppConfig;
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::admission::Refusal;
use super::session::{Session, WsAttach};
use super::transport::{EngineQuery, ErrorCode, TransportKind, FORBIDDEN};
use super::websocket::{self, Outbox, WsLink};
use super::{EngineHandler, EngineServer};

type UpgradeFn =
    dyn Fn(Request, TcpStream, BytesMut) -> LocalBoxFuture<'static, ()> + Send + Sync + 'static;

/// Where WebSocket upgrade requests go, by path. Any other path gets 404.
#[derive(Clone, Default)]
pub struct UpgradeRoutes {
    routes: Vec<(String, Arc<UpgradeFn>)>,
}

impl UpgradeRoutes {
    /// Serves WebSockets of the Engine.IO endpoint at `path` (with or
    /// without its trailing slash).
    pub fn engine<H: EngineHandler>(mut self, path: &str, server: EngineServer<H>) -> Self {
        let path = path.trim_end_matches('/').to_owned();
        self.routes.push((
            path,
            Arc::new(move |req, io, leftover| {
                Box::pin(upgrade_engine(server.clone(), req, io, leftover))
            }),
        ));
        self
    }

    async fn dispatch(&self, req: Request, framed: Framed<TcpStream, h1::Codec>) {
        let parts = framed.into_parts();
        let (io, leftover) = (parts.io, parts.read_buf);
        let path = req.path().trim_end_matches('/');
        match self.routes.iter().find(|(route, _)| route == path) {
            Some((_, upgrade)) => upgrade(req, io, leftover).await,
            None => {
                let body = serde_json::json!({
                    "error": "NOT_FOUND",
                    "message": format!("no WebSocket endpoint at {}", req.path()),
                    "statusCode": 404,
                });
                refuse(io, "404 Not Found", &body.to_string(), None).await;
            }
        }
    }
}

/// Checks an Engine.IO WebSocket request, answers it, and starts (or
/// upgrades) its session.
async fn upgrade_engine<H: EngineHandler>(
    server: EngineServer<H>,
    req: Request,
    io: TcpStream,
    leftover: BytesMut,
) {
    match accept_engine(&server, &req).await {
        Ok((addr, link_id, outbox)) => websocket::run(
            io,
            leftover,
            addr,
            link_id,
            outbox,
            server.config.max_payload,
        ),
        Err(refused) => {
            let origin = req.headers().get(header::ORIGIN).filter(|origin| {
                origin
                    .to_str()
                    .is_ok_and(|origin| server.config.allows_origin(origin))
            });
            let (status, code, message) = match refused {
                Refused::Protocol(code) => ("400 Bad Request", code as u8, code.message()),
                Refused::UnknownSid(message) => {
                    ("400 Bad Request", ErrorCode::UnknownSid as u8, message)
                }
                Refused::Limit(refusal) => ("429 Too Many Requests", FORBIDDEN, refusal.message()),
            };
            let body = serde_json::json!({ "code": code, "message": message }).to_string();
            refuse(io, status, &body, origin).await;
        }
    }
}

/// Why a WebSocket request is refused.
enum Refused {
    /// It breaks the protocol: 400 with the Engine.IO error.
    Protocol(ErrorCode),
    /// Its session id is unknown here: 400 with code 1 and this message.
    UnknownSid(&'static str),
    /// A per-address limit: 429.
    Limit(Refusal),
}

impl From<ErrorCode> for Refused {
    fn from(code: ErrorCode) -> Self {
        Refused::Protocol(code)
    }
}

/// The session that a valid request's WebSocket serves (new, or the
/// polling one it upgrades), or why it is refused.
async fn accept_engine<H: EngineHandler>(
    server: &EngineServer<H>,
    req: &Request,
) -> Result<(Addr<Session<H>>, u64, Arc<Outbox>), Refused> {
    let query = EngineQuery::parse(req.uri().query().unwrap_or(""))?;
    if query.transport != TransportKind::WebSocket {
        return Err(ErrorCode::BadRequest.into());
    }
    let existing = match query.sid.as_deref() {
        None => None,
        Some(sid) => Some(server.registry.get(sid).ok_or_else(|| {
            Refused::UnknownSid(super::transport::unknown_sid_message(&server.config, sid))
        })?),
    };
    if actix_http::ws::verify_handshake(req.head()).is_err() {
        return Err(ErrorCode::BadRequest.into());
    }
    let (link, outbox) = WsLink::new(
        server.config.max_buffered_packets,
        switching_protocols(req).as_bytes(),
    );
    let link_id = link.id;
    let addr = match existing {
        None => {
            let ticket = server.admission.admit(req.head()).map_err(Refused::Limit)?;
            let handler = (server.factory)(req.head());
            Session::start_websocket(
                server.config.new_sid(),
                server.config.clone(),
                server.registry.clone(),
                handler,
                link,
                ticket,
            )
        }
        Some(addr) => match addr.send(WsAttach(link)).await {
            Ok(Ok(())) => addr,
            Ok(Err(err)) => return Err(ErrorCode::from(err).into()),
            Err(_) => return Err(ErrorCode::UnknownSid.into()),
        },
    };
    Ok((addr, link_id, outbox))
}

/// The 101 answer to a verified handshake.
fn switching_protocols(req: &Request) -> String {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| actix_http::ws::hash_key(key.as_bytes()))
        .unwrap_or_default();
    let mut head = String::from(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ",
    );
    head.push_str(std::str::from_utf8(&key).unwrap_or_default());
    head.push_str("\r\n\r\n");
    head
}

/// Answers with a JSON error and closes the connection.
async fn refuse(mut io: TcpStream, status: &str, body: &str, origin: Option<&HeaderValue>) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(origin) = origin.and_then(|origin| origin.to_str().ok()) {
        let _ = write!(
            head,
            "access-control-allow-origin: {origin}\r\naccess-control-allow-credentials: true\r\nvary: Origin\r\n"
        );
    }
    head.push_str("\r\n");
    head.push_str(body);
    if io.write_all(head.as_bytes()).await.is_ok() {
        let _ = io.shutdown().await;
    }
}

/// How the HTTP listener behaves.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long requests in flight may take to finish at shutdown.
    pub shutdown_timeout: Duration,
}

/// Serves `app` on `listeners`, with WebSocket upgrades going to `routes`.
/// Like actix-web's `HttpServer` (which offers no way to take a connection
/// out of its dispatcher), with signals left to the caller and Nagle's
/// algorithm off: small realtime frames must leave at once, not wait for
/// the peer's delayed ACK (a 40 ms stall).
///
/// # Errors
/// A listener cannot be used.
pub fn serve<F, I, S, B>(
    app: F,
    routes: UpgradeRoutes,
    listeners: Vec<TcpListener>,
    options: &HttpOptions,
) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    let mut builder = Server::build()
        .disable_signals()
        .shutdown_timeout(options.shutdown_timeout.as_secs().max(1));
    if options.workers > 0 {
        builder = builder.workers(options.workers);
    }
    for listener in listeners {
        let addr = listener.local_addr()?;
        let app = app.clone();
        let routes = routes.clone();
        builder = builder.listen(format!("realtime-{addr}"), listener, move || {
            let routes = Rc::new(routes.clone());
            let upgrade = fn_factory(move || {
                let routes = routes.clone();
                async move {
                    Ok::<_, ()>(fn_service(
                        move |(req, framed): (Request, Framed<TcpStream, h1::Codec>)| {
                            let routes = routes.clone();
                            async move {
                                routes.dispatch(req, framed).await;
                                Ok::<_, actix_http::Error>(())
                            }
                        },
                    ))
                }
            });
            let app = app()
                .into_factory()
                .map_err(|err| err.into().error_response());
            HttpService::build()
                .keep_alive(Duration::from_secs(5))
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .local_addr(addr)
                .upgrade(upgrade)
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })?;
    }
    Ok(builder.run())
}
