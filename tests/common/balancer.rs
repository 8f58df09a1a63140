//! A layer-4 load balancer in front of several server processes: each
//! TCP connection goes to the next server in turn, or, sticky, always to
//! the server its client address hashes to (nginx's `ip_hash`; every test
//! client is 127.0.0.1, so one server).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

/// A balancer on `127.0.0.1`, running until the test ends.
pub struct Balancer {
    pub addr: SocketAddr,
}

impl Balancer {
    pub fn start(upstreams: Vec<SocketAddr>, sticky: bool) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let index = if sticky {
                    match client.peer_addr().unwrap().ip() {
                        std::net::IpAddr::V4(ip) => ip.octets().iter().map(|b| *b as usize).sum(),
                        std::net::IpAddr::V6(ip) => ip.octets().iter().map(|b| *b as usize).sum(),
                    }
                } else {
                    next.fetch_add(1, Ordering::Relaxed)
                };
                let Ok(server) = TcpStream::connect(upstreams[index % upstreams.len()]) else {
                    continue;
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Balancer { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
