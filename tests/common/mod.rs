//! Test helpers: start the real server on a real database (a SQLite file or
//! a fresh PostgreSQL database) on `127.0.0.1:0`, and talk to it over HTTP.
#![allow(dead_code, missing_docs)]

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use realtime::auth::Role;
use realtime::config::Settings;
use realtime::server::{self, AppState};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::Value;

pub mod balancer;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod wire;

/// The admin key every test server accepts.
pub const API_KEY: &str = "ik_test_admin_key_0001";
/// The anon key every test server accepts.
pub const ANON_KEY: &str = "anon_test_anon_key_0001";
/// The JWT secret of every test server.
pub const JWT_SECRET: &str = "test-secret-that-is-at-least-32-characters";

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one async test body once per backend, each as its own test:
/// `backend_tests!(channel_crud, other_test);` makes `sqlite::channel_crud`
/// and `postgres::channel_crud`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[actix_rt::test] async fn $name() { super::$name(super::common::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[actix_rt::test] async fn $name() {
                if super::common::postgres_skipped() { return; }
                super::$name(super::common::Backend::Postgres).await
            })*
        }
    };
}

/// PostgreSQL tests are required. They may only be skipped on purpose, by
/// setting `REALTIME_TEST_SKIP_POSTGRES=1`; CI never does.
pub fn postgres_skipped() -> bool {
    if std::env::var_os("REALTIME_TEST_POSTGRES_URL").is_some() {
        return false;
    }
    if std::env::var("REALTIME_TEST_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("skipping a PostgreSQL test: REALTIME_TEST_SKIP_POSTGRES=1");
        return true;
    }
    panic!(
        "REALTIME_TEST_POSTGRES_URL is not set: run the tests with scripts/test \
         (which starts a throwaway PostgreSQL), or set REALTIME_TEST_SKIP_POSTGRES=1 to skip them"
    );
}

/// A fresh, empty database URL for `backend`; the folder keeps a SQLite
/// file alive for the test's duration.
pub async fn fresh_database(backend: Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("realtime.db").display());
            (url, Some(dir))
        }
        Backend::Postgres => {
            let admin_url = std::env::var("REALTIME_TEST_POSTGRES_URL").unwrap();
            let name = format!("rt_test_{}", uuid::Uuid::new_v4().simple());
            let admin = Database::connect(&admin_url).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await.unwrap();
            let (base, _) = admin_url.rsplit_once('/').unwrap();
            (format!("{base}/{name}"), None)
        }
    }
}

/// Settings for a test server on `database_url`, with fixed keys.
pub fn test_settings(database_url: &str, extra_toml: &str) -> Settings {
    let base = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\nworkers = 1\nmax_body_bytes = 65536\n\
         [database]\nurl = \"{database_url}\"\npool_size = 4\n\
         [auth]\njwt_secret = \"{JWT_SECRET}\"\napi_keys = [\"{API_KEY}\"]\nanon_keys = [\"{ANON_KEY}\"]\n"
    );
    Settings::from_toml_overlays(&[&base, extra_toml]).unwrap()
}

/// A running server and a client for it.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The same database the server uses, for arranging and checking rows.
    pub db: DatabaseConnection,
    /// The realtime pipeline, for looking at its actors.
    pub realtime: std::sync::Arc<realtime::realtime::Realtime>,
    /// The `/socket.io/` endpoint and its open sessions.
    pub sockets: realtime::server::Sockets,
    pub backend: Backend,
    /// The database URL the server was started with.
    pub database_url: String,
    handle: ServerHandle,
    client: awc::Client,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts the real app on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, "").await
    }

    /// Starts the real app with extra TOML settings.
    pub async fn start_with(backend: Backend, extra_toml: &str) -> TestServer {
        let (url, dir) = fresh_database(backend).await;
        Self::start_on(backend, url, dir, extra_toml).await
    }

    /// Starts the real app on the database at `url` (`dir` keeps a SQLite
    /// file's folder alive).
    pub async fn start_on(
        backend: Backend,
        url: String,
        dir: Option<tempfile::TempDir>,
        extra_toml: &str,
    ) -> TestServer {
        let settings = test_settings(&url, extra_toml);
        let state = AppState::open(settings).await.unwrap();
        let database_url = url.clone();
        let db = state.db.clone();
        let realtime = state.realtime.clone();
        let sockets = state.sockets.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let server = server::serve(listener, state).unwrap().server;
        let handle = server.handle();
        actix_rt::spawn(server);
        // Idle connections are dropped before the server's 5 s keep-alive
        // ends: awc keeps them 15 s, and a request sent on one the server
        // is closing fails with `Disconnected` (seen after a test's long
        // pause between two requests).
        let client = awc::Client::builder()
            .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(2)))
            .timeout(Duration::from_secs(10))
            .finish();
        TestServer {
            base_url,
            db,
            realtime,
            sockets,
            backend,
            database_url,
            handle,
            client,
            _dir: dir,
        }
    }

    /// A socket with the anon key, subscribed to `channel`.
    pub async fn anon_subscriber(&self, channel: &str) -> wire::SioClient {
        let mut client =
            wire::SioClient::connect(&self.base_url, serde_json::json!({ "token": ANON_KEY }))
                .await;
        let ack = client
            .call(
                "realtime:subscribe",
                serde_json::json!({ "channel": channel }),
            )
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
        client
    }

    /// A JWT signed with the test secret.
    pub fn token(&self, role: Role, sub: &str) -> String {
        let settings = test_settings("sqlite://unused.db", "");
        realtime::auth::Authenticator::new(&settings.auth).mint(role, sub, None, 600)
    }

    /// Sends a request with the admin key and returns status and JSON body.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(method, path, &[("x-api-key", API_KEY)], body)
            .await
    }

    /// Sends a request with the given headers; `body` goes as JSON.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|value| value.to_string());
        let content_type = body.as_ref().map(|_| "application/json");
        self.send_raw(
            method,
            path,
            headers,
            content_type,
            body.unwrap_or_default(),
        )
        .await
    }

    /// Runs SQL statements on the server's database (simple protocol, so
    /// several may be given at once); panics with the database's words.
    pub async fn sql(&self, statements: &str) {
        self.db
            .execute_unprepared(statements)
            .await
            .unwrap_or_else(|err| panic!("{statements}: {err}"));
    }

    /// Makes the server's message writes wait `hold` from now, as behind
    /// slow storage: a transaction of the test's takes the message table's
    /// write lock (once it has it, this returns) and ends after `hold`.
    pub async fn stall_message_writes(&self, hold: Duration) {
        use sea_orm::TransactionTrait;
        let lock = match self.backend {
            // A write that matches no row still takes the write lock.
            Backend::Sqlite => "UPDATE messages SET seq = seq WHERE 0",
            // Conflicts with the INSERT's lock, not with reads.
            Backend::Postgres => "LOCK TABLE messages IN EXCLUSIVE MODE",
        };
        let txn = self.db.begin().await.unwrap();
        txn.execute_unprepared(lock).await.unwrap();
        actix_rt::spawn(async move {
            actix_rt::time::sleep(hold).await;
            txn.commit().await.unwrap();
        });
    }

    /// The first column of the first row of `query`, as an integer.
    pub async fn scalar(&self, query: &str) -> i64 {
        let row = self
            .db
            .query_one(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                query,
            ))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{query}: no row"));
        row.try_get_by_index(0).unwrap()
    }

    /// GETs `path` and returns status and body text (for non-JSON answers).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let mut response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.body().await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Sends raw bytes, for malformed-input tests.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_type: Option<&str>,
        body: String,
    ) -> (u16, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        if let Some(content_type) = content_type {
            request = request.insert_header(("content-type", content_type));
        }
        let mut response = request.send_body(body).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.body().limit(16 * 1024 * 1024).await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, json)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_rt::spawn(async move { handle.stop(false).await });
    }
}

/// Polls `condition` every 20 ms until it holds; panics after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts an error response: status, code, and the `statusCode` field.
#[track_caller]
pub fn assert_error(response: &(u16, Value), status: u16, code: &str) {
    let (actual_status, body) = response;
    assert_eq!(*actual_status, status, "status of {body}");
    assert_eq!(body["error"], code, "code of {body}");
    assert_eq!(body["statusCode"], status, "statusCode of {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message of {body}"
    );
}
