//! `/api/realtime/channels`: list, create, get, update, delete.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::channels;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Admin;
use super::error::ApiError;
use super::openapi::{ErrorResponse, MessageResponse};
use crate::pattern::validate_pattern;
use crate::persistence::channels::{
    ChannelChanges, ChannelOptions, NewChannel, OptionChanges, Retention,
};
use crate::persistence::{self, PersistenceError};
use crate::server::AppState;

/// Most webhook URLs one channel may have.
const MAX_WEBHOOK_URLS: usize = 20;
/// Longest description and webhook URL accepted, in bytes.
const MAX_TEXT_LEN: usize = 2048;

/// A channel as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Channel)]
pub struct ChannelView {
    id: Uuid,
    /// A name, or a pattern with `%` wildcards (`order:%`).
    pattern: String,
    description: Option<String>,
    /// Where each durable message of the channel is POSTed.
    webhook_urls: Option<Vec<String>>,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Messages are delivered live only: never stored, posted to webhooks
    /// or recovered (typing indicators, cursors). An addition to InsForge's
    /// channel.
    ephemeral: bool,
    /// How long the channel's messages are kept, overriding the global
    /// `retentionDays`; null for the global one. An addition to InsForge's
    /// channel.
    retention: Option<RetentionView>,
}

/// A channel's own retention: either bound or both.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ChannelRetention)]
pub struct RetentionView {
    /// Messages older than this many days are deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 36500)]
    max_age_days: Option<i32>,
    /// Only this many of the newest messages are kept per channel name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000000)]
    max_messages: Option<i64>,
}

/// The body of `POST /channels`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: the handler reads raw JSON.
pub struct CreateChannelRequest {
    /// A name, or a pattern with `%` wildcards (`order:%`).
    pattern: String,
    #[schema(max_length = 2048)]
    description: Option<String>,
    /// At most 20 http(s) URLs.
    webhook_urls: Option<Vec<String>>,
    /// Defaults to true.
    enabled: Option<bool>,
    /// Defaults to false.
    ephemeral: Option<bool>,
    /// Defaults to null (the global retention).
    retention: Option<RetentionRequest>,
}

/// A channel's own retention, as sent; `{}` or null clears it.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ChannelRetentionRequest)]
#[allow(dead_code)] // Documentation only: the handler reads raw JSON.
pub struct RetentionRequest {
    #[schema(minimum = 1, maximum = 36500)]
    max_age_days: Option<i32>,
    #[schema(minimum = 1, maximum = 1000000000)]
    max_messages: Option<i64>,
}

/// The body of `PUT /channels/{id}`: absent fields stay as they are;
/// `null` clears `description` and `webhookUrls`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: the handler reads raw JSON.
pub struct UpdateChannelRequest {
    pattern: Option<String>,
    #[schema(max_length = 2048)]
    description: Option<String>,
    webhook_urls: Option<Vec<String>>,
    enabled: Option<bool>,
    ephemeral: Option<bool>,
    retention: Option<RetentionRequest>,
}

impl ChannelView {
    fn new(model: channels::Model, options: ChannelOptions) -> Self {
        let retention = options.retention;
        ChannelView {
            id: model.id,
            pattern: model.pattern,
            description: model.description,
            webhook_urls: model.webhook_urls.map(|urls| urls.0),
            enabled: model.enabled,
            created_at: model.created_at,
            updated_at: model.updated_at,
            ephemeral: options.ephemeral,
            retention: retention.is_set().then_some(RetentionView {
                max_age_days: retention.max_age_days,
                max_messages: retention.max_messages,
            }),
        }
    }
}

/// Registers the routes under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/channels")
            .get(list)
            .post(create)
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/channels/{id}")
            .get(get)
            .put(update)
            .delete(delete)
            .default_service(web::to(super::method_not_allowed)),
    );
}

#[utoipa::path(
    get,
    path = "/api/realtime/channels",
    tag = "Channels",
    summary = "List channels",
    responses(
        (status = 200, description = "Every channel", body = [ChannelView]),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rows = persistence::channels::list(&state.db).await?;
    let options = persistence::channels::all_options(&state.db).await?;
    let views: Vec<ChannelView> = rows
        .into_iter()
        .map(|row| {
            let options = options.get(&row.id).copied().unwrap_or_default();
            ChannelView::new(row, options)
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

#[utoipa::path(
    post,
    path = "/api/realtime/channels",
    tag = "Channels",
    summary = "Create a channel",
    request_body = CreateChannelRequest,
    responses(
        (status = 201, description = "The channel", body = ChannelView),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 409, description = "Already exists", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn create(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let fields = ChannelFields::parse(&body)?;
    let pattern = fields
        .pattern
        .clone()
        .ok_or_else(|| ApiError::invalid_channel_request("pattern: Channel pattern is required"))?;
    let new = NewChannel {
        pattern,
        description: fields.description.flatten(),
        webhook_urls: fields.webhook_urls.flatten(),
        enabled: fields.enabled.unwrap_or(true),
    };
    let created = persistence::channels::create(&state.db, new)
        .await
        .map_err(channel_error)?;
    let options = if fields.options.is_empty() {
        ChannelOptions::default()
    } else {
        persistence::channels::set_options(&state.db, created.id, fields.options).await?
    };
    refresh_catalog(&state).await;
    tracing::info!(pattern = %created.pattern, id = %created.id, "channel created");
    Ok(HttpResponse::Created().json(ChannelView::new(created, options)))
}

#[utoipa::path(
    get,
    path = "/api/realtime/channels/{id}",
    tag = "Channels",
    summary = "Get a channel",
    params(("id" = String, Path, description = "The channel's id (a uuid)")),
    responses(
        (status = 200, description = "The channel", body = ChannelView),
        (status = 400, description = "Invalid input", body = ErrorResponse),
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
    let id = parse_id(&id)?;
    let channel = persistence::channels::get(&state.db, id)
        .await
        .map_err(channel_error)?;
    let options = persistence::channels::options(&state.db, id).await?;
    Ok(HttpResponse::Ok().json(ChannelView::new(channel, options)))
}

#[utoipa::path(
    put,
    path = "/api/realtime/channels/{id}",
    tag = "Channels",
    summary = "Update a channel",
    params(("id" = String, Path, description = "The channel's id (a uuid)")),
    request_body = UpdateChannelRequest,
    responses(
        (status = 200, description = "The channel", body = ChannelView),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
        (status = 409, description = "Already exists", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn update(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let fields = ChannelFields::parse(&body)?;
    let changes = ChannelChanges {
        pattern: fields.pattern,
        description: fields.description,
        webhook_urls: fields.webhook_urls,
        enabled: fields.enabled,
    };
    let updated = persistence::channels::update(&state.db, id, changes)
        .await
        .map_err(channel_error)?;
    let options = if fields.options.is_empty() {
        persistence::channels::options(&state.db, id).await?
    } else {
        persistence::channels::set_options(&state.db, id, fields.options).await?
    };
    refresh_catalog(&state).await;
    tracing::info!(pattern = %updated.pattern, id = %updated.id, enabled = updated.enabled, "channel updated");
    Ok(HttpResponse::Ok().json(ChannelView::new(updated, options)))
}

#[utoipa::path(
    delete,
    path = "/api/realtime/channels/{id}",
    tag = "Channels",
    summary = "Delete a channel",
    params(("id" = String, Path, description = "The channel's id (a uuid)")),
    responses(
        (status = 200, description = "Deleted; its messages stay, with channelId null", body = MessageResponse),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn delete(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    persistence::channels::delete(&state.db, id)
        .await
        .map_err(channel_error)?;
    refresh_catalog(&state).await;
    tracing::info!(%id, "channel deleted");
    Ok(HttpResponse::Ok().json(MessageResponse {
        message: "Channel deleted".into(),
    }))
}

/// Makes a channel change apply to subscribes and publishes at once.
async fn refresh_catalog(state: &AppState) {
    if let Err(err) = state.realtime.catalog.reload(&state.db).await {
        tracing::error!(error = %err, "could not reload the channel catalog");
    }
}

/// A malformed id cannot name a channel: it is "not found", as InsForge says.
fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::channel_not_found())
}

fn channel_error(err: PersistenceError) -> ApiError {
    match err {
        PersistenceError::NotFound => ApiError::channel_not_found(),
        PersistenceError::Duplicate => ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            "a channel with this pattern already exists",
        ),
        other => other.into(),
    }
}

/// The fields of a create or update body. For each: `None` when absent,
/// `Some(None)` when explicitly null (nullable fields only).
#[derive(Debug, Default)]
struct ChannelFields {
    pattern: Option<String>,
    description: Option<Option<String>>,
    webhook_urls: Option<Option<Vec<String>>>,
    enabled: Option<bool>,
    /// `ephemeral` and `retention`, this server's additions.
    options: OptionChanges,
}

impl ChannelFields {
    /// Checks every known field; unknown fields are ignored, as InsForge does.
    fn parse(body: &Value) -> Result<Self, ApiError> {
        let Some(object) = body.as_object() else {
            return Err(ApiError::invalid_channel_request(
                "request body must be a JSON object",
            ));
        };
        Ok(ChannelFields {
            pattern: parse_pattern(object)?,
            description: parse_description(object)?,
            webhook_urls: parse_webhook_urls(object)?,
            enabled: parse_bool(object, "enabled")?,
            options: OptionChanges {
                ephemeral: parse_bool(object, "ephemeral")?,
                retention: parse_retention(object)?,
            },
        })
    }
}

fn parse_bool(object: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(ApiError::invalid_channel_request(format!(
            "{field}: Expected boolean"
        ))),
    }
}

/// `retention`: null or `{}` clears it; else `maxAgeDays` (1–36500) and/or
/// `maxMessages` (1–10⁹).
fn parse_retention(object: &Map<String, Value>) -> Result<Option<Retention>, ApiError> {
    let fields = match object.get("retention") {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Retention::default())),
        Some(Value::Object(fields)) => fields,
        Some(_) => {
            return Err(ApiError::invalid_channel_request(
                "retention: Expected object",
            ))
        }
    };
    let bounded = |name: &str, max: i64| -> Result<Option<i64>, ApiError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_i64() {
                Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid_channel_request(format!(
                    "retention.{name}: Expected an integer from 1 to {max}"
                ))),
            },
        }
    };
    Ok(Some(Retention {
        max_age_days: bounded("maxAgeDays", 36_500)?.map(|days| days as i32),
        max_messages: bounded("maxMessages", 1_000_000_000)?,
    }))
}

fn parse_pattern(object: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match object.get("pattern") {
        None => Ok(None),
        // Empty is a schema error (the field is required to have content);
        // only a non-empty string can break the pattern grammar.
        Some(Value::String(pattern)) if pattern.is_empty() => Err(
            ApiError::invalid_channel_request("pattern: Channel pattern is required"),
        ),
        Some(Value::String(pattern)) => {
            validate_pattern(pattern)
                .map_err(|err| ApiError::invalid_channel_pattern(format!("pattern: {err}")))?;
            Ok(Some(pattern.clone()))
        }
        Some(_) => Err(ApiError::invalid_channel_request(
            "pattern: Expected string",
        )),
    }
}

fn parse_description(object: &Map<String, Value>) -> Result<Option<Option<String>>, ApiError> {
    match object.get("description") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(text)) if text.len() > MAX_TEXT_LEN => {
            Err(ApiError::invalid_channel_request(format!(
                "description: must be at most {MAX_TEXT_LEN} characters"
            )))
        }
        Some(Value::String(text)) if text.contains('\0') => Err(ApiError::invalid_channel_request(
            "description: must not contain the NUL character",
        )),
        Some(Value::String(text)) => Ok(Some(Some(text.clone()))),
        Some(_) => Err(ApiError::invalid_channel_request(
            "description: Expected string",
        )),
    }
}

fn parse_webhook_urls(
    object: &Map<String, Value>,
) -> Result<Option<Option<Vec<String>>>, ApiError> {
    let items = match object.get("webhookUrls") {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(None)),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::invalid_channel_request(
                "webhookUrls: Expected array",
            ))
        }
    };
    if items.len() > MAX_WEBHOOK_URLS {
        return Err(ApiError::invalid_channel_request(format!(
            "webhookUrls: at most {MAX_WEBHOOK_URLS} URLs"
        )));
    }
    let mut urls = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Value::String(text) = item else {
            return Err(ApiError::invalid_channel_request(format!(
                "webhookUrls.{index}: Expected string"
            )));
        };
        if !is_http_url(text) {
            return Err(ApiError::invalid_channel_request(format!(
                "webhookUrls.{index}: Invalid url (must be http or https)"
            )));
        }
        urls.push(text.clone());
    }
    Ok(Some(Some(urls)))
}

fn is_http_url(text: &str) -> bool {
    text.len() <= MAX_TEXT_LEN
        && !text.contains('\0')
        && url::Url::parse(text)
            .map(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn http_urls_only() {
        assert!(is_http_url("https://example.com/hook"));
        assert!(is_http_url("http://127.0.0.1:8080/x?y=1"));
        assert!(!is_http_url("ftp://example.com"));
        assert!(!is_http_url("example.com/hook"));
        assert!(!is_http_url("http://"));
    }

    #[test]
    fn explicit_null_clears_nullable_fields() {
        let fields =
            ChannelFields::parse(&json!({"description": null, "webhookUrls": null})).unwrap();
        assert_eq!(fields.description, Some(None));
        assert_eq!(fields.webhook_urls, Some(None));
        assert_eq!(fields.pattern, None);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = ChannelFields::parse(&json!({"enabled": "yes"})).unwrap_err();
        assert_eq!(err.code, "REALTIME_INVALID_CHANNEL_REQUEST");
        assert_eq!(err.message, "enabled: Expected boolean");
        let err = ChannelFields::parse(&json!({"webhookUrls": ["https://a.b", 3]})).unwrap_err();
        assert_eq!(err.message, "webhookUrls.1: Expected string");
    }

    #[test]
    fn only_a_nonempty_pattern_can_break_the_grammar() {
        for (body, code) in [
            (json!({"pattern": ""}), "REALTIME_INVALID_CHANNEL_REQUEST"),
            (json!({"pattern": 7}), "REALTIME_INVALID_CHANNEL_REQUEST"),
            (json!({"pattern": null}), "REALTIME_INVALID_CHANNEL_REQUEST"),
            (
                json!({"pattern": "a_b"}),
                "REALTIME_INVALID_CHANNEL_PATTERN",
            ),
            (
                json!({"pattern": "%:x"}),
                "REALTIME_INVALID_CHANNEL_PATTERN",
            ),
        ] {
            assert_eq!(
                ChannelFields::parse(&body).unwrap_err().code,
                code,
                "{body}"
            );
        }
    }
}
