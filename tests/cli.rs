//! The `realtime` binary itself: sub-commands, configuration errors,
//! serving on SQLite and stopping on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    assert_eq!(
        principal,
        Principal::Jwt {
            sub: "ops".into(),
            role: Role::ProjectAdmin,
            email: None
        }
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
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
