//! Garbage against the real server: random and malformed frames over
//! WebSocket and long-polling. Each bad connection is closed; the server,
//! and everyone else on it, carry on.

mod common;

use std::time::Duration;

use common::wire::{http, SioClient, WsClient, WsFrame};
use common::{Backend, TestServer, ANON_KEY};
use rand::{Rng, SeedableRng};
use serde_json::json;

backend_tests!(
    garbage_closes_only_the_sender,
    nul_characters_are_refused_and_spoil_nothing,
    payloads_past_the_limits_are_refused_and_counted,
    a_full_channel_refuses_new_members_but_not_more_sockets_of_one,
    a_user_has_at_most_max_sockets_per_user,
);

/// Frames a hostile or broken client might send: random bytes, truncated
/// and mutated Socket.IO packets, absurd attachment counts, huge ack ids.
fn garbage(rng: &mut rand::rngs::StdRng) -> String {
    const SEEDS: &[&str] = &[
        r#"42["realtime:publish",{"channel":"ok:1","event":"e","payload":{}}]"#,
        r#"42["realtime:subscribe",{"channel":"ok:1"}]"#,
        r#"451-["realtime:publish",{"_placeholder":true,"num":0}]"#,
        r#"40{"token":"x"}"#,
        "2probe",
        "5",
    ];
    let mut text = SEEDS[rng.random_range(0..SEEDS.len())].to_owned();
    match rng.random_range(0..5) {
        0 => text.truncate(rng.random_range(0..=text.len())),
        1 => {
            let at = rng.random_range(0..=text.len());
            let junk: String = (0..rng.random_range(1..8))
                .map(|_| char::from(rng.random_range(0x20u8..0x7f)))
                .collect();
            if text.is_char_boundary(at) {
                text.insert_str(at, &junk);
            }
        }
        2 => {
            text = (0..rng.random_range(0..64))
                .map(|_| char::from(rng.random_range(0u8..0x80)))
                .collect()
        }
        3 => text = format!("4{}-[\"x\"]", rng.random::<u64>()),
        _ => {
            text = format!(
                "42{}[\"realtime:publish\",{{}}]",
                "9".repeat(rng.random_range(1..40))
            )
        }
    }
    text
}

async fn garbage_closes_only_the_sender(backend: Backend) {
    let server = TestServer::start_with(backend, "[limits]\npublish_rate = 0\n").await;
    server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "ok:%" })),
        )
        .await;
    // A well-behaved subscriber that must see everything that follows.
    let mut good = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let ack = good
        .call("realtime:subscribe", json!({ "channel": "ok:1" }))
        .await;
    assert_eq!(ack["ok"], true);

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for _ in 0..40 {
        let mut ws = WsClient::connect(&format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            server.base_url
        ))
        .await
        .unwrap();
        ws.recv().await;
        // Half the connections are logged in before the garbage starts.
        if rng.random_bool(0.5) {
            ws.send_text(&format!("40{}", json!({ "token": ANON_KEY })))
                .await;
        }
        for _ in 0..20 {
            let text = garbage(&mut rng);
            ws.send_text(&format!("4{text}")).await;
            if rng.random_bool(0.2) {
                ws.send_binary(&[0xff; 3]).await;
            }
        }
        // Whatever the server made of it, it answers or closes; it never hangs.
        while let WsFrame::Text(_) | WsFrame::Binary(_) =
            ws.recv_within(Duration::from_secs(5)).await
        {}
    }
    for _ in 0..20 {
        let body = garbage(&mut rng);
        let (status, _) = http(
            "POST",
            &format!(
                "{}/socket.io/?EIO=4&transport=polling&sid=nope",
                server.base_url
            ),
            Some(&body),
        )
        .await;
        assert_eq!(status, 400);
    }

    // The server is healthy and the good subscriber still gets messages.
    let (status, _) = server.send("GET", "/health", &[], None).await;
    assert_eq!(status, 200);
    let (status, published) = server
        .admin(
            "POST",
            "/api/realtime/messages",
            Some(json!({ "channel": "ok:1", "event": "after", "payload": {} })),
        )
        .await;
    assert_eq!(status, 201);
    loop {
        let (name, body) = good
            .next_event()
            .await
            .expect("the good subscriber stays connected");
        if name == "after" {
            assert_eq!(body["meta"]["messageId"], published["id"]);
            break;
        }
    }
}

/// PostgreSQL cannot store U+0000 in text or jsonb: such input is refused
/// up front on both databases, and never fails the batch that carries
/// other users' messages.
async fn nul_characters_are_refused_and_spoil_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, channel) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "nul:%" })),
        )
        .await;
    assert_eq!(status, 201, "{channel}");
    let bad = json!({ "channel": "nul:1", "event": "e", "payload": { "text": "a\u{0}b" } });
    let rest = server
        .admin("POST", "/api/realtime/messages", Some(bad.clone()))
        .await;
    common::assert_error(&rest, 400, "INVALID_INPUT");
    let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let ack = client
        .call("realtime:subscribe", json!({ "channel": "nul:1" }))
        .await;
    assert_eq!(ack["ok"], true);
    // Sent back to back with good ones, so they would share a batch.
    client.emit("realtime:publish", bad.clone()).await;
    for n in 0..3 {
        let ack = client
            .call(
                "realtime:publish",
                json!({ "channel": "nul:1", "event": "e", "payload": { "n": n } }),
            )
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let id = channel["id"].as_str().unwrap();
    for body in [
        json!({ "description": "x\u{0}" }),
        json!({ "webhookUrls": ["https://example.com/\u{0}"] }),
    ] {
        let answer = server
            .admin(
                "PUT",
                &format!("/api/realtime/channels/{id}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(answer.0, 400, "{body}: {}", answer.1);
    }
    let (status, history) = server
        .admin("GET", "/api/realtime/messages?limit=10", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(history.as_array().unwrap().len(), 3, "{history}");
}

async fn payloads_past_the_limits_are_refused_and_counted(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        "[limits]\nmax_payload_depth = 8\nmax_payload_keys = 50\n",
    )
    .await;
    let (status, _) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "deep:%" })),
        )
        .await;
    assert_eq!(status, 201);
    let refusals = |metrics: &str, limit: &str| -> u64 {
        let prefix = format!("realtime_limit_refusals_total{{limit=\"{limit}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = server.get_text("/metrics").await.1;
    let mut deep = json!(1);
    for _ in 0..10 {
        deep = json!({ "d": deep });
    }
    let wide: serde_json::Map<String, serde_json::Value> =
        (0..51).map(|i| (format!("k{i}"), json!(i))).collect();
    for (payload, limit) in [
        (deep, "max_payload_depth"),
        (json!(wide), "max_payload_keys"),
    ] {
        let response = server
            .admin(
                "POST",
                "/api/realtime/messages",
                Some(json!({ "channel": "deep:1", "event": "e", "payload": payload })),
            )
            .await;
        common::assert_error(&response, 400, "INVALID_INPUT");
        assert!(
            response.1["message"].as_str().unwrap().contains(limit),
            "{}",
            response.1
        );
        // The socket path says the same.
        let mut client = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
        let ack = client
            .call("realtime:subscribe", json!({ "channel": "deep:1" }))
            .await;
        assert_eq!(ack["ok"], true);
        let ack = client
            .call(
                "realtime:publish",
                json!({ "channel": "deep:1", "event": "e", "payload": payload }),
            )
            .await;
        assert_eq!(ack["error"]["code"], "INVALID_INPUT", "{ack}");
    }
    let after = server.get_text("/metrics").await.1;
    for limit in ["max_payload_depth", "max_payload_keys"] {
        assert!(
            refusals(&after, limit) >= refusals(&before, limit) + 2,
            "{limit}"
        );
    }
    // Nothing was stored.
    assert_eq!(server.scalar("SELECT count(*) FROM messages").await, 0);
}

async fn subscribe(client: &mut SioClient, channel: &str) -> serde_json::Value {
    client
        .call("realtime:subscribe", json!({ "channel": channel }))
        .await
}

async fn a_full_channel_refuses_new_members_but_not_more_sockets_of_one(backend: Backend) {
    let server = TestServer::start_with(backend, "[limits]\nmax_presence_members = 2\n").await;
    let (status, _) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "room:%" })),
        )
        .await;
    assert_eq!(status, 201);
    let user = server.token(
        realtime::auth::Role::Authenticated,
        "11111111-1111-4111-8111-111111111111",
    );
    let mut first = SioClient::connect(&server.base_url, json!({ "token": user })).await;
    let mut guest = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let mut second = SioClient::connect(&server.base_url, json!({ "token": user })).await;
    let mut late = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    assert_eq!(subscribe(&mut first, "room:1").await["ok"], true);
    assert_eq!(subscribe(&mut guest, "room:1").await["ok"], true);
    // The same user again is the same member: not refused.
    let again = subscribe(&mut second, "room:1").await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["presence"]["members"].as_array().unwrap().len(), 2);
    // A third member is.
    let refused = subscribe(&mut late, "room:1").await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "RATE_LIMITED", "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_presence_members"));
    // Another channel is not full.
    assert_eq!(subscribe(&mut late, "room:2").await["ok"], true);
    let metrics = server.get_text("/metrics").await.1;
    assert!(
        metrics.lines().any(|line| line
            .starts_with("realtime_limit_refusals_total{limit=\"max_presence_members\"}")
            && !line.ends_with(" 0")),
        "{metrics}"
    );
}

async fn a_user_has_at_most_max_sockets_per_user(backend: Backend) {
    let server = TestServer::start_with(backend, "[limits]\nmax_sockets_per_user = 2\n").await;
    let user = server.token(
        realtime::auth::Role::Authenticated,
        "11111111-1111-4111-8111-111111111111",
    );
    let first = SioClient::connect(&server.base_url, json!({ "token": user })).await;
    let _second = SioClient::connect(&server.base_url, json!({ "token": user })).await;
    // Anon keys are not users: any number.
    let mut guests = Vec::new();
    for _ in 0..3 {
        guests.push(SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await);
    }
    let refused = |server: &TestServer, token: String| {
        let url = format!("{}/socket.io/?EIO=4&transport=websocket", server.base_url);
        async move {
            let mut ws = WsClient::connect(&url).await.unwrap();
            let _open = ws.recv().await;
            ws.send_text(&format!("40{}", json!({ "token": token })))
                .await;
            match ws.recv().await {
                WsFrame::Text(answer) => answer,
                other => panic!("{other:?}"),
            }
        }
    };
    let answer = refused(&server, user.clone()).await;
    assert!(answer.starts_with("44"), "{answer}");
    let error: serde_json::Value = serde_json::from_str(&answer[2..]).unwrap();
    assert_eq!(error["data"]["code"], "RATE_LIMITED", "{error}");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("max_sockets_per_user"));
    // One closes: its place is free again.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = refused(&server, user.clone()).await;
        if answer.starts_with("40") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was not given back"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}
