//! The message pipeline end to end over raw Socket.IO, on SQLite and
//! PostgreSQL: slow subscribers, channel retirement, publishing with
//! nobody listening.

mod common;

use std::time::{Duration, Instant};

use common::wire::SioClient;
use common::{Backend, TestServer, ANON_KEY};
use realtime::channel::registry::CountChannels;
use serde_json::json;

backend_tests!(
    slow_subscriber_is_closed_and_others_get_everything,
    idle_channels_are_retired,
    publish_with_nobody_listening_is_stored,
    subscriptions_per_socket_are_limited,
    presence_burst_tells_each_member_once,
    publishes_beyond_the_rate_are_refused,
    a_channel_refuses_publishes_when_storage_lags,
    metrics_count_the_pipeline,
    rest_and_socket_publishes_are_checked_alike,
    a_storage_failure_is_503_and_the_server_recovers,
    rest_publish_over_capacity_is_429,
    a_batch_goes_once_as_many_wait_as_last_time,
    an_app_closes_a_session_through_its_session_table,
    messages_are_numbered_in_the_order_they_were_stored,
);

async fn create_channel(server: &TestServer, pattern: &str) {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": pattern })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn anon(server: &TestServer) -> SioClient {
    SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await
}

async fn subscribe(client: &mut SioClient, channel: &str) {
    let ack = client
        .call("realtime:subscribe", json!({ "channel": channel }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not in time");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn slow_subscriber_is_closed_and_others_get_everything(backend: Backend) {
    // A small queue so that a client that stops reading overflows it.
    let server = TestServer::start_with(backend, "[engineio]\nmax_buffered_packets = 600\n").await;
    create_channel(&server, "feed:%").await;
    let mut reader = anon(&server).await;
    subscribe(&mut reader, "feed:1").await;
    let mut sleeper = anon(&server).await;
    subscribe(&mut sleeper, "feed:1").await;

    const N: usize = 3000;
    let reading = actix_rt::spawn(async move {
        let mut seen = Vec::with_capacity(N);
        while seen.len() < N {
            match reader.next_event().await {
                Some((name, body)) if name == "tick" => {
                    seen.push(body["n"].as_u64().unwrap() as usize)
                }
                Some(_) => {}
                None => break,
            }
        }
        seen
    });
    // 3000 × 8 KB is far more than the sleeper's queue and socket buffers.
    let padding = "x".repeat(8 * 1024);
    for n in 0..N {
        let (status, body) = server
            .admin(
                "POST",
                "/api/realtime/messages",
                Some(json!({ "channel": "feed:1", "event": "tick", "payload": { "n": n, "padding": padding } })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let seen = reading.await.unwrap();
    assert_eq!(
        seen,
        (0..N).collect::<Vec<_>>(),
        "the reading subscriber got every message in order"
    );

    // The sleeper wakes up: it finds some messages, then a closed connection.
    let mut woke_to = 0;
    while let Some((name, _)) = sleeper.next_event().await {
        if name == "tick" {
            woke_to += 1;
        }
    }
    assert!(
        woke_to < N,
        "the slow subscriber was cut off after {woke_to} messages"
    );

    // History has everything; the last messages went to the reader alone.
    let (_, rows) = server
        .admin("GET", "/api/realtime/messages?eventName=tick&limit=1", None)
        .await;
    assert_eq!(rows[0]["payload"]["n"], N - 1);
    assert_eq!(rows[0]["wsAudienceCount"], 1);
    let (_, stats) = server
        .admin("GET", "/api/realtime/messages/stats", None)
        .await;
    assert_eq!(stats["totalMessages"], N);
}

async fn idle_channels_are_retired(backend: Backend) {
    let server = TestServer::start(backend).await;
    create_channel(&server, "room:%").await;
    let live = || async { server.realtime.registry.send(CountChannels).await.unwrap() };
    let mut first = anon(&server).await;
    let mut second = anon(&server).await;
    for name in ["room:1", "room:2", "room:3", "room:3"] {
        // room:3 twice: subscribing again must not keep the channel alive.
        subscribe(&mut first, name).await;
    }
    subscribe(&mut second, "room:1").await;
    assert_eq!(live().await, 3);
    let ack = first
        .call("realtime:unsubscribe", json!({ "channel": "room:3" }))
        .await;
    assert_eq!(ack["ok"], true);
    wait_until("room:3 retired", || async { live().await == 2 }).await;
    drop(first);
    // room:2 had only the first socket; room:1 still has the second.
    wait_until("room:2 retired", || async { live().await == 1 }).await;
    drop(second);
    wait_until("all retired", || async { live().await == 0 }).await;
}

async fn publish_with_nobody_listening_is_stored(backend: Backend) {
    let server = TestServer::start(backend).await;
    create_channel(&server, "alone").await;
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/messages",
            Some(json!({ "channel": "alone", "event": "echo", "payload": { "k": [1, 2] } })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["wsAudienceCount"], 0);
    assert_eq!(body["channelName"], "alone");
    let (_, rows) = server.admin("GET", "/api/realtime/messages", None).await;
    assert_eq!(rows[0]["id"], body["id"]);
    assert_eq!(rows[0]["payload"], json!({ "k": [1, 2] }));
    let live = server.realtime.registry.send(CountChannels).await.unwrap();
    assert!(live <= 1);
    wait_until("the publish-only channel is retired", || async {
        server.realtime.registry.send(CountChannels).await.unwrap() == 0
    })
    .await;
}

async fn subscriptions_per_socket_are_limited(backend: Backend) {
    let server = TestServer::start_with(backend, "[limits]\nmax_channels_per_socket = 2\n").await;
    create_channel(&server, "room:%").await;
    let mut client = anon(&server).await;
    subscribe(&mut client, "room:1").await;
    subscribe(&mut client, "room:2").await;
    let refused = client
        .call("realtime:subscribe", json!({ "channel": "room:3" }))
        .await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "INVALID_INPUT");
    // Subscribing again to a channel it has is still fine.
    subscribe(&mut client, "room:1").await;
}

async fn presence_burst_tells_each_member_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    create_channel(&server, "crowd").await;
    const N: usize = 25;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(anon(&server).await);
    }
    // Everyone asks at once, so the channel sees a burst of joins.
    for client in clients.iter_mut() {
        client
            .ws
            .send_text(r#"4217["realtime:subscribe",{"channel":"crowd"}]"#)
            .await;
    }
    let mut all_members = std::collections::HashSet::new();
    let mut views = Vec::new();
    for client in clients.iter_mut() {
        let mut snapshot = Vec::new();
        let mut joins = Vec::new();
        let mut acked = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !(acked && snapshot.len() + joins.len() >= N) {
            match client.ws.recv_skipping_pings().await {
                common::wire::WsFrame::Text(text) if text.starts_with("4317") => {
                    let ack: serde_json::Value = serde_json::from_str(&text[4..]).unwrap();
                    for member in ack[0]["presence"]["members"].as_array().unwrap() {
                        snapshot.push(member["presenceId"].as_str().unwrap().to_owned());
                    }
                    acked = true;
                }
                common::wire::WsFrame::Text(text) if text.starts_with(r#"42["presence:join""#) => {
                    let event: serde_json::Value = serde_json::from_str(&text[2..]).unwrap();
                    joins.push(
                        event[1]["member"]["presenceId"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        all_members.extend(snapshot.iter().cloned());
        views.push((snapshot, joins));
    }
    assert_eq!(all_members.len(), N);
    for (snapshot, joins) in views {
        let mut seen: Vec<&String> = snapshot.iter().chain(joins.iter()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            snapshot.len() + joins.len(),
            "no member twice: {snapshot:?} {joins:?}"
        );
        assert_eq!(
            seen.len(),
            N,
            "every member once, its own in the snapshot only"
        );
        // Its own id (the last member it learned of in the snapshot) is never a join.
        assert!(joins.iter().all(|member| !snapshot.contains(member)));
    }
}

/// Publishes `n` messages with acks in one go; returns the acks in order.
async fn publish_burst(client: &mut SioClient, channel: &str, n: u64) -> Vec<serde_json::Value> {
    for id in 0..n {
        let packet = json!(["realtime:publish", { "channel": channel, "event": "e", "payload": { "n": id } }]);
        client
            .ws
            .send_text(&format!("42{}{packet}", 1000 + id))
            .await;
    }
    let mut acks = std::collections::BTreeMap::new();
    while acks.len() < n as usize {
        match client.ws.recv_skipping_pings().await {
            common::wire::WsFrame::Text(text) if text.starts_with("43") => {
                let digits: String = text[2..].chars().take_while(char::is_ascii_digit).collect();
                let ack: serde_json::Value =
                    serde_json::from_str(&text[2 + digits.len()..]).unwrap();
                acks.insert(digits.parse::<u64>().unwrap(), ack[0].clone());
            }
            common::wire::WsFrame::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    acks.into_values().collect()
}

async fn publishes_beyond_the_rate_are_refused(backend: Backend) {
    let server =
        TestServer::start_with(backend, "[limits]\npublish_rate = 5\npublish_burst = 5\n").await;
    create_channel(&server, "busy").await;
    let mut client = anon(&server).await;
    subscribe(&mut client, "busy").await;
    let acks = publish_burst(&mut client, "busy", 20).await;
    let accepted = acks.iter().filter(|ack| ack["ok"] == true).count();
    let limited = acks
        .iter()
        .filter(|ack| ack["error"]["code"] == "RATE_LIMITED")
        .count();
    // The burst of 5, plus one more per 200 ms the 20 sends took (a few on
    // a loaded machine).
    assert!(
        (5..=8).contains(&accepted),
        "the burst of 5 and little refill: {acks:?}"
    );
    assert_eq!(accepted + limited, 20);
    // Without an ack the refusal comes as realtime:error.
    client
        .emit(
            "realtime:publish",
            json!({ "channel": "busy", "event": "e", "payload": {} }),
        )
        .await;
    loop {
        let (name, body) = client.next_event().await.expect("connection stays open");
        if name == "realtime:error" {
            assert_eq!(body["code"], "RATE_LIMITED");
            assert_eq!(body["channel"], "busy");
            break;
        }
    }
    let (_, stats) = server
        .admin("GET", "/api/realtime/messages/stats", None)
        .await;
    assert_eq!(
        stats["totalMessages"], accepted,
        "refused publishes are not stored"
    );
}

async fn a_channel_refuses_publishes_when_storage_lags(backend: Backend) {
    // Room for 3 unstored messages, and storage that stalls for 1.5 s.
    let server = TestServer::start_with(
        backend,
        "[limits]\npublish_rate = 0\nmax_pending_per_channel = 3\n",
    )
    .await;
    create_channel(&server, "lagging").await;
    let mut client = anon(&server).await;
    subscribe(&mut client, "lagging").await;
    server
        .stall_message_writes(Duration::from_millis(1500))
        .await;
    let acks = publish_burst(&mut client, "lagging", 6).await;
    let codes: Vec<_> = acks
        .iter()
        .map(|ack| {
            if ack["ok"] == true {
                "ok".to_owned()
            } else {
                ack["error"]["code"].as_str().unwrap().to_owned()
            }
        })
        .collect();
    assert_eq!(
        codes,
        [
            "ok",
            "ok",
            "ok",
            "RATE_LIMITED",
            "RATE_LIMITED",
            "RATE_LIMITED"
        ]
    );
    let (_, stats) = server
        .admin("GET", "/api/realtime/messages/stats", None)
        .await;
    assert_eq!(stats["totalMessages"], 3);
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

async fn metrics_count_the_pipeline(backend: Backend) {
    let server = TestServer::start(backend).await;
    create_channel(&server, "counted").await;
    let (status, before) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(before.contains("# TYPE realtime_sessions_open gauge"));
    assert!(before.contains("realtime_sessions_closed_total{reason=\"ping_timeout\"}"));
    let mut client = anon(&server).await;
    subscribe(&mut client, "counted").await;
    for n in 0..3 {
        let (status, _) = server
            .admin(
                "POST",
                "/api/realtime/messages",
                Some(json!({ "channel": "counted", "event": "e", "payload": { "n": n } })),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (_, after) = server.get_text("/metrics").await;
    // Other tests run in this process too: counters only grow, by at least ours.
    for (name, at_least) in [
        ("realtime_messages_accepted_total", 3),
        ("realtime_messages_delivered_total", 3),
        ("realtime_socket_deliveries_total", 3),
        ("realtime_writer_rows_total", 3),
        ("realtime_sessions_opened_total", 1),
    ] {
        assert!(
            metric(&after, name) >= metric(&before, name) + at_least,
            "{name}"
        );
    }
    assert!(metric(&after, "realtime_sessions_open") >= 1);
    assert!(metric(&after, "realtime_channels_live") >= 1);
    // What operators graph: connections by transport, subscriptions, the
    // publish-to-delivery and commit latencies, batch sizes, HTTP requests.
    assert!(metric(&after, "realtime_connections{transport=\"websocket\"}") >= 1);
    assert!(metric(&after, "realtime_subscriptions") >= 1);
    for (name, at_least) in [
        ("realtime_publish_delivery_seconds_count", 3),
        ("realtime_writer_batch_rows_count", 1),
        ("realtime_writer_commit_seconds_count", 1),
        (
            "realtime_http_requests_total{route=\"/api/realtime/messages\",status=\"201\"}",
            3,
        ),
    ] {
        // A labelled line appears with its first observation.
        let was = before
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0);
        assert!(metric(&after, name) >= was + at_least, "{name}");
    }
    assert!(after.contains("# TYPE realtime_publish_delivery_seconds histogram"));
    assert!(after.contains("realtime_publish_delivery_seconds_bucket{le=\"+Inf\"}"));
}

/// Publishes over REST; returns status and body.
async fn rest_publish(server: &TestServer, body: serde_json::Value) -> (u16, serde_json::Value) {
    server
        .admin("POST", "/api/realtime/messages", Some(body))
        .await
}

async fn rest_and_socket_publishes_are_checked_alike(backend: Backend) {
    let server = TestServer::start(backend).await;
    create_channel(&server, "same:%").await;
    let mut client = anon(&server).await;
    subscribe(&mut client, "same:1").await;
    for (body, status, code) in [
        (json!(["x"]), 400, "INVALID_INPUT"),
        (json!({ "event": "e" }), 400, "INVALID_INPUT"),
        (json!({ "channel": "same:1" }), 400, "INVALID_INPUT"),
        (
            json!({ "channel": "same:1", "event": "e", "payload": 3 }),
            400,
            "INVALID_INPUT",
        ),
        (
            json!({ "channel": "same:1", "event": "presence:join" }),
            400,
            "REALTIME_INVALID_EVENT",
        ),
        (
            json!({ "channel": "same:1", "event": "x".repeat(256) }),
            400,
            "REALTIME_INVALID_EVENT",
        ),
    ] {
        let rest = rest_publish(&server, body.clone()).await;
        common::assert_error(&rest, status, code);
        let ack = client.call("realtime:publish", body.clone()).await;
        assert_eq!(ack["ok"], false, "{body}");
        assert_eq!(ack["error"]["code"], code, "{body}");
        assert_eq!(ack["error"]["message"], rest.1["message"], "{body}");
    }
    let rest = rest_publish(&server, json!({ "channel": "other:1", "event": "e" })).await;
    common::assert_error(&rest, 404, "REALTIME_CHANNEL_NOT_FOUND");
    let ack = client
        .call(
            "realtime:publish",
            json!({ "channel": "same:2", "event": "e" }),
        )
        .await;
    assert_eq!(ack["error"]["code"], "REALTIME_NOT_SUBSCRIBED");
}

async fn a_storage_failure_is_503_and_the_server_recovers(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let server = TestServer::start(backend).await;
    create_channel(&server, "fragile").await;
    let mut client = anon(&server).await;
    subscribe(&mut client, "fragile").await;
    // Take the history table away: every write fails (after the writer's
    // retries) until it is back.
    server
        .db
        .execute_unprepared("ALTER TABLE messages RENAME TO messages_away")
        .await
        .unwrap();
    let (status, body) =
        rest_publish(&server, json!({ "channel": "fragile", "event": "lost" })).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "DATABASE_UNAVAILABLE");
    let message = body["message"].as_str().unwrap();
    assert!(
        !message.contains("messages") && !message.contains("database error"),
        "no database details reach the caller: {message}"
    );
    let ack = client
        .call(
            "realtime:publish",
            json!({ "channel": "fragile", "event": "lost" }),
        )
        .await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "DATABASE_UNAVAILABLE");
    assert_eq!(ack["error"]["message"], message);

    server
        .db
        .execute_unprepared("ALTER TABLE messages_away RENAME TO messages")
        .await
        .unwrap();
    let (status, body) =
        rest_publish(&server, json!({ "channel": "fragile", "event": "kept" })).await;
    assert_eq!(status, 201, "{body}");
    // The subscriber got only what was stored.
    let (name, delivered) = client.next_event().await.unwrap();
    assert_eq!(name, "kept");
    assert_eq!(delivered["meta"]["messageId"], body["id"]);
    let (_, rows) = server.admin("GET", "/api/realtime/messages", None).await;
    assert_eq!(rows.as_array().unwrap().len(), 1);
}

async fn rest_publish_over_capacity_is_429(backend: Backend) {
    // Room for one unstored message, and storage that stalls for 1 s.
    let server = TestServer::start_with(backend, "[limits]\nmax_pending_per_channel = 1\n").await;
    create_channel(&server, "narrow").await;
    server.stall_message_writes(Duration::from_secs(1)).await;
    let body = || json!({ "channel": "narrow", "event": "e" });
    let (first, second) =
        futures_util::join!(rest_publish(&server, body()), rest_publish(&server, body()));
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [201, 429], "{first:?} {second:?}");
    let refused = if first.0 == 429 { first } else { second };
    common::assert_error(&refused, 429, "RATE_LIMITED");
}

/// The writer sends a batch as soon as as many messages wait as its last
/// batch held: a lone publisher's message is stored at once, while fewer
/// than last time still wait out `batch_window_ms` for more to come.
async fn a_batch_goes_once_as_many_wait_as_last_time(backend: Backend) {
    let window = Duration::from_secs(3);
    let server = TestServer::start_with(
        backend,
        "[database]\nbatch_window_ms = 3000\n[limits]\npublish_rate = 0\n",
    )
    .await;
    create_channel(&server, "paced").await;
    let body = || json!({ "channel": "paced", "event": "e" });
    let started = Instant::now();
    assert_eq!(rest_publish(&server, body()).await.0, 201);
    assert!(
        started.elapsed() < window / 2,
        "a lone message waited {:?}",
        started.elapsed()
    );
    // While storage stalls, the first of three goes alone and the other
    // two wait behind it; then they are a batch of two, at once.
    server
        .stall_message_writes(Duration::from_millis(500))
        .await;
    let started = Instant::now();
    let (first, second, third) = futures_util::join!(
        rest_publish(&server, body()),
        rest_publish(&server, body()),
        rest_publish(&server, body())
    );
    assert_eq!([first.0, second.0, third.0], [201, 201, 201]);
    assert!(
        started.elapsed() < window / 2,
        "the stalled three took {:?}",
        started.elapsed()
    );
    // One is fewer than the last batch: it waits for company.
    let started = Instant::now();
    assert_eq!(rest_publish(&server, body()).await.0, 201);
    assert!(
        started.elapsed() >= window - Duration::from_millis(500),
        "one message after a batch of two went after {:?}",
        started.elapsed()
    );
}

async fn an_app_closes_a_session_through_its_session_table(backend: Backend) {
    let server = TestServer::start(backend).await;
    create_channel(&server, "watched").await;
    let mut client = anon(&server).await;
    subscribe(&mut client, "watched").await;
    assert!(!server
        .sockets
        .registry
        .close("no-such-sid", realtime::engineio::CloseReason::ServerClose));
    assert!(server
        .sockets
        .registry
        .close(&client.sid, realtime::engineio::CloseReason::ServerClose));
    // The transport closes, with no Socket.IO DISCONNECT first: the stock
    // client then reconnects by itself.
    loop {
        match client.ws.recv_skipping_pings().await {
            common::wire::WsFrame::Closed => break,
            common::wire::WsFrame::Text(text) => assert!(!text.starts_with("41"), "{text}"),
            common::wire::WsFrame::Binary(_) => {}
        }
    }
    wait_until("the session is gone", || async {
        server.sockets.registry.get(&client.sid).is_none()
    })
    .await;
}

/// Every stored message gets a `seq`, increasing in the order each channel
/// delivered its messages, across channels and whichever way they came in
/// (socket, REST).
async fn messages_are_numbered_in_the_order_they_were_stored(backend: Backend) {
    use sea_orm::{ConnectionTrait, Statement};
    let server = TestServer::start(backend).await;
    create_channel(&server, "seq:%").await;
    let mut client = anon(&server).await;
    for channel in ["seq:a", "seq:b"] {
        subscribe(&mut client, channel).await;
    }
    for n in 0..40 {
        let channel = if n % 3 == 0 { "seq:a" } else { "seq:b" };
        if n % 5 == 0 {
            let (status, body) = server
                .admin(
                    "POST",
                    "/api/realtime/messages",
                    Some(json!({ "channel": channel, "event": "rest", "payload": { "n": n } })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        } else {
            let ack = client
                .call(
                    "realtime:publish",
                    json!({ "channel": channel, "event": "socket", "payload": { "n": n } }),
                )
                .await;
            assert_eq!(ack["ok"], true, "{ack}");
        }
    }
    let rows = server
        .db
        .query_all(Statement::from_string(
            server.db.get_database_backend(),
            "SELECT seq, payload FROM messages ORDER BY seq",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 40);
    let mut last = 0i64;
    for (n, row) in rows.iter().enumerate() {
        let seq: Option<i64> = row.try_get("", "seq").unwrap();
        let seq = seq.expect("every message is numbered");
        assert!(seq > last, "seq increases: {seq} after {last}");
        last = seq;
        let payload: serde_json::Value = row.try_get("", "payload").unwrap();
        let payload: serde_json::Value = match payload {
            // SQLite keeps JSON as text.
            serde_json::Value::String(text) => serde_json::from_str(&text).unwrap(),
            other => other,
        };
        // Each publish was acknowledged before the next was sent, so seq
        // order is publish order.
        assert_eq!(payload["n"], n as i64, "row {n}");
    }
}

/// SQLite's log is copied into the database file while the server runs
/// (its own checkpointer; SQLite's in-commit one is off), and starts over
/// instead of growing with the history.
#[actix_rt::test]
async fn sqlite_copies_its_log_into_the_file_and_starts_it_over() {
    let server = TestServer::start_with(Backend::Sqlite, "[limits]\npublish_rate = 0\n").await;
    let file = server
        .database_url
        .strip_prefix("sqlite://")
        .unwrap()
        .to_owned();
    let log = format!("{file}-wal");
    create_channel(&server, "big").await;
    let mut client = anon(&server).await;
    subscribe(&mut client, "big").await;
    // The checkpointer (every 200 ms) asks for a start over once the log
    // holds 4,096 pages (16 MB), and the writer does it between two
    // batches, so only while batches still come: bursts of 600 KB of rows
    // go on until the log started over (its header counts the times, the
    // checkpoint sequence number in bytes 12..16), at least 24 MB and at
    // most 72 MB of them.
    let restarts = || {
        let header = std::fs::read(&log).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    };
    let filler = "x".repeat(3000);
    let mut bursts = 0u64;
    while bursts < 40 || (restarts() == 0 && bursts < 120) {
        for id in 0..200u64 {
            let packet = json!(["realtime:publish", { "channel": "big", "event": "e", "payload": { "n": id, "filler": filler } }]);
            client
                .ws
                .send_text(&format!("42{}{packet}", bursts * 1000 + id))
                .await;
        }
        let mut acked = 0;
        while acked < 200 {
            if let common::wire::WsFrame::Text(text) = client.ws.recv_skipping_pings().await {
                if text.starts_with("43") {
                    assert!(text.contains("\"ok\":true"), "{text}");
                    acked += 1;
                }
            }
        }
        bursts += 1;
    }
    let written: u64 = bursts * 200 * 3000;
    // Copied into the file while the server runs, not only at close.
    wait_until("the log is copied into the database file", || async {
        std::fs::metadata(&file).unwrap().len() > written
    })
    .await;
    // The file is reused, not grown.
    assert!(
        restarts() >= 1,
        "the log never started over ({bursts} bursts)"
    );
    let log_bytes = std::fs::metadata(&log).unwrap().len();
    assert!(log_bytes < written, "the log grew to {log_bytes} bytes");
}
