//! Webhooks survive a crash and a shutdown: the real binary is SIGKILLed
//! with 1,000 messages' webhooks outstanding (the receiver holds every
//! request), or SIGTERMed with requests in flight, and the next start
//! sends what is left, with the counts right. SQLite and PostgreSQL.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::{Backend, ANON_KEY, API_KEY, JWT_SECRET};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::json;

backend_tests!(
    outstanding_webhooks_are_sent_after_a_sigkill,
    sigterm_lets_requests_in_flight_finish_and_keeps_the_rest,
);

const N_MESSAGES: usize = 1000;

struct Server {
    child: Child,
    base: String,
    /// The server's log (stdout), shown when an assertion fails.
    log: tempfile::NamedTempFile,
}

impl Server {
    async fn start(database_url: &str, port: u16) -> Server {
        Self::start_with(database_url, port, &[]).await
    }

    async fn start_with(database_url: &str, port: u16, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_realtime"));
        for (key, _) in std::env::vars() {
            if key.starts_with("REALTIME_") {
                command.env_remove(key);
            }
        }
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = command
            .arg("serve")
            .env("REALTIME__SERVER__HOST", "127.0.0.1")
            .env("REALTIME__SERVER__PORT", port.to_string())
            .env("REALTIME__DATABASE__URL", database_url)
            .env("REALTIME__AUTH__JWT_SECRET", JWT_SECRET)
            .env("REALTIME__AUTH__API_KEYS", format!("[\"{API_KEY}\"]"))
            .env("REALTIME__AUTH__ANON_KEYS", format!("[\"{ANON_KEY}\"]"))
            .env("REALTIME__LOG__LEVEL", "warn,realtime::webhooks=debug")
            // Held requests must not time out while the test looks.
            .env("REALTIME__WEBHOOKS__TIMEOUT_MS", "60000")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = awc::Client::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = client.get(format!("{base}/health")).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the server did not start");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        Server { child, base, log }
    }

    async fn admin(&self, method: &str, path: &str, body: serde_json::Value) -> u16 {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
            .request(method, format!("{}{path}", self.base))
            .insert_header(("x-api-key", API_KEY))
            .send_json(&body)
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Server {
    /// The end of the server's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut server = Server::start(&database_url, port).await;
    let status = server
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
        for status in futures_util::future::join_all(publishes).await {
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
        "SELECT COUNT(*) AS n FROM webhook_pending"
    };
    assert_eq!(
        count(&db, pending).await,
        N_MESSAGES as i64,
        "every message is still owed"
    );

    receiver.set_paused(false);
    let _server = Server::start(&database_url, port).await;
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
    let mut server = Server::start_with(&database_url, port, &grace).await;
    let status = server
        .admin(
            "POST",
            "/api/realtime/channels",
            json!({ "pattern": "calm", "webhookUrls": [receiver.url("/paused")] }),
        )
        .await;
    assert_eq!(status, 201);
    let n_messages = 50;
    for n in 0..n_messages {
        let status = server
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
    let (pending, messages) = if backend == Backend::Postgres {
        ("realtime.webhook_pending", "realtime.messages")
    } else {
        ("webhook_pending", "messages")
    };
    let pending_sql = format!("SELECT COUNT(*) AS n FROM {pending}");
    assert_eq!(
        count(&db, &pending_sql).await,
        (n_messages - in_flight) as i64,
        "the finished ones were recorded, the rest kept; the server said:\n{}",
        server.log_tail()
    );

    let _server = Server::start(&database_url, port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&db, &pending_sql).await > 0 {
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
