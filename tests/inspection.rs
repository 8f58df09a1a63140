//! Inspecting the live actor system through the admin API, on SQLite and
//! PostgreSQL: the channel actors with their counts, one actor's
//! subscribers and presence, paging and errors.

mod common;

use common::wire::SioClient;
use common::{Backend, TestServer, ANON_KEY};
use serde_json::{json, Value};

backend_tests!(
    channel_actors_are_listed_with_their_counts,
    one_actor_shows_its_subscribers_and_presence,
    actor_requests_are_checked,
);

async fn setup(server: &TestServer) -> Value {
    let (status, channel) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "room:%" })),
        )
        .await;
    assert_eq!(status, 201, "{channel}");
    channel
}

async fn subscribed(server: &TestServer, channels: &[&str]) -> SioClient {
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    for channel in channels {
        let ack = client
            .call("realtime:subscribe", json!({ "channel": channel }))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    client
}

async fn channel_actors_are_listed_with_their_counts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let channel = setup(&server).await;
    let mut first = subscribed(&server, &["room:1", "room:2"]).await;
    let _second = subscribed(&server, &["room:1"]).await;
    for n in 0..3 {
        let ack = first
            .call(
                "realtime:publish",
                json!({ "channel": "room:1", "event": "e", "payload": { "n": n } }),
            )
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let (status, actors) = server.admin("GET", "/api/realtime/actors", None).await;
    assert_eq!(status, 200, "{actors}");
    let names: Vec<&str> = actors
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["room:1", "room:2"]);
    let room1 = &actors[0];
    assert_eq!(room1["channelId"], channel["id"]);
    assert_eq!(room1["pattern"], "room:%");
    assert_eq!(room1["subscribers"], 2);
    assert_eq!(room1["presenceMembers"], 2, "two anonymous sockets");
    assert_eq!(room1["messagesDelivered"], 3);
    assert_eq!(room1["pendingWrites"], 0);
    assert!(room1["lastActivityAt"].as_str().unwrap() >= room1["createdAt"].as_str().unwrap());
    assert_eq!(actors[1]["subscribers"], 1);
    assert_eq!(actors[1]["messagesDelivered"], 0);

    let (_, only) = server
        .admin("GET", "/api/realtime/actors?prefix=room:2", None)
        .await;
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["name"], "room:2");
    let (_, page) = server
        .admin("GET", "/api/realtime/actors?limit=1&offset=1", None)
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["name"], "room:2");
}

async fn one_actor_shows_its_subscribers_and_presence(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let _a = subscribed(&server, &["room:7"]).await;
    let _b = subscribed(&server, &["room:7"]).await;
    let (status, actor) = server
        .admin("GET", "/api/realtime/actors/room%3A7", None)
        .await;
    assert_eq!(status, 200, "{actor}");
    assert_eq!(actor["name"], "room:7");
    let sockets = actor["subscribers"].as_array().unwrap();
    assert_eq!(sockets.len(), 2, "{actor}");
    assert!(sockets.iter().all(|id| !id.as_str().unwrap().is_empty()));
    let presence = actor["presence"].as_array().unwrap();
    assert_eq!(presence.len(), 2);
    for member in presence {
        assert_eq!(member["type"], "anonymous");
        // Anonymous members are their sockets.
        assert!(sockets.contains(&member["presenceId"]), "{member}");
    }
}

async fn actor_requests_are_checked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let missing = server
        .admin("GET", "/api/realtime/actors/room%3Anobody", None)
        .await;
    common::assert_error(&missing, 404, "REALTIME_ACTOR_NOT_FOUND");
    for query in ["limit=0", "limit=10001", "offset=-1", "limit=ten"] {
        let answer = server
            .admin("GET", &format!("/api/realtime/actors?{query}"), None)
            .await;
        common::assert_error(&answer, 400, "INVALID_INPUT");
    }
    let (status, _) = server.send("GET", "/api/realtime/actors", &[], None).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .send(
            "GET",
            "/api/realtime/actors",
            &[(
                "authorization",
                &format!("Bearer {}", server.token(realtime::auth::Role::Anon, "x")),
            )],
            None,
        )
        .await;
    assert_eq!(status, 403);
}
