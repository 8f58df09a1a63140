//! The HTTP side of an Engine.IO endpoint: the handshake, long-polling GET
//! and POST, WebSocket sessions and upgrades, CORS, and the tasks that read
//! and write a WebSocket on behalf of its session.
//!
//! Errors follow the protocol: HTTP 400 with `{"code": n, "message": …}`,
//! codes 0 to 5.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::session::{
    PollAbandoned, PollAnswer, PollGet, PollOversize, PollPost, RequestError, Session, WsAttach,
    WsCommand, WsGone, WsIncoming, WsLink,
};
use super::{EngineHandler, EngineServer, Sid};
use crate::protocol::engineio::Frame;

/// The protocol's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorCode {
    TransportUnknown = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    fn message(self) -> &'static str {
        match self {
            ErrorCode::TransportUnknown => "Transport unknown",
            ErrorCode::UnknownSid => "Session ID unknown",
            ErrorCode::BadHandshakeMethod => "Bad handshake method",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    fn response(self) -> HttpResponse {
        HttpResponse::BadRequest().json(serde_json::json!({
            "code": self as u8,
            "message": self.message(),
        }))
    }
}

impl From<RequestError> for ErrorCode {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::UnknownSid => ErrorCode::UnknownSid,
            RequestError::BadRequest => ErrorCode::BadRequest,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TransportKind {
    Polling,
    WebSocket,
}

/// The query parameters every Engine.IO request carries.
struct EngineQuery {
    transport: TransportKind,
    sid: Option<String>,
}

impl EngineQuery {
    fn parse(req: &HttpRequest) -> Result<EngineQuery, ErrorCode> {
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(req.query_string().as_bytes())
                .into_owned()
                .collect();
        if params.get("EIO").map(String::as_str) != Some("4") {
            return Err(ErrorCode::UnsupportedProtocolVersion);
        }
        let transport = match params.get("transport").map(String::as_str) {
            Some("polling") => TransportKind::Polling,
            Some("websocket") => TransportKind::WebSocket,
            _ => return Err(ErrorCode::TransportUnknown),
        };
        Ok(EngineQuery {
            transport,
            sid: params.get("sid").cloned(),
        })
    }
}

/// Registers the endpoint at `path` (and `path` without its trailing slash).
pub fn configure<H: EngineHandler>(
    path: &str,
    server: EngineServer<H>,
) -> impl FnOnce(&mut web::ServiceConfig) {
    let path = path.trim_end_matches('/').to_owned();
    move |cfg| {
        let data = web::Data::new(server);
        for route in [format!("{path}/"), path] {
            cfg.service(
                web::resource(route)
                    .app_data(data.clone())
                    .route(web::get().to(get::<H>))
                    .route(web::post().to(post::<H>))
                    .route(web::method(Method::OPTIONS).to(preflight::<H>))
                    .default_service(web::to(other_method::<H>)),
            );
        }
    }
}

async fn get<H: EngineHandler>(
    req: HttpRequest,
    body: web::Payload,
    server: web::Data<EngineServer<H>>,
) -> HttpResponse {
    let response = match EngineQuery::parse(&req) {
        Err(code) => code.response(),
        Ok(EngineQuery {
            transport: TransportKind::Polling,
            sid: None,
        }) => handshake(&req, &server),
        Ok(EngineQuery {
            transport: TransportKind::Polling,
            sid: Some(sid),
        }) => poll(&server, &sid).await,
        Ok(EngineQuery {
            transport: TransportKind::WebSocket,
            sid,
        }) => websocket(&req, body, &server, sid.as_deref()).await,
    };
    with_cors(&req, &server, response)
}

async fn post<H: EngineHandler>(
    req: HttpRequest,
    body: web::Payload,
    server: web::Data<EngineServer<H>>,
) -> HttpResponse {
    let response = match EngineQuery::parse(&req) {
        Err(code) => code.response(),
        Ok(EngineQuery { sid: None, .. }) => ErrorCode::BadHandshakeMethod.response(),
        Ok(EngineQuery {
            transport: TransportKind::WebSocket,
            ..
        }) => ErrorCode::BadRequest.response(),
        Ok(EngineQuery { sid: Some(sid), .. }) => poll_post(&server, &sid, body).await,
    };
    with_cors(&req, &server, response)
}

async fn other_method<H: EngineHandler>(
    req: HttpRequest,
    server: web::Data<EngineServer<H>>,
) -> HttpResponse {
    let response = match EngineQuery::parse(&req) {
        Err(code) => code.response(),
        Ok(EngineQuery { sid: None, .. }) => ErrorCode::BadHandshakeMethod.response(),
        Ok(_) => ErrorCode::BadRequest.response(),
    };
    with_cors(&req, &server, response)
}

/// Answers a CORS preflight.
async fn preflight<H: EngineHandler>(
    req: HttpRequest,
    server: web::Data<EngineServer<H>>,
) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    response.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"));
    if let Some(requested) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        response.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone()));
    }
    response.insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"));
    with_cors(&req, &server, response.finish())
}

/// Adds the CORS headers for an allowed `Origin`.
fn with_cors<H: EngineHandler>(
    req: &HttpRequest,
    server: &EngineServer<H>,
    mut response: HttpResponse,
) -> HttpResponse {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return response;
    };
    if !origin
        .to_str()
        .is_ok_and(|origin| server.config.allows_origin(origin))
    {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

fn text_response(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .body(body)
}

/// A polling handshake: a new session, answered with its open packet.
fn handshake<H: EngineHandler>(req: &HttpRequest, server: &EngineServer<H>) -> HttpResponse {
    let sid = Sid::random();
    let open = Session::<H>::open_packet(&sid, &server.config, &["websocket"]);
    let handler = (server.factory)(req);
    Session::start_polling(sid, server.config.clone(), server.registry.clone(), handler);
    text_response(open)
}

/// Tells the session its waiting GET was dropped, unless disarmed first.
struct AbandonGuard<H: EngineHandler>(Option<Addr<Session<H>>>);

impl<H: EngineHandler> Drop for AbandonGuard<H> {
    fn drop(&mut self) {
        if let Some(addr) = self.0.take() {
            addr.do_send(PollAbandoned);
        }
    }
}

async fn poll<H: EngineHandler>(server: &EngineServer<H>, sid: &str) -> HttpResponse {
    let Some(addr) = server.registry.get(sid) else {
        return ErrorCode::UnknownSid.response();
    };
    match addr.send(PollGet).await {
        Ok(Ok(PollAnswer::Ready(payload))) => text_response(payload),
        Ok(Ok(PollAnswer::Wait(rx))) => {
            // If the client goes away, actix drops this future: the guard
            // then tells the session, which closes.
            let mut guard = AbandonGuard(Some(addr));
            let payload = rx.await.unwrap_or_else(|_| "1".to_owned());
            guard.0 = None;
            text_response(payload)
        }
        Ok(Err(err)) => ErrorCode::from(err).response(),
        Err(_) => ErrorCode::UnknownSid.response(),
    }
}

async fn poll_post<H: EngineHandler>(
    server: &EngineServer<H>,
    sid: &str,
    mut body: web::Payload,
) -> HttpResponse {
    let Some(addr) = server.registry.get(sid) else {
        return ErrorCode::UnknownSid.response();
    };
    let limit = server.config.max_payload;
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return ErrorCode::BadRequest.response();
        };
        if bytes.len() + chunk.len() > limit {
            addr.do_send(PollOversize);
            return HttpResponse::build(StatusCode::PAYLOAD_TOO_LARGE).json(serde_json::json!({
                "code": ErrorCode::BadRequest as u8,
                "message": format!("payload larger than {limit} bytes"),
            }));
        }
        bytes.extend_from_slice(&chunk);
    }
    match addr.send(PollPost(bytes.freeze())).await {
        Ok(Ok(())) => text_response("ok".to_owned()),
        Ok(Err(err)) => ErrorCode::from(err).response(),
        Err(_) => ErrorCode::UnknownSid.response(),
    }
}

/// A WebSocket request: a new session, or the upgrade of a polling one.
async fn websocket<H: EngineHandler>(
    req: &HttpRequest,
    body: web::Payload,
    server: &EngineServer<H>,
    sid: Option<&str>,
) -> HttpResponse {
    let existing = match sid {
        None => None,
        Some(sid) => match server.registry.get(sid) {
            Some(addr) => Some(addr),
            None => return ErrorCode::UnknownSid.response(),
        },
    };
    let Ok((response, ws_session, stream)) = actix_ws::handle(req, body) else {
        return ErrorCode::BadRequest.response();
    };
    let max_payload = server.config.max_payload;
    let stream = stream
        .max_frame_size(max_payload)
        .aggregate_continuations()
        .max_continuation_size(max_payload);
    let max_frames = server.config.max_buffered_packets.max(1);
    let (tx, rx) = mpsc::channel(max_frames);
    let link = WsLink::new(tx, max_frames);
    let link_id = link.id;
    let queued = link.queued();
    let addr = match existing {
        None => {
            let handler = (server.factory)(req);
            Session::start_websocket(
                Sid::random(),
                server.config.clone(),
                server.registry.clone(),
                handler,
                link,
            )
        }
        Some(addr) => match addr.send(WsAttach(link)).await {
            Ok(Ok(())) => addr,
            Ok(Err(err)) => return ErrorCode::from(err).response(),
            Err(_) => return ErrorCode::UnknownSid.response(),
        },
    };
    actix_web::rt::spawn(write_websocket(ws_session, rx, queued));
    actix_web::rt::spawn(read_websocket(addr, link_id, stream));
    response
}

/// Writes what the session queues, in order, until told to close or the
/// session drops its end.
async fn write_websocket(
    mut ws: actix_ws::Session,
    mut rx: mpsc::Receiver<WsCommand>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(command) = rx.recv().await {
        let sent = match command {
            WsCommand::Frame(frame) => write_frame(&mut ws, &frame, &queued).await,
            WsCommand::Frames(frames) => {
                let mut sent = Ok(());
                for frame in frames.iter() {
                    sent = write_frame(&mut ws, frame, &queued).await;
                    if sent.is_err() {
                        break;
                    }
                }
                sent
            }
            WsCommand::Pong(bytes) => ws.pong(&bytes).await,
            WsCommand::Close => break,
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = ws.close(None).await;
}

async fn write_frame(
    ws: &mut actix_ws::Session,
    frame: &Frame,
    queued: &AtomicUsize,
) -> Result<(), actix_ws::Closed> {
    let sent = match frame {
        Frame::Text(text) => ws.text(text.clone()).await,
        Frame::Binary(bytes) => ws.binary(bytes.clone()).await,
    };
    queued.fetch_sub(1, Ordering::Relaxed);
    sent
}

/// Hands every message to the session, waiting for it to take each one so
/// a flooding client is slowed down rather than buffered without bound.
async fn read_websocket<H: EngineHandler>(
    addr: Addr<Session<H>>,
    link_id: u64,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    while let Some(item) = stream.recv().await {
        let Ok(message) = item else {
            // Oversize frame or broken framing: the WebSocket is done.
            break;
        };
        // Wait for the session to take each message: a flood is slowed down
        // here, and never fills the mailbox that deliveries to this socket
        // share (a full mailbox marks a socket as too slow to deliver to).
        if addr.send(WsIncoming { link_id, message }).await.is_err() {
            return;
        }
    }
    addr.do_send(WsGone { link_id });
}
