//! A real webhook receiver on loopback: an actix-web server that records
//! every request and answers as each path says:
//! - `/ok…`: 200;
//! - `/fail…`: 500;
//! - `/hang…`: holds the request (until the client gives up);
//! - `/paused…`: holds requests while paused, then answers 200.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// The client's port: requests on one kept-alive connection share it.
    pub peer_port: u16,
    /// Lowercase header names.
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    paused: AtomicBool,
}

/// A running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub port: u16,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

impl Receiver {
    /// Starts on a free loopback port.
    pub fn start() -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// Starts on `port` (one that was free a moment ago).
    pub fn start_on_port(port: u16) -> Receiver {
        Self::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap())
    }

    fn start_on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let state = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver {
            base: format!("http://127.0.0.1:{port}"),
            port,
            shared,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Requests to `path`.
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }

    /// Holds (or releases) requests to `/paused…`.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn receive(req: HttpRequest, body: Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let path = req.path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    shared.received.lock().unwrap().push(Received {
        path: path.clone(),
        peer_port: req.peer_addr().map(|addr| addr.port()).unwrap_or(0),
        headers,
        body,
    });
    if path.starts_with("/fail") {
        return HttpResponse::InternalServerError().finish();
    }
    if path.starts_with("/hang") {
        actix_rt::time::sleep(Duration::from_secs(60)).await;
    }
    while path.starts_with("/paused") && shared.paused.load(Ordering::SeqCst) {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    HttpResponse::Ok().body("ok")
}
