//! Webhooks survive a crash and a shutdown: the real binary is SIGKILLed
//! with 1,000 messages' webhooks outstanding (the receiver holds every
//! request), or SIGTERMed with requests in flight, and the next start
//! sends what is left, with the counts right. SQLite and PostgreSQL. And a
//! SQLite backlog an older version left in its `webhook_pending` table is
//! sent after the upgrade that moved it onto the message rows.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::receiver::Receiver;
use common::Backend;
use migration::{Migrator, MigratorTrait};
use realtime::persistence::{channels, messages};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::json;

backend_tests!(
    outstanding_webhooks_are_sent_after_a_sigkill,
    sigterm_lets_requests_in_flight_finish_and_keeps_the_rest,
);

const N_MESSAGES: usize = 1000;

/// The server binary with webhook logs, and held requests that do not
/// time out while the test looks. A killed process's deliveries belong to
/// its node until the next one finds it silent (on PostgreSQL): a second
/// here, not the default 30.
async fn start_server(database_url: &str, port: u16, env: &[(&str, &str)]) -> ServerProcess {
    let mut all = vec![
        ("REALTIME__LOG__LEVEL", "warn,realtime::webhooks=debug"),
        ("REALTIME__WEBHOOKS__TIMEOUT_MS", "60000"),
        ("REALTIME__CLUSTER__HEARTBEAT_MS", "200"),
        ("REALTIME__CLUSTER__NODE_TIMEOUT_MS", "1000"),
    ];
    all.extend_from_slice(env);
    ServerProcess::start(ServerProcess::binary(), database_url, port, &all).await
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

async fn outstanding_webhooks_are_sent_after_a_sigkill(backend: Backend) {
    let (database_url, _dir) = common::fresh_database(backend).await;
    let port = common::free_port();
    let receiver = Receiver::start();
    receiver.set_paused(true);
    let mut server = start_server(&database_url, port, &[]).await;
    let (status, _) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            json!({ "pattern": "crash", "webhookUrls": [receiver.url("/paused")] }),
        )
        .await;
    assert_eq!(status, 201);
    for chunk in 0..N_MESSAGES / 100 {
        let publishes = (0..100).map(|i| {
            server.admin(
                "POST",
                "/api/realtime/messages",
                json!({ "channel": "crash", "event": "e", "payload": { "n": chunk * 100 + i } }),
            )
        });
        for (status, _) in futures_util::future::join_all(publishes).await {
            assert_eq!(status, 201);
        }
    }
    // Requests are in flight (held by the receiver); the rest wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.received().is_empty() {
        assert!(Instant::now() < deadline, "no webhook request started");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let db = Database::connect(&database_url).await.unwrap();
    let pending = if backend == Backend::Postgres {
        "SELECT COUNT(*) AS n FROM realtime.webhook_pending"
    } else {
        "SELECT COUNT(*) AS n FROM messages WHERE wh_pending IS NOT NULL"
    };
    assert_eq!(
        count(&db, pending).await,
        N_MESSAGES as i64,
        "every message is still owed"
    );

    receiver.set_paused(false);
    let _server = start_server(&database_url, port, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&db, pending).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the backlog was not sent after the restart"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = if backend == Backend::Postgres {
        "realtime.messages"
    } else {
        "messages"
    };
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) AS n FROM {messages} WHERE wh_audience_count = 1 AND wh_delivered_count = 1"
            )
        )
        .await,
        N_MESSAGES as i64,
        "each message counts one delivery, however often it was sent"
    );
    let ids: HashSet<String> = receiver
        .received()
        .iter()
        .filter_map(|request| request.header("x-insforge-message-id").map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), N_MESSAGES, "every message reached the receiver");
    receiver.stop().await;
}

async fn sigterm_lets_requests_in_flight_finish_and_keeps_the_rest(backend: Backend) {
    let (database_url, _dir) = common::fresh_database(backend).await;
    let port = common::free_port();
    let receiver = Receiver::start();
    receiver.set_paused(true);
    let grace = [("REALTIME__SERVER__SHUTDOWN_GRACE_MS", "5000")];
    let mut server = start_server(&database_url, port, &grace).await;
    let (status, _) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            json!({ "pattern": "calm", "webhookUrls": [receiver.url("/paused")] }),
        )
        .await;
    assert_eq!(status, 201);
    let n_messages = 50;
    for n in 0..n_messages {
        let (status, _) = server
            .admin(
                "POST",
                "/api/realtime/messages",
                json!({ "channel": "calm", "event": "e", "payload": { "n": n } }),
            )
            .await;
        assert_eq!(status, 201);
    }
    // 16 requests in flight (the per-URL bound), held by the receiver.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.received().len() < 16 {
        assert!(Instant::now() < deadline, "requests did not start");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight = receiver.received().len();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The receiver answers during the grace period: those requests finish
    // and are recorded; nothing new starts.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    receiver.set_paused(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}: {}", server.log_tail());
    assert_eq!(
        receiver.received().len(),
        in_flight,
        "nothing new started after SIGTERM"
    );
    let db = Database::connect(&database_url).await.unwrap();
    let (pending_sql, messages) = if backend == Backend::Postgres {
        (
            "SELECT COUNT(*) AS n FROM realtime.webhook_pending",
            "realtime.messages",
        )
    } else {
        (
            "SELECT COUNT(*) AS n FROM messages WHERE wh_pending IS NOT NULL",
            "messages",
        )
    };
    assert_eq!(
        count(&db, pending_sql).await,
        (n_messages - in_flight) as i64,
        "the finished ones were recorded, the rest kept; the server said:\n{}",
        server.log_tail()
    );

    let _server = start_server(&database_url, port, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&db, pending_sql).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the rest was not sent after the restart"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = format!("SELECT COUNT(*) AS n FROM {messages} WHERE wh_delivered_count = 1");
    assert_eq!(count(&db, &delivered).await, n_messages as i64);
    // Sent once each: the shutdown neither dropped nor repeated any.
    assert_eq!(receiver.received().len(), n_messages);
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_sqlite_backlog_of_an_older_version_is_sent_after_the_upgrade() {
    let (database_url, _dir) = common::fresh_database(Backend::Sqlite).await;
    let receiver = Receiver::start();
    // The schema before the backlog moved onto the message rows (the
    // 12 migrations through m20261202_000011), with one message owed.
    let db = Database::connect(format!("{database_url}?mode=rwc"))
        .await
        .unwrap();
    Migrator::up(&db, Some(12)).await.unwrap();
    let channel = channels::create(
        &db,
        channels::NewChannel {
            pattern: "old".into(),
            description: None,
            webhook_urls: Some(vec![receiver.url("/old")]),
            enabled: true,
        },
    )
    .await
    .unwrap();
    let owed = entity::messages::Model {
        id: uuid::Uuid::now_v7(),
        event_name: "e".into(),
        channel_id: Some(channel.id),
        channel_name: "old".into(),
        payload: json!({ "n": 1 }),
        sender_type: "system".into(),
        sender_id: None,
        ws_audience_count: 0,
        wh_audience_count: 1,
        wh_delivered_count: 0,
        created_at: chrono::Utc::now(),
        seq: Some(1),
    };
    messages::insert_batch(&db, [&owed]).await.unwrap();
    db.execute(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "INSERT INTO webhook_pending (message_id, node) VALUES (?, 'a-node-long-gone')",
        [owed.id.into()],
    ))
    .await
    .unwrap();

    let _server = start_server(&database_url, common::free_port(), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered =
        "SELECT COUNT(*) AS n FROM messages WHERE wh_delivered_count = 1 AND wh_pending IS NULL";
    while count(&db, delivered).await < 1 {
        assert!(Instant::now() < deadline, "the old backlog was not sent");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let received = receiver.received_at("/old");
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("x-insforge-message-id"),
        Some(owed.id.to_string().as_str())
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'webhook_pending'"
        )
        .await,
        0,
        "one backlog, on the rows"
    );
    receiver.stop().await;
}
