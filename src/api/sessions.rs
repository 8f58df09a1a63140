//! `/api/realtime/sessions`: the open Socket.IO connections, asked
//! directly (an `Inspect` message to each session actor) with a deadline,
//! and closing one (an admin's disconnect).

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::cluster_scope::{self, Scope};
use super::error::ApiError;
use super::openapi::ErrorResponse;
use super::query::QueryParams;
use crate::engineio::session::Inspect;
use crate::engineio::{CloseReason, Sid};
use crate::server::AppState;

/// How long the sessions of one request may take to answer, all together.
const INSPECT_DEADLINE: Duration = Duration::from_millis(500);
/// Most sessions one request lists.
const MAX_LIMIT: u64 = 10_000;

/// A connected socket (`GET /sessions`).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: the client describes itself as JSON.
pub struct SessionEntry {
    /// The socket id the client sees (`socket.id`).
    id: String,
    /// The node (server process) the socket is connected to.
    node: String,
    /// `anon`, `authenticated` or `project_admin`.
    role: String,
    /// The user of an authenticated socket.
    user_id: Option<String>,
    /// The channels it is subscribed to.
    channels: Vec<String>,
    connected_at: DateTime<Utc>,
    /// Where it connected from (a proxy's address behind one).
    remote_address: Option<String>,
    /// `polling` or `websocket`.
    transport: String,
    /// Frames waiting to be written to it.
    queued_frames: u64,
}

/// Query parameters of `GET /sessions`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: the handler reads the raw query.
pub struct SessionListParams {
    /// Only sockets of this user.
    user_id: Option<String>,
    /// Most sockets (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    #[param(minimum = 0)]
    offset: Option<u32>,
    /// `node` (default): the sockets of this server; `cluster`: of every
    /// live node (each asked through its API).
    scope: Option<String>,
}

/// Query parameters of `GET` and `DELETE /sessions/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documentation only: the handler reads the raw query.
pub struct SessionParams {
    /// `cluster` (default): a socket this server does not hold is looked
    /// for on every other live node, and the one holding it answers;
    /// `node`: this server only.
    scope: Option<String>,
}

/// Registers the routes under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/sessions")
            .get(list)
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/sessions/{id}")
            .get(get)
            .delete(close)
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// Every connected socket as the API shows it, with its Engine.IO session
/// id (kept to close it; never shown: it is the polling credential), in
/// connection order. Sessions that have not joined the namespace yet are
/// left out; those that did not answer in time are counted.
async fn describe_all(state: &AppState) -> (Vec<(Sid, Map<String, Value>)>, usize) {
    let deadline = tokio::time::Instant::now() + INSPECT_DEADLINE;
    let answers = join_all(state.sockets.registry.all().into_iter().map(
        |(sid, session)| async move {
            let answer = tokio::time::timeout_at(deadline, session.send(Inspect)).await;
            (sid, answer.ok().and_then(Result::ok))
        },
    ))
    .await;
    let mut stale = 0;
    let mut sessions = Vec::with_capacity(answers.len());
    for (sid, answer) in answers {
        let Some(view) = answer else {
            stale += 1;
            continue;
        };
        let Value::Object(mut entry) = view.app else {
            continue;
        };
        entry.insert("node".into(), state.realtime.node.to_string().into());
        entry.insert("transport".into(), view.transport.into());
        entry.insert("queuedFrames".into(), view.queued_frames.into());
        sessions.push((sid, entry));
    }
    sessions.sort_by_key(|(_, entry)| connection_order(entry));
    (sessions, stale)
}

/// Sessions are listed by when they connected, then by socket id.
fn connection_order(entry: &Map<String, Value>) -> (String, String) {
    (
        entry["connectedAt"].as_str().unwrap_or_default().to_owned(),
        entry["id"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `GET /sessions?limit=&offset=&userId=&scope=`: a JSON array in
/// connection order; `X-Total-Count` holds the total before paging,
/// `X-Stale-Count` the sessions too busy to answer in time, and
/// `X-Unreachable-Nodes` the nodes that did not answer a `scope=cluster`
/// request.
#[utoipa::path(
    get,
    path = "/api/realtime/sessions",
    tag = "Inspection",
    summary = "List connected sockets",
    params(SessionListParams),
    responses(
        (status = 200, description = "Connected sockets; X-Total-Count, X-Stale-Count and X-Unreachable-Nodes headers", body = [SessionEntry]),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn list(
    _admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams(query.into_inner());
    let limit = query.integer("limit", 1, MAX_LIMIT, 100)? as usize;
    let offset = query.integer("offset", 0, u32::MAX as u64, 0)? as usize;
    let user_id = query.string("userId")?;
    let scope = Scope::parse(query.0.get("scope").map(String::as_str))?;
    let (sessions, stale) = describe_all(&state).await;
    let matching: Vec<Map<String, Value>> = sessions
        .into_iter()
        .map(|(_, entry)| entry)
        .filter(|entry| {
            user_id
                .as_deref()
                .is_none_or(|user| entry["userId"].as_str() == Some(user))
        })
        .collect();
    let mut total = matching.len() as u64;
    let mut response = HttpResponse::Ok();
    let matching = match scope {
        Scope::Node => matching,
        Scope::Cluster => {
            // The first offset + limit of every node, merged.
            let want = (offset + limit).min(MAX_LIMIT as usize);
            let others = cluster_scope::from_other_nodes(
                &state,
                &req,
                "/api/realtime/sessions",
                &query.0,
                want,
            )
            .await?;
            total += others.total;
            response.insert_header(("X-Unreachable-Nodes", others.unreachable.join(",")));
            let mut all: Vec<Map<String, Value>> = matching
                .into_iter()
                .take(want)
                .chain(others.entries)
                .collect();
            all.sort_by_key(connection_order);
            all
        }
    };
    let page: Vec<Map<String, Value>> = matching.into_iter().skip(offset).take(limit).collect();
    Ok(response
        .insert_header(("X-Total-Count", total.to_string()))
        .insert_header(("X-Stale-Count", stale.to_string()))
        .json(page))
}

/// The session of socket `id`.
async fn find(state: &AppState, id: &str) -> Result<(Sid, Map<String, Value>), ApiError> {
    let (sessions, _) = describe_all(state).await;
    sessions
        .into_iter()
        .find(|(_, entry)| entry["id"].as_str() == Some(id))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "REALTIME_SESSION_NOT_FOUND",
                format!("no connected socket has the id {id:?}"),
            )
        })
}

#[utoipa::path(
    get,
    path = "/api/realtime/sessions/{id}",
    tag = "Inspection",
    summary = "One connected socket, on whichever node holds it",
    params(("id" = String, Path, description = "The socket id the client sees"), SessionParams),
    responses(
        (status = 200, description = "The socket", body = SessionEntry),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found (on any node that answered; the others are in X-Unreachable-Nodes)", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn get(
    _admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    match find(&state, &id).await {
        Ok((_, entry)) => Ok(HttpResponse::Ok().json(entry)),
        Err(not_here) => elsewhere(&state, &req, &query, &id, Method::GET, not_here).await,
    }
}

/// `DELETE /sessions/{id}`: closes the socket's transport, as a dropped
/// connection would (no Socket.IO DISCONNECT), so the stock client
/// reconnects by itself.
#[utoipa::path(
    delete,
    path = "/api/realtime/sessions/{id}",
    tag = "Inspection",
    summary = "Disconnect a socket, on whichever node holds it",
    params(("id" = String, Path, description = "The socket id the client sees"), SessionParams),
    responses(
        (status = 204, description = "Its transport was closed; the client reconnects by itself"),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found (on any node that answered; the others are in X-Unreachable-Nodes)", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn close(
    _admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    match find(&state, &id).await {
        Ok((sid, _)) => {
            state
                .sockets
                .registry
                .close(sid.as_str(), CloseReason::ServerClose);
            tracing::info!(socket = %id, "session closed by an admin");
            Ok(HttpResponse::NoContent().finish())
        }
        Err(not_here) => elsewhere(&state, &req, &query, &id, Method::DELETE, not_here).await,
    }
}

/// A socket this node does not hold: unless `scope=node`, the request goes
/// to every other live node and the one holding it answers; else
/// `not_here`, naming the nodes that did not answer.
async fn elsewhere(
    state: &AppState,
    req: &HttpRequest,
    query: &HashMap<String, String>,
    id: &str,
    method: Method,
    not_here: ApiError,
) -> Result<HttpResponse, ApiError> {
    let scope = match query.get("scope") {
        None => Scope::Cluster,
        Some(scope) => Scope::parse(Some(scope))?,
    };
    // Socket ids are URL-safe base64: another id is on no node (and is
    // never pasted into a URL).
    let plausible = !id.is_empty()
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if scope == Scope::Node || !plausible {
        return Err(not_here);
    }
    let owner =
        cluster_scope::to_owner(state, req, method, &format!("/api/realtime/sessions/{id}"))
            .await?;
    if let Some((status, body)) = owner.answer {
        return Ok(HttpResponse::build(status)
            .content_type("application/json")
            .body(body));
    }
    let mut response = not_here.error_response();
    if !owner.unreachable.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&owner.unreachable.join(",")) {
            response.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-unreachable-nodes"),
                value,
            );
        }
    }
    Ok(response)
}
