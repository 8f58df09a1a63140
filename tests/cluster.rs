//! Several server processes on one PostgreSQL database act as one
//! service: a message published on any node (REST, socket or SQL) reaches
//! subscribers on every node, every node shows a channel's messages in the
//! same order (the `seq` order), and audience counts add up across nodes.
//! (Two nodes in one test process, each with its own pools, listener and
//! actors, as two processes would have.)

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::balancer::Balancer;
use common::process::ServerProcess;
use common::receiver::Receiver;
use common::wire::{http, SioClient, WsFrame};
use common::{wait_until, Backend, TestServer, ANON_KEY};
use realtime::auth::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// Two nodes on one fresh database, with the channel pattern `room:%`.
async fn two_nodes() -> Option<(TestServer, TestServer)> {
    if common::postgres_skipped() {
        return None;
    }
    let a = TestServer::start(Backend::Postgres).await;
    let (status, body) = a
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "room:%" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let b = TestServer::start_on(Backend::Postgres, a.database_url.clone(), None, "").await;
    Some((a, b))
}

/// Two nodes that find a silent one dead after a second: B in this test
/// process, with the channel pattern `room:%`, and A, a real process to
/// SIGKILL.
async fn a_node_and_a_process() -> (TestServer, ServerProcess) {
    let (database_url, _) = common::fresh_database(Backend::Postgres).await;
    let fast_cluster = "[cluster]\nheartbeat_ms = 200\nnode_timeout_ms = 1000\n";
    let b = TestServer::start_on(Backend::Postgres, database_url.clone(), None, fast_cluster).await;
    let (status, body) = b
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "room:%" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let a = ServerProcess::start(
        ServerProcess::binary(),
        &database_url,
        common::free_port(),
        &[
            ("REALTIME__CLUSTER__HEARTBEAT_MS", "200"),
            ("REALTIME__CLUSTER__NODE_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    (b, a)
}

/// An anonymous client that comes back to `base` with session `pid` and
/// the offset of the last message it got; returns it with whether it was
/// recovered (the CONNECT answer keeps the pid).
async fn come_back(base: &str, pid: &str, offset: i64) -> (SioClient, bool) {
    let client = SioClient::connect(
        base,
        json!({ "token": ANON_KEY, "pid": pid, "offset": offset.to_string() }),
    )
    .await;
    let recovered = client.answer["pid"] == pid;
    (client, recovered)
}

/// The next `tick`'s payload `n` and offset (the event's last argument).
async fn next_tick(client: &mut SioClient) -> (String, i64) {
    loop {
        match client.ws.recv_within(Duration::from_secs(10)).await {
            WsFrame::Text(text) if text.starts_with("42") => {
                let args: Vec<Value> = serde_json::from_str(&text[2..]).unwrap();
                if args[0] != "tick" {
                    continue;
                }
                let n = args[1]["n"].as_str().unwrap().to_owned();
                let offset = args.last().unwrap().as_str().unwrap().parse().unwrap();
                return (n, offset);
            }
            WsFrame::Text(ping) if ping == "2" => client.ws.send_text("3").await,
            WsFrame::Text(_) | WsFrame::Binary(_) => continue,
            WsFrame::Closed => panic!("closed"),
        }
    }
}

async fn rest_publish(node: &TestServer, channel: &str, n: String) {
    let (status, body) = node
        .admin(
            "POST",
            "/api/realtime/messages",
            Some(json!({ "channel": channel, "event": "tick", "payload": { "n": n } })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[actix_rt::test]
async fn every_node_delivers_every_message_in_one_order() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let mut on_a = a.anon_subscriber("room:1").await;
    let mut on_b = b.anon_subscriber("room:1").await;
    let mut publisher_a = a.anon_subscriber("room:1").await;
    let mut publisher_b = b.anon_subscriber("room:1").await;

    // Publishes on both nodes and from SQL, all at once.
    let n_each = 20;
    let mut rest = Vec::new();
    for i in 0..n_each {
        rest.push(rest_publish(&a, "room:1", format!("a-rest-{i}")));
        rest.push(rest_publish(&b, "room:1", format!("b-rest-{i}")));
    }
    let rest = futures_util::future::join_all(rest);
    let sockets = async {
        for i in 0..n_each {
            for (client, name) in [(&mut publisher_a, "a"), (&mut publisher_b, "b")] {
                client
                    .emit(
                        "realtime:publish",
                        json!({ "channel": "room:1", "event": "tick", "payload": { "n": format!("{name}-socket-{i}") } }),
                    )
                    .await;
            }
        }
    };
    let sql = async {
        for i in 0..n_each {
            a.sql(&format!(
                "SELECT realtime.publish('room:1', 'tick', '{{\"n\": \"sql-{i}\"}}'::jsonb)"
            ))
            .await;
        }
    };
    futures_util::join!(rest, sockets, sql);

    let total = 5 * n_each;
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..total {
        seen_a.push(next_tick(&mut on_a).await);
        seen_b.push(next_tick(&mut on_b).await);
    }
    assert_eq!(seen_a, seen_b, "both nodes show one order");
    let offsets: Vec<i64> = seen_a.iter().map(|(_, offset)| *offset).collect();
    assert!(
        offsets.windows(2).all(|pair| pair[0] < pair[1]),
        "the order is the seq order: {offsets:?}"
    );
    let mut names: Vec<&str> = seen_a.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "each message once");

    // Every message reached 4 sockets, 2 on each node: the counts add up.
    wait_until("audience counts", Duration::from_secs(10), || async {
        let (_, rows) = a
            .admin("GET", "/api/realtime/messages?limit=100", None)
            .await;
        let rows = rows.as_array().unwrap().clone();
        rows.len() == total && rows.iter().all(|row| row["wsAudienceCount"] == 4)
    })
    .await;
}

/// The next `event`'s arguments.
async fn next_args(client: &mut SioClient, event: &str) -> Vec<Value> {
    loop {
        match client.ws.recv_within(Duration::from_secs(10)).await {
            WsFrame::Text(text) if text.starts_with("42") => {
                let args: Vec<Value> = serde_json::from_str(&text[2..]).unwrap();
                if args[0] == event {
                    return args;
                }
            }
            WsFrame::Text(ping) if ping == "2" => client.ws.send_text("3").await,
            WsFrame::Text(_) | WsFrame::Binary(_) => continue,
            WsFrame::Closed => panic!("closed"),
        }
    }
}

#[actix_rt::test]
async fn ephemeral_messages_reach_every_node_in_one_order_and_are_never_stored() {
    if common::postgres_skipped() {
        return;
    }
    let a = TestServer::start(Backend::Postgres).await;
    let (status, body) = a
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "typing:%", "ephemeral": true })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let b = TestServer::start_on(Backend::Postgres, a.database_url.clone(), None, "").await;
    let mut on_a = a.anon_subscriber("typing:1").await;
    let mut on_b = b.anon_subscriber("typing:1").await;
    let mut publisher_a = a.anon_subscriber("typing:1").await;
    let mut publisher_b = b.anon_subscriber("typing:1").await;

    // Sockets and REST on both nodes at once, and one message too big for
    // a notification.
    let n_each = 25;
    let big = "x".repeat(20_000);
    let mut rest = Vec::new();
    for (node, name) in [(&a, "a"), (&b, "b")] {
        for i in 0..n_each {
            rest.push(node.admin(
                "POST",
                "/api/realtime/messages",
                Some(json!({ "channel": "typing:1", "event": "key", "payload": { "n": format!("{name}-rest-{i}") } })),
            ));
        }
    }
    let rest = futures_util::future::join_all(rest);
    let sockets = async {
        for i in 0..n_each {
            for (client, name) in [(&mut publisher_a, "a"), (&mut publisher_b, "b")] {
                client
                    .emit(
                        "realtime:publish",
                        json!({ "channel": "typing:1", "event": "key", "payload": { "n": format!("{name}-socket-{i}") } }),
                    )
                    .await;
            }
        }
        let ack = publisher_a
            .call(
                "realtime:publish",
                json!({ "channel": "typing:1", "event": "key", "payload": { "n": "big", "text": big } }),
            )
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    };
    let (rest, ()) = futures_util::join!(rest, sockets);
    for (status, body) in rest {
        assert_eq!(status, 201, "{body}");
    }

    let total = 4 * n_each + 1;
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..total {
        for (client, seen) in [(&mut on_a, &mut seen_a), (&mut on_b, &mut seen_b)] {
            let args = next_args(client, "key").await;
            assert_eq!(
                args.len(),
                2,
                "an ephemeral message has no offset: {args:?}"
            );
            assert_eq!(args[1]["meta"]["channel"], "typing:1");
            if args[1]["n"] == "big" {
                assert_eq!(args[1]["text"].as_str().unwrap().len(), 20_000);
            }
            seen.push(args[1]["n"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen_a, seen_b, "both nodes show one order");
    let mut names = seen_a.clone();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "each message once");
    for (node, name) in [
        ("a", "socket"),
        ("b", "socket"),
        ("a", "rest"),
        ("b", "rest"),
    ] {
        let from: Vec<&String> = seen_a
            .iter()
            .filter(|n| n.starts_with(&format!("{node}-{name}-")))
            .collect();
        let expected: Vec<String> = (0..n_each).map(|i| format!("{node}-{name}-{i}")).collect();
        if name == "socket" {
            assert_eq!(
                from,
                expected.iter().collect::<Vec<_>>(),
                "one publisher's order kept"
            );
        } else {
            assert_eq!(from.len(), n_each);
        }
    }

    // Nothing stored, nothing more delivered.
    assert_eq!(
        a.scalar("SELECT count(*) FROM realtime.messages").await,
        0,
        "ephemeral messages are never stored"
    );
    for client in [&mut on_a, &mut on_b] {
        let more = tokio::time::timeout(Duration::from_millis(300), client.next_event()).await;
        assert!(more.is_err(), "{more:?}");
    }
    // Both nodes run in this process, which counts for both.
    let (_, metrics) = a.get_text("/metrics").await;
    let relayed: usize = metrics
        .lines()
        .find_map(|line| line.strip_prefix("realtime_ephemeral_relayed_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(relayed >= total, "{relayed} relayed");
    // The big one waited in a row, forgotten once old.
    assert_eq!(
        a.scalar("SELECT count(*) FROM realtime.ephemeral_relay")
            .await,
        1
    );
    a.sql("UPDATE realtime.ephemeral_relay SET created_at = now() - interval '2 minutes'")
        .await;
    wait_until(
        "old relayed rows deleted",
        Duration::from_secs(15),
        || async {
            a.scalar("SELECT count(*) FROM realtime.ephemeral_relay")
                .await
                == 0
        },
    )
    .await;
}

#[actix_rt::test]
async fn channel_definitions_changed_on_one_node_reach_the_others() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    // Created on B after A loaded its catalog: A hears of it.
    let (status, body) = b
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "late:%" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    wait_until("A knows late:%", Duration::from_secs(10), || async {
        a.realtime.catalog.resolve("late:1").is_some()
    })
    .await;
    let mut on_a = a.anon_subscriber("late:1").await;
    rest_publish(&b, "late:1", "one".to_owned()).await;
    assert_eq!(next_tick(&mut on_a).await.0, "one");

    // Disabled on B: A refuses new subscribers and delivers B's rows for it
    // no more.
    let (status, _) = b
        .admin(
            "PUT",
            &format!("/api/realtime/channels/{id}"),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    wait_until(
        "A knows late:% is disabled",
        Duration::from_secs(10),
        || async { a.realtime.catalog.resolve("late:1").is_none() },
    )
    .await;
    let mut refused = SioClient::connect(&a.base_url, json!({ "token": ANON_KEY })).await;
    let ack = refused
        .call("realtime:subscribe", json!({ "channel": "late:1" }))
        .await;
    assert_eq!(ack["ok"], false, "{ack}");
}

#[actix_rt::test]
async fn webhooks_go_out_once_and_move_on_when_their_node_dies() {
    if common::postgres_skipped() {
        return;
    }
    const N: usize = 200;
    const IN_FLIGHT: usize = 4;
    let (database_url, _) = common::fresh_database(Backend::Postgres).await;
    let receiver = Receiver::start();
    receiver.set_paused(true);
    // Node A, a real process to SIGKILL, holding its first requests at
    // the receiver and the rest in its backlog.
    let in_flight = IN_FLIGHT.to_string();
    let fast_cluster = [
        ("REALTIME__CLUSTER__HEARTBEAT_MS", "200"),
        ("REALTIME__CLUSTER__NODE_TIMEOUT_MS", "1000"),
        ("REALTIME__WEBHOOKS__TIMEOUT_MS", "60000"),
        (
            "REALTIME__WEBHOOKS__MAX_IN_FLIGHT_PER_URL",
            in_flight.as_str(),
        ),
    ];
    let mut a = ServerProcess::start(
        ServerProcess::binary(),
        &database_url,
        common::free_port(),
        &fast_cluster,
    )
    .await;
    let (status, body) = a
        .admin(
            "POST",
            "/api/realtime/channels",
            json!({ "pattern": "hooked", "webhookUrls": [receiver.url("/paused")] }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for chunk in 0..N / 50 {
        let publishes = (0..50).map(|i| {
            a.admin(
                "POST",
                "/api/realtime/messages",
                json!({ "channel": "hooked", "event": "e", "payload": { "n": chunk * 50 + i } }),
            )
        });
        for (status, body) in futures_util::future::join_all(publishes).await {
            assert_eq!(status, 201, "{body}");
        }
    }
    wait_until("A's first requests", Duration::from_secs(10), || async {
        receiver.received().len() == IN_FLIGHT
    })
    .await;

    // Node B starts while A lives: it leaves A's deliveries to A.
    let b = TestServer::start_on(
        Backend::Postgres,
        database_url.clone(),
        None,
        "[cluster]\nheartbeat_ms = 200\nnode_timeout_ms = 1000\n",
    )
    .await;
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.received().len(),
        IN_FLIGHT,
        "only A's requests reached the receiver"
    );
    assert_eq!(
        b.scalar("SELECT count(*) AS n FROM realtime.nodes").await,
        2
    );

    // A dies: B finds it silent, takes its deliveries over and sends them.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    receiver.set_paused(false);
    wait_until("B sent A's backlog", Duration::from_secs(20), || async {
        b.scalar("SELECT count(*) AS n FROM realtime.webhook_pending")
            .await
            == 0
    })
    .await;
    assert_eq!(
        b.scalar(
            "SELECT count(*) AS n FROM realtime.messages WHERE wh_audience_count = 1 AND wh_delivered_count = 1"
        )
        .await,
        N as i64,
        "each message counts its one delivery"
    );
    let received = receiver.received();
    let ids: HashSet<&str> = received
        .iter()
        .filter_map(|request| request.header("x-insforge-message-id"))
        .collect();
    assert_eq!(ids.len(), N, "every message reached the receiver");
    // A's held requests died with it and were sent again; nothing else
    // went twice.
    assert!(
        received.len() <= N + IN_FLIGHT,
        "{} requests for {N} messages",
        received.len()
    );
    assert_eq!(
        b.scalar("SELECT count(*) AS n FROM realtime.nodes").await,
        1,
        "A's row is gone"
    );
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_second_process_on_one_sqlite_file_is_warned_at_start() {
    let (database_url, _dir) = common::fresh_database(Backend::Sqlite).await;
    let first = ServerProcess::start(
        ServerProcess::binary(),
        &database_url,
        common::free_port(),
        &[],
    )
    .await;
    assert!(
        !first.log_tail().contains("another server process"),
        "{}",
        first.log_tail()
    );
    let second = ServerProcess::start(
        ServerProcess::binary(),
        &database_url,
        common::free_port(),
        &[],
    )
    .await;
    let log = second.log_tail();
    assert!(
        log.contains("another server process uses this SQLite database"),
        "{log}"
    );
}

/// A socket of user `sub` on `node`, subscribed to `channel`; returns it
/// with the presence ids its subscribe ack listed.
async fn member(node: &TestServer, sub: &str, channel: &str) -> (SioClient, Vec<String>) {
    let token = node.token(Role::Authenticated, sub);
    let mut client = SioClient::connect(&node.base_url, json!({ "token": token })).await;
    let ack = client
        .call("realtime:subscribe", json!({ "channel": channel }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let mut members: Vec<String> = ack["presence"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["presenceId"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    (client, members)
}

/// Waits until `presence_id` is written as present on `n` nodes.
async fn present_on_nodes(node: &TestServer, presence_id: &str, n: i64) {
    wait_until("the member written", Duration::from_secs(5), || async {
        node.scalar(&format!(
            "SELECT count(*) FROM realtime.presence WHERE presence_id = '{presence_id}'"
        ))
        .await
            == n
    })
    .await;
}

/// The first `n` presence events `client` gets within `within` (fewer if
/// no more come), as `(event, presence id)`.
async fn presence_events(
    client: &mut SioClient,
    n: usize,
    within: Duration,
) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + within;
    while events.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return events;
        }
        match actix_rt::time::timeout(left, client.next_event()).await {
            Ok(Some((name, body))) if name.starts_with("presence:") => {
                let id = body["member"]["presenceId"].as_str().unwrap().to_owned();
                events.push((name, id));
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed"),
            Err(_) => return events,
        }
    }
    events
}

/// No presence event comes for a while.
async fn quiet(client: &mut SioClient) -> Vec<(String, String)> {
    presence_events(client, usize::MAX, Duration::from_millis(800)).await
}

#[actix_rt::test]
async fn presence_is_one_set_of_members_across_nodes() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let (alice, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let (mut alice_on_a, members) = member(&a, &alice, "room:p").await;
    assert_eq!(members, std::slice::from_ref(&alice));
    // Other nodes learn of a member once its node wrote it (a few
    // milliseconds; one that joins meanwhile hears of it as a join).
    present_on_nodes(&a, &alice, 1).await;

    // Bob subscribes on B: B's snapshot lists Alice (on A); Alice hears
    // Bob join.
    let (mut bob_on_b, members) = member(&b, &bob, "room:p").await;
    let mut expected = vec![alice.clone(), bob.clone()];
    expected.sort();
    assert_eq!(members, expected, "B's snapshot lists A's members");
    assert_eq!(
        presence_events(&mut alice_on_a, 1, Duration::from_secs(3)).await,
        [("presence:join".to_owned(), bob.clone())]
    );

    // Bob's second socket, on A: one member, so nobody hears a join.
    let (mut bob_on_a, members) = member(&a, &bob, "room:p").await;
    present_on_nodes(&a, &bob, 2).await;
    assert_eq!(members, expected);
    assert_eq!(quiet(&mut alice_on_a).await, []);

    // Bob leaves B but stays on A: no leave anywhere.
    let ack = bob_on_b
        .call("realtime:unsubscribe", json!({ "channel": "room:p" }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(quiet(&mut alice_on_a).await, []);

    // A new subscriber on B still sees both.
    let carol = Uuid::new_v4().to_string();
    let (mut carol_on_b, members) = member(&b, &carol, "room:p").await;
    let mut all = vec![alice.clone(), bob.clone(), carol.clone()];
    all.sort();
    assert_eq!(members, all);
    assert_eq!(
        presence_events(&mut alice_on_a, 1, Duration::from_secs(3)).await,
        [("presence:join".to_owned(), carol.clone())]
    );

    // Bob's last socket leaves: Alice (A) and Carol (B) hear it once.
    bob_on_a
        .call("realtime:unsubscribe", json!({ "channel": "room:p" }))
        .await;
    let leave = [("presence:leave".to_owned(), bob.clone())];
    assert_eq!(
        presence_events(&mut alice_on_a, 1, Duration::from_secs(3)).await,
        leave
    );
    assert_eq!(
        presence_events(&mut carol_on_b, 1, Duration::from_secs(3)).await,
        leave
    );
    assert_eq!(quiet(&mut alice_on_a).await, []);
    assert_eq!(quiet(&mut carol_on_b).await, []);
}

#[actix_rt::test]
async fn the_members_of_a_node_that_dies_leave_everywhere() {
    if common::postgres_skipped() {
        return;
    }
    let (b, mut a) = a_node_and_a_process().await;
    let (watcher, doomed) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let (mut on_b, _) = member(&b, &watcher, "room:d").await;
    let token = b.token(Role::Authenticated, &doomed);
    let mut on_a = SioClient::connect(&a.base, json!({ "token": token })).await;
    let ack = on_a
        .call("realtime:subscribe", json!({ "channel": "room:d" }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let members: Vec<&str> = ack["presence"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["presenceId"].as_str().unwrap())
        .collect();
    assert!(members.contains(&watcher.as_str()), "{members:?}");
    assert_eq!(
        presence_events(&mut on_b, 1, Duration::from_secs(3)).await,
        [("presence:join".to_owned(), doomed.clone())]
    );

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // Found silent after 1 s (and a heartbeat): well within 3 s.
    let (event, body) = actix_rt::time::timeout(Duration::from_secs(3), on_b.next_event())
        .await
        .expect("the dead node's member leaves within 3 s")
        .unwrap();
    assert_eq!(
        (
            event.as_str(),
            body["member"]["presenceId"].as_str().unwrap()
        ),
        ("presence:leave", doomed.as_str())
    );
    assert_eq!(quiet(&mut on_b).await, []);
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM realtime.presence WHERE presence_id = '{doomed}'"
        ))
        .await,
        0
    );
    drop(on_a);
}

#[actix_rt::test]
async fn a_client_dropped_on_one_node_recovers_on_another() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let mut client = a.anon_subscriber("room:r").await;
    let pid = client.answer["pid"].as_str().unwrap().to_owned();
    for i in 0..5 {
        rest_publish(&a, "room:r", format!("before-{i}")).await;
    }
    let mut offset = 0;
    for i in 0..5 {
        let (n, at) = next_tick(&mut client).await;
        assert_eq!(n, format!("before-{i}"));
        offset = at;
    }
    // The network drops (no DISCONNECT); messages go on, on both nodes.
    drop(client);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        rest_publish(node, "room:r", format!("after-{i}")).await;
    }
    // Back, on the other node.
    let (mut back, recovered) = come_back(&b.base_url, &pid, offset).await;
    assert!(recovered, "recovered: {}", back.answer);
    for i in 0..10 {
        assert_eq!(next_tick(&mut back).await.0, format!("after-{i}"));
    }
    // And live after the seam, still subscribed.
    rest_publish(&a, "room:r", "live".to_owned()).await;
    assert_eq!(next_tick(&mut back).await.0, "live");
}

#[actix_rt::test]
async fn a_session_still_live_on_one_node_is_taken_over_by_another() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let mut old = a.anon_subscriber("room:h").await;
    let pid = old.answer["pid"].as_str().unwrap().to_owned();
    rest_publish(&a, "room:h", "seen".to_owned()).await;
    let (_, offset) = next_tick(&mut old).await;
    // The client comes back on B while A still holds its old connection
    // (A has not noticed that the network changed).
    rest_publish(&b, "room:h", "missed".to_owned()).await;
    let (mut back, recovered) = come_back(&b.base_url, &pid, offset).await;
    assert!(recovered, "recovered: {}", back.answer);
    assert_eq!(next_tick(&mut back).await.0, "missed");
    // A closed the old connection (panics if it stays open).
    old.frames_until_closed(Duration::from_secs(5)).await;
    rest_publish(&a, "room:h", "live".to_owned()).await;
    assert_eq!(next_tick(&mut back).await.0, "live");
}

#[actix_rt::test]
async fn long_polling_behind_a_balancer_needs_sticky_sessions_and_says_so() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let upstreams: Vec<std::net::SocketAddr> = [&a, &b]
        .iter()
        .map(|node| node.base_url["http://".len()..].parse().unwrap())
        .collect();
    let open = |base: String| async move {
        let (status, body) = http(
            "GET",
            &format!("{base}/socket.io/?EIO=4&transport=polling"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let open: Value = serde_json::from_str(&body[1..]).unwrap();
        format!(
            "{base}/socket.io/?EIO=4&transport=polling&sid={}",
            open["sid"].as_str().unwrap()
        )
    };
    let connect = format!("40{}", json!({ "token": ANON_KEY }));

    // Round robin: the session's next request reaches the other node,
    // which answers at once, and says why.
    let round_robin = Balancer::start(upstreams.clone(), false);
    let session = open(round_robin.url()).await;
    let started = std::time::Instant::now();
    let (status, body) = http("POST", &session, Some(&connect)).await;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], 1, "{body}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("sticky sessions"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "no hang");
    // WebSocket-only clients (what @insforge/sdk uses) hold one connection
    // and need no stickiness.
    for _ in 0..2 {
        let mut client = SioClient::connect(&round_robin.url(), json!({ "token": ANON_KEY })).await;
        let ack = client
            .call("realtime:subscribe", json!({ "channel": "room:lb" }))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let (_, metrics) = b.get_text("/metrics").await;
    assert!(
        metrics.contains("realtime_engine_wrong_node_requests_total 1"),
        "{metrics}"
    );

    // Sticky (by client address): every request of the session reaches
    // its node, and the session works.
    let sticky = Balancer::start(upstreams, true);
    let session = open(sticky.url()).await;
    assert_eq!(
        http("POST", &session, Some(&connect)).await,
        (200, "ok".to_owned())
    );
    let (status, body) = http("GET", &session, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("40{"), "the CONNECT answer: {body}");
}

#[actix_rt::test]
async fn clients_of_a_node_that_dies_recover_on_another_when_it_can_be_exact() {
    if common::postgres_skipped() {
        return;
    }
    let (b, mut a) = a_node_and_a_process().await;
    // One client on one channel; another on two channels.
    let mut single = SioClient::connect(&a.base, json!({ "token": ANON_KEY })).await;
    let mut double = SioClient::connect(&a.base, json!({ "token": ANON_KEY })).await;
    for (client, channels) in [
        (&mut single, &["room:k"][..]),
        (&mut double, &["room:k1", "room:k2"][..]),
    ] {
        for channel in channels {
            let ack = client
                .call("realtime:subscribe", json!({ "channel": channel }))
                .await;
            assert_eq!(ack["ok"], true, "{ack}");
        }
    }
    let (single_pid, double_pid) = (
        single.answer["pid"].as_str().unwrap().to_owned(),
        double.answer["pid"].as_str().unwrap().to_owned(),
    );
    for i in 0..3 {
        rest_publish(&b, "room:k", format!("before-{i}")).await;
    }
    rest_publish(&b, "room:k1", "before".to_owned()).await;
    let mut single_offset = 0;
    for _ in 0..3 {
        single_offset = next_tick(&mut single).await.1;
    }
    let double_offset = next_tick(&mut double).await.1;
    // The checkpoints (at subscribe) are saved within a moment.
    actix_rt::time::sleep(Duration::from_millis(300)).await;

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop((single, double));
    for i in 0..4 {
        rest_publish(&b, "room:k", format!("after-{i}")).await;
    }
    rest_publish(&b, "room:k2", "after".to_owned()).await;

    // One channel: what it got is known exactly; it recovers on B.
    let (mut back, recovered) = come_back(&b.base_url, &single_pid, single_offset).await;
    assert!(recovered, "{}", back.answer);
    for i in 0..4 {
        assert_eq!(next_tick(&mut back).await.0, format!("after-{i}"));
    }
    rest_publish(&b, "room:k", "live".to_owned()).await;
    assert_eq!(next_tick(&mut back).await.0, "live");

    // Two channels with news on the other one: what it got of room:k2
    // before the crash cannot be known, so it starts afresh.
    let (fresh, recovered) = come_back(&b.base_url, &double_pid, double_offset).await;
    assert!(!recovered, "{}", fresh.answer);
}

/// GETs an admin list; returns its entries and `X-Total-Count`.
async fn admin_list(node: &TestServer, path: &str) -> (Vec<Value>, u64, String) {
    let mut response = awc::Client::default()
        .get(format!("{}{path}", node.base_url))
        .insert_header(("x-api-key", common::API_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let total = header("x-total-count").unwrap().parse().unwrap();
    let unreachable = header("x-unreachable-nodes").unwrap_or_default();
    let entries: Vec<Value> = response.json().await.unwrap();
    (entries, total, unreachable)
}

#[actix_rt::test]
async fn inspection_names_each_entry_s_node_and_answers_for_the_cluster() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let _on_a = a.anon_subscriber("room:i").await;
    let mut on_b = b.anon_subscriber("room:i").await;
    let ack = on_b
        .call("realtime:subscribe", json!({ "channel": "room:j" }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let (node_a, node_b) = (a.realtime.node.to_string(), b.realtime.node.to_string());
    // The nodes record where their API is once they listen.
    wait_until("both nodes advertised", Duration::from_secs(5), || async {
        a.scalar("SELECT count(*) FROM realtime.nodes WHERE url IS NOT NULL")
            .await
            == 2
    })
    .await;

    let (entries, total, _) = admin_list(&a, "/api/realtime/actors").await;
    assert_eq!(total, 1);
    assert_eq!(entries[0]["node"], node_a.as_str());

    let (entries, total, unreachable) = admin_list(&a, "/api/realtime/actors?scope=cluster").await;
    assert_eq!(total, 3);
    assert_eq!(unreachable, "");
    let mut expected = vec![
        ("room:i".to_owned(), node_a.clone()),
        ("room:i".to_owned(), node_b.clone()),
        ("room:j".to_owned(), node_b.clone()),
    ];
    expected.sort();
    let seen: Vec<(String, String)> = entries
        .iter()
        .map(|entry| {
            (
                entry["name"].as_str().unwrap().to_owned(),
                entry["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(seen, expected);
    assert!(entries.iter().all(|entry| entry["subscribers"] == 1));
    let (page, total, _) =
        admin_list(&a, "/api/realtime/actors?scope=cluster&offset=1&limit=1").await;
    assert_eq!(total, 3);
    assert_eq!(page, entries[1..2]);

    let (sessions, total, _) = admin_list(&b, "/api/realtime/sessions?scope=cluster").await;
    assert_eq!(total, 2);
    let mut nodes: Vec<&str> = sessions
        .iter()
        .map(|session| session["node"].as_str().unwrap())
        .collect();
    nodes.sort_unstable();
    let mut both = [node_a.as_str(), node_b.as_str()];
    both.sort_unstable();
    assert_eq!(nodes, both);

    let (status, body) = a
        .admin("GET", "/api/realtime/actors?scope=everywhere", None)
        .await;
    assert_eq!(status, 400, "{body}");

    // One socket, asked for and disconnected through the node without it.
    let socket = on_b.answer["sid"].as_str().unwrap().to_owned();
    let path = format!("/api/realtime/sessions/{socket}");
    let (status, entry) = a.admin("GET", &path, None).await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["node"], node_b.as_str());
    assert_eq!(entry["channels"], json!(["room:i", "room:j"]));
    let (status, body) = a.admin("GET", &format!("{path}?scope=node"), None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = a.admin("DELETE", &path, None).await;
    assert_eq!(status, 204);
    on_b.frames_until_closed(Duration::from_secs(5)).await;
    wait_until("the socket gone from B", Duration::from_secs(5), || async {
        b.admin("GET", &format!("{path}?scope=node"), None).await.0 == 404
    })
    .await;
    for (method, id) in [
        ("GET", "nobody"),
        ("DELETE", "nobody"),
        ("DELETE", "..%2Fx"),
    ] {
        let (status, body) = a
            .admin(method, &format!("/api/realtime/sessions/{id}"), None)
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "REALTIME_SESSION_NOT_FOUND");
    }
}
