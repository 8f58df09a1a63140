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

/// Reads the credential from `x-api-key`, else from `Authorization: Bearer`.
fn credential(req: &HttpRequest) -> Result<&str, ApiError> {
    if let Some(value) = req.headers().get("x-api-key") {
        return value
            .to_str()
            .map_err(|_| unauthorized("AUTH_INVALID_API_KEY", "x-api-key is not valid text"));
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(
            unauthorized("AUTH_INVALID_CREDENTIALS", "no credentials provided").with_next_actions(
                "send Authorization: Bearer <ik_ key or admin JWT>, or x-api-key: <ik_ key>",
            ),
        );
    };
    let value = value.to_str().map_err(|_| {
        unauthorized(
            "AUTH_INVALID_CREDENTIALS",
            "authorization header is not valid text",
        )
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(unauthorized(
            "AUTH_INVALID_CREDENTIALS",
            "authorization header must be 'Bearer <token>'",
        )),
    }
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

fn authorize(req: &HttpRequest) -> Result<Admin, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(ApiError::internal)?;
    let principal = state
        .realtime
        .auth
        .verify(credential(req)?)
        .map_err(|err| match err {
            AuthError::Missing => {
                unauthorized("AUTH_INVALID_CREDENTIALS", "no credentials provided")
            }
            AuthError::InvalidApiKey => unauthorized("AUTH_INVALID_API_KEY", "invalid api key"),
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
