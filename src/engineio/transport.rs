//! The HTTP side of an Engine.IO endpoint: the handshake, long-polling GET
//! and POST, and CORS. WebSocket requests with upgrade headers never reach
//! these handlers: [`super::upgrade`] takes them first.
//!
//! Errors follow the protocol: HTTP 400 with `{"code": n, "message": …}`,
//! codes 0 to 5.

use std::collections::HashMap;

use actix::Addr;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::session::{
    PollAbandoned, PollAnswer, PollGet, PollOversize, PollPost, PollPostBegin, PollPostEnded,
    RequestError, Session,
};
use super::{EngineHandler, EngineServer};
use crate::metrics::METRICS;

/// The protocol's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ErrorCode {
    TransportUnknown = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    pub(super) fn message(self) -> &'static str {
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

/// What a request for an unknown session id gets.
pub(super) fn unknown_sid_message(config: &super::EngineConfig, sid: &str) -> &'static str {
    if config.made_elsewhere(sid) {
        METRICS.engine_wrong_node.inc();
        "Session ID unknown: another server of this service holds the session; \
         the load balancer must send all requests of a session to one server (sticky sessions)"
    } else {
        ErrorCode::UnknownSid.message()
    }
}

/// 400 for a request whose session id is not (or no longer) here.
fn unknown_sid<H: EngineHandler>(server: &EngineServer<H>, sid: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({
        "code": ErrorCode::UnknownSid as u8,
        "message": unknown_sid_message(&server.config, sid),
    }))
}

impl From<RequestError> for ErrorCode {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::UnknownSid => ErrorCode::UnknownSid,
            RequestError::BadRequest | RequestError::TooManyRequests => ErrorCode::BadRequest,
        }
    }
}

/// The answer to a polling request the session refused.
fn request_error(err: RequestError) -> HttpResponse {
    match err {
        RequestError::TooManyRequests => {
            refused("too many long-polling requests for this session (limits.polling_rate)")
        }
        other => ErrorCode::from(other).response(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum TransportKind {
    Polling,
    WebSocket,
}

/// The query parameters every Engine.IO request carries.
pub(super) struct EngineQuery {
    pub(super) transport: TransportKind,
    pub(super) sid: Option<String>,
}

impl EngineQuery {
    pub(super) fn parse(query: &str) -> Result<EngineQuery, ErrorCode> {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
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
    server: web::Data<EngineServer<H>>,
) -> HttpResponse {
    let response = match EngineQuery::parse(req.query_string()) {
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
        }) => websocket(&server, sid.as_deref()),
    };
    with_cors(&req, &server, response)
}

async fn post<H: EngineHandler>(
    req: HttpRequest,
    body: web::Payload,
    server: web::Data<EngineServer<H>>,
) -> HttpResponse {
    let response = match EngineQuery::parse(req.query_string()) {
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
    let response = match EngineQuery::parse(req.query_string()) {
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

/// A polling handshake: a new session, answered with its open packet, if
/// the client's address may open one.
fn handshake<H: EngineHandler>(req: &HttpRequest, server: &EngineServer<H>) -> HttpResponse {
    let ticket = match server.admission.admit(req.head()) {
        Ok(ticket) => ticket,
        Err(refusal) => return refused(refusal.message()),
    };
    let sid = server.config.new_sid();
    let open = Session::<H>::open_packet(&sid, &server.config, &["websocket"]);
    let handler = (server.factory)(req.head());
    Session::start_polling(
        sid,
        server.config.clone(),
        server.registry.clone(),
        handler,
        ticket,
    );
    text_response(open)
}

/// 429 for a request a limit refused: Engine.IO's JSON error with code 4
/// (Forbidden, as the reference server answers a refused request), the
/// limit named in the message, and a hint when to try again.
pub(super) fn refused(message: &str) -> HttpResponse {
    HttpResponse::TooManyRequests()
        .insert_header((header::RETRY_AFTER, "1"))
        .json(serde_json::json!({ "code": FORBIDDEN, "message": message }))
}

/// Engine.IO's error code for a request the server will not serve.
pub(super) const FORBIDDEN: u8 = 4;

/// Tells the session its POST ended without a body, unless disarmed first.
struct PostGuard<H: EngineHandler>(Option<Addr<Session<H>>>);

impl<H: EngineHandler> Drop for PostGuard<H> {
    fn drop(&mut self) {
        if let Some(addr) = self.0.take() {
            addr.do_send(PollPostEnded);
        }
    }
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
        return unknown_sid(server, sid);
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
        Ok(Err(err)) => request_error(err),
        Err(_) => ErrorCode::UnknownSid.response(),
    }
}

async fn poll_post<H: EngineHandler>(
    server: &EngineServer<H>,
    sid: &str,
    mut body: web::Payload,
) -> HttpResponse {
    let Some(addr) = server.registry.get(sid) else {
        return unknown_sid(server, sid);
    };
    match addr.send(PollPostBegin).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return request_error(err),
        Err(_) => return ErrorCode::UnknownSid.response(),
    }
    // Until the body is handed over, a POST that ends (the client went
    // away, a broken body) frees the session for the next one.
    let mut guard = PostGuard(Some(addr.clone()));
    let limit = server.config.max_payload;
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return ErrorCode::BadRequest.response();
        };
        if bytes.len() + chunk.len() > limit {
            guard.0 = None;
            addr.do_send(PollOversize);
            return HttpResponse::build(StatusCode::PAYLOAD_TOO_LARGE).json(serde_json::json!({
                "code": ErrorCode::BadRequest as u8,
                "message": format!("payload larger than {limit} bytes"),
            }));
        }
        bytes.extend_from_slice(&chunk);
    }
    guard.0 = None;
    match addr.send(PollPost(bytes.freeze())).await {
        Ok(Ok(())) => text_response("ok".to_owned()),
        Ok(Err(err)) => request_error(err),
        Err(_) => ErrorCode::UnknownSid.response(),
    }
}

/// A WebSocket request that reached the app: it lacks the upgrade headers
/// (real upgrades are taken before the app, see [`super::upgrade`]).
fn websocket<H: EngineHandler>(server: &EngineServer<H>, sid: Option<&str>) -> HttpResponse {
    match sid {
        Some(sid) if server.registry.get(sid).is_none() => unknown_sid(server, sid),
        _ => ErrorCode::BadRequest.response(),
    }
}
