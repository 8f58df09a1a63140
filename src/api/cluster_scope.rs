//! Inspection of the whole cluster (`?scope=cluster`): the node that takes
//! the request asks every other live node for the same list through its
//! REST API (the address it advertised in `nodes.url`), with the caller's
//! own credentials, and merges the answers. Each entry names its `node`.
//! A node that does not answer in time is listed in `X-Unreachable-Nodes`,
//! never waited on longer. A request about one socket (`GET` or `DELETE
//! /sessions/{id}`) that this node does not hold goes the same way to the
//! node that does ([`to_owner`]).

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::web::Bytes;
use actix_web::HttpRequest;
use futures_util::future::join_all;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::persistence::nodes;
use crate::server::AppState;

/// How long another node has to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Which nodes a list covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// This node (the default).
    Node,
    /// Every live node.
    Cluster,
}

impl Scope {
    /// `scope=node|cluster`.
    pub(super) fn parse(value: Option<&str>) -> Result<Scope, ApiError> {
        match value {
            None | Some("node") => Ok(Scope::Node),
            Some("cluster") => Ok(Scope::Cluster),
            Some(_) => Err(ApiError::invalid_input(
                "scope must be \"node\" or \"cluster\"",
            )),
        }
    }
}

/// What the other nodes answered.
pub(super) struct Gathered {
    /// Their entries, each naming its node.
    pub entries: Vec<Map<String, Value>>,
    /// The sum of their `X-Total-Count`s.
    pub total: u64,
    /// Nodes that could not be asked or did not answer.
    pub unreachable: Vec<String>,
}

/// The credentials of the caller, passed on as they came.
fn credentials(req: &HttpRequest) -> Vec<(String, String)> {
    ["authorization", "x-api-key"]
        .iter()
        .filter_map(|name| {
            let value = req.headers().get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect()
}

fn peer_client() -> awc::Client {
    awc::Client::builder()
        .timeout(PEER_TIMEOUT)
        .disable_redirects()
        .finish()
}

/// What the node holding a socket answered.
pub(super) struct OwnerAnswer {
    /// Its status and JSON body, if a node had the socket.
    pub answer: Option<(StatusCode, Bytes)>,
    /// Nodes that could not be asked or did not answer.
    pub unreachable: Vec<String>,
}

/// Sends `method path?scope=node` to every other live node at once, with
/// the caller's credentials; the first answer other than 404 is the
/// owner's (socket ids are unique, so at most one has it).
pub(super) async fn to_owner(
    state: &AppState,
    req: &HttpRequest,
    method: Method,
    path: &str,
) -> Result<OwnerAnswer, ApiError> {
    let peers = nodes::peers(&state.db, &state.realtime.node).await?;
    let credentials = credentials(req);
    let client = peer_client();
    let asked = peers.into_iter().map(|(node, url)| {
        let client = &client;
        let credentials = &credentials;
        let method = method.clone();
        async move {
            let Some(url) = url else {
                return (node, Err(()));
            };
            let mut request = client.request(method, format!("{url}{path}?scope=node"));
            for header in credentials {
                request = request.insert_header(header.clone());
            }
            let answer = async {
                let mut response = request.send().await.map_err(|_| ())?;
                let body = response.body().await.map_err(|_| ())?;
                Ok((response.status(), body))
            };
            (node, answer.await)
        }
    });
    let mut owner = OwnerAnswer {
        answer: None,
        unreachable: Vec::new(),
    };
    for (node, answer) in join_all(asked).await {
        match answer {
            Ok((status, _)) if status == StatusCode::NOT_FOUND => {}
            Ok(answer) => owner.answer = Some(answer),
            Err(()) => {
                tracing::warn!(%node, path, "a node did not answer a request about one of its sockets");
                owner.unreachable.push(node);
            }
        }
    }
    Ok(owner)
}

/// Asks every other live node for `path` with `query` (as this node's own
/// list: `scope=node`, the first `want` entries) and the caller's
/// credentials.
pub(super) async fn from_other_nodes(
    state: &AppState,
    req: &HttpRequest,
    path: &str,
    query: &HashMap<String, String>,
    want: usize,
) -> Result<Gathered, ApiError> {
    let peers = nodes::peers(&state.db, &state.realtime.node).await?;
    let mut query = query.clone();
    query.insert("scope".into(), "node".into());
    query.insert("offset".into(), "0".into());
    query.insert("limit".into(), want.max(1).to_string());
    let credentials = credentials(req);
    let client = peer_client();
    let asked = peers.into_iter().map(|(node, url)| {
        let client = &client;
        let query = &query;
        let credentials = &credentials;
        async move {
            let Some(url) = url else {
                return (node, None);
            };
            let mut request = client.get(format!("{url}{path}"));
            for header in credentials {
                request = request.insert_header(header.clone());
            }
            let Ok(request) = request.query(query) else {
                return (node, None);
            };
            let answer = async {
                let mut response = request.send().await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let total: u64 = response
                    .headers()
                    .get("x-total-count")?
                    .to_str()
                    .ok()?
                    .parse()
                    .ok()?;
                let entries: Vec<Map<String, Value>> =
                    response.json().limit(64 * 1024 * 1024).await.ok()?;
                Some((entries, total))
            };
            (node, answer.await)
        }
    });
    let mut gathered = Gathered {
        entries: Vec::new(),
        total: 0,
        unreachable: Vec::new(),
    };
    for (node, answer) in join_all(asked).await {
        match answer {
            Some((entries, total)) => {
                gathered.entries.extend(entries);
                gathered.total += total;
            }
            None => {
                tracing::warn!(%node, path, "a node did not answer an inspection of the cluster");
                gathered.unreachable.push(node);
            }
        }
    }
    Ok(gathered)
}
