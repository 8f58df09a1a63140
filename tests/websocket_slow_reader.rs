//! A WebSocket client that stops reading must not keep its connection (and
//! its file descriptor) open on the server forever: once its queue
//! overflows, the session closes, and the socket goes within the close
//! linger even though the server's last write can never finish.
//!
//! Alone in its test binary: it counts this process's open descriptors.

mod common;

use std::time::{Duration, Instant};

use common::wire::ConformanceServer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A masked client text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 127];
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as is
    out.extend_from_slice(payload);
    out
}

#[actix_rt::test]
async fn a_client_that_never_reads_loses_its_connection() {
    let server = ConformanceServer::start();
    // Let the server's listener and workers settle before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_descriptors();

    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {address}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The client and the server's end of the connection.
    wait_for(|| open_descriptors() == before + 2, "the server to accept").await;

    // Ask for echoes of 64 KiB messages and never read them: the socket
    // buffers fill, then the session's queue (1,024 frames here). The
    // flood stops when the server drops the connection.
    let message = text_frame(&[b'4'; 64 * 1024]);
    let flood = async {
        for _ in 0..5_000 {
            if stream.write_all(&message).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = flood => {}
        () = wait_for(
            || open_descriptors() == before + 1,
            "the server to drop the connection of a client that stopped reading",
        ) => {}
    }
}

/// Polls `done` until it holds; panics after 30 s.
async fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
