//! The `realtime` binary itself: sub-commands, configuration errors,
//! serving on SQLite and stopping on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use realtime::auth::{Authenticator, Principal, Role};
use realtime::config::Settings;

fn realtime() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_realtime"));
    // Start from the shipped defaults whatever the caller's environment says.
    for (key, _) in std::env::vars() {
        if key.starts_with("REALTIME_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn invalid_environment_value_fails_with_one_line_naming_the_key() {
    let output = realtime()
        .args(["migrate"])
        .env("REALTIME__SERVER__PORT", "not-a-port")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.port"), "{stderr}");
    assert!(stderr.contains("REALTIME__SERVER__PORT"), "{stderr}");
}

#[test]
fn invalid_file_value_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[auth]\napi_keys = [\"secret\"]\n").unwrap();
    let output = realtime()
        .arg("--config")
        .arg(&path)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "realtime: invalid configuration: auth.api_keys[0]: must start with \"ik_\" followed by at least 8 characters"
    );
    let missing = realtime()
        .args(["--config", "/nonexistent.toml", "migrate"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn token_mints_a_jwt_the_server_accepts() {
    let output = realtime()
        .args([
            "token",
            "--role",
            "project-admin",
            "--sub",
            "ops",
            "--ttl",
            "60",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let settings = Settings::from_toml_overlay("").unwrap();
    let principal = Authenticator::new(&settings.auth)
        .verify(token.trim())
        .unwrap();
    let Principal::Jwt {
        sub, role, email, ..
    } = principal
    else {
        panic!("not a JWT: {principal:?}");
    };
    assert_eq!(
        (sub.as_str(), role, email),
        ("ops", Role::ProjectAdmin, None)
    );
}

#[test]
fn keys_prints_fresh_keys() {
    let api = realtime().arg("keys").output().unwrap();
    let api = String::from_utf8(api.stdout).unwrap();
    assert!(
        api.trim().starts_with("ik_") && api.trim().len() == 35,
        "{api}"
    );
    let anon = realtime()
        .args(["keys", "--kind", "anon"])
        .output()
        .unwrap();
    assert!(String::from_utf8(anon.stdout).unwrap().starts_with("anon_"));
    // A webhook secret the configuration accepts as it is.
    let webhook = realtime()
        .args(["keys", "--kind", "webhook"])
        .output()
        .unwrap();
    let secret = String::from_utf8(webhook.stdout).unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let settings = Settings::from_toml_overlay(&format!(
        "[webhooks]\nsigning_secret = \"{}\"",
        secret.trim()
    ))
    .unwrap();
    assert_eq!(settings.webhooks.signing_key().unwrap().unwrap().len(), 32);
    let err = Settings::from_toml_overlay("[webhooks]\nsigning_secret = \"secret\"").unwrap_err();
    assert_eq!(err.key, "webhooks.signing_secret");
}

#[test]
fn migrate_creates_the_sqlite_file_and_is_repeatable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/folder/realtime.db");
    for _ in 0..2 {
        let status = realtime()
            .arg("migrate")
            .env(
                "REALTIME__DATABASE__URL",
                format!("sqlite://{}", db.display()),
            )
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert!(db.is_file());
}

#[test]
fn serves_on_sqlite_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = realtime()
        .current_dir(dir.path())
        .env("REALTIME__SERVER__HOST", "127.0.0.1")
        .env("REALTIME__SERVER__PORT", port.to_string())
        .env("REALTIME__SERVER__WORKERS", "1")
        .env("REALTIME__LOG__FORMAT", "json")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Ok(body) = http_get(port, "/health") {
            break body;
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        dir.path().join("data/realtime.db").is_file(),
        "default SQLite file created under data/"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let logs: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(
        logs.iter()
            .any(|line| line.contains("realtime server listening")),
        "{logs:?}"
    );
    assert!(
        logs.iter().all(|line| line.starts_with('{')),
        "json log format: {logs:?}"
    );
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// POSTs `body` as JSON with the shipped development API key.
fn http_post(port: u16, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         x-api-key: ik_dev_only_insecure_change_me\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Starts the binary on `db` and waits until it is healthy.
fn start_server(
    dir: &std::path::Path,
    port: u16,
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    let mut command = realtime();
    command
        .current_dir(dir)
        .env("REALTIME__SERVER__HOST", "127.0.0.1")
        .env("REALTIME__SERVER__PORT", port.to_string())
        .env("REALTIME__SERVER__WORKERS", "1")
        .env("REALTIME__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/health").is_err() {
        assert!(Instant::now() < deadline, "server did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[actix_rt::test]
async fn sigterm_closes_sockets_and_writes_every_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // A long batch window keeps accepted messages in memory when SIGTERM comes.
    let slow_commit = [
        ("REALTIME__DATABASE__BATCH_WINDOW_MS", "3000"),
        ("REALTIME__DATABASE__BATCH_SIZE", "1000"),
    ];
    let mut child = start_server(dir.path(), port, &slow_commit);
    let base = format!("http://127.0.0.1:{port}");
    let create = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            &format!("{base}/api/realtime/channels"),
        ])
        .args([
            "-H",
            "x-api-key: ik_dev_only_insecure_change_me",
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", r#"{"pattern":"shutdown"}"#])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(create.success());

    let mut client = common::wire::SioClient::connect(
        &base,
        serde_json::json!({ "token": "anon_dev_only_insecure_change_me" }),
    )
    .await;
    let ack = client
        .call(
            "realtime:subscribe",
            serde_json::json!({ "channel": "shutdown" }),
        )
        .await;
    assert_eq!(ack["ok"], true);
    for n in 0..50 {
        client
            .emit(
                "realtime:publish",
                serde_json::json!({ "channel": "shutdown", "event": "e", "payload": { "n": n } }),
            )
            .await;
    }
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // The socket is closed by the server (a transport close: clients reconnect)...
    while client.next_event().await.is_some() {}
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "sockets closed promptly"
    );
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    // ...and every accepted message is in history after a restart.
    let mut child = start_server(dir.path(), port, &[]);
    let output = std::process::Command::new("curl")
        .args(["-sf", &format!("{base}/api/realtime/messages/stats")])
        .args(["-H", "x-api-key: ik_dev_only_insecure_change_me"])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["totalMessages"], 50, "{stats}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[actix_rt::test]
async fn sigterm_closes_sockets_in_batches_over_the_drain_time() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = start_server(dir.path(), port, &[("REALTIME__SERVER__DRAIN_MS", "1000")]);
    let base = format!("http://127.0.0.1:{port}");
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(
            common::wire::SioClient::connect(
                &base,
                serde_json::json!({ "token": "anon_dev_only_insecure_change_me" }),
            )
            .await,
        );
    }
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // Each client notes when its connection closed.
    let closes = futures_util::future::join_all(clients.into_iter().map(|mut client| async move {
        while client.next_event().await.is_some() {}
        signalled.elapsed()
    }))
    .await;
    let first = *closes.iter().min().unwrap();
    let last = *closes.iter().max().unwrap();
    assert!(
        first < Duration::from_millis(500),
        "first close after {first:?}"
    );
    assert!(
        last >= Duration::from_millis(600) && last < Duration::from_secs(5),
        "the last close after {last:?}: spread over the drain time"
    );
    let _ = child.wait();
}

/// The scheduling policy of each of `pid`'s threads (`/proc`'s `stat`,
/// field 41: 0 the default, 3 `SCHED_BATCH`), by thread name.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (head, rest) = stat.rsplit_once(") ").unwrap();
        let name = head.split_once(" (").unwrap().1.to_string();
        // `rest` starts at field 3.
        let policy = rest.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        policies.push((name, policy));
    }
    policies
}

/// Every thread of a serving process runs as a batch thread, the ones its
/// pools started after the policy was set included; with
/// `server.batch_scheduling = false` none does.
#[cfg(target_os = "linux")]
#[test]
fn server_threads_run_as_batch_threads_unless_turned_off() {
    for (setting, expected) in [("true", 3), ("false", 0)] {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let mut child = start_server(
            dir.path(),
            port,
            &[("REALTIME__SERVER__BATCH_SCHEDULING", setting)],
        );
        // A publish, so the writer's SQLite connection and its thread exist.
        let created = http_post(port, "/api/realtime/channels", r#"{"pattern":"sched:%"}"#);
        let published = http_post(
            port,
            "/api/realtime/messages",
            r#"{"channel":"sched:1","event":"e","payload":{}}"#,
        );
        let policies = thread_policies(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(created.starts_with("HTTP/1.1 201"), "{created}");
        assert!(published.starts_with("HTTP/1.1 201"), "{published}");
        assert!(policies.len() > 4, "{policies:?}");
        assert!(
            policies.iter().all(|(_, policy)| *policy == expected),
            "batch_scheduling = {setting}: {policies:?}"
        );
    }
}
