//! `/api/realtime/sessions`: the open Socket.IO connections, asked
//! directly (an `Inspect` message to each session actor) with a deadline,
//! and closing one (an admin's disconnect).

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
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
        entry.insert("transport".into(), view.transport.into());
        entry.insert("queuedFrames".into(), view.queued_frames.into());
        sessions.push((sid, entry));
    }
    sessions.sort_by(|(_, a), (_, b)| {
        let key = |entry: &Map<String, Value>| {
            (
                entry["connectedAt"].as_str().unwrap_or_default().to_owned(),
                entry["id"].as_str().unwrap_or_default().to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    (sessions, stale)
}

/// `GET /sessions?limit=&offset=&userId=`: a JSON array in connection
/// order; `X-Total-Count` holds the total before paging and
/// `X-Stale-Count` the sessions too busy to answer in time.
#[utoipa::path(
    get,
    path = "/api/realtime/sessions",
    tag = "Inspection",
    summary = "List connected sockets",
    params(SessionListParams),
    responses(
        (status = 200, description = "Connected sockets; X-Total-Count and X-Stale-Count headers", body = [SessionEntry]),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams(query.into_inner());
    let limit = query.integer("limit", 1, MAX_LIMIT, 100)? as usize;
    let offset = query.integer("offset", 0, u32::MAX as u64, 0)? as usize;
    let user_id = query.string("userId")?;
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
    let total = matching.len();
    let page: Vec<Map<String, Value>> = matching.into_iter().skip(offset).take(limit).collect();
    Ok(HttpResponse::Ok()
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
    summary = "One connected socket",
    params(("id" = String, Path, description = "The socket id the client sees")),
    responses(
        (status = 200, description = "The socket", body = SessionEntry),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn get(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, entry) = find(&state, &id).await?;
    Ok(HttpResponse::Ok().json(entry))
}

/// `DELETE /sessions/{id}`: closes the socket's transport, as a dropped
/// connection would (no Socket.IO DISCONNECT), so the stock client
/// reconnects by itself.
#[utoipa::path(
    delete,
    path = "/api/realtime/sessions/{id}",
    tag = "Inspection",
    summary = "Disconnect a socket",
    params(("id" = String, Path, description = "The socket id the client sees")),
    responses(
        (status = 204, description = "Its transport was closed; the client reconnects by itself"),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn close(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (sid, _) = find(&state, &id).await?;
    state
        .sockets
        .registry
        .close(sid.as_str(), CloseReason::ServerClose);
    tracing::info!(socket = %id, "session closed by an admin");
    Ok(HttpResponse::NoContent().finish())
}
