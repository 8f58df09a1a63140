//! The real server binary as a child process, for tests that kill it,
//! signal it or limit it as an operating system would.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ANON_KEY, API_KEY, JWT_SECRET};

/// A running `realtime serve`, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server's log (stdout), shown when an assertion fails.
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    /// The binary itself, to be started by [`ServerProcess::start`].
    pub fn binary() -> Command {
        Command::new(env!("CARGO_BIN_EXE_realtime"))
    }

    /// Runs `command` (the binary, or a wrapper that execs it with the
    /// arguments it is given) with `serve` on `database_url` and `port`,
    /// the test keys and `env` on top, and waits until `/health` answers.
    pub async fn start(
        mut command: Command,
        database_url: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> ServerProcess {
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
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let server = ServerProcess { child, base, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.get("/health").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "the server did not start: {}",
                server.log_tail()
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Sends `body` with the admin key; returns status and JSON answer.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut response = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
            .request(method, format!("{}{path}", self.base))
            .insert_header(("x-api-key", API_KEY))
            .send_json(&body)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response
            .json()
            .limit(16 * 1024 * 1024)
            .await
            .unwrap_or_default();
        (status, body)
    }

    /// GETs `path`; status and JSON answer (`null` when none or not JSON).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let Ok(mut response) = awc::Client::default()
            .get(format!("{}{path}", self.base))
            .send()
            .await
        else {
            return (0, serde_json::Value::Null);
        };
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The end of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
