//! A TCP proxy between the server and its database, to take the database
//! away the ways it goes away in production: stopped (connections closed,
//! new ones dropped) or unreachable (nothing gets through, nothing is
//! closed, and what was sent arrives late once the network heals).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bytes flow both ways.
    Pass,
    /// Existing connections are closed and new ones dropped at once.
    Stopped,
    /// Nothing flows; bytes read meanwhile are held and sent on `Pass`.
    Partitioned,
}

struct Shared {
    mode: Mutex<Mode>,
    /// Both ends of every connection, to close them when stopping.
    streams: Mutex<Vec<TcpStream>>,
}

/// A proxy on `127.0.0.1` to `upstream`, running until the test ends.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            streams: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accepting.mode() == Mode::Stopped {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut streams = accepting.streams.lock().unwrap();
                    streams.push(client.try_clone().unwrap());
                    streams.push(server.try_clone().unwrap());
                }
                forward(
                    &accepting,
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                );
                forward(&accepting, server, client);
            }
        });
        Proxy { addr, shared }
    }

    /// The database stops: connections close, new ones are dropped.
    pub fn stop(&self) {
        self.shared.set(Mode::Stopped);
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The network to the database fails silently: connections stay open
    /// but nothing gets through until [`Proxy::pass`].
    pub fn partition(&self) {
        self.shared.set(Mode::Partitioned);
    }

    /// Back to normal; bytes held by a partition go through now.
    pub fn pass(&self) {
        self.shared.set(Mode::Pass);
    }
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

/// Copies `from` to `to` on a thread of its own, holding bytes back while
/// partitioned.
fn forward(shared: &Arc<Shared>, mut from: TcpStream, mut to: TcpStream) {
    let shared = shared.clone();
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while shared.mode() == Mode::Partitioned {
                thread::sleep(Duration::from_millis(10));
            }
            if shared.mode() == Mode::Stopped || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
