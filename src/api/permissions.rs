//! `/api/realtime/permissions`: the policies that decide who may subscribe
//! and publish.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Admin;
use super::error::ApiError;
use crate::persistence::{self, permissions::Policy};
use crate::server::AppState;

/// Registers the route under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/permissions")
            .get(get)
            .default_service(web::to(super::method_not_allowed)),
    );
}

fn view(policy: Policy) -> serde_json::Value {
    json!({
        "policyName": policy.policy_name,
        "tableName": policy.table_name,
        "command": policy.command,
        "roles": policy.roles,
        "using": policy.using,
        "withCheck": policy.with_check,
    })
}

async fn get(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let policies = persistence::permissions::realtime_policies(&state.db).await?;
    let subscribe: Vec<_> = policies.subscribe.into_iter().map(view).collect();
    let publish: Vec<_> = policies.publish.into_iter().map(view).collect();
    Ok(HttpResponse::Ok().json(json!({
        "subscribe": { "policies": subscribe },
        "publish": { "policies": publish },
    })))
}
