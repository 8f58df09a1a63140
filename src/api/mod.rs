//! The REST surface: the admin API under `/api/realtime` and `/health`.
//!
//! # Layout
//! - [`error`]: the JSON error body every failure uses.
//! - [`auth`]: the `Admin` extractor.
//! - [`query`]: typed query-string parameters.
//! - [`http_metrics`]: requests by route and status, for `/metrics`.
//! - [`openapi`]: the OpenAPI document, derived from the handlers.
//! - [`channels`], [`messages`], [`retention`], [`permissions`]: one
//!   resource each.
//! - [`actors`], [`sessions`]: the live channel actors and connections
//!   (inspection).
//! - [`cluster_scope`]: those lists for every node of a cluster.

pub mod actors;
pub mod auth;
pub mod channels;
pub mod cluster_scope;
pub mod error;
pub mod http_metrics;
pub mod idempotency;
pub mod messages;
pub mod openapi;
pub mod permissions;
pub mod query;
pub mod retention;
pub mod sessions;

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use self::error::ApiError;
use crate::server::AppState;

/// Registers every REST route, the JSON and query extractor settings, and
/// the JSON 404 for unknown paths.
pub fn configure(max_body_bytes: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(json_config(max_body_bytes))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .service(
                web::resource("/metrics")
                    .get(metrics)
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/health")
                    .get(health)
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::scope("/api/realtime")
                    .configure(channels::configure)
                    .configure(messages::configure)
                    .configure(retention::configure)
                    .configure(permissions::configure)
                    .configure(actors::configure)
                    .configure(sessions::configure)
                    .configure(openapi::configure),
            );
    }
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| {
            let api_error = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::payload_too_large(limit)
                }
                JsonPayloadError::ContentType => ApiError::invalid_input(
                    "request body must be JSON (Content-Type: application/json)",
                ),
                JsonPayloadError::Deserialize(err) => {
                    ApiError::invalid_input(format!("invalid JSON body: {err}"))
                }
                other => ApiError::invalid_input(format!("invalid request body: {other}")),
            };
            api_error.into()
        })
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid_input(format!("invalid query string: {err}")).into()
}

/// The JSON 404 for a path no route serves.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::route_not_found(req.method().as_str(), req.path()).error_response()
}

/// The JSON 405 for a known path with a method it does not serve.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::method_not_allowed(req.method().as_str(), req.path()).error_response()
}

/// `GET /metrics`: Prometheus text. Counts only, no names or payloads, so
/// it needs no credentials, like `/health`.
async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

/// `GET /health`: 200 while the database answers and takes the server's
/// writes; 503 when it cannot be reached (within [`HEALTH_PING_TIMEOUT`])
/// or writes fail (a full or locked SQLite file still answers reads).
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let ping = actix_rt::time::timeout(HEALTH_PING_TIMEOUT, state.db.ping()).await;
    let database = match ping {
        Ok(Ok(())) if state.realtime.writes.is_writable() => "ok",
        Ok(Ok(())) => "not writable",
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database unreachable");
            "unreachable"
        }
        Err(_) => "unreachable",
    };
    if database == "ok" {
        HttpResponse::Ok().json(json!({ "status": "ok", "database": "ok" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unavailable", "database": database }))
    }
}

/// How long `/health` waits for the database: load balancers probe with
/// timeouts of a few seconds, and a late answer is as bad as a no.
const HEALTH_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
