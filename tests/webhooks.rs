//! Webhooks end to end, with real receivers on loopback, on SQLite and
//! PostgreSQL: what is sent, retries, isolation, counts and the durable
//! backlog.

mod common;

use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::wire::SioClient;
use common::{Backend, TestServer, ANON_KEY};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{json, Value};

backend_tests!(
    each_url_gets_each_durable_message_with_its_headers,
    signed_requests_carry_the_standard_webhooks_headers,
    a_refused_connection_is_retried_and_counted_once,
    an_http_error_is_final,
    a_hanging_receiver_delays_nobody_else,
    private_addresses_are_refused_when_blocking,
    past_its_memory_bound_the_backlog_waits_in_the_database,
    batched_urls_get_several_messages_per_post,
    connections_to_a_receiver_are_kept_alive,
    a_receiver_that_keeps_failing_is_probed_not_hammered,
);

/// Short retries so the tests do not wait seconds for them.
const FAST_RETRIES: &str = "[webhooks]\nretry_delays_ms = [100, 200]\ntimeout_ms = 2000\n";

async fn create_channel(server: &TestServer, pattern: &str, urls: &[String]) -> Value {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": pattern, "webhookUrls": urls })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn rest_publish(server: &TestServer, channel: &str, event: &str, payload: Value) -> Value {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/messages",
            Some(json!({ "channel": channel, "event": event, "payload": payload })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Messages left in the webhook backlog (SQLite marks their rows).
async fn backlog(server: &TestServer) -> i64 {
    let backend = server.db.get_database_backend();
    let sql = if backend == DbBackend::Postgres {
        "SELECT COUNT(*) AS n FROM webhook_pending"
    } else {
        "SELECT COUNT(*) AS n FROM messages WHERE wh_pending IS NOT NULL"
    };
    let row = server
        .db
        .query_one(Statement::from_string(backend, sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// The message as the REST API shows it.
async fn message(server: &TestServer, id: &str) -> Value {
    let (_, rows) = server
        .admin("GET", "/api/realtime/messages?limit=1000", None)
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("message {id} not in history"))
}

/// Waits until the message's webhooks are recorded as finished (out of
/// the backlog), and returns the message.
async fn finished(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The backlog first: a row read before it emptied may predate the
        // recorded outcome.
        if backlog(server).await == 0 {
            return message(server, id).await;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks of {id} not finished: {}",
            message(server, id).await
        );
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn each_url_gets_each_durable_message_with_its_headers(backend: Backend) {
    let receiver = Receiver::start();
    let server = TestServer::start(backend).await;
    let urls = [receiver.url("/ok/a"), receiver.url("/ok/b")];
    create_channel(&server, "order:%", &urls).await;
    let mut subscriber = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let ack = subscriber
        .call("realtime:subscribe", json!({ "channel": "order:7" }))
        .await;
    assert_eq!(ack["ok"], true);

    let payload = json!({ "state": "shipped", "items": [1, 2], "note": "ünïcode" });
    let rest = rest_publish(&server, "order:7", "status", payload.clone()).await;
    let ack = subscriber
        .call(
            "realtime:publish",
            json!({ "channel": "order:7", "event": "from-socket", "payload": { "n": 1 } }),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let socket_id = ack["messageId"].as_str().unwrap().to_owned();

    wait_until("four requests", Duration::from_secs(10), || async {
        receiver.received().len() >= 4
    })
    .await;
    for path in ["/ok/a", "/ok/b"] {
        let requests = receiver.received_at(path);
        assert_eq!(requests.len(), 2, "{path}: one request per message");
        let first = requests
            .iter()
            .find(|request| request.header("x-insforge-event") == Some("status"))
            .unwrap();
        assert_eq!(first.header("content-type"), Some("application/json"));
        assert_eq!(first.header("x-insforge-channel"), Some("order:7"));
        assert_eq!(first.header("x-insforge-message-id"), rest["id"].as_str());
        assert_eq!(
            first.header("webhook-signature"),
            None,
            "unsigned by default"
        );
        let body: Value = serde_json::from_slice(&first.body).unwrap();
        assert_eq!(body, payload, "the original payload, nothing added");
        let second = requests
            .iter()
            .find(|request| request.header("x-insforge-event") == Some("from-socket"))
            .unwrap();
        assert_eq!(
            second.header("x-insforge-message-id"),
            Some(socket_id.as_str())
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&second.body).unwrap(),
            json!({ "n": 1 })
        );
    }
    for id in [rest["id"].as_str().unwrap(), socket_id.as_str()] {
        let row = finished(&server, id).await;
        assert_eq!(row["whAudienceCount"], 2, "{row}");
        assert_eq!(row["whDeliveredCount"], 2, "{row}");
    }
    let (_, stats) = server
        .admin("GET", "/api/realtime/messages/stats", None)
        .await;
    assert_eq!(stats["whDeliveryRate"], 1.0, "{stats}");
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(metrics.contains("realtime_webhook_requests_total{outcome=\"2xx\"}"));
    receiver.stop().await;
}

async fn signed_requests_carry_the_standard_webhooks_headers(backend: Backend) {
    let receiver = Receiver::start();
    let secret = realtime::webhooks::signing::generate_secret();
    let server = TestServer::start_with(
        backend,
        &format!("[webhooks]\nsigning_secret = \"{secret}\"\n"),
    )
    .await;
    create_channel(&server, "signed", &[receiver.url("/ok")]).await;
    let published = rest_publish(&server, "signed", "e", json!({ "a": 1 })).await;
    wait_until("the request", Duration::from_secs(10), || async {
        !receiver.received().is_empty()
    })
    .await;
    let request = &receiver.received()[0];
    let id = published["id"].as_str().unwrap();
    assert_eq!(request.header("webhook-id"), Some(id));
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() <= 5);
    let signature = request.header("webhook-signature").unwrap();
    assert!(
        signature.starts_with("v1,") && signature.len() > 40,
        "{signature}"
    );
    // (The signature itself is checked with the `standardwebhooks` npm
    // package in tests/js, not with this project's code.)
    receiver.stop().await;
}

async fn a_refused_connection_is_retried_and_counted_once(backend: Backend) {
    let port = common::free_port();
    let server = TestServer::start_with(
        backend,
        "[webhooks]\nretry_delays_ms = [600, 600]\ntimeout_ms = 2000\n",
    )
    .await;
    create_channel(&server, "flaky", &[format!("http://127.0.0.1:{port}/ok")]).await;
    let published = rest_publish(&server, "flaky", "e", json!({})).await;
    // The first attempt finds nothing listening; the receiver comes up
    // before the first retry.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let receiver = Receiver::start_on_port(port);
    let row = finished(&server, published["id"].as_str().unwrap()).await;
    assert_eq!(row["whDeliveredCount"], 1, "{row}");
    assert_eq!(receiver.received().len(), 1);
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        !metrics.contains("realtime_webhook_retries_total 0\n"),
        "the retry is counted"
    );
    receiver.stop().await;
}

async fn an_http_error_is_final(backend: Backend) {
    let receiver = Receiver::start();
    let server = TestServer::start_with(backend, FAST_RETRIES).await;
    create_channel(&server, "refusing", &[receiver.url("/fail")]).await;
    let published = rest_publish(&server, "refusing", "e", json!({})).await;
    let row = finished(&server, published["id"].as_str().unwrap()).await;
    assert_eq!(row["whAudienceCount"], 1);
    assert_eq!(row["whDeliveredCount"], 0);
    // Longer than every retry delay together: no second request came.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1, "a 500 is not retried");
    let (_, stats) = server
        .admin("GET", "/api/realtime/messages/stats", None)
        .await;
    assert_eq!(stats["whDeliveryRate"], 0.0, "{stats}");
    receiver.stop().await;
}

async fn a_hanging_receiver_delays_nobody_else(backend: Backend) {
    let receiver = Receiver::start();
    let server = TestServer::start_with(
        backend,
        "[webhooks]\nretry_delays_ms = [100, 100]\ntimeout_ms = 1000\n",
    )
    .await;
    create_channel(
        &server,
        "mixed:%",
        &[receiver.url("/hang"), receiver.url("/ok")],
    )
    .await;
    // Another channel whose only receiver answers at once.
    create_channel(&server, "other", &[receiver.url("/ok/other")]).await;
    let mut subscriber = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let ack = subscriber
        .call("realtime:subscribe", json!({ "channel": "mixed:1" }))
        .await;
    assert_eq!(ack["ok"], true);

    let started = Instant::now();
    let published = rest_publish(&server, "mixed:1", "e", json!({ "n": 1 })).await;
    let (event, _) = subscriber.next_event().await.unwrap();
    assert_eq!(event, "e");
    let other = rest_publish(&server, "other", "e", json!({ "n": 2 })).await;
    wait_until(
        "the other receivers",
        Duration::from_millis(900),
        || async {
            !receiver.received_at("/ok").is_empty() && !receiver.received_at("/ok/other").is_empty()
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "socket delivery and the other URLs did not wait for the hanging one"
    );
    let row = finished(&server, other["id"].as_str().unwrap()).await;
    assert_eq!(row["whDeliveredCount"], 1);
    // The hanging URL times out three times (first try and two retries).
    let row = finished(&server, published["id"].as_str().unwrap()).await;
    assert_eq!(row["whAudienceCount"], 2);
    assert_eq!(row["whDeliveredCount"], 1);
    assert_eq!(receiver.received_at("/hang").len(), 3);
    receiver.stop().await;
}

async fn private_addresses_are_refused_when_blocking(backend: Backend) {
    let receiver = Receiver::start();
    let server = TestServer::start_with(
        backend,
        "[webhooks]\nblock_private_addresses = true\nretry_delays_ms = [50]\n",
    )
    .await;
    // A literal address and a name that resolves to loopback: neither is
    // connected to (the refusal comes before any connection).
    create_channel(
        &server,
        "internal",
        &[
            receiver.url("/ok/literal"),
            format!("http://localhost:{}/ok/name", receiver.port),
        ],
    )
    .await;
    let published = rest_publish(&server, "internal", "e", json!({})).await;
    let row = finished(&server, published["id"].as_str().unwrap()).await;
    assert_eq!(row["whAudienceCount"], 2);
    assert_eq!(row["whDeliveredCount"], 0);
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    receiver.stop().await;
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

async fn past_its_memory_bound_the_backlog_waits_in_the_database(backend: Backend) {
    let receiver = Receiver::start();
    receiver.set_paused(true);
    let server = TestServer::start_with(
        backend,
        "[webhooks]\nmax_queued = 100\nmax_in_flight_per_url = 4\ntimeout_ms = 30000\n",
    )
    .await;
    create_channel(&server, "bounded", &[receiver.url("/paused")]).await;
    let (_, before) = server.get_text("/metrics").await;
    // More than the 64 deliveries a URL keeps whole: the others wait as
    // ids and are read back before they are sent.
    let n_messages = 300;
    for chunk in 0..n_messages / 50 {
        let publishes = (0..50).map(|i| {
            server.admin(
                "POST",
                "/api/realtime/messages",
                Some(json!({ "channel": "bounded", "event": "e", "payload": { "n": chunk * 50 + i } })),
            )
        });
        for (status, body) in futures_util::future::join_all(publishes).await {
            assert_eq!(status, 201, "{body}");
        }
    }
    // Four requests are held by the receiver; at most 100 deliveries are
    // in memory; the other messages wait in the database.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 4, "in flight per URL is bounded");
    assert!(backlog(&server).await >= (n_messages - 100) as i64);
    let (_, during) = server.get_text("/metrics").await;
    assert!(
        metric(&during, "realtime_webhook_deferred_total")
            > metric(&before, "realtime_webhook_deferred_total"),
        "deliveries past the bound were left in the database"
    );

    receiver.set_paused(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while backlog(&server).await > 0 {
        assert!(Instant::now() < deadline, "the backlog was not sent");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, rows) = server
        .admin("GET", "/api/realtime/messages?limit=1000", None)
        .await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), n_messages);
    assert!(
        rows.iter().all(|row| row["whDeliveredCount"] == 1),
        "every message delivered once by the count"
    );
    let ids: std::collections::HashSet<String> = receiver
        .received()
        .iter()
        .filter_map(|request| request.header("x-insforge-message-id").map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), n_messages);
    receiver.stop().await;
}

async fn batched_urls_get_several_messages_per_post(backend: Backend) {
    let receiver = Receiver::start();
    let server = TestServer::start_with(
        backend,
        &format!(
            "[[webhooks.batch]]\nurl_prefix = \"{}/ok/batched\"\nmax_events = 5\nmax_wait_ms = 300\n",
            receiver.base
        ),
    )
    .await;
    create_channel(
        &server,
        "batched",
        &[receiver.url("/ok/batched"), receiver.url("/ok/single")],
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let published = rest_publish(&server, "batched", "e", json!({ "n": n })).await;
        ids.push(published["id"].as_str().unwrap().to_owned());
    }
    // Five go at once (the batch is full); the last two when they have
    // waited max_wait_ms.
    wait_until("two batches", Duration::from_secs(5), || async {
        receiver.received_at("/ok/batched").len() >= 2
    })
    .await;
    let batches = receiver.received_at("/ok/batched");
    assert_eq!(batches.len(), 2, "{batches:?}");
    let mut seen = Vec::new();
    for batch in &batches {
        assert_eq!(batch.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&batch.body).unwrap();
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            batch.header("x-insforge-batch-size"),
            Some(messages.len().to_string().as_str())
        );
        for message in messages {
            assert_eq!(message["channel"], "batched");
            assert_eq!(message["event"], "e");
            seen.push((
                message["id"].as_str().unwrap().to_owned(),
                message["payload"].clone(),
            ));
        }
    }
    let sizes: Vec<usize> = batches
        .iter()
        .map(|batch| {
            serde_json::from_slice::<Value>(&batch.body).unwrap()["messages"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, [5, 2]);
    let expected: Vec<(String, Value)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), json!({ "n": n })))
        .collect();
    assert_eq!(seen, expected, "each message once, in order");
    // The other URL of the same channel still gets one POST per message.
    assert_eq!(receiver.received_at("/ok/single").len(), 7);
    for id in &ids {
        let row = finished(&server, id).await;
        assert_eq!(row["whDeliveredCount"], 2, "{row}");
    }
    receiver.stop().await;
}

async fn connections_to_a_receiver_are_kept_alive(backend: Backend) {
    let receiver = Receiver::start();
    let server = TestServer::start(backend).await;
    create_channel(&server, "steady", &[receiver.url("/ok")]).await;
    for n in 0..10 {
        rest_publish(&server, "steady", "e", json!({ "n": n })).await;
        wait_until("the request", Duration::from_secs(5), || async {
            receiver.received().len() > n
        })
        .await;
    }
    let ports: std::collections::HashSet<u16> = receiver
        .received()
        .iter()
        .map(|request| request.peer_port)
        .collect();
    assert_eq!(ports.len(), 1, "ten requests, one connection: {ports:?}");
    receiver.stop().await;
}

async fn a_receiver_that_keeps_failing_is_probed_not_hammered(backend: Backend) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // Accepts connections and drops them at once: every attempt is a
    // network error, retried.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    // Retries far enough apart that no message can use up its three
    // attempts within the test, however slowly the publishes go: what is
    // counted is the connections, not the give-ups.
    let slow_retries = "[webhooks]\nretry_delays_ms = [3000, 6000]\ntimeout_ms = 2000\n";
    let server = TestServer::start_with(backend, slow_retries).await;
    create_channel(
        &server,
        "broken",
        &[format!("http://127.0.0.1:{port}/hook")],
    )
    .await;
    for n in 0..50 {
        rest_publish(&server, "broken", "e", json!({ "n": n })).await;
    }
    actix_rt::time::sleep(Duration::from_millis(2500)).await;
    // Without a pause, the 50 first attempts alone would be 50 connections.
    // Once the receiver counts as down (three failures), one probe at a
    // time, 1 s then 2 s apart.
    let n_accepted = accepted.load(Ordering::SeqCst);
    assert!(
        (3..=40).contains(&n_accepted),
        "{n_accepted} connections in 2.5 s"
    );
    assert_eq!(backlog(&server).await, 50, "nothing is given up on early");
}
