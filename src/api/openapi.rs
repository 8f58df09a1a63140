//! `GET /api/realtime/openapi.json`: the OpenAPI document of the REST API,
//! derived (utoipa) from the handlers' `#[utoipa::path]` attributes and
//! the types they answer with. Public, like `/health`: it describes the
//! API, it grants nothing.
//!
//! The request bodies of handlers that take raw JSON (to answer InsForge's
//! exact error messages) are described by the `…Request` types here.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{actors, channels, messages, permissions, retention, sessions};

/// Registers the route under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/openapi.json")
            .get(document)
            .default_service(web::to(super::method_not_allowed)),
    );
}

async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// The JSON body of every error.
#[derive(ToSchema)]
#[schema(as = ErrorResponse)]
#[allow(dead_code)] // Documentation only: `ApiError` writes the body.
pub struct ErrorResponse {
    /// Machine-readable code, for example `REALTIME_CHANNEL_NOT_FOUND`.
    error: String,
    /// What went wrong.
    message: String,
    /// The HTTP status again.
    #[schema(rename = "statusCode")]
    status_code: u16,
    /// What to do about it, when there is something to say.
    #[schema(rename = "nextActions")]
    next_actions: Option<String>,
}

/// `{"message": …}`: a confirmation.
#[derive(serde::Serialize, ToSchema)]
pub struct MessageResponse {
    /// What was done.
    pub message: String,
}

/// The bearer (an `ik_` API key or an admin JWT) and `X-API-Key` schemes.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Realtime",
        description = "Channels, message history, statistics, retention, permissions and the \
                       live actor system of the realtime server (an InsForge Realtime drop-in). \
                       Live publish/subscribe uses Socket.IO at /socket.io/."
    ),
    paths(
        channels::list,
        channels::create,
        channels::get,
        channels::update,
        channels::delete,
        messages::list,
        messages::publish,
        messages::clear,
        messages::stats,
        permissions::get,
        permissions::create,
        permissions::delete,
        retention::get,
        retention::update,
        actors::list,
        actors::get,
        sessions::list,
        sessions::get,
        sessions::close,
    ),
    modifiers(&Security),
    tags(
        (name = "Channels", description = "Channel patterns and their webhook URLs"),
        (name = "Messages", description = "Message history, publishing and statistics"),
        (name = "Permissions", description = "Who may subscribe and publish"),
        (name = "Configuration", description = "Retention of history"),
        (name = "Inspection", description = "The live channel actors and connections"),
    )
)]
pub struct ApiDoc;
