//! The JSON error body of every REST failure:
//! `{"error": CODE, "message": text, "statusCode": n, "nextActions"?: text}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::persistence::PersistenceError;

/// A REST failure, converted to its response once, at the boundary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, for example `REALTIME_CHANNEL_NOT_FOUND`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// What to do about it, when there is something to say.
    pub next_actions: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    status_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_actions: Option<&'a str>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            next_actions: None,
        }
    }

    /// Adds a hint on how to fix the request.
    pub fn with_next_actions(mut self, next_actions: impl Into<String>) -> Self {
        self.next_actions = Some(next_actions.into());
        self
    }

    /// 400 `INVALID_INPUT`: unparsable JSON, bad query parameters.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", message)
    }

    /// 400 `REALTIME_INVALID_CHANNEL_REQUEST`: a channel body with wrong fields.
    pub fn invalid_channel_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "REALTIME_INVALID_CHANNEL_REQUEST",
            message,
        )
    }

    /// 400 `REALTIME_INVALID_CHANNEL_PATTERN`.
    pub fn invalid_channel_pattern(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "REALTIME_INVALID_CHANNEL_PATTERN", message).with_next_actions(
            "use segments of letters, digits and '-' separated by ':', with '%' as the wildcard after the first segment",
        )
    }

    /// 404 `REALTIME_CHANNEL_NOT_FOUND`.
    pub fn channel_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "REALTIME_CHANNEL_NOT_FOUND",
            "Channel not found",
        )
    }

    /// 404 `NOT_FOUND` for a path no route serves.
    pub fn route_not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route for {method} {path}"),
        )
    }

    /// 405 `METHOD_NOT_ALLOWED` for a known path with another method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// 413 `PAYLOAD_TOO_LARGE`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 503 `DATABASE_UNAVAILABLE`: the database cannot be reached or
    /// cannot write right now (the log says why); retrying later may work.
    pub fn database_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            "the database is unavailable; retry later",
        )
    }

    /// 500 `INTERNAL_ERROR`; the details go to the log, not to the caller.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal server error",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody {
            error: self.code,
            message: &self.message,
            status_code: self.status.as_u16(),
            next_actions: self.next_actions.as_deref(),
        })
    }
}

impl From<PersistenceError> for ApiError {
    fn from(err: PersistenceError) -> Self {
        match err {
            PersistenceError::NotFound => {
                Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", "not found")
            }
            PersistenceError::Duplicate => {
                Self::new(StatusCode::CONFLICT, "ALREADY_EXISTS", "already exists")
            }
            err if err.is_unavailable() => {
                tracing::warn!(error = %err, "database unavailable");
                Self::database_unavailable()
            }
            PersistenceError::TooLate => Self::database_unavailable(),
            PersistenceError::Database(err) => {
                tracing::error!(error = %err, "database failure");
                Self::internal()
            }
        }
    }
}
