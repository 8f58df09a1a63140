//! `/api/realtime/actors`: the live channel actors, asked directly (an
//! `Inspect` message each) with a deadline: a flooded or stuck channel
//! makes its entry `"stale": true`, never the request hang, and no channel
//! waits for the request.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Admin;
use super::cluster_scope::{self, Scope};
use super::error::ApiError;
use super::openapi::ErrorResponse;
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

/// A live channel actor as `GET /actors` lists it. An actor that did not
/// answer in time has only `name` and `stale: true`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: entries are built as JSON.
pub struct ActorEntry {
    /// The resolved channel name.
    name: String,
    /// The node (server process) the actor lives on.
    node: String,
    /// Present (true) when the actor did not answer within 500 ms.
    stale: Option<bool>,
    /// Its channel definition, null once disabled or deleted.
    channel_id: Option<Uuid>,
    pattern: Option<String>,
    /// Subscribed sockets.
    subscribers: Option<u64>,
    /// Logical presence members.
    presence_members: Option<u64>,
    messages_delivered: Option<u64>,
    /// Accepted and not yet durable.
    pending_writes: Option<u64>,
    last_activity_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
}

/// One live channel actor (`GET /actors/{name}`).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only: built as JSON.
pub struct ActorDetail {
    name: String,
    /// The node (server process) the actor lives on.
    node: String,
    /// Present (true) when the actor did not answer within 500 ms; then
    /// nothing else is.
    stale: Option<bool>,
    channel_id: Option<Uuid>,
    pattern: Option<String>,
    /// The subscribed sockets' ids.
    subscribers: Option<Vec<String>>,
    presence_members: Option<u64>,
    /// The members as subscribers see them.
    presence: Option<Vec<PresenceMember>>,
    messages_delivered: Option<u64>,
    pending_writes: Option<u64>,
    last_activity_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
}

/// A presence member.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Documentation only.
pub struct PresenceMember {
    /// The user id, or the socket id of an anonymous member.
    presence_id: String,
    /// `user` or `anonymous`.
    #[schema(rename = "type")]
    kind: String,
    joined_at: DateTime<Utc>,
}

/// Query parameters of `GET /actors`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documentation only: the handler reads the raw query.
pub struct ActorListParams {
    /// Only names starting with this.
    prefix: Option<String>,
    /// Most actors (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    #[param(minimum = 0)]
    offset: Option<u32>,
    /// `node` (default): this server's actors; `cluster`: every live
    /// node's (each asked through its API, the same channel once per node
    /// that has it).
    scope: Option<String>,
}

/// An actor as the list shows it; its channel definition is looked up now
/// (`null` once the channel was disabled or deleted while the actor lives).
fn view(state: &AppState, actor: &ActorView) -> serde_json::Map<String, Value> {
    let definition = state.realtime.catalog.resolve(&actor.name);
    let Value::Object(map) = json!({
        "name": actor.name,
        "node": &*state.realtime.node,
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

fn stale(state: &AppState, name: &str) -> Value {
    json!({ "name": name, "node": &*state.realtime.node, "stale": true })
}

/// `GET /actors?prefix=&limit=&offset=&scope=`: a JSON array by name (and
/// node); the total before paging is in `X-Total-Count`, and nodes that
/// did not answer a `scope=cluster` request in `X-Unreachable-Nodes`.
#[utoipa::path(
    get,
    path = "/api/realtime/actors",
    tag = "Inspection",
    summary = "List live channel actors",
    params(ActorListParams),
    responses(
        (status = 200, description = "The live channel actors by name; X-Total-Count holds the total, X-Unreachable-Nodes the nodes that did not answer", body = [ActorEntry]),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn list(
    _admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams(query.into_inner());
    let prefix = query.string("prefix")?.unwrap_or_default();
    let limit = query.integer("limit", 1, MAX_LIMIT, 100)? as usize;
    let offset = query.integer("offset", 0, u32::MAX as u64, 0)? as usize;
    let scope = Scope::parse(query.0.get("scope").map(String::as_str))?;
    // The whole cluster: the first offset + limit of every node, merged.
    let (local_offset, local_limit) = match scope {
        Scope::Node => (offset, limit),
        Scope::Cluster => (0, (offset + limit).min(MAX_LIMIT as usize)),
    };
    let page = state
        .realtime
        .registry
        .send(ListActors {
            prefix,
            limit: local_limit,
            offset: local_offset,
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
            _ => stale(state, &name),
        }
    }))
    .await;
    if scope == Scope::Node {
        return Ok(HttpResponse::Ok()
            .insert_header(("X-Total-Count", page.total.to_string()))
            .json(entries));
    }
    let others =
        cluster_scope::from_other_nodes(state, &req, "/api/realtime/actors", &query.0, local_limit)
            .await?;
    let mut all: Vec<Value> = entries;
    all.extend(others.entries.into_iter().map(Value::Object));
    let key = |entry: &Value| {
        (
            entry["name"].as_str().unwrap_or_default().to_owned(),
            entry["node"].as_str().unwrap_or_default().to_owned(),
        )
    };
    all.sort_by_key(key);
    let page_of_all: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    Ok(HttpResponse::Ok()
        .insert_header((
            "X-Total-Count",
            (page.total as u64 + others.total).to_string(),
        ))
        .insert_header(("X-Unreachable-Nodes", others.unreachable.join(",")))
        .json(page_of_all))
}

/// `GET /actors/{name}`: one actor, with its subscribers' socket ids and its
/// presence members as subscribers see them.
#[utoipa::path(
    get,
    path = "/api/realtime/actors/{name}",
    tag = "Inspection",
    summary = "One live channel actor",
    params(("name" = String, Path, description = "The channel name, e.g. room:1")),
    responses(
        (status = 200, description = "The actor with its subscribers and presence", body = ActorDetail),
        (status = 401, description = "No valid credentials", body = ErrorResponse),
        (status = 403, description = "Not an admin", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    ),
    security(("bearerAuth" = []), ("apiKey" = []))
)]
pub(super) async fn get(
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
        Err(_) => return Ok(HttpResponse::Ok().json(stale(&state, &name))),
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
