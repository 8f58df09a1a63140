//! Socket.IO v5 on the wire, against the conformance server
//! (`../shared/CONFORMANCE.md` §3): namespaces, auth echo, events, acks,
//! binary attachments, disconnects and protocol violations.

mod common;

use std::time::{Duration, Instant};

use common::wire::{ConformanceServer, Polling, WsClient, WsFrame};

const SIO: &str = "/socket.io/";

/// A WebSocket session on `/socket.io/`, past the open packet.
async fn websocket(server: &ConformanceServer) -> WsClient {
    let mut ws = WsClient::connect(&server.url(SIO, "EIO=4&transport=websocket"))
        .await
        .unwrap();
    assert!(matches!(ws.recv().await, WsFrame::Text(open) if open.starts_with('0')));
    ws
}

/// Reads the CONNECT answer, checks it, and returns the socket id.
async fn expect_connect(ws: &mut WsClient, prefix: &str) -> String {
    let WsFrame::Text(answer) = ws.recv().await else {
        panic!("no connect answer")
    };
    let json = answer
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{answer} lacks {prefix}"));
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), 1, "only sid: {json}");
    object["sid"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn connect_answers_sid_then_echoes_auth() {
    let server = ConformanceServer::start();
    let mut ws = websocket(&server).await;
    ws.send_text("40").await;
    let sid = expect_connect(&mut ws, "40").await;
    assert!(!sid.is_empty());
    ws.expect_text(r#"42["auth",{}]"#).await;

    let mut ws = websocket(&server).await;
    ws.send_text(r#"40{"token":"123","z":1,"a":[true]}"#).await;
    expect_connect(&mut ws, "40").await;
    ws.expect_text(r#"42["auth",{"token":"123","z":1,"a":[true]}]"#)
        .await;
}

#[actix_rt::test]
async fn custom_namespace_with_and_without_comma() {
    let server = ConformanceServer::start();
    for (connect, auth) in [
        ("40/custom,", r#"42/custom,["auth",{}]"#),
        ("40/custom", r#"42/custom,["auth",{}]"#),
        (
            r#"40/custom,{"token":"abc"}"#,
            r#"42/custom,["auth",{"token":"abc"}]"#,
        ),
    ] {
        let mut ws = websocket(&server).await;
        ws.send_text(connect).await;
        expect_connect(&mut ws, "40/custom,").await;
        ws.expect_text(auth).await;
    }
}

#[actix_rt::test]
async fn unknown_namespace_is_refused_and_the_connection_stays() {
    let server = ConformanceServer::start();
    let mut ws = websocket(&server).await;
    ws.send_text("40/random").await;
    ws.expect_text(r#"44/random,{"message":"Invalid namespace"}"#)
        .await;
    ws.send_text("40").await;
    expect_connect(&mut ws, "40").await;
}

#[actix_rt::test]
async fn socket_id_differs_from_session_id() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, SIO).await;
    session.send("40").await;
    let body = session.receive().await;
    let (connect, auth) = body.split_once('\x1e').unwrap();
    assert_eq!(auth, r#"42["auth",{}]"#);
    let answer: serde_json::Value = serde_json::from_str(&connect[2..]).unwrap();
    assert_ne!(answer["sid"], session.sid.as_str());
}

#[actix_rt::test]
async fn invalid_first_packet_closes_the_connection() {
    let server = ConformanceServer::start();
    for bad in ["4abc", "4", "42[\"message\"]", "43[]"] {
        let mut ws = websocket(&server).await;
        ws.send_text(bad).await;
        assert_eq!(ws.recv().await, WsFrame::Closed, "after {bad:?}");
    }
}

#[actix_rt::test]
async fn no_connect_within_the_timeout_closes() {
    let server = ConformanceServer::start();
    let mut ws = websocket(&server).await;
    let started = Instant::now();
    assert_eq!(ws.recv_skipping_pings().await, WsFrame::Closed);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
}

#[actix_rt::test]
async fn leaving_main_namespace_sends_nothing_and_keeps_engine_io() {
    let server = ConformanceServer::start();
    let mut ws = websocket(&server).await;
    ws.send_text("40").await;
    expect_connect(&mut ws, "40").await;
    ws.recv().await; // auth
    ws.send_text("41").await;
    ws.expect_text("2").await;
    ws.send_text("3").await;
    // Events on the left namespace are a protocol error now.
    ws.send_text(r#"42["message",1]"#).await;
    assert_eq!(ws.recv().await, WsFrame::Closed);
}

#[actix_rt::test]
async fn leaving_custom_keeps_main_working() {
    let server = ConformanceServer::start();
    let mut ws = websocket(&server).await;
    ws.send_text("40").await;
    expect_connect(&mut ws, "40").await;
    ws.recv().await;
    ws.send_text("40/custom,").await;
    expect_connect(&mut ws, "40/custom,").await;
    ws.recv().await;
    ws.send_text("41/custom,").await;
    ws.send_text(r#"42["message","still here"]"#).await;
    assert_eq!(
        ws.recv_skipping_pings().await,
        WsFrame::Text(r#"42["message-back","still here"]"#.into())
    );
}

#[actix_rt::test]
async fn events_and_acks_echo_byte_for_byte() {
    let server = ConformanceServer::start();
    let mut ws = websocket(&server).await;
    ws.send_text("40").await;
    expect_connect(&mut ws, "40").await;
    ws.recv().await;
    ws.send_text(r#"42["message",1,"2",{"3":[true]}]"#).await;
    ws.expect_text(r#"42["message-back",1,"2",{"3":[true]}]"#)
        .await;
    ws.send_text(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#)
        .await;
    ws.expect_text(r#"43456[1,"2",{"3":[false]}]"#).await;
}

#[actix_rt::test]
async fn binary_events_and_acks_keep_their_attachments() {
    let server = ConformanceServer::start();
    let mut ws = websocket(&server).await;
    ws.send_text("40").await;
    expect_connect(&mut ws, "40").await;
    ws.recv().await;

    let placeholders = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;
    ws.send_text(&format!(r#"452-["message",{placeholders}]"#))
        .await;
    ws.send_binary(&[1, 2, 3]).await;
    ws.send_binary(&[4, 5, 6]).await;
    ws.expect_text(&format!(r#"452-["message-back",{placeholders}]"#))
        .await;
    assert_eq!(ws.recv().await, WsFrame::Binary(vec![1u8, 2, 3].into()));
    assert_eq!(ws.recv().await, WsFrame::Binary(vec![4u8, 5, 6].into()));

    ws.send_text(&format!(r#"452-789["message-with-ack",{placeholders}]"#))
        .await;
    ws.send_binary(&[7]).await;
    ws.send_binary(&[8, 9]).await;
    ws.expect_text(&format!(r#"462-789[{placeholders}]"#)).await;
    assert_eq!(ws.recv().await, WsFrame::Binary(vec![7u8].into()));
    assert_eq!(ws.recv().await, WsFrame::Binary(vec![8u8, 9].into()));
}

#[actix_rt::test]
async fn binary_over_polling_is_base64() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, SIO).await;
    session.send("40").await;
    session.receive().await;
    session
        .send("451-[\"message\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID")
        .await;
    assert_eq!(
        session.receive().await,
        "451-[\"message-back\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID"
    );
}

#[actix_rt::test]
async fn malformed_packets_after_connect_close_the_connection() {
    let server = ConformanceServer::start();
    for bad in [
        "47",
        "42{}",
        r#"42abc["message"]"#,
        "42[1]",
        "4",
        r#"452-["message"]"#,
    ] {
        let mut ws = websocket(&server).await;
        ws.send_text("40").await;
        expect_connect(&mut ws, "40").await;
        ws.recv().await;
        ws.send_text(bad).await;
        if bad.starts_with("452-") {
            // Waiting for attachments: a text packet now breaks the protocol.
            ws.send_text(r#"42["message"]"#).await;
        }
        assert_eq!(ws.recv().await, WsFrame::Closed, "after {bad:?}");
    }
}

#[actix_rt::test]
async fn fresh_connection_sends_nothing_but_pings() {
    let server = ConformanceServer::start();
    let (session, _) = Polling::open(&server, SIO).await;
    // The first thing the server volunteers is a ping, about 300 ms in.
    let started = Instant::now();
    assert_eq!(session.receive().await, "2");
    assert!(started.elapsed() >= Duration::from_millis(200));
}
