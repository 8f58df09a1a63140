//! `/api/realtime/messages`: history listing, clearing and statistics.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::messages;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::auth::Admin;
use super::error::ApiError;
use super::query::QueryParams;
use crate::persistence::{self, messages::MessageFilter};
use crate::publish::{PublishError, PublishRequest};
use crate::server::AppState;

/// A history row as the API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    id: Uuid,
    event_name: String,
    channel_id: Option<Uuid>,
    channel_name: String,
    payload: serde_json::Value,
    sender_type: String,
    sender_id: Option<Uuid>,
    ws_audience_count: i32,
    wh_audience_count: i32,
    wh_delivered_count: i32,
    created_at: DateTime<Utc>,
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

async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams(query.into_inner());
    let filter = MessageFilter {
        channel_id: query.uuid("channelId")?,
        event_name: query.string("eventName"),
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
async fn publish(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let request = PublishRequest::parse(body.into_inner()).map_err(publish_error)?;
    let row = state
        .realtime
        .publish_system(request)
        .await
        .map_err(publish_error)?;
    Ok(HttpResponse::Created().json(MessageView::from(row)))
}

/// A failed publish as a REST error: its code and status, and its message
/// (never database details: the writer logged those).
fn publish_error(err: PublishError) -> ApiError {
    ApiError::new(err.status(), err.code(), err.to_string())
}

async fn clear(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let deleted = persistence::messages::clear(&state.db).await?;
    tracing::info!(deleted, "message history cleared");
    Ok(HttpResponse::Ok().json(json!({ "deleted": deleted })))
}

async fn stats(
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
    let top_events: Vec<_> = stats
        .top_events
        .into_iter()
        .map(|(event_name, count)| json!({ "eventName": event_name, "count": count }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "totalMessages": stats.total_messages,
        "whDeliveryRate": stats.wh_delivery_rate,
        "topEvents": top_events,
        "retentionDays": retention_days,
    })))
}
