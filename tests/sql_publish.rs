//! Publishing from SQL on a real PostgreSQL: `realtime.publish()` in a
//! user's trigger and direct INSERTs reach subscribers, webhooks and
//! audience counts through the same channels; the listener catches up
//! after its connection is killed; the server's own messages are not
//! delivered twice.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::wire::SioClient;
use common::{postgres_skipped, wait_until, Backend, TestServer};
use serde_json::{json, Value};

async fn create_channel(server: &TestServer, pattern: &str, urls: &[String]) {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": pattern, "webhookUrls": urls })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// The next message event (presence events skipped), within 20 s.
async fn next_message(client: &mut SioClient) -> (String, Value) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), client.next_event())
            .await
            .expect("no event within 20 s")
            .expect("socket closed");
        if !event.0.starts_with("presence:") {
            return event;
        }
    }
}

/// The InsForge documentation's example: a trigger on `orders` publishes
/// `status_changed` to `order:<id>` on UPDATE.
#[actix_rt::test]
async fn a_trigger_publish_reaches_subscribers_webhooks_and_counts() {
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    let receiver = Receiver::start();
    create_channel(&server, "order:%", &[receiver.url("/orders")]).await;
    server
        .sql(
            "CREATE TABLE public.orders (id int PRIMARY KEY, status text NOT NULL);
         CREATE FUNCTION public.notify_order_status() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.status IS DISTINCT FROM OLD.status THEN
             PERFORM realtime.publish('order:' || NEW.id::text, 'status_changed',
                                      jsonb_build_object('id', NEW.id, 'status', NEW.status));
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER order_status AFTER UPDATE ON public.orders
           FOR EACH ROW EXECUTE FUNCTION public.notify_order_status();
         INSERT INTO public.orders VALUES (7, 'new'), (8, 'new');",
        )
        .await;
    let mut client = server.anon_subscriber("order:7").await;
    server.sql("UPDATE public.orders SET status = 'paid'").await;

    let (event, payload) = next_message(&mut client).await;
    assert_eq!(event, "status_changed");
    assert_eq!(payload["id"], 7);
    assert_eq!(payload["status"], "paid");
    assert_eq!(payload["meta"]["channel"], "order:7");
    assert_eq!(payload["meta"]["senderType"], "system");

    // Both orders' messages reach the webhook, each once.
    wait_until("two webhook requests", Duration::from_secs(10), || async {
        receiver.received_at("/orders").len() >= 2
    })
    .await;
    let requests = receiver.received_at("/orders");
    assert_eq!(requests.len(), 2);
    let mut channels: Vec<&str> = requests
        .iter()
        .map(|r| r.header("x-insforge-channel").unwrap())
        .collect();
    channels.sort_unstable();
    assert_eq!(channels, ["order:7", "order:8"]);

    // Counts as for any message: one socket for order:7, none for order:8,
    // one webhook each, delivered. (Each is recorded when its part is done,
    // in no set order: the webhooks may finish before the sockets' count.)
    wait_until("counts recorded", Duration::from_secs(10), || async {
        let webhooks = server
            .scalar(
                "SELECT count(*) FROM realtime.messages
              WHERE wh_audience_count = 1 AND wh_delivered_count = 1",
            )
            .await;
        let sockets = server
            .scalar(
                "SELECT ws_audience_count::bigint FROM realtime.messages WHERE channel_name = 'order:7'",
            )
            .await;
        webhooks == 2 && sockets == 1
    })
    .await;
    assert_eq!(
        server.scalar(
            "SELECT ws_audience_count::bigint FROM realtime.messages WHERE channel_name = 'order:8'"
        )
        .await,
        0
    );
    assert_eq!(
        server
            .scalar("SELECT count(*) FROM realtime.messages WHERE seq IS NULL OR seq <= 0")
            .await,
        0,
        "every message is numbered"
    );
    assert_eq!(
        server
            .scalar("SELECT count(*) FROM realtime.webhook_pending")
            .await,
        0
    );
}

/// A program may INSERT into `realtime.messages` itself, as InsForge
/// allows; a row of a disabled channel goes nowhere.
#[actix_rt::test]
async fn a_direct_insert_is_delivered_and_a_disabled_channel_is_not() {
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    create_channel(&server, "room:%", &[]).await;
    let mut client = server.anon_subscriber("room:1").await;
    server.sql(
        "INSERT INTO realtime.messages (event_name, channel_id, channel_name, payload, sender_type)
         SELECT 'said', id, 'room:1', '{\"text\":\"hi\"}', 'user' FROM realtime.channels",
    )
    .await;
    let (event, payload) = next_message(&mut client).await;
    assert_eq!(event, "said");
    assert_eq!(payload["text"], "hi");
    assert_eq!(payload["meta"]["senderType"], "user");

    // Disabled: the row is stored and numbered, but nobody gets it.
    let (status, channels) = server.admin("GET", "/api/realtime/channels", None).await;
    assert_eq!(status, 200);
    let id = channels[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .admin(
            "PUT",
            &format!("/api/realtime/channels/{id}"),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    server.sql(
        "INSERT INTO realtime.messages (event_name, channel_id, channel_name, payload, sender_type)
         SELECT 'hidden', id, 'room:1', '{}', 'system' FROM realtime.channels",
    )
    .await;
    wait_until("the row numbered", Duration::from_secs(10), || async {
        server
            .scalar(
                "SELECT count(*) FROM realtime.messages WHERE event_name = 'hidden' AND seq > 0",
            )
            .await
            == 1
    })
    .await;
    // The socket was unsubscribed when the channel was disabled, or gets
    // nothing more: either way no `hidden` event arrives.
    let next = tokio::time::timeout(Duration::from_millis(500), client.next_event()).await;
    if let Ok(Some((event, _))) = next {
        assert_ne!(event, "hidden");
    }
}

/// The listener's connection is killed twice while 2,000 messages are
/// published from SQL, one transaction each: the subscriber still gets
/// every one, once, in order.
#[actix_rt::test]
async fn killing_the_listener_loses_nothing_and_repeats_nothing() {
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    create_channel(&server, "feed:%", &[]).await;
    let mut client = server.anon_subscriber("feed:1").await;
    const N: i64 = 2000;
    let listeners = "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'realtime-listener' AND datname = current_database()";
    let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = 'realtime-listener' AND datname = current_database()";
    let publishing = async {
        for n in 0..N {
            if n == 500 || n == 1200 {
                // The listener reconnects with a backoff: wait for it (on a
                // busy machine it may not be back yet).
                wait_until(
                    "the listener connected",
                    Duration::from_secs(10),
                    || async { server.scalar(listeners).await == 1 },
                )
                .await;
                assert_eq!(server.scalar(kill).await, 1, "one listener to kill at {n}");
            }
            server
                .sql(&format!(
                    "SELECT realtime.publish('feed:1', 'tick', jsonb_build_object('n', {n}))"
                ))
                .await;
        }
    };
    let receiving = async {
        let mut seen = Vec::with_capacity(N as usize);
        while (seen.len() as i64) < N {
            let (event, payload) = next_message(&mut client).await;
            assert_eq!(event, "tick");
            seen.push(payload["n"].as_i64().unwrap());
        }
        seen
    };
    let ((), seen) = tokio::join!(publishing, receiving);
    let expected: Vec<i64> = (0..N).collect();
    assert_eq!(seen, expected, "every message once, in order");
    // Nothing more arrives: no message was handed on twice.
    let extra = tokio::time::timeout(Duration::from_millis(500), client.next_event()).await;
    assert!(extra.is_err(), "an extra event arrived: {extra:?}");
    let (_, metrics) = server.get_text("/metrics").await;
    let reconnects = metrics
        .lines()
        .find_map(|line| line.strip_prefix("realtime_sql_listener_reconnects_total "))
        .unwrap();
    assert!(reconnects.parse::<u64>().unwrap() >= 2, "{reconnects}");
}

/// The server's own messages (socket and REST) are not delivered again by
/// the listener, also when SQL publishes are interleaved with them; seq
/// follows the order each channel delivered in.
#[actix_rt::test]
async fn own_messages_are_not_delivered_twice() {
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    create_channel(&server, "chat:%", &[]).await;
    let mut listener = server.anon_subscriber("chat:1").await;
    let mut publisher = server.anon_subscriber("chat:1").await;
    for n in 0..50 {
        let ack = publisher
            .call(
                "realtime:publish",
                json!({ "channel": "chat:1", "event": "socket", "payload": { "n": n } }),
            )
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
        server
            .sql(&format!(
                "SELECT realtime.publish('chat:1', 'sql', jsonb_build_object('n', {n}))"
            ))
            .await;
    }
    let mut ids = std::collections::HashSet::new();
    let (mut n_socket, mut n_sql) = (0, 0);
    while n_socket + n_sql < 100 {
        let (event, payload) = next_message(&mut listener).await;
        assert!(ids.insert(payload["meta"]["messageId"].as_str().unwrap().to_owned()));
        match event.as_str() {
            "socket" => {
                assert_eq!(payload["n"], n_socket);
                n_socket += 1;
            }
            "sql" => {
                assert_eq!(payload["n"], n_sql);
                n_sql += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), listener.next_event()).await;
    assert!(
        !matches!(extra, Ok(Some((ref e, _))) if !e.starts_with("presence:")),
        "an extra event arrived: {extra:?}"
    );
    // Every message has its own positive seq.
    assert_eq!(
        server
            .scalar("SELECT count(DISTINCT seq) FROM realtime.messages WHERE seq > 0")
            .await,
        100
    );
}
