//! `/api/realtime/config`: read and change the retention of history.

use actix_web::{web, HttpResponse};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Admin;
use super::error::ApiError;
use super::openapi::{ErrorResponse, MessageResponse};
use crate::persistence;
use crate::server::AppState;

/// The retention of history.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RealtimeConfig)]
pub struct ConfigView {
    /// Days messages are kept; null keeps them forever.
    #[schema(minimum = 1)]
    retention_days: Option<i32>,
}

/// The body of `PATCH /config`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: the handler reads raw JSON.
pub struct UpdateConfigRequest {
    /// A positive number of days, or null to keep history forever.
    #[schema(required, minimum = 1)]
    retention_days: Option<i32>,
}

/// Registers the routes under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/config")
            .get(get)
            .patch(update)
            .default_service(web::to(super::method_not_allowed)),
    );
}

#[utoipa::path(
    get,
    path = "/api/realtime/config",
    tag = "Configuration",
    summary = "Get the retention",
    responses(
        (status = 200, description = "The retention", body = ConfigView),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn get(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let retention_days = persistence::retention::retention_days(&state.db).await?;
    Ok(HttpResponse::Ok().json(ConfigView { retention_days }))
}

#[utoipa::path(
    patch,
    path = "/api/realtime/config",
    tag = "Configuration",
    summary = "Set the retention",
    request_body = UpdateConfigRequest,
    responses(
        (status = 200, description = "Updated", body = MessageResponse),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn update(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let days = parse_retention_days(&body)?;
    persistence::retention::set_retention_days(&state.db, days).await?;
    tracing::info!(retention_days = ?days, "retention updated");
    Ok(HttpResponse::Ok().json(MessageResponse {
        message: "Retention config updated successfully".into(),
    }))
}

/// `{"retentionDays": null | positive integer}`; the key is required.
fn parse_retention_days(body: &Value) -> Result<Option<i32>, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::invalid_input(
            "request body must be a JSON object",
        ));
    };
    match object.get("retentionDays") {
        None => Err(ApiError::invalid_input("retentionDays: Required")),
        Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(days) if days < 1 => Err(ApiError::invalid_input(
                "retentionDays: Number must be greater than 0",
            )),
            Some(days) => i32::try_from(days).map(Some).map_err(|_| {
                ApiError::invalid_input(format!(
                    "retentionDays: Number must be at most {}",
                    i32::MAX
                ))
            }),
            None => Err(ApiError::invalid_input("retentionDays: Expected integer")),
        },
        Some(_) => Err(ApiError::invalid_input(
            "retentionDays: Expected integer or null",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retention_values() {
        assert_eq!(
            parse_retention_days(&json!({"retentionDays": 90})),
            Ok(Some(90))
        );
        assert_eq!(
            parse_retention_days(&json!({"retentionDays": null})),
            Ok(None)
        );
        assert!(parse_retention_days(&json!({"retentionDays": 0})).is_err());
        assert!(parse_retention_days(&json!({"retentionDays": 1.5})).is_err());
        assert!(parse_retention_days(&json!({"retentionDays": "7"})).is_err());
        assert!(parse_retention_days(&json!({"retentionDays": 3_000_000_000_i64})).is_err());
        assert!(parse_retention_days(&json!({})).is_err());
    }
}
