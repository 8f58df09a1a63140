//! Engine.IO v4 on the wire, against the conformance server
//! (`../shared/CONFORMANCE.md` §1–2): handshakes, long-polling, WebSocket,
//! upgrade, heartbeat and every error path.

mod common;

use std::time::{Duration, Instant};

use common::wire::{http, ConformanceServer, Polling, WsClient, WsFrame};

const EIO: &str = "/engine.io/";

#[actix_rt::test]
async fn polling_handshake_advertises_exactly_the_settings() {
    let server = ConformanceServer::start();
    for path in [EIO, "/socket.io/"] {
        let (session, open) = Polling::open(&server, path).await;
        let keys: Vec<&str> = open
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "sid",
                "upgrades",
                "pingInterval",
                "pingTimeout",
                "maxPayload"
            ]
        );
        assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
        assert_eq!(open["pingInterval"], 300);
        assert_eq!(open["pingTimeout"], 200);
        assert_eq!(open["maxPayload"], 1_000_000);
        assert!(!session.sid.is_empty());
    }
}

#[actix_rt::test]
async fn websocket_handshake_opens_without_upgrades() {
    let server = ConformanceServer::start();
    let mut ws = WsClient::connect(&server.url(EIO, "EIO=4&transport=websocket"))
        .await
        .unwrap();
    let WsFrame::Text(open) = ws.recv().await else {
        panic!("no open packet")
    };
    let open: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], serde_json::json!([]));
    assert_eq!(open.as_object().unwrap().len(), 5);
}

#[actix_rt::test]
async fn bad_requests_get_400_with_a_code() {
    let server = ConformanceServer::start();
    for (method, query, code) in [
        ("GET", "transport=polling", 5),
        ("GET", "EIO=abc&transport=polling", 5),
        ("GET", "EIO=3&transport=polling", 5),
        ("GET", "EIO=4", 0),
        ("GET", "EIO=4&transport=carrier-pigeon", 0),
        ("POST", "EIO=4&transport=polling", 2),
        ("PUT", "EIO=4&transport=polling", 2),
        ("GET", "EIO=4&transport=polling&sid=nope", 1),
        ("POST", "EIO=4&transport=polling&sid=nope", 1),
        ("GET", "EIO=4&transport=websocket", 3),
    ] {
        let (status, body) = http(
            method,
            &server.url(EIO, query),
            (method != "GET").then_some("4x"),
        )
        .await;
        assert_eq!(status, 400, "{method} {query}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], code, "{method} {query}");
        assert!(body["message"].is_string());
    }
    // Upgrade requests with a bad query are refused before the upgrade.
    for query in [
        "EIO=3&transport=websocket",
        "EIO=4&transport=nope",
        "EIO=4&transport=websocket&sid=nope",
    ] {
        let refused = WsClient::connect(&server.url(EIO, query)).await.err();
        assert_eq!(refused, Some(Some(400)), "{query}");
    }
    let (status, _) = http("GET", &format!("{}/elsewhere", server.base), None).await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn polling_echoes_text_and_binary_in_order() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, EIO).await;
    session.send("4hello\x1ebAQIDBA==").await;
    assert_eq!(session.receive().await, "4hello\x1ebAQIDBA==");
    session.send("4€ and ünïcode").await;
    assert_eq!(session.receive().await, "4€ and ünïcode");
}

#[actix_rt::test]
async fn get_waits_until_something_is_queued() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, EIO).await;
    let started = Instant::now();
    let (get, _) = futures_util::join!(session.get(), async {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        session.send("4late").await;
    });
    assert_eq!(get, (200, "4late".to_owned()));
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[actix_rt::test]
async fn malformed_post_closes_the_session() {
    let server = ConformanceServer::start();
    for body in ["x", "", "4ok\x1e", "b!!!"] {
        let (session, _) = Polling::open(&server, EIO).await;
        let (status, _) = session.post(body).await;
        assert_eq!(status, 400, "{body:?}");
        assert_eq!(session.get().await.0, 400, "session gone after {body:?}");
    }
}

#[actix_rt::test]
async fn two_waiting_gets_close_the_session() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, EIO).await;
    let (first, second) = futures_util::join!(session.get(), async {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        session.get().await
    });
    assert_eq!(
        first,
        (200, "1".to_owned()),
        "the waiting GET gets a close packet"
    );
    assert_eq!(second.0, 400);
    assert_eq!(session.get().await.0, 400);
}

#[actix_rt::test]
async fn abandoned_get_closes_the_session() {
    use tokio::io::AsyncWriteExt;
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, EIO).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = actix_rt::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET {EIO}?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: {address}\r\n\r\n",
        session.sid
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(session.get().await.0, 400);
}

#[actix_rt::test]
async fn heartbeat_over_polling_three_rounds() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, EIO).await;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(session.receive().await, "2");
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        session.send("3").await;
    }
}

#[actix_rt::test]
async fn no_pong_closes_the_session_before_interval_plus_timeout() {
    let server = ConformanceServer::start();
    for _ in 0..3 {
        let (session, _) = Polling::open(&server, EIO).await;
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(session.get().await.0, 400);
    }
}

#[actix_rt::test]
async fn close_packet_releases_the_waiting_get_with_noop() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, EIO).await;
    let (get, _) = futures_util::join!(session.get(), async {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        session.send("1").await;
    });
    assert_eq!(get, (200, "6".to_owned()));
    assert_eq!(session.get().await.0, 400);
}

#[actix_rt::test]
async fn oversize_post_is_refused_and_closes() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, EIO).await;
    let body = format!("4{}", "x".repeat(1_000_001));
    assert_eq!(session.post(&body).await.0, 413);
    assert_eq!(session.get().await.0, 400);
}

#[actix_rt::test]
async fn websocket_echoes_text_and_binary_frames() {
    let server = ConformanceServer::start();
    let mut ws = WsClient::connect(&server.url(EIO, "EIO=4&transport=websocket"))
        .await
        .unwrap();
    assert!(matches!(ws.recv().await, WsFrame::Text(open) if open.starts_with('0')));
    ws.send_text("4hello").await;
    ws.expect_text("4hello").await;
    ws.send_binary(&[1, 2, 3, 4]).await;
    assert_eq!(ws.recv().await, WsFrame::Binary(vec![1u8, 2, 3, 4].into()));
}

#[actix_rt::test]
async fn websocket_closes_on_invalid_packet_and_on_close_packet() {
    let server = ConformanceServer::start();
    for bad in ["x", "", "1"] {
        let mut ws = WsClient::connect(&server.url(EIO, "EIO=4&transport=websocket"))
            .await
            .unwrap();
        ws.recv().await;
        ws.send_text(bad).await;
        assert_eq!(ws.recv().await, WsFrame::Closed, "after {bad:?}");
    }
}

#[actix_rt::test]
async fn websocket_without_pongs_is_closed_after_about_500_ms() {
    let server = ConformanceServer::start();
    let mut ws = WsClient::connect(&server.url(EIO, "EIO=4&transport=websocket"))
        .await
        .unwrap();
    let started = Instant::now();
    ws.recv().await;
    ws.expect_text("2").await;
    assert_eq!(
        ws.recv_within(Duration::from_secs(2)).await,
        WsFrame::Closed
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(700),
        "{elapsed:?}"
    );
}

#[actix_rt::test]
async fn websocket_with_pongs_stays_open() {
    let server = ConformanceServer::start();
    let mut ws = WsClient::connect(&server.url(EIO, "EIO=4&transport=websocket"))
        .await
        .unwrap();
    ws.recv().await;
    for _ in 0..4 {
        ws.expect_text("2").await;
        ws.send_text("3").await;
    }
    ws.send_text("4still here").await;
    ws.expect_text("4still here").await;
}

#[actix_rt::test]
async fn oversize_websocket_frame_closes() {
    let server = ConformanceServer::start();
    let mut ws = WsClient::connect(&server.url(EIO, "EIO=4&transport=websocket"))
        .await
        .unwrap();
    ws.recv().await;
    ws.send_text(&format!("4{}", "x".repeat(1_000_001))).await;
    assert_eq!(ws.recv().await, WsFrame::Closed);
}

/// A polling session with a WebSocket that joined it and answered the probe.
async fn probed_upgrade(server: &ConformanceServer) -> (Polling, String, WsClient) {
    let (session, _) = Polling::open(server, EIO).await;
    let ws_url = server.url(
        EIO,
        &format!("EIO=4&transport=websocket&sid={}", session.sid),
    );
    let mut ws = WsClient::connect(&ws_url).await.unwrap();
    ws.send_text("2probe").await;
    ws.expect_text("3probe").await;
    (session, ws_url, ws)
}

#[actix_rt::test]
async fn upgrade_from_polling_to_websocket() {
    let server = ConformanceServer::start();
    let (session, ws_url, mut ws) = probed_upgrade(&server).await;

    // The paused long poll is released with a noop, promptly.
    let started = Instant::now();
    assert_eq!(session.receive().await, "6");
    // The suites allow about 100 ms; the bound here leaves room for a loaded CI machine.
    assert!(started.elapsed() < Duration::from_millis(200));

    ws.send_text("5").await;
    ws.send_text("4hello").await;
    // The heartbeat (300 ms here) may come first on a loaded machine.
    assert_eq!(
        ws.recv_skipping_pings().await,
        WsFrame::Text("4hello".into())
    );

    // Polling with the old sid is refused; a second WebSocket completes
    // its handshake and is closed at once, without a single packet.
    assert_eq!(session.get().await.0, 400);
    assert_eq!(session.post("4x").await.0, 400);
    let mut second = WsClient::connect(&ws_url)
        .await
        .expect("the second WebSocket's handshake is answered with 101");
    assert_eq!(second.recv().await, WsFrame::Closed);
    ws.send_text("4still mine").await;
    assert_eq!(
        ws.recv_skipping_pings().await,
        WsFrame::Text("4still mine".into())
    );
}

#[actix_rt::test]
async fn upgrade_keeps_the_heartbeat_and_queued_packets() {
    let server = ConformanceServer::start();
    let (session, _, mut ws) = probed_upgrade(&server).await;
    // Posted during the upgrade: the echo waits and arrives on the WebSocket.
    session.send("4queued").await;
    ws.send_text("5").await;
    assert_eq!(
        ws.recv_skipping_pings().await,
        WsFrame::Text("4queued".into())
    );
    // Heartbeats continue on the WebSocket for longer than one timeout.
    for _ in 0..3 {
        assert_eq!(ws.recv().await, WsFrame::Text("2".into()));
        ws.send_text("3").await;
    }
}

#[actix_rt::test]
async fn cors_headers_for_browsers() {
    let server = ConformanceServer::start();
    let response = awc::Client::new()
        .get(server.url(EIO, "EIO=4&transport=polling"))
        .insert_header(("origin", "https://app.example"))
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(
        headers.get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    assert_eq!(
        headers.get("access-control-allow-credentials").unwrap(),
        "true"
    );
    let preflight = awc::Client::new()
        .request(
            awc::http::Method::OPTIONS,
            server.url(EIO, "EIO=4&transport=polling"),
        )
        .insert_header(("origin", "https://app.example"))
        .insert_header(("access-control-request-headers", "content-type"))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-headers")
            .unwrap(),
        "content-type"
    );
}
