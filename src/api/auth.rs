//! The admin extractor: a handler that takes [`Admin`] runs only for
//! `ik_` API keys and `project_admin` JWTs.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest};

use super::error::ApiError;
use crate::auth::{AuthError, Principal};
use crate::server::AppState;

/// A caller allowed to use the admin API.
#[derive(Clone, Debug)]
pub struct Admin(
    /// Who the caller is.
    pub Principal,
);

/// Where the credential that counts came from.
enum Credential<'a> {
    /// An API key: `Authorization: Bearer ik_…` or `x-api-key`.
    ApiKey(&'a str),
    /// The Bearer of `Authorization`, read as a JWT (or an `anon_` key).
    Token(&'a str),
}

/// Picks the credential that counts, in InsForge's order: a Bearer that
/// starts `ik_`, else `x-api-key`, else the Bearer as a token. So a valid
/// credential is never spoiled by another header beside it.
fn credential(req: &HttpRequest) -> Result<Credential<'_>, ApiError> {
    let bearer = req.headers().get(header::AUTHORIZATION).map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                unauthorized(
                    "AUTH_INVALID_CREDENTIALS",
                    "authorization header must be 'Bearer <token>'",
                )
            })
    });
    if let Some(Ok(key)) = &bearer {
        if key.starts_with("ik_") {
            return Ok(Credential::ApiKey(key));
        }
    }
    if let Some(value) = req.headers().get("x-api-key") {
        return value
            .to_str()
            .map(Credential::ApiKey)
            .map_err(|_| unauthorized("AUTH_INVALID_API_KEY", "x-api-key is not valid text"));
    }
    match bearer {
        Some(token) => token.map(Credential::Token),
        None => Err(
            unauthorized("AUTH_INVALID_CREDENTIALS", "no credentials provided").with_next_actions(
                "send Authorization: Bearer <ik_ key or admin JWT>, or x-api-key: <ik_ key>",
            ),
        ),
    }
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

fn authorize(req: &HttpRequest) -> Result<Admin, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(ApiError::internal)?;
    let auth = &state.realtime.auth;
    let verified = match credential(req)? {
        Credential::ApiKey(key) => auth.verify_api_key(key),
        Credential::Token(token) => auth.verify(token),
    };
    let principal = verified.map_err(|err| match err {
        AuthError::Missing => unauthorized("AUTH_INVALID_CREDENTIALS", "the credential is empty"),
        AuthError::InvalidApiKey => {
            unauthorized("AUTH_INVALID_API_KEY", "the API key is not valid")
        }
        AuthError::UnknownAnonKey => {
            unauthorized("AUTH_INVALID_CREDENTIALS", "the anon key is not valid")
        }
        AuthError::InvalidToken(reason) => unauthorized(
            "AUTH_INVALID_CREDENTIALS",
            &format!("invalid token: {reason}"),
        ),
    })?;
    if !principal.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AUTH_UNAUTHORIZED",
            format!(
                "role {} may not use the admin API",
                principal.role().as_str()
            ),
        )
        .with_next_actions("use an ik_ API key or a JWT with role project_admin"));
    }
    Ok(Admin(principal))
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authorize(req))
    }
}
