//! `/api/realtime/actors`: the live channel actors, asked directly (an
//! `Inspect` message each) with a deadline: a flooded or stuck channel
//! makes its entry `"stale": true`, never the request hang, and no channel
//! waits for the request.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::auth::Admin;
use super::error::ApiError;
use super::query::QueryParams;
use crate::channel::registry::{FindActor, ListActors};
use crate::channel::{ActorView, Inspect};
use crate::server::AppState;

/// How long the actors of one request may take to answer, all together.
const INSPECT_DEADLINE: Duration = Duration::from_millis(500);
/// Most actors one request lists.
const MAX_LIMIT: u64 = 10_000;

/// Registers the routes under `/api/realtime`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/actors")
            .get(list)
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/actors/{name}")
            .get(get)
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// An actor as the list shows it; its channel definition is looked up now
/// (`null` once the channel was disabled or deleted while the actor lives).
fn view(state: &AppState, actor: &ActorView) -> serde_json::Map<String, Value> {
    let definition = state.realtime.catalog.resolve(&actor.name);
    let Value::Object(map) = json!({
        "name": actor.name,
        "channelId": definition.as_ref().map(|d| d.id),
        "pattern": definition.as_ref().map(|d| d.pattern.clone()),
        "subscribers": actor.subscribers,
        "presenceMembers": actor.presence_members,
        "messagesDelivered": actor.messages_delivered,
        "pendingWrites": actor.pending_writes,
        "lastActivityAt": actor.last_activity_at,
        "createdAt": actor.created_at,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

fn stale(name: &str) -> Value {
    json!({ "name": name, "stale": true })
}

/// `GET /actors?prefix=&limit=&offset=`: a JSON array by name; the total
/// before paging is in `X-Total-Count`.
async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams(query.into_inner());
    let prefix = query.string("prefix").unwrap_or_default();
    let limit = query.integer("limit", 1, MAX_LIMIT, 100)? as usize;
    let offset = query.integer("offset", 0, u32::MAX as u64, 0)? as usize;
    let page = state
        .realtime
        .registry
        .send(ListActors {
            prefix,
            limit,
            offset,
        })
        .await
        .map_err(|_| ApiError::internal())?;
    let deadline = tokio::time::Instant::now() + INSPECT_DEADLINE;
    let state = state.get_ref();
    let entries = join_all(page.actors.into_iter().map(|(name, actor)| async move {
        let asked = actor.send(Inspect { detail: false });
        match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(answer)) => Value::Object(view(state, &answer)),
            // Late, or retired meanwhile.
            _ => stale(&name),
        }
    }))
    .await;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Total-Count", page.total.to_string()))
        .json(entries))
}

/// `GET /actors/{name}`: one actor, with its subscribers' socket ids and its
/// presence members as subscribers see them.
async fn get(
    _admin: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "REALTIME_ACTOR_NOT_FOUND",
            format!("no channel actor lives under {name:?}"),
        )
    };
    let actor = state
        .realtime
        .registry
        .send(FindActor(name.clone()))
        .await
        .map_err(|_| ApiError::internal())?
        .ok_or_else(not_found)?;
    let asked = actor.send(Inspect { detail: true });
    let answer = match tokio::time::timeout(INSPECT_DEADLINE, asked).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => return Err(not_found()),
        Err(_) => return Ok(HttpResponse::Ok().json(stale(&name))),
    };
    let mut entry = view(&state, &answer);
    if let Some((sockets, presence)) = answer.detail {
        entry.insert("subscribers".into(), json!(sockets));
        // The members come encoded from the channel, as subscribe acks
        // carry them.
        let members: Value = serde_json::from_str(&presence).unwrap_or(Value::Null);
        entry.insert("presence".into(), members);
    }
    Ok(HttpResponse::Ok().json(entry))
}
