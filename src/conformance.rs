//! The protocol conformance server of `../shared/CONFORMANCE.md`: the
//! product's own Engine.IO and Socket.IO layers with the fixed settings and
//! echo handlers that the public protocol test suites expect.
//!
//! - `/engine.io/`: bare Engine.IO; every message is echoed, text as text,
//!   binary as binary.
//! - `/socket.io/`: Socket.IO with namespaces `/` and `/custom`; both send
//!   `auth` back on connect; `/` echoes `message` as `message-back` and
//!   acknowledges `message-with-ack` with its own arguments.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse};
use serde_json::{json, Value};

use crate::engineio::upgrade::{self, HttpOptions, UpgradeRoutes};
use crate::engineio::{
    self, CloseReason, EngineConfig, EngineHandler, EngineServer, Link, Message,
};
use crate::protocol::engineio::Frame;
use crate::socketio::{Admission, Event, Refusal, Socket, SocketHandler, SocketIo, SocketIoConfig};

/// The settings the suites check: 300 / 200 ms heartbeat, 1e6 bytes.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        node_tag: None,
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        max_buffered_packets: 1024,
        cors_origins: vec!["*".to_owned()],
        polling_rate: 0,
    }
}

/// A 1000 ms connect timeout.
pub fn socketio_config() -> SocketIoConfig {
    SocketIoConfig {
        connect_timeout: Duration::from_millis(1000),
        max_attachment_bytes: 1_000_000,
    }
}

/// Echoes every Engine.IO message to its sender.
pub struct Echo;

impl EngineHandler for Echo {
    type Event = ();

    fn on_open(&mut self, _link: &mut Link<'_, Self>) {}

    fn on_message(&mut self, link: &mut Link<'_, Self>, message: Message) {
        let frame = match message {
            Message::Text(text) => Frame::message(&text),
            Message::Binary(bytes) => Frame::Binary(bytes),
        };
        link.send(frame);
    }

    fn on_event(&mut self, _link: &mut Link<'_, Self>, _event: ()) {}

    fn on_close(&mut self, _link: &mut Link<'_, Self>, _reason: CloseReason) {}
}

/// The Socket.IO handlers of the suites.
pub struct EchoSocket;

impl SocketHandler for EchoSocket {
    type Event = ();

    fn accepts_namespace(&self, namespace: &str) -> bool {
        matches!(namespace, "/" | "/custom")
    }

    fn on_connect(
        &mut self,
        _socket: &mut Socket<'_, '_, Self>,
        _namespace: &str,
        _auth: Option<&Value>,
    ) -> Result<Admission, Refusal> {
        Ok(Admission::Now { pid: None })
    }

    fn on_connected(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        namespace: &str,
        auth: Option<Value>,
    ) {
        socket.emit(namespace, "auth", vec![auth.unwrap_or_else(|| json!({}))]);
    }

    fn on_event(&mut self, socket: &mut Socket<'_, '_, Self>, namespace: &str, event: Event) {
        if namespace != "/" {
            return;
        }
        match (event.name.as_str(), event.ack_id) {
            ("message", _) => {
                socket.emit_binary(namespace, "message-back", event.args, event.attachments);
            }
            ("message-with-ack", Some(ack_id)) => {
                socket.ack_binary(namespace, ack_id, event.args, event.attachments);
            }
            _ => {}
        }
    }
}

/// Serves both endpoints on `listeners` (port 3000 on IPv4 and IPv6 for the
/// suites; any port in tests). Other paths get 404.
///
/// # Errors
/// A listener cannot be used.
pub fn serve(listeners: Vec<TcpListener>) -> std::io::Result<Server> {
    let engine = EngineServer::new(engine_config(), |_| Echo);
    let socket = EngineServer::new(engine_config(), |_| {
        SocketIo::new(EchoSocket, socketio_config())
    });
    let routes = UpgradeRoutes::default()
        .engine("/engine.io/", engine.clone())
        .engine("/socket.io/", socket.clone());
    let app = move || {
        App::new()
            .configure(engineio::transport::configure(
                "/engine.io/",
                engine.clone(),
            ))
            .configure(engineio::transport::configure(
                "/socket.io/",
                socket.clone(),
            ))
            .default_service(web::to(HttpResponse::NotFound))
    };
    let options = HttpOptions {
        workers: 2,
        shutdown_timeout: Duration::from_secs(1),
    };
    upgrade::serve(app, routes, listeners, &options)
}
