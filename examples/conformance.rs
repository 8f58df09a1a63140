//! The protocol conformance server (`../shared/CONFORMANCE.md`) on port
//! 3000, IPv4 and IPv6:
//!
//! ```sh
//! cargo run --release --example conformance
//! ```
//!
//! `--port N` picks another port (0 for any free one); the first line on
//! standard output names the port actually used.

use std::net::TcpListener;

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = match args.iter().position(|arg| arg == "--port") {
        Some(index) => args
            .get(index + 1)
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| std::io::Error::other("--port takes a port number"))?,
        None => 3000,
    };
    let ipv4 = TcpListener::bind(("127.0.0.1", port))?;
    let port = ipv4.local_addr()?.port();
    let mut listeners = vec![ipv4];
    // `localhost` may resolve to ::1; serve it too where IPv6 exists.
    match TcpListener::bind(("::1", port)) {
        Ok(listener) => listeners.push(listener),
        Err(err) => eprintln!("conformance: not listening on [::1]:{port}: {err}"),
    }
    println!("conformance server listening on port {port} (/engine.io/, /socket.io/)");
    actix_web::rt::System::new().block_on(realtime::conformance::serve(listeners)?)
}
