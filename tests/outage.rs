//! The database going away while clients are connected: PostgreSQL stopped,
//! unreachable, or so slow that writes commit after their publishers were
//! refused; a SQLite file locked by another process. Publishes are answered in time with
//! `DATABASE_UNAVAILABLE` and never stored or delivered later, subscribers
//! stay connected, `/health` says unavailable, and the server recovers by
//! itself. (A full disk: tests/sqlite_disk_full.rs.)

mod common;

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::wire::SioClient;
use common::{assert_error, wait_until, Backend, TestServer, ANON_KEY};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use serde_json::{json, Value};

/// Publishes wait at most 1.5 s; pool and SQLite busy waits 1 s.
const SETTINGS: &str = "[database]\npublish_timeout_ms = 1500\nacquire_timeout_ms = 1000\n";
/// The publish timeout and room for a slow machine.
const ANSWERED_WITHIN: Duration = Duration::from_millis(1500 + 2500);
/// How long the server may take to notice that the database is back.
const RECOVERS_WITHIN: Duration = Duration::from_secs(20);

/// A server, a subscriber of `outage:1` and a publisher on it.
struct Clients {
    subscriber: SioClient,
    publisher: SioClient,
}

async fn connect_clients(server: &TestServer) -> Clients {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "outage:%" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut subscriber = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    let mut publisher = SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await;
    for client in [&mut subscriber, &mut publisher] {
        let ack = client
            .call("realtime:subscribe", json!({ "channel": "outage:1" }))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    Clients {
        subscriber,
        publisher,
    }
}

async fn rest_publish(server: &TestServer, n: &str) -> (u16, Value) {
    server
        .admin(
            "POST",
            "/api/realtime/messages",
            Some(json!({ "channel": "outage:1", "event": "tick", "payload": { "n": n } })),
        )
        .await
}

/// The `n` of the next `tick` the subscriber receives (presence skipped).
async fn next_tick(client: &mut SioClient) -> String {
    loop {
        let (event, payload) = client.next_event().await.expect("subscriber closed");
        if event == "tick" {
            return payload["n"].as_str().unwrap().to_owned();
        }
    }
}

async fn health(server: &TestServer) -> (u16, Value) {
    server.send("GET", "/health", &[], None).await
}

/// While the database is out: a REST publish and a socket publish are
/// refused in time, and `/health` says so.
async fn refused_while_out(server: &TestServer, clients: &mut Clients, label: &str) {
    refused_in_time(server, clients, label).await;
    let (status, body) = health(server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
}

/// A REST publish and a socket publish are refused in time.
async fn refused_in_time(server: &TestServer, clients: &mut Clients, label: &str) {
    let started = Instant::now();
    let response = rest_publish(server, &format!("{label}-rest")).await;
    assert!(
        started.elapsed() < ANSWERED_WITHIN,
        "REST answered after {:?}",
        started.elapsed()
    );
    assert_error(&response, 503, "DATABASE_UNAVAILABLE");

    let started = Instant::now();
    let ack = clients
        .publisher
        .call(
            "realtime:publish",
            json!({ "channel": "outage:1", "event": "tick", "payload": { "n": format!("{label}-socket") } }),
        )
        .await;
    assert!(
        started.elapsed() < ANSWERED_WITHIN,
        "socket answered after {:?}",
        started.elapsed()
    );
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "DATABASE_UNAVAILABLE", "{ack}");
}

/// Once the database is back: `/health` recovers without a restart, a
/// publish goes through, the subscriber (still connected) gets it right
/// after the one published before the outage, and the refused messages
/// are not in history, not even after the server had time to undo writes
/// in doubt.
async fn recovered(server: &TestServer, clients: &mut Clients) {
    wait_until("health recovers", RECOVERS_WITHIN, || async {
        health(server).await.0 == 200
    })
    .await;
    let (status, body) = rest_publish(server, "after").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(next_tick(&mut clients.subscriber).await, "after");
    wait_until("writes in doubt undone", RECOVERS_WITHIN, || async {
        let (_, metrics) = server.get_text("/metrics").await;
        metrics.contains("realtime_writer_in_doubt 0\n")
    })
    .await;
    // Whatever the network still held has arrived by now.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let (status, page) = server
        .admin("GET", "/api/realtime/messages?limit=100", None)
        .await;
    assert_eq!(status, 200, "{page}");
    let mut stored: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["payload"]["n"].as_str().unwrap())
        .collect();
    stored.sort_unstable();
    assert_eq!(stored, ["after", "before"], "only acknowledged messages");
}

/// A server on PostgreSQL reached through `proxy`, with clients, and one
/// message published before the outage.
async fn postgres_behind_proxy() -> Option<(TestServer, Proxy, Clients)> {
    if common::postgres_skipped() {
        return None;
    }
    let (direct, _) = common::fresh_database(Backend::Postgres).await;
    let mut url = url::Url::parse(&direct).unwrap();
    let upstream = (url.host_str().unwrap(), url.port().unwrap_or(5432))
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream);
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    let server = TestServer::start_on(Backend::Postgres, url.to_string(), None, SETTINGS).await;
    let mut clients = connect_clients(&server).await;
    let (status, body) = rest_publish(&server, "before").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(next_tick(&mut clients.subscriber).await, "before");
    Some((server, proxy, clients))
}

#[actix_rt::test]
async fn postgres_stopped() {
    let Some((server, proxy, mut clients)) = postgres_behind_proxy().await else {
        return;
    };
    proxy.stop();
    refused_while_out(&server, &mut clients, "stopped").await;
    // REST reads say so too, rather than a generic 500.
    let response = server.admin("GET", "/api/realtime/channels", None).await;
    assert_error(&response, 503, "DATABASE_UNAVAILABLE");
    proxy.pass();
    recovered(&server, &mut clients).await;
}

#[actix_rt::test]
async fn postgres_stopped_refuses_ephemeral_messages_in_time_and_they_resume() {
    let Some((server, proxy, _clients)) = postgres_behind_proxy().await else {
        return;
    };
    // Ephemeral messages travel through PostgreSQL (to every node, this
    // one included): without it they are refused, not lost silently.
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "typing:%", "ephemeral": true })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut subscriber = server.anon_subscriber("typing:1").await;
    let mut publisher = server.anon_subscriber("typing:1").await;
    let publish =
        |n: &str| json!({ "channel": "typing:1", "event": "tick", "payload": { "n": n } });
    assert_eq!(
        publisher.call("realtime:publish", publish("before")).await["ok"],
        true
    );
    assert_eq!(next_tick(&mut subscriber).await, "before");

    proxy.stop();
    let started = Instant::now();
    let ack = publisher.call("realtime:publish", publish("out")).await;
    assert!(
        started.elapsed() < ANSWERED_WITHIN,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "DATABASE_UNAVAILABLE", "{ack}");
    let response = server
        .admin("POST", "/api/realtime/messages", Some(publish("out-rest")))
        .await;
    assert_error(&response, 503, "DATABASE_UNAVAILABLE");

    proxy.pass();
    // Once the listener is back, published messages flow again; the ones
    // refused never arrive.
    wait_until("ephemeral messages flow again", RECOVERS_WITHIN, || async {
        server
            .admin("POST", "/api/realtime/messages", Some(publish("probe")))
            .await
            .0
            == 201
    })
    .await;
    assert_eq!(
        publisher.call("realtime:publish", publish("after")).await["ok"],
        true
    );
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("after") {
        seen.push(next_tick(&mut subscriber).await);
    }
    assert!(
        seen.iter().all(|n| n == "probe" || n == "after"),
        "{seen:?}"
    );
}

#[actix_rt::test]
async fn postgres_unreachable_then_held_requests_arrive_late() {
    let Some((server, proxy, mut clients)) = postgres_behind_proxy().await else {
        return;
    };
    // Nothing gets through; the requests sent meanwhile reach the database
    // only once the network heals, after their publishers were refused.
    proxy.partition();
    refused_while_out(&server, &mut clients, "partitioned").await;
    proxy.pass();
    recovered(&server, &mut clients).await;
}

#[actix_rt::test]
async fn postgres_writes_stuck_behind_a_lock_store_nothing_later() {
    let Some((server, _proxy, mut clients)) = postgres_behind_proxy().await else {
        return;
    };
    // Another session holds the lock that numbers messages: writes queue
    // behind it past their deadline, and take it once their publishers
    // were refused.
    let other = Database::connect(&server.database_url).await.unwrap();
    let lock = other.begin().await.unwrap();
    lock.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock({})",
        migration::SEQUENCE_LOCK
    ))
    .await
    .unwrap();
    refused_while_out(&server, &mut clients, "locked").await;
    lock.rollback().await.unwrap();
    recovered(&server, &mut clients).await;
}

#[actix_rt::test]
async fn postgres_commits_after_the_publisher_was_refused() {
    let Some((server, _proxy, mut clients)) = postgres_behind_proxy().await else {
        return;
    };
    // A trigger (a user's, say) makes every insert take 3 s: the database
    // commits the writes, but only after their deadline. Their publishers
    // were refused, so the rows must go again.
    server
        .sql(
            "CREATE FUNCTION realtime.slow_insert() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$; \
             CREATE TRIGGER slow_insert BEFORE INSERT ON realtime.messages \
             FOR EACH ROW EXECUTE FUNCTION realtime.slow_insert();",
        )
        .await;
    // The database still commits (slowly): `/health` may say so between
    // refusals, once deleting the late rows has gone through.
    refused_in_time(&server, &mut clients, "slow").await;
    server
        .sql("DROP TRIGGER slow_insert ON realtime.messages")
        .await;
    recovered(&server, &mut clients).await;
}

#[actix_rt::test]
async fn sqlite_locked_by_another_process() {
    let (url, dir) = common::fresh_database(Backend::Sqlite).await;
    let server = TestServer::start_on(Backend::Sqlite, url.clone(), dir, SETTINGS).await;
    let mut clients = connect_clients(&server).await;
    let (status, body) = rest_publish(&server, "before").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(next_tick(&mut clients.subscriber).await, "before");

    // Another program holds the write lock, as `sqlite3 realtime.db` with
    // an open write transaction would.
    let other = Database::connect(&url).await.unwrap();
    let lock = other.begin().await.unwrap();
    lock.execute_unprepared("UPDATE config SET updated_at = updated_at")
        .await
        .unwrap();
    refused_while_out(&server, &mut clients, "locked").await;
    let (_, body) = health(&server).await;
    assert_eq!(body["database"], "not writable", "{body}");
    lock.rollback().await.unwrap();

    recovered(&server, &mut clients).await;
    let check = server
        .db
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA integrity_check",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(check.try_get_by_index::<String>(0).unwrap(), "ok");
}
