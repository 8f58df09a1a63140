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
    sessions_are_listed_inspected_and_closed,
    a_flooded_actor_is_stale_and_holds_up_nothing,
);

const ALICE: &str = "00000000-0000-0000-0000-00000000a11c";

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

async fn sessions_are_listed_inspected_and_closed(backend: Backend) {
    use std::time::{Duration, Instant};
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let token = server.token(realtime::auth::Role::Authenticated, ALICE);
    let mut alice = SioClient::connect(&server.base_url, json!({ "token": token })).await;
    for channel in ["room:2", "room:1"] {
        let ack = alice
            .call("realtime:subscribe", json!({ "channel": channel }))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let _guest = subscribed(&server, &["room:1"]).await;

    let (status, sessions) = server.admin("GET", "/api/realtime/sessions", None).await;
    assert_eq!(status, 200, "{sessions}");
    assert_eq!(sessions.as_array().unwrap().len(), 2, "{sessions}");
    let (_, mine) = server
        .admin(
            "GET",
            &format!("/api/realtime/sessions?userId={ALICE}"),
            None,
        )
        .await;
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    let session = &mine[0];
    assert_eq!(session["role"], "authenticated");
    assert_eq!(session["userId"], ALICE);
    assert_eq!(session["channels"], json!(["room:1", "room:2"]));
    assert_eq!(session["transport"], "websocket");
    // A frame may be on its way to the socket at this very moment.
    assert!(session["queuedFrames"].as_u64().unwrap() <= 2, "{session}");
    assert!(
        session["remoteAddress"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{session}"
    );
    assert!(session["connectedAt"].is_string());
    let id = session["id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
    assert_ne!(id, alice.sid, "the Engine.IO session id stays private");

    // The same socket ids as the channel actors show.
    let (_, actor) = server
        .admin("GET", "/api/realtime/actors/room%3A1", None)
        .await;
    let subscribers = actor["subscribers"].as_array().unwrap();
    for entry in sessions.as_array().unwrap() {
        assert!(subscribers.contains(&entry["id"]), "{actor} {entry}");
    }
    let (status, one) = server
        .admin("GET", &format!("/api/realtime/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    for field in [
        "id",
        "role",
        "userId",
        "channels",
        "connectedAt",
        "remoteAddress",
    ] {
        assert_eq!(one[field], session[field], "{field}");
    }
    let missing = server
        .admin("GET", "/api/realtime/sessions/nobody", None)
        .await;
    common::assert_error(&missing, 404, "REALTIME_SESSION_NOT_FOUND");

    // Closing it closes the transport only: no Socket.IO DISCONNECT
    // ("41"), which would stop the stock client from reconnecting.
    let (status, _) = server
        .admin("DELETE", &format!("/api/realtime/sessions/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let frames = alice.frames_until_closed(Duration::from_secs(5)).await;
    assert!(!frames.iter().any(|f| f.starts_with("41")), "{frames:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, left) = server.admin("GET", "/api/realtime/sessions", None).await;
        if left.as_array().unwrap().len() == 1 {
            assert_ne!(left[0]["id"], id.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed session is still listed"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = server
        .admin("DELETE", &format!("/api/realtime/sessions/{id}"), None)
        .await;
    common::assert_error(&gone, 404, "REALTIME_SESSION_NOT_FOUND");
}

/// A channel with a long queue answers inspection late: its entry is
/// `stale`, the request answers within its deadline, and the other actors
/// are listed as usual.
async fn a_flooded_actor_is_stale_and_holds_up_nothing(backend: Backend) {
    use realtime::channel::registry::FindActor;
    use realtime::channel::Stored;
    use std::time::{Duration, Instant};
    let server = TestServer::start(backend).await;
    let channel = setup(&server).await;
    let _calm = subscribed(&server, &["room:calm"]).await;
    let _flooded = subscribed(&server, &["room:flood"]).await;
    let channel_id = uuid::Uuid::parse_str(channel["id"].as_str().unwrap()).unwrap();
    // Messages already in history, straight into the channel's mailbox:
    // built first, then sent in a tight loop, so the queue outgrows what
    // the channel handles meanwhile. A fast machine's channel may still
    // get through one flood within the inspection deadline (500 ms), so
    // the flood grows until the channel is behind, four times at most.
    let flooded = server
        .realtime
        .registry
        .send(FindActor("room:flood".into()))
        .await
        .unwrap()
        .expect("the channel is live");
    let entry = |actors: &Value, name: &str| {
        actors
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap()
    };
    let mut sent = 0;
    for round in 1..=4 {
        let rows: Vec<Stored> = (sent..sent + 250_000)
            .map(|n| Stored {
                row: entity::messages::Model {
                    id: uuid::Uuid::now_v7(),
                    event_name: "flood".into(),
                    channel_id: Some(channel_id),
                    channel_name: "room:flood".into(),
                    payload: json!({ "n": n }),
                    sender_type: "system".into(),
                    sender_id: None,
                    ws_audience_count: 0,
                    wh_audience_count: 0,
                    wh_delivered_count: 0,
                    created_at: chrono::Utc::now(),
                    seq: None,
                },
                via_registry: false,
            })
            .collect();
        sent += rows.len();
        for stored in rows {
            flooded.do_send(stored);
        }
        let started = Instant::now();
        let (status, actors) = server.admin("GET", "/api/realtime/actors", None).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{actors}");
        assert!(took < Duration::from_secs(3), "the request waited {took:?}");
        if entry(&actors, "room:flood")["stale"] == true {
            break;
        }
        assert!(round < 4, "{sent} messages queued, never stale: {actors}");
    }
    // (An actor on the same thread as the flooded one may be late too.)
    // Once the flood is delivered, every actor answers again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, actors) = server.admin("GET", "/api/realtime/actors", None).await;
        if actors
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["stale"].is_null())
        {
            assert_eq!(entry(&actors, "room:calm")["subscribers"], 1, "{actors}");
            break;
        }
        assert!(Instant::now() < deadline, "still stale: {actors}");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sockets that close while their subscribes are on the way leave no
/// subscriber behind: every channel actor they touched retires. (A join
/// answered after the socket was gone used to stay, with its channel,
/// until the channel's next message.)
#[actix_rt::test]
async fn sockets_closing_mid_subscribe_leave_nothing_behind() {
    closing_mid_subscribe(Backend::Sqlite).await;
}

/// The same on PostgreSQL, where a channel that starts holds its first
/// joins until it knows the other nodes' members.
#[actix_rt::test]
async fn sockets_closing_mid_subscribe_leave_nothing_behind_on_postgres() {
    if common::postgres_skipped() {
        return;
    }
    closing_mid_subscribe(Backend::Postgres).await;
}

async fn closing_mid_subscribe(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    for round in 0..200u64 {
        let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
        client
            .emit(
                "realtime:subscribe",
                json!({ "channel": format!("room:{}", round % 10) }),
            )
            .await;
        // Gone without waiting for the answer, after varying delays.
        if round % 3 == 0 {
            actix_rt::time::sleep(std::time::Duration::from_micros(200 * (round % 7))).await;
        }
        drop(client);
    }
    common::wait_until(
        "every channel actor retired",
        std::time::Duration::from_secs(20),
        || async {
            let (_, actors) = server.admin("GET", "/api/realtime/actors", None).await;
            actors.as_array().is_some_and(Vec::is_empty)
        },
    )
    .await;
}
