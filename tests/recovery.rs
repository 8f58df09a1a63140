//! Connection state recovery at the protocol level, over raw Socket.IO, on
//! SQLite and PostgreSQL: what the CONNECT answer and events carry, and the
//! requests that must get a fresh session rather than an error or someone
//! else's messages. (The stock clients' side is tests/js/recovery.test.mjs.)

mod common;

use std::time::Duration;

use common::wire::{SioClient, WsFrame};
use common::{Backend, TestServer, ANON_KEY};
use realtime::auth::Role;
use serde_json::{json, Value};

backend_tests!(
    connect_answers_carry_a_pid_and_events_their_offset,
    malformed_or_unknown_recovery_requests_get_a_fresh_session,
    another_users_credential_cannot_take_a_session,
    deleted_history_gives_a_fresh_session,
    a_retention_sweep_past_the_floor_gives_a_fresh_session,
    a_deleted_channel_gives_a_fresh_session,
    with_recovery_off_there_is_no_pid_and_no_offset,
    a_session_dropped_again_before_anything_new_recovers_again,
);

const ALICE: &str = "11111111-1111-4111-8111-111111111111";
const BOB: &str = "22222222-2222-4222-8222-222222222222";

async fn setup(server: &TestServer) {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "rec:%" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn subscribe(client: &mut SioClient, channel: &str) {
    let ack = client
        .call("realtime:subscribe", json!({ "channel": channel }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
}

async fn publish_rest(server: &TestServer, channel: &str, n: u64) {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/messages",
            Some(json!({ "channel": channel, "event": "tick", "payload": { "n": n } })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// The next event's whole argument array (pings skipped).
async fn next_event_args(client: &mut SioClient) -> Vec<Value> {
    loop {
        match client.ws.recv_skipping_pings().await {
            WsFrame::Text(text) if text.starts_with("42") => {
                return serde_json::from_str(&text[2..]).unwrap();
            }
            WsFrame::Text(_) | WsFrame::Binary(_) => continue,
            WsFrame::Closed => panic!("closed"),
        }
    }
}

/// Drops a client's connection the way a dead network would (no
/// DISCONNECT), and gives the server a moment to notice.
async fn drop_connection(client: SioClient) {
    drop(client);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
}

fn pid_of(client: &SioClient) -> String {
    client.answer["pid"]
        .as_str()
        .expect("the answer has a pid")
        .to_owned()
}

async fn connect_answers_carry_a_pid_and_events_their_offset(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let pid = pid_of(&client);
    assert_eq!(pid.len(), 32, "128 random bits in hex: {pid}");
    assert!(client.answer["sid"].is_string());
    subscribe(&mut client, "rec:1").await;
    publish_rest(&server, "rec:1", 7).await;
    let args = next_event_args(&mut client).await;
    assert_eq!(args.len(), 3, "{args:?}");
    assert_eq!(args[0], "tick");
    assert_eq!(args[1]["n"], 7);
    let stored = server
        .scalar("SELECT seq FROM messages WHERE channel_name = 'rec:1'")
        .await;
    assert_eq!(
        args[2],
        json!(stored.to_string()),
        "the offset is the stored seq"
    );
    // Two connections never share a pid.
    let other = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    assert_ne!(pid_of(&other), pid);
}

async fn malformed_or_unknown_recovery_requests_get_a_fresh_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let fresh_before = fresh_recoveries(&server).await;
    let long = "p".repeat(100);
    for auth in [
        json!({ "token": ANON_KEY, "pid": 5 }),
        json!({ "token": ANON_KEY, "pid": "" }),
        json!({ "token": ANON_KEY, "pid": long }),
        json!({ "token": ANON_KEY, "pid": "no-such-session" }),
        json!({ "token": ANON_KEY, "pid": "no-such-session", "offset": "12" }),
        json!({ "token": ANON_KEY, "pid": "no-such-session", "offset": { "a": 1 } }),
        json!({ "token": ANON_KEY, "pid": null, "offset": "nonsense" }),
    ] {
        let mut client = SioClient::connect(&server.base_url, auth.clone()).await;
        let pid = pid_of(&client);
        assert_ne!(Some(pid.as_str()), auth["pid"].as_str(), "{auth}");
        // A working session.
        subscribe(&mut client, "rec:fresh").await;
    }
    // The three well-formed pids count as recoveries that started afresh
    // (the counter is process-wide: other tests may add to it).
    assert!(fresh_recoveries(&server).await >= fresh_before + 3);
}

async fn fresh_recoveries(server: &TestServer) -> u64 {
    let metrics = server.get_text("/metrics").await.1;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("realtime_recoveries_total{outcome=\"fresh\"} "))
        .expect("the counter is exported")
        .parse()
        .unwrap()
}

async fn another_users_credential_cannot_take_a_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let alice_token = server.token(Role::Authenticated, ALICE);
    let mut alice = SioClient::connect(&server.base_url, json!({ "token": alice_token })).await;
    let pid = pid_of(&alice);
    let sid = alice.answer["sid"].clone();
    subscribe(&mut alice, "rec:alice").await;
    drop_connection(alice).await;
    publish_rest(&server, "rec:alice", 1).await;
    if backend == Backend::Postgres {
        // Her dropped session is in the database (written as sessions
        // drop, every 100 ms), so Bob's attempt takes it from there.
        common::wait_until("Alice's session saved", Duration::from_secs(5), || async {
            server
                .scalar("SELECT count(*) FROM realtime.recovery_sessions WHERE state <> ''")
                .await
                == 1
        })
        .await;
    }

    // Bob presents Alice's pid: he gets a session of his own, and nothing
    // of hers.
    let bob_token = server.token(Role::Authenticated, BOB);
    let mut bob =
        SioClient::connect(&server.base_url, json!({ "token": bob_token, "pid": pid })).await;
    assert_ne!(pid_of(&bob), pid);
    assert_ne!(bob.answer["sid"], sid);
    subscribe(&mut bob, "rec:other").await;
    publish_rest(&server, "rec:other", 2).await;
    let args = next_event_args(&mut bob).await;
    assert_eq!(
        args[1]["n"], 2,
        "Bob gets his own channel's message first: {args:?}"
    );

    // Alice still recovers, and gets what she missed, also once the
    // session writer has run again since Bob's attempt.
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    let mut alice = SioClient::connect(
        &server.base_url,
        json!({ "token": alice_token, "pid": pid }),
    )
    .await;
    assert_eq!(pid_of(&alice), pid);
    assert_eq!(alice.answer["sid"], sid);
    let args = next_event_args(&mut alice).await;
    assert_eq!(args[0], "tick");
    assert_eq!(args[1]["n"], 1);
}

async fn deleted_history_gives_a_fresh_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let pid = pid_of(&client);
    subscribe(&mut client, "rec:gone").await;
    drop_connection(client).await;
    for n in 0..3 {
        publish_rest(&server, "rec:gone", n).await;
    }
    let (status, body) = server.admin("DELETE", "/api/realtime/messages", None).await;
    assert_eq!(status, 200, "{body}");
    // Published after the delete: not enough, the ones before are gone.
    publish_rest(&server, "rec:gone", 3).await;
    let back = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY, "pid": pid })).await;
    assert_ne!(pid_of(&back), pid, "never a partial replay");
}

async fn a_retention_sweep_past_the_floor_gives_a_fresh_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let pid = pid_of(&client);
    subscribe(&mut client, "rec:swept").await;
    drop_connection(client).await;
    for n in 0..3 {
        publish_rest(&server, "rec:swept", n).await;
    }
    // What the sweeper runs, with a cutoff that takes everything so far.
    let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
    let deleted = realtime::persistence::messages::delete_older_than(&server.db, cutoff, 2)
        .await
        .unwrap();
    assert_eq!(deleted, 2, "one batch of the sweep");
    let back = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY, "pid": pid })).await;
    assert_ne!(pid_of(&back), pid, "never a partial replay");
}

async fn a_deleted_channel_gives_a_fresh_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, channel) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "doomed:%" })),
        )
        .await;
    assert_eq!(status, 201);
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let pid = pid_of(&client);
    subscribe(&mut client, "doomed:1").await;
    drop_connection(client).await;
    publish_rest(&server, "doomed:1", 1).await;
    let id = channel["id"].as_str().unwrap();
    let (status, _) = server
        .admin("DELETE", &format!("/api/realtime/channels/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let mut back =
        SioClient::connect(&server.base_url, json!({ "token": ANON_KEY, "pid": pid })).await;
    assert_ne!(pid_of(&back), pid);
    // A fresh session holds no subscription: nothing arrives.
    let ack = back
        .call("realtime:subscribe", json!({ "channel": "doomed:1" }))
        .await;
    assert_eq!(ack["ok"], false);
}

async fn with_recovery_off_there_is_no_pid_and_no_offset(backend: Backend) {
    let server = TestServer::start_with(backend, "[recovery]\nenabled = false\n").await;
    setup(&server).await;
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    assert!(client.answer.get("pid").is_none(), "{}", client.answer);
    subscribe(&mut client, "rec:off").await;
    publish_rest(&server, "rec:off", 1).await;
    let args = next_event_args(&mut client).await;
    assert_eq!(args.len(), 2, "{args:?}");
}

async fn a_session_dropped_again_before_anything_new_recovers_again(backend: Backend) {
    let server = TestServer::start(backend).await;
    setup(&server).await;
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let pid = pid_of(&client);
    subscribe(&mut client, "rec:again").await;
    publish_rest(&server, "rec:again", 1).await;
    let offset = next_event_args(&mut client).await[2].clone();
    // Dropped, recovered, and dropped again before any new message: the
    // client still presents the same offset.
    for _ in 0..2 {
        drop_connection(client).await;
        client = SioClient::connect(
            &server.base_url,
            json!({ "token": ANON_KEY, "pid": pid, "offset": offset }),
        )
        .await;
        assert_eq!(pid_of(&client), pid, "recovered: {}", client.answer);
    }
    publish_rest(&server, "rec:again", 2).await;
    assert_eq!(next_event_args(&mut client).await[1]["n"], 2);
}
