//! Acks from server to client: a handler emits with an ack id and gets the
//! client's ACK (and BINARY_ACK) back.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::App;
use common::wire::{WsClient, WsFrame};
use realtime::engineio::upgrade::{self, HttpOptions, UpgradeRoutes};
use realtime::engineio::{transport, EngineConfig, EngineServer};
use realtime::socketio::{
    Admission, Event, Refusal, Socket, SocketHandler, SocketIo, SocketIoConfig,
};
use serde_json::{json, Value};

/// Asks the client a question on connect and reports the answer.
struct Asker {
    asked: Option<u64>,
}

impl SocketHandler for Asker {
    type Event = ();

    fn accepts_namespace(&self, namespace: &str) -> bool {
        namespace == "/"
    }

    fn on_connect(
        &mut self,
        _: &mut Socket<'_, '_, Self>,
        _: &str,
        _: Option<&Value>,
    ) -> Result<Admission, Refusal> {
        Ok(Admission::Now { pid: None })
    }

    fn on_connected(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        namespace: &str,
        _: Option<Value>,
    ) {
        self.asked =
            Some(socket.emit_with_ack(namespace, "question", vec![json!("six times seven?")]));
    }

    fn on_event(&mut self, _: &mut Socket<'_, '_, Self>, _: &str, _: Event) {}

    fn on_ack(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        namespace: &str,
        ack_id: u64,
        args: Vec<Value>,
        attachments: Vec<bytes::Bytes>,
    ) {
        let expected = self.asked == Some(ack_id);
        let sizes: Vec<usize> = attachments.iter().map(|a| a.len()).collect();
        socket.emit(
            namespace,
            "answered",
            vec![json!({ "expected": expected, "args": args, "attachments": sizes })],
        );
    }
}

#[actix_rt::test]
async fn server_emits_with_ack_and_receives_the_answer() {
    let config = EngineConfig {
        ping_interval: Duration::from_secs(10),
        ping_timeout: Duration::from_secs(10),
        max_payload: 100_000,
        max_buffered_packets: 64,
        cors_origins: vec![],
        polling_rate: 0,
        node_tag: None,
    };
    let engine = EngineServer::new(config, |_| {
        SocketIo::new(
            Asker { asked: None },
            SocketIoConfig {
                connect_timeout: Duration::from_secs(5),
                max_attachment_bytes: 100_000,
            },
        )
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = UpgradeRoutes::default().engine("/socket.io/", engine.clone());
    let app = move || App::new().configure(transport::configure("/socket.io/", engine.clone()));
    let options = HttpOptions {
        workers: 1,
        shutdown_timeout: Duration::from_secs(1),
    };
    let server = upgrade::serve(app, routes, vec![listener], &options).unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);

    let mut ws = WsClient::connect(&format!("{base}/socket.io/?EIO=4&transport=websocket"))
        .await
        .unwrap();
    ws.recv().await;
    ws.send_text("40").await;
    assert!(matches!(ws.recv().await, WsFrame::Text(text) if text.starts_with("40{")));
    ws.expect_text(r#"420["question","six times seven?"]"#)
        .await;
    ws.send_text("430[42]").await;
    ws.expect_text(r#"42["answered",{"expected":true,"args":[42],"attachments":[]}]"#)
        .await;
    // A binary answer (to an id the server never used) keeps its attachment.
    ws.send_text(r#"461-9[{"_placeholder":true,"num":0}]"#)
        .await;
    ws.send_binary(&[1, 2]).await;
    ws.expect_text(
        r#"42["answered",{"expected":false,"args":[{"_placeholder":true,"num":0}],"attachments":[2]}]"#,
    )
    .await;
    handle.stop(false).await;
}
