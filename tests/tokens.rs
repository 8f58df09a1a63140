//! Tokens and keys at the edges: a socket whose JWT expires (kept by
//! default, as InsForge; closed with `auth.disconnect_on_expiry`), and no
//! configured secret ever reaching the logs of a run that uses them all.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::wire::SioClient;
use common::{Backend, TestServer};
use realtime::auth::{Authenticator, Role};
use serde_json::json;

backend_tests!(
    an_expired_token_keeps_its_socket_by_default,
    with_disconnect_on_expiry_the_transport_closes_at_expiry,
);

const USER: &str = "11111111-1111-4111-8111-111111111111";

/// A JWT of the test secret that expires `ttl` seconds from now.
fn token_expiring_in(server: &TestServer, ttl: u64) -> String {
    let settings = common::test_settings(&server.database_url, "");
    Authenticator::new(&settings.auth).mint(Role::Authenticated, USER, None, ttl)
}

async fn create_channel(server: &TestServer) {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "tok:%" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn an_expired_token_keeps_its_socket_by_default(backend: Backend) {
    let server = TestServer::start_with(backend, "[auth]\nleeway_seconds = 0\n").await;
    create_channel(&server).await;
    let token = token_expiring_in(&server, 1);
    let mut client = SioClient::connect(&server.base_url, json!({ "token": token })).await;
    actix_rt::time::sleep(Duration::from_millis(2500)).await;
    // Past its expiry, the socket still works.
    let ack = client
        .call("realtime:subscribe", json!({ "channel": "tok:1" }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
}

async fn with_disconnect_on_expiry_the_transport_closes_at_expiry(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        "[auth]\nleeway_seconds = 0\ndisconnect_on_expiry = true\n",
    )
    .await;
    create_channel(&server).await;
    let long = token_expiring_in(&server, 3600);
    let mut lasting = SioClient::connect(&server.base_url, json!({ "token": long })).await;
    let token = token_expiring_in(&server, 2);
    let connected_at = Instant::now();
    let mut client = SioClient::connect(&server.base_url, json!({ "token": token })).await;
    let frames = client.frames_until_closed(Duration::from_secs(6)).await;
    let after = connected_at.elapsed();
    // At expiry (plus at most a tenth of the 2 s as jitter), not before.
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert!(after < Duration::from_secs(4), "closed after {after:?}");
    // The transport closed without a Socket.IO DISCONNECT ("41"), so the
    // stock client reconnects (and must bring a fresh token).
    assert!(
        !frames.iter().any(|frame| frame.starts_with("41")),
        "{frames:?}"
    );
    // A token that does not expire soon keeps its socket.
    let ack = lasting
        .call("realtime:subscribe", json!({ "channel": "tok:2" }))
        .await;
    assert_eq!(ack["ok"], true);
}

/// Runs the real binary at debug level with every kind of secret
/// configured, uses each of them (and wrong ones), and checks that none
/// appears in anything it wrote.
#[actix_rt::test]
async fn no_configured_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let jwt_secret = "jwt-secret-for-the-log-test-0123456789abcdef";
    let api_key = "ik_logtest_api_key_5d1e0c";
    let anon_key = "anon_logtest_anon_key_77aa";
    let signing_secret = "whsec_bG9nLXRlc3Qtc2lnbmluZy1zZWNyZXQtMDEyMzQ1Njc4OQ==";
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_realtime"));
    for (key, _) in std::env::vars() {
        if key.starts_with("REALTIME_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .arg("serve")
        .current_dir(dir.path())
        .env("REALTIME__SERVER__HOST", "127.0.0.1")
        .env("REALTIME__SERVER__PORT", port.to_string())
        .env(
            "REALTIME__DATABASE__URL",
            format!("sqlite://{}/rt.db", dir.path().display()),
        )
        .env("REALTIME__LOG__LEVEL", "debug")
        .env("REALTIME__AUTH__JWT_SECRET", jwt_secret)
        .env("REALTIME__AUTH__API_KEYS", format!("[\"{api_key}\"]"))
        .env("REALTIME__AUTH__ANON_KEYS", format!("[\"{anon_key}\"]"))
        .env("REALTIME__WEBHOOKS__SIGNING_SECRET", signing_secret)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let settings = common::test_settings("sqlite://unused.db", "");
    let token = Authenticator::new(&realtime::config::AuthSettings {
        jwt_secret: jwt_secret.into(),
        ..settings.auth
    })
    .mint(Role::Authenticated, USER, None, 600);

    // Admin requests with the key, a wrong key, and a bearer JWT.
    for key in [api_key, "ik_wrong_key_000000", "not even a key"] {
        let _ = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("{base}/api/realtime/channels"),
            ])
            .args(["-H", &format!("x-api-key: {key}")])
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"pattern":"log:%","webhookUrls":["http://127.0.0.1:9/hook"]}"#,
            ])
            .status()
            .unwrap();
    }
    let _ = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("{base}/api/realtime/channels"),
        ])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .status()
        .unwrap();
    // Sockets with every credential, good and bad.
    let mut user = SioClient::connect(&base, json!({ "token": token })).await;
    let ack = user
        .call("realtime:subscribe", json!({ "channel": "log:1" }))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let ack = user
        .call(
            "realtime:publish",
            json!({ "channel": "log:1", "event": "e", "payload": { "n": 1 } }),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let _anon = SioClient::connect(&base, json!({ "token": anon_key })).await;
    let _admin = SioClient::connect(&base, json!({ "apiKey": api_key })).await;
    for bad in [
        json!({ "token": format!("{token}x") }),
        json!({ "token": "anon_wrong_key_000" }),
        json!({ "apiKey": "ik_wrong_key_000000" }),
    ] {
        let mut ws = common::wire::WsClient::connect(&format!(
            "{base}/socket.io/?EIO=4&transport=websocket"
        ))
        .await
        .unwrap();
        let _open = ws.recv().await;
        ws.send_text(&format!("40{bad}")).await;
        let _refusal = ws.recv().await;
    }
    // Let the webhook attempt (refused: nothing listens on port 9) be made
    // and logged.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let mut logged = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut logged)
        .unwrap();
    assert!(
        logged.contains("DEBUG") || logged.contains("debug"),
        "the run logged at debug level"
    );
    let signing_key = signing_secret.trim_start_matches("whsec_");
    let signature_part = token.rsplit('.').next().unwrap();
    for secret in [
        jwt_secret,
        api_key,
        anon_key,
        signing_secret,
        signing_key,
        &token,
        signature_part,
    ] {
        assert!(
            !logged.contains(secret),
            "{secret:?} appears in the logs:\n{}",
            logged
                .lines()
                .filter(|line| line.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
