//! Limits on connections: sockets per client address, new connections per
//! second per address (the address taken from `X-Forwarded-For` behind a
//! trusted proxy, never from a client that is not one), and long-polling
//! requests per session (a rate, and one POST at a time). Each refusal is a
//! clear answer and is counted in `/metrics` by limit name.

mod common;

use std::io::Write;
use std::time::Duration;

use common::wire::{http, WsClient};
use common::{Backend, TestServer};
use serde_json::Value;

/// The count `/metrics` shows for refusals by `limit` (process-wide: the
/// tests of this file run side by side, so they compare before and after).
async fn refusals(server: &TestServer, limit: &str) -> u64 {
    let (_, text) = server.get_text("/metrics").await;
    let prefix = format!("realtime_limit_refusals_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .parse()
        .unwrap()
}

/// A polling handshake, optionally as a proxy forwarding for `client`:
/// status and body.
async fn handshake(server: &TestServer, forwarded_for: Option<&str>) -> (u16, String) {
    let mut request = awc::Client::default().get(format!(
        "{}/socket.io/?EIO=4&transport=polling",
        server.base_url
    ));
    if let Some(client) = forwarded_for {
        request = request.insert_header(("x-forwarded-for", client));
    }
    let mut response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.body().await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn sid_of(open: &str) -> String {
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

/// A refusal by a limit: 429, Engine.IO's JSON error (code 4) naming the
/// limit.
#[track_caller]
fn assert_refused(answer: &(u16, String), limit: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 429, "{body}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["code"], 4, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(limit),
        "{body} names {limit}"
    );
}

#[actix_rt::test]
async fn sockets_per_address_are_bounded_and_given_back() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        "[limits]\nmax_sockets_per_address = 3\nconnect_rate_per_address = 0\n",
    )
    .await;
    let before = refusals(&server, "max_sockets_per_address").await;
    let ws_url = format!("{}/socket.io/?EIO=4&transport=websocket", server.base_url);
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(WsClient::connect(&ws_url).await.expect("under the limit"));
    }
    let polling = handshake(&server, None).await;
    assert_eq!(polling.0, 200, "{}", polling.1);
    // The fourth, on either transport, is refused before any session.
    assert_eq!(WsClient::connect(&ws_url).await.err(), Some(Some(429)));
    assert_refused(&handshake(&server, None).await, "max_sockets_per_address");
    assert!(refusals(&server, "max_sockets_per_address").await >= before + 2);

    // A session that ends gives its place back.
    let (status, _) = http(
        "POST",
        &format!(
            "{}/socket.io/?EIO=4&transport=polling&sid={}",
            server.base_url,
            sid_of(&polling.1)
        ),
        Some("1"),
    )
    .await;
    assert_eq!(status, 200);
    common::wait_until(
        "the closed session's place",
        Duration::from_secs(5),
        || async { handshake(&server, None).await.0 == 200 },
    )
    .await;
}

#[actix_rt::test]
async fn behind_a_trusted_proxy_each_forwarded_client_counts_apart() {
    // The test's requests come from 127.0.0.1, a trusted proxy by default.
    let server = TestServer::start_with(
        Backend::Sqlite,
        "[limits]\nmax_sockets_per_address = 2\nconnect_rate_per_address = 0\n",
    )
    .await;
    for client in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..2 {
            assert_eq!(handshake(&server, Some(client)).await.0, 200);
        }
    }
    assert_refused(
        &handshake(&server, Some("198.51.100.1")).await,
        "max_sockets_per_address",
    );
    // A client's own X-Forwarded-For entries come before the proxy's and
    // are not believed: the proxy appended the real address last.
    assert_refused(
        &handshake(&server, Some("203.0.113.50, 198.51.100.2")).await,
        "max_sockets_per_address",
    );

    // Without trusted proxies, the header is ignored: every request is
    // 127.0.0.1's.
    let direct = TestServer::start_with(
        Backend::Sqlite,
        "[server]\ntrusted_proxies = []\n[limits]\nmax_sockets_per_address = 2\nconnect_rate_per_address = 0\n",
    )
    .await;
    assert_eq!(handshake(&direct, Some("198.51.100.1")).await.0, 200);
    assert_eq!(handshake(&direct, Some("198.51.100.2")).await.0, 200);
    assert_refused(
        &handshake(&direct, Some("198.51.100.3")).await,
        "max_sockets_per_address",
    );
}

#[actix_rt::test]
async fn new_connections_per_address_are_rate_limited() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        "[limits]\nconnect_rate_per_address = 1\nconnect_burst_per_address = 3\n",
    )
    .await;
    let before = refusals(&server, "connect_rate_per_address").await;
    for _ in 0..3 {
        assert_eq!(handshake(&server, None).await.0, 200);
    }
    assert_refused(&handshake(&server, None).await, "connect_rate_per_address");
    let ws_url = format!("{}/socket.io/?EIO=4&transport=websocket", server.base_url);
    assert_eq!(WsClient::connect(&ws_url).await.err(), Some(Some(429)));
    assert!(refusals(&server, "connect_rate_per_address").await >= before + 2);
    // Other addresses are not slowed down by this one.
    assert_eq!(handshake(&server, Some("198.51.100.9")).await.0, 200);
    // One a second comes back.
    actix_rt::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(handshake(&server, None).await.0, 200);
}

#[actix_rt::test]
async fn polling_requests_per_session_are_rate_limited() {
    let server = TestServer::start_with(Backend::Sqlite, "[limits]\npolling_rate = 2\n").await;
    let before = refusals(&server, "polling_rate").await;
    let (_, open) = handshake(&server, None).await;
    let url = format!(
        "{}/socket.io/?EIO=4&transport=polling&sid={}",
        server.base_url,
        sid_of(&open)
    );
    // A burst of twice the rate (noop packets), then 429.
    for _ in 0..4 {
        assert_eq!(http("POST", &url, Some("6")).await.0, 200);
    }
    assert_refused(&http("POST", &url, Some("6")).await, "polling_rate");
    assert!(refusals(&server, "polling_rate").await > before);
    // The session is not closed for it: it goes on once the rate allows.
    actix_rt::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(http("POST", &url, Some("6")).await.0, 200);
}

#[actix_rt::test]
async fn a_second_post_while_one_is_being_read_ends_the_session() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, open) = handshake(&server, None).await;
    let sid = sid_of(&open);
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    // A POST whose body is still on its way: 10 bytes announced, 1 sent.
    let address = server.base_url.trim_start_matches("http://").to_owned();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    write!(
        slow,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n6"
    )
    .unwrap();
    // The server reads the headers and begins the body before this one.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let url = format!("{}{path}", server.base_url);
    let (status, body) = http("POST", &url, Some("6")).await;
    assert_eq!(status, 400, "{body}");
    // The protocol was broken: the session is gone.
    common::wait_until("the session closes", Duration::from_secs(5), || async {
        http("GET", &url, None).await.0 == 400
    })
    .await;
    drop(slow);
}
