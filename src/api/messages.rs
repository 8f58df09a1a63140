//! `/api/realtime/messages`: history listing, clearing and statistics.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::messages;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Admin;
use super::error::ApiError;
use super::idempotency::{self, Claim};
use super::openapi::ErrorResponse;
use super::query::QueryParams;
use crate::persistence::{self, messages::MessageFilter};
use crate::publish::{PublishError, PublishRequest};
use crate::server::AppState;

/// A history row as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Message)]
pub struct MessageView {
    id: Uuid,
    event_name: String,
    /// Null once its channel was deleted.
    channel_id: Option<Uuid>,
    /// The resolved name, e.g. `order:123`.
    channel_name: String,
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    sender_type: String,
    sender_id: Option<Uuid>,
    ws_audience_count: i32,
    wh_audience_count: i32,
    wh_delivered_count: i32,
    created_at: DateTime<Utc>,
}

/// Query parameters of `GET /messages`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: the handler reads the raw query.
pub struct MessageListParams {
    /// Only messages of this channel.
    channel_id: Option<Uuid>,
    /// Only messages of this event.
    event_name: Option<String>,
    /// Most rows (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Rows skipped first.
    #[param(minimum = 0)]
    offset: Option<u64>,
}

/// Query parameters of `GET /messages/stats`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: the handler reads the raw query.
pub struct StatsParams {
    /// Only messages of this channel.
    channel_id: Option<Uuid>,
    /// Only messages created at or after this instant.
    since: Option<DateTime<Utc>>,
}

/// The body of `POST /messages`.
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: the handler reads raw JSON.
pub struct PublishBody {
    /// A channel name an enabled channel's pattern matches.
    channel: String,
    /// The event name.
    event: String,
    /// Defaults to `{}`.
    #[schema(value_type = Option<Object>)]
    payload: Option<serde_json::Value>,
}

/// The answer to `DELETE /messages`.
#[derive(Serialize, ToSchema)]
#[schema(as = ClearMessagesResponse)]
pub struct ClearedResponse {
    /// Messages deleted.
    deleted: u64,
}

/// The answer to `GET /messages/stats`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = MessageStats)]
pub struct MessageStatsView {
    total_messages: i64,
    /// Webhook deliveries that succeeded over those attempted (0 to 1).
    #[schema(minimum = 0, maximum = 1)]
    wh_delivery_rate: f64,
    /// The ten most frequent events.
    top_events: Vec<TopEvent>,
    /// Null keeps history forever.
    retention_days: Option<i32>,
}

/// One of the most frequent events.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopEvent {
    event_name: String,
    count: i64,
}

impl From<messages::Model> for MessageView {
    fn from(model: messages::Model) -> Self {
        MessageView {
            id: model.id,
            event_name: model.event_name,
            channel_id: model.channel_id,
            channel_name: model.channel_name,
            payload: model.payload,
            sender_type: model.sender_type,
            sender_id: model.sender_id,
            ws_audience_count: model.ws_audience_count,
            wh_audience_count: model.wh_audience_count,
            wh_delivered_count: model.wh_delivered_count,
            created_at: model.created_at,
        }
    }
}

/// Registers the routes under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/messages")
            .get(list)
            .post(publish)
            .delete(clear)
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/messages/stats")
            .get(stats)
            .default_service(web::to(super::method_not_allowed)),
    );
}

#[utoipa::path(
    get,
    path = "/api/realtime/messages",
    tag = "Messages",
    summary = "List messages",
    params(MessageListParams),
    responses(
        (status = 200, description = "Messages, newest first", body = [MessageView]),
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
    let filter = MessageFilter {
        channel_id: query.uuid("channelId")?,
        event_name: query.string("eventName")?,
        since: None,
    };
    let limit = query.integer("limit", 1, 1000, 100)?;
    let offset = query.integer("offset", 0, i64::MAX as u64, 0)?;
    let rows = persistence::messages::list(&state.db, &filter, limit, offset).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(MessageView::from).collect::<Vec<_>>()))
}

/// `POST /api/realtime/messages` `{channel, event, payload}`: publish as
/// the system through the same pipeline as sockets. Answers 201 with the
/// stored message once it is durable and delivered.
#[utoipa::path(
    post,
    path = "/api/realtime/messages",
    tag = "Messages",
    summary = "Publish as the system",
    request_body = PublishBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters. A retry with the same key (within `server.idempotency_window_ms`) gets the first answer, marked `Idempotent-Replayed: true`, and stores nothing new")
    ),
    responses(
        (status = 201, description = "Stored and delivered, with its audience", body = MessageView),
        (status = 422, description = "The Idempotency-Key was used for a different publish", body = ErrorResponse),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 429, description = "The channel's backlog is full; retry", body = ErrorResponse),
        (status = 503, description = "DATABASE_UNAVAILABLE: not stored within `database.publish_timeout_ms`, and never will be; retry", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn publish(
    _admin: Admin,
    state: web::Data<AppState>,
    http: actix_web::HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let key = match http.headers().get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if idempotency::is_valid_key(key) => Some(key.to_owned()),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_INPUT",
                    format!(
                        "Idempotency-Key: 1 to {} visible ASCII characters",
                        idempotency::MAX_KEY_LEN
                    ),
                ))
            }
        },
    };
    let request = PublishRequest::parse(body.into_inner(), &state.realtime.limits.payload())
        .map_err(publish_error)?;
    let Some(key) = key else {
        let row = state
            .realtime
            .publish_system(request)
            .await
            .map_err(publish_error)?;
        return Ok(HttpResponse::Created().json(MessageView::from(row)));
    };
    let outcome = match state.idempotency.claim(&key, &request) {
        Claim::Outcome(outcome) => outcome,
        Claim::Reused => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used for a different publish",
            ))
        }
    };
    let ran_here = std::cell::Cell::new(false);
    let realtime = state.realtime.clone();
    let answer = outcome
        .get_or_init(|| async {
            ran_here.set(true);
            // A task of its own: a caller that goes away must not cancel a
            // publish that may be stored already (its retry would then
            // store it again).
            let published = actix_rt::spawn(async move { realtime.publish_system(request).await });
            match published.await {
                Ok(Ok(row)) => serde_json::to_vec(&MessageView::from(row))
                    .map(Bytes::from)
                    .map_err(|err| PublishError::Internal(err.to_string())),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(PublishError::Internal("the publish was cancelled".into())),
            }
        })
        .await
        .clone();
    match answer {
        Ok(body) => {
            let mut response = HttpResponse::Created();
            response.content_type("application/json");
            if !ran_here.get() {
                response.insert_header(("Idempotent-Replayed", "true"));
            }
            Ok(response.body(body))
        }
        Err(err) => {
            // Nothing was stored: the key may be used again.
            state.idempotency.forget(&key, &outcome);
            Err(publish_error(err))
        }
    }
}

/// A failed publish as a REST error: its code and status, and its message
/// (never database details: the writer logged those).
fn publish_error(err: PublishError) -> ApiError {
    ApiError::new(err.status(), err.code(), err.to_string())
}

#[utoipa::path(
    delete,
    path = "/api/realtime/messages",
    tag = "Messages",
    summary = "Clear the history",
    responses(
        (status = 200, description = "How many were deleted", body = ClearedResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn clear(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let deleted = persistence::messages::clear(&state.db).await?;
    tracing::info!(deleted, "message history cleared");
    Ok(HttpResponse::Ok().json(ClearedResponse { deleted }))
}

#[utoipa::path(
    get,
    path = "/api/realtime/messages/stats",
    tag = "Messages",
    summary = "Message statistics",
    params(StatsParams),
    responses(
        (status = 200, description = "Statistics", body = MessageStatsView),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn stats(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams(query.into_inner());
    let filter = MessageFilter {
        channel_id: query.uuid("channelId")?,
        event_name: None,
        since: query.datetime("since")?,
    };
    let stats = persistence::messages::stats(&state.db, &filter).await?;
    let retention_days = persistence::retention::retention_days(&state.db).await?;
    let top_events = stats
        .top_events
        .into_iter()
        .map(|(event_name, count)| TopEvent { event_name, count })
        .collect();
    Ok(HttpResponse::Ok().json(MessageStatsView {
        total_messages: stats.total_messages,
        wh_delivery_rate: stats.wh_delivery_rate,
        top_events,
        retention_days,
    }))
}
