//! `/api/realtime/permissions`: the policies that decide who may subscribe
//! and publish. `GET` lists them in InsForge's shape; `POST` creates a
//! subscribe or publish policy and `DELETE /permissions/{action}/{name}`
//! drops one (PostgreSQL: `CREATE POLICY` / `DROP POLICY` on
//! `realtime.channels` or `realtime.messages`; SQLite: the server's store).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Admin;
use super::error::ApiError;
use super::openapi::ErrorResponse;
use crate::persistence::permissions::ROLES;
use crate::persistence::policies::{self, NewPolicy, PolicyAction, PolicyError};
use crate::persistence::{self, permissions::Policy};
use crate::server::AppState;

/// Longest policy name (PostgreSQL's identifier limit).
const MAX_NAME_LEN: usize = 63;
/// Longest condition accepted, in bytes.
const MAX_CONDITION_LEN: usize = 4096;

/// Registers the routes under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/permissions")
            .get(get)
            .post(create)
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/permissions/{action}/{name}")
            .delete(delete)
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// A policy as `GET /permissions` shows it (InsForge's `RlsPolicy`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RlsPolicy)]
pub struct PolicyView {
    policy_name: String,
    /// `channels` (subscribe) or `messages` (publish).
    table_name: String,
    /// `SELECT`, `INSERT` (or `ALL`, … for policies made in SQL).
    command: String,
    roles: Vec<String>,
    /// The condition of a subscribe policy.
    using: Option<String>,
    /// The condition of a publish policy.
    with_check: Option<String>,
}

/// The policies of one action.
#[derive(Serialize, ToSchema)]
pub struct PolicyList {
    policies: Vec<PolicyView>,
}

/// Every realtime policy (InsForge's `RealtimePermissions`).
#[derive(Serialize, ToSchema)]
#[schema(as = RealtimePermissions)]
pub struct PermissionsView {
    subscribe: PolicyList,
    publish: PolicyList,
}

/// The body of `POST /permissions`.
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: the handler reads raw JSON.
pub struct CreatePolicyRequest {
    /// Unique per action, at most 63 bytes.
    name: String,
    action: ActionName,
    /// Among `anon`, `authenticated`, `project_admin`.
    #[schema(min_items = 1)]
    roles: Vec<RoleName>,
    /// A boolean SQL expression (PostgreSQL, or SQLite over the `request`
    /// table; docs/permissions.md).
    condition: String,
}

/// What a policy governs.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Documentation only.
pub enum ActionName {
    /// Subscribing (policies on `realtime.channels`).
    Subscribe,
    /// Publishing (policies on `realtime.messages`).
    Publish,
}

/// A role policies are written for.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Documentation only.
pub enum RoleName {
    /// Anonymous keys and anon JWTs.
    Anon,
    /// Users' JWTs.
    Authenticated,
    /// API keys and admin JWTs.
    ProjectAdmin,
}

fn view(policy: Policy) -> PolicyView {
    PolicyView {
        policy_name: policy.policy_name,
        table_name: policy.table_name,
        command: policy.command,
        roles: policy.roles,
        using: policy.using,
        with_check: policy.with_check,
    }
}

#[utoipa::path(
    get,
    path = "/api/realtime/permissions",
    tag = "Permissions",
    summary = "List policies",
    responses(
        (status = 200, description = "The subscribe and publish policies", body = PermissionsView),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn get(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let policies = persistence::permissions::realtime_policies(&state.db).await?;
    Ok(HttpResponse::Ok().json(PermissionsView {
        subscribe: PolicyList {
            policies: policies.subscribe.into_iter().map(view).collect(),
        },
        publish: PolicyList {
            policies: policies.publish.into_iter().map(view).collect(),
        },
    }))
}

/// `{name, action: "subscribe" | "publish", roles: [...], condition}`.
fn parse_new_policy(body: &Value) -> Result<NewPolicy, ApiError> {
    let text = |field: &str| body.get(field).and_then(Value::as_str);
    let name = text("name")
        .filter(|name| !name.is_empty() && name.len() <= MAX_NAME_LEN)
        .filter(|name| !name.chars().any(char::is_control))
        .ok_or_else(|| {
            ApiError::invalid_input(format!(
                "name: a policy name of 1 to {MAX_NAME_LEN} bytes is required"
            ))
        })?;
    let action = text("action")
        .and_then(PolicyAction::parse)
        .ok_or_else(|| ApiError::invalid_input("action: must be \"subscribe\" or \"publish\""))?;
    let roles: Vec<String> = match body.get("roles") {
        Some(Value::Array(roles)) if !roles.is_empty() => roles
            .iter()
            .map(|role| {
                role.as_str()
                    .filter(|role| ROLES.contains(role))
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ApiError::invalid_input(format!("roles: each must be one of {ROLES:?}"))
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid_input(format!(
                "roles: a non-empty array of {ROLES:?} is required"
            )))
        }
    };
    let condition = text("condition")
        .map(str::trim)
        .filter(|condition| !condition.is_empty() && condition.len() <= MAX_CONDITION_LEN)
        .ok_or_else(|| {
            ApiError::invalid_input(format!(
                "condition: an SQL boolean expression of 1 to {MAX_CONDITION_LEN} bytes is required"
            ))
        })?;
    Ok(NewPolicy {
        name: name.to_owned(),
        action,
        roles,
        condition: condition.to_owned(),
    })
}

fn policy_error(err: PolicyError) -> ApiError {
    match err {
        PolicyError::Exists { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "REALTIME_POLICY_EXISTS",
            err.to_string(),
        ),
        PolicyError::NotFound { .. } => ApiError::new(
            StatusCode::NOT_FOUND,
            "REALTIME_POLICY_NOT_FOUND",
            err.to_string(),
        ),
        PolicyError::Invalid(message) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "REALTIME_INVALID_POLICY",
            format!("condition: {message}"),
        ),
        PolicyError::Database(err) => err.into(),
    }
}

#[utoipa::path(
    post,
    path = "/api/realtime/permissions",
    tag = "Permissions",
    summary = "Create a policy",
    request_body = CreatePolicyRequest,
    responses(
        (status = 201, description = "The policy", body = PolicyView),
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
    let policy = parse_new_policy(&body)?;
    policies::create(&state.db, &policy)
        .await
        .map_err(policy_error)?;
    // Cached decisions are void from now on (on PostgreSQL the event
    // trigger says so too, a moment later).
    state.realtime.permissions.policies_changed().await;
    tracing::info!(name = %policy.name, action = policy.action.as_str(), roles = ?policy.roles, "policy created");
    let subscribe = policy.action == PolicyAction::Subscribe;
    Ok(HttpResponse::Created().json(view(Policy {
        policy_name: policy.name,
        table_name: policy.action.table().to_owned(),
        command: policy.action.command().to_owned(),
        roles: policy.roles,
        using: subscribe.then(|| policy.condition.clone()),
        with_check: (!subscribe).then_some(policy.condition),
    })))
}

#[utoipa::path(
    delete,
    path = "/api/realtime/permissions/{action}/{name}",
    tag = "Permissions",
    summary = "Drop a policy",
    params(("action" = ActionName, Path, description = "subscribe or publish"), ("name" = String, Path, description = "The policy's name")),
    responses(
        (status = 204, description = "Dropped"),
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
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (action, name) = path.into_inner();
    let action = PolicyAction::parse(&action)
        .ok_or_else(|| ApiError::invalid_input("action: must be \"subscribe\" or \"publish\""))?;
    policies::drop(&state.db, action, &name)
        .await
        .map_err(policy_error)?;
    state.realtime.permissions.policies_changed().await;
    tracing::info!(%name, action = action.as_str(), "policy dropped");
    Ok(HttpResponse::NoContent().finish())
}
