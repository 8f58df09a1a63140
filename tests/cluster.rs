//! Several server processes on one PostgreSQL database act as one
//! service: a message published on any node (REST, socket or SQL) reaches
//! subscribers on every node, every node shows a channel's messages in the
//! same order (the `seq` order), and audience counts add up across nodes.
//! (Two nodes in one test process, each with its own pools, listener and
//! actors, as two processes would have.)

mod common;

use std::time::Duration;

use common::wire::{SioClient, WsFrame};
use common::{wait_until, Backend, TestServer, ANON_KEY};
use serde_json::{json, Value};

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
