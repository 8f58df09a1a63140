//! Raw Engine.IO clients for protocol tests: long-polling over plain HTTP
//! and WebSocket frames, so tests send and check exact wire strings.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

/// The conformance server on a free loopback port.
pub struct ConformanceServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    handle: ServerHandle,
}

impl ConformanceServer {
    pub fn start() -> ConformanceServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = realtime::conformance::serve(vec![listener]).unwrap();
        let handle = server.handle();
        actix_rt::spawn(server);
        ConformanceServer { base, handle }
    }

    /// `http://…/PATH?EIO=4&transport=polling` plus `extra` query text.
    pub fn url(&self, path: &str, extra: &str) -> String {
        format!("{}{path}?{extra}", self.base)
    }
}

impl Drop for ConformanceServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_rt::spawn(async move { handle.stop(false).await });
    }
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

/// A request with an optional body; returns status and body text.
pub async fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let request = client().request(method, url);
    let mut response = match body {
        Some(body) => request
            .insert_header(("content-type", "text/plain;charset=UTF-8"))
            .send_body(body.to_owned())
            .await
            .unwrap(),
        None => request.send().await.unwrap(),
    };
    let status = response.status().as_u16();
    let body = response.body().limit(4 * 1024 * 1024).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A polling session on `path` (`/engine.io/` or `/socket.io/`).
pub struct Polling {
    pub sid: String,
    url: String,
}

impl Polling {
    /// Opens a session; returns it with the open packet's JSON.
    pub async fn open(server: &ConformanceServer, path: &str) -> (Polling, serde_json::Value) {
        let (status, body) = http("GET", &server.url(path, "EIO=4&transport=polling"), None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with('0'), "{body}");
        let open: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
        let sid = open["sid"].as_str().unwrap().to_owned();
        let url = server.url(path, &format!("EIO=4&transport=polling&sid={sid}"));
        (Polling { sid, url }, open)
    }

    pub async fn get(&self) -> (u16, String) {
        http("GET", &self.url, None).await
    }

    pub async fn post(&self, body: &str) -> (u16, String) {
        http("POST", &self.url, Some(body)).await
    }

    /// POSTs and asserts `ok`.
    pub async fn send(&self, body: &str) {
        assert_eq!(self.post(body).await, (200, "ok".to_owned()));
    }

    /// GETs and asserts 200.
    pub async fn receive(&self) -> String {
        let (status, body) = self.get().await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// What a WebSocket client read.
#[derive(Debug, PartialEq, Eq)]
pub enum WsFrame {
    Text(String),
    Binary(Bytes),
    Closed,
}

/// A raw WebSocket client.
pub struct WsClient {
    conn: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
}

impl WsClient {
    /// Connects, or returns the HTTP status the server refused with.
    pub async fn connect(url: &str) -> Result<WsClient, Option<u16>> {
        let url = url.replacen("http://", "ws://", 1);
        match client()
            .ws(url)
            .max_frame_size(4 * 1024 * 1024)
            .connect()
            .await
        {
            Ok((_response, conn)) => Ok(WsClient { conn }),
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                Err(Some(status.as_u16()))
            }
            Err(_) => Err(None),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.conn
            .send(ws::Message::Text(text.into()))
            .await
            .unwrap();
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.conn
            .send(ws::Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .unwrap();
    }

    /// The next text or binary frame within `timeout`; `Closed` when the
    /// server closed; panics on timeout.
    pub async fn recv_within(&mut self, timeout: Duration) -> WsFrame {
        loop {
            let next = tokio::time::timeout(timeout, self.conn.next())
                .await
                .expect("no frame in time");
            match next {
                Some(Ok(ws::Frame::Text(text))) => {
                    return WsFrame::Text(String::from_utf8(text.to_vec()).unwrap())
                }
                Some(Ok(ws::Frame::Binary(bytes))) => return WsFrame::Binary(bytes),
                Some(Ok(ws::Frame::Ping(_) | ws::Frame::Pong(_) | ws::Frame::Continuation(_))) => {
                    continue
                }
                Some(Ok(ws::Frame::Close(_))) | Some(Err(_)) | None => return WsFrame::Closed,
            }
        }
    }

    pub async fn recv(&mut self) -> WsFrame {
        self.recv_within(Duration::from_secs(5)).await
    }

    /// Reads frames, answering pings with pongs, until one that is not a
    /// ping arrives.
    pub async fn recv_skipping_pings(&mut self) -> WsFrame {
        loop {
            match self.recv().await {
                WsFrame::Text(text) if text == "2" => self.send_text("3").await,
                other => return other,
            }
        }
    }

    /// Asserts the next frame is this text.
    pub async fn expect_text(&mut self, expected: &str) {
        assert_eq!(self.recv().await, WsFrame::Text(expected.to_owned()));
    }
}

/// A raw Socket.IO client over a WebSocket, connected to namespace `/`.
pub struct SioClient {
    pub ws: WsClient,
    /// The Engine.IO session id.
    pub sid: String,
    next_ack: u64,
    /// The CONNECT answer's data: `{"sid": …, "pid"?: …}`.
    pub answer: serde_json::Value,
}

impl SioClient {
    /// Connects to `base` with the CONNECT auth object `auth`; panics if
    /// the server refuses.
    pub async fn connect(base: &str, auth: serde_json::Value) -> SioClient {
        let mut ws = WsClient::connect(&format!("{base}/socket.io/?EIO=4&transport=websocket"))
            .await
            .expect("websocket refused");
        let sid = match ws.recv().await {
            WsFrame::Text(open) if open.starts_with('0') => {
                let open: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
                open["sid"].as_str().unwrap().to_owned()
            }
            other => panic!("no open packet: {other:?}"),
        };
        ws.send_text(&format!("40{auth}")).await;
        let answer = match ws.recv().await {
            WsFrame::Text(answer) if answer.starts_with("40{") => {
                serde_json::from_str(&answer[2..]).unwrap()
            }
            other => panic!("connect refused: {other:?}"),
        };
        SioClient {
            ws,
            sid,
            answer,
            next_ack: 1,
        }
    }

    /// Emits `event` with one argument and waits for its ack (skipping any
    /// events that arrive first).
    pub async fn call(&mut self, event: &str, arg: serde_json::Value) -> serde_json::Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws
            .send_text(&format!("42{id}{}", serde_json::json!([event, arg])))
            .await;
        let prefix = format!("43{id}");
        loop {
            match self.ws.recv_skipping_pings().await {
                WsFrame::Text(text) if text.starts_with(&prefix) => {
                    let args: serde_json::Value =
                        serde_json::from_str(&text[prefix.len()..]).unwrap();
                    return args[0].clone();
                }
                WsFrame::Text(_) => continue,
                other => panic!("no ack for {event}: {other:?}"),
            }
        }
    }

    /// Emits without asking for an ack.
    pub async fn emit(&mut self, event: &str, arg: serde_json::Value) {
        self.ws
            .send_text(&format!("42{}", serde_json::json!([event, arg])))
            .await;
    }

    /// Every text frame until the connection closes (pings answered
    /// along the way are not included); panics if it stays open `within`.
    pub async fn frames_until_closed(&mut self, within: Duration) -> Vec<String> {
        let mut frames = Vec::new();
        loop {
            match self.ws.recv_within(within).await {
                WsFrame::Text(text) => frames.push(text),
                WsFrame::Binary(_) => {}
                WsFrame::Closed => return frames,
            }
        }
    }

    /// The next event as `(name, first argument)`, or `None` once closed.
    pub async fn next_event(&mut self) -> Option<(String, serde_json::Value)> {
        loop {
            match self.ws.recv_skipping_pings().await {
                WsFrame::Text(text) if text.starts_with("42") => {
                    let array: serde_json::Value = serde_json::from_str(&text[2..]).unwrap();
                    return Some((array[0].as_str().unwrap().to_owned(), array[1].clone()));
                }
                WsFrame::Text(_) | WsFrame::Binary(_) => continue,
                WsFrame::Closed => return None,
            }
        }
    }
}
