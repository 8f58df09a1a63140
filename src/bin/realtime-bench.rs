//! `realtime-bench`: a load generator for any server with the realtime
//! Socket.IO contract (this one, or the Node peer in `benchmarks/`).
//!
//! It speaks WebSocket and Engine.IO/Socket.IO itself, with a small frame
//! reader that checks sequence numbers and latency without parsing whole
//! JSON, so that it can keep up with the server it measures. Progress goes
//! to stderr; one JSON result line goes to stdout.
//!
//! ```text
//! realtime-bench fanout  --subscribers 1000 --messages 2000 --payload 100
//! realtime-bench publish --publishers 16 --seconds 10
//! realtime-bench conns   --connections 15000 --sources 4 --server-pid PID
//! realtime-bench webhooks --channels 100 --receiver ok
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "realtime-bench",
    about = "Load generator for the realtime Socket.IO contract"
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Clone)]
struct Target {
    /// Server address (loopback only: this is a load test).
    #[arg(long, global = true, default_value = "127.0.0.1:7130")]
    server: SocketAddr,
    /// CONNECT auth token (an anon_ key or a JWT).
    #[arg(
        long,
        global = true,
        default_value = "anon_dev_only_insecure_change_me"
    )]
    token: String,
    /// Give each connection of `conns` and `fanout` a user of its own: an
    /// `authenticated` JWT signed with this secret, whose `sub` is a uuid
    /// made from the connection's index (instead of `--token`).
    #[arg(long, global = true)]
    users_jwt_secret: Option<String>,
    /// Admin key used to create the bench channel pattern (`bench:%`).
    #[arg(long, global = true, default_value = "ik_dev_only_insecure_change_me")]
    api_key: String,
    /// Do not create the channel pattern (servers without the REST API).
    #[arg(long, global = true)]
    no_setup: bool,
    /// Create the bench channel pattern as an ephemeral channel (delivered
    /// live, never stored): run against a fresh server.
    #[arg(long, global = true)]
    ephemeral: bool,
    /// Runtime threads for the generator.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Give up after this many seconds.
    #[arg(long, global = true, default_value_t = 120)]
    timeout: u64,
}

#[derive(Subcommand)]
enum Mode {
    /// S subscribers, P publishers, M messages: deliveries/s, loss, order, latency.
    Fanout(FanoutArgs),
    /// K publishers asking for acks for T seconds: durable publishes/s.
    Publish(PublishArgs),
    /// N idle subscribed connections: server memory per connection, connect rate.
    Conns(ConnsArgs),
    /// Acked publishes to channels with a webhook URL served by a local
    /// receiver: webhook POSTs/s, and what they cost publishes.
    Webhooks(WebhooksArgs),
}

#[derive(Args)]
struct WebhooksArgs {
    #[command(flatten)]
    publish: PublishArgs,
    /// Channels (each with the receiver's URL); publishers spread over them.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// How the receiver answers: `ok` (200 at once), `hang` (accepts and
    /// never answers), `refuse` (nothing listens), or `none` (the same
    /// channels without webhook URLs: the baseline).
    #[arg(long, default_value = "ok")]
    receiver: String,
    /// After publishing, wait this long at most for the webhooks to arrive.
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
}

#[derive(Args)]
struct FanoutArgs {
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Channels; subscribers and publishers spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Messages in all (split over the publishers).
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Messages per second in all; 0 for as fast as they go.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Bytes of padding in each payload.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Publishers connect to this server instead (another node of the
    /// same cluster: fan-out across nodes).
    #[arg(long)]
    publish_server: Option<SocketAddr>,
    /// The server's process id: reports the CPU it spent from the first
    /// publish to the last delivery (`server_cpu_seconds`), without the
    /// connects and subscribes before.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Publishes in flight per publisher.
    #[arg(long, default_value_t = 32)]
    window: usize,
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

#[derive(Args)]
struct ConnsArgs {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Source addresses 127.0.0.1 … 127.0.0.N, to pass the ephemeral-port limit.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// The server's pid, to read its RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Channels the connections spread over (presence grows with their size).
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Open only the WebSocket (Engine.IO open packet), without Socket.IO
    /// CONNECT or subscribe: the transport's own cost.
    #[arg(long)]
    websocket_only: bool,
    /// Hold the connections this long before measuring memory.
    #[arg(long, default_value_t = 2)]
    settle_seconds: u64,
    /// Then list every live channel actor through the admin API
    /// (`GET /api/realtime/actors?limit=CHANNELS`) this many times, timed.
    #[arg(long, default_value_t = 0)]
    inspect_rounds: usize,
}

fn main() {
    let cli = Cli::parse();
    if !cli.target.server.ip().is_loopback() {
        eprintln!("realtime-bench: only loopback servers may be load-tested");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.target.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let target = cli.target.clone();
    let result = runtime.block_on(async move {
        let deadline = Duration::from_secs(target.timeout);
        let run = async {
            match cli.mode {
                Mode::Fanout(args) => fanout(&target, args).await,
                Mode::Publish(args) => publish(&target, args).await,
                Mode::Conns(args) => conns(&target, args).await,
                Mode::Webhooks(args) => webhooks(&target, args).await,
            }
        };
        tokio::time::timeout(deadline, run)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {} s", target.timeout)))
    });
    match result {
        Ok(report) => println!("{report}"),
        Err(err) => {
            eprintln!("realtime-bench: {err}");
            std::process::exit(1);
        }
    }
}

/// Nanoseconds since the run started; carried in payloads for latency.
fn clock() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------- WebSocket

/// The read side of a minimal WebSocket client (server frames are never
/// masked; fragments are not used by the servers measured).
struct WsReader {
    read: OwnedReadHalf,
    buffer: Vec<u8>,
    start: usize,
}

type WsWriter = Arc<Mutex<OwnedWriteHalf>>;

/// Binds `socket` to `ip` with a port of our choosing. Binding to port 0
/// makes the kernel search its ephemeral range for a free port, which grows
/// slow as thousands are taken and made the generator, not the server, the
/// limit of `conns`; explicit ports below that range cost nothing to find.
fn bind_source(socket: &TcpSocket, ip: IpAddr) -> Result<(), String> {
    const FIRST_PORT: u32 = 10_000;
    const N_PORTS: u32 = 22_000; // up to 31999, below the ephemeral range
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| std::sync::atomic::AtomicU32::new(rand::random::<u32>()));
    let mut last_error = None;
    for _ in 0..1000 {
        let port = FIRST_PORT + next.fetch_add(1, Ordering::Relaxed) % N_PORTS;
        match socket.bind(SocketAddr::new(ip, port as u16)) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(err),
            Err(err) => return Err(format!("bind {ip}: {err}")),
        }
    }
    Err(format!("bind {ip}: no free port ({last_error:?})"))
}

async fn ws_connect(
    target: &Target,
    source: Option<IpAddr>,
) -> Result<(WsReader, WsWriter), String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        bind_source(&socket, ip)?;
    }
    let stream = socket
        .connect(target.server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let (read, mut write) = stream.into_split();
    let request = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.server
    );
    write
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = WsReader {
        read,
        buffer: Vec::with_capacity(16 * 1024),
        start: 0,
    };
    loop {
        if let Some(end) = find(&reader.buffer, b"\r\n\r\n") {
            if !reader.buffer.starts_with(b"HTTP/1.1 101") {
                return Err(format!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(&reader.buffer[..end])
                ));
            }
            reader.start = end + 4;
            break;
        }
        reader.fill().await?;
    }
    Ok((reader, Arc::new(Mutex::new(write))))
}

impl WsReader {
    async fn fill(&mut self) -> Result<(), String> {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        let len = self.buffer.len();
        self.buffer.resize(len + 64 * 1024, 0);
        let n = self
            .read
            .read(&mut self.buffer[len..])
            .await
            .map_err(|e| e.to_string());
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buffer.truncate(len);
                return Err(e);
            }
        };
        self.buffer.truncate(len + n);
        if n == 0 {
            return Err("connection closed".into());
        }
        Ok(())
    }

    /// The next text frame's payload (other frames are skipped); `None`
    /// when the server closed.
    async fn next_text(&mut self) -> Option<&[u8]> {
        loop {
            match frame_bounds(&self.buffer[self.start..]) {
                Some((opcode, header, len)) => {
                    let begin = self.start + header;
                    self.start = begin + len;
                    match opcode {
                        0x1 => return Some(&self.buffer[begin..begin + len]),
                        0x8 => return None,
                        _ => continue,
                    }
                }
                None => {
                    if self.fill().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

/// `(opcode, header length, payload length)` of a complete frame at the
/// start of `bytes`.
fn frame_bounds(bytes: &[u8]) -> Option<(u8, usize, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let opcode = bytes[0] & 0x0f;
    let (len, header) = match bytes[1] & 0x7f {
        126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        127 if bytes.len() >= 10 => (
            u64::from_be_bytes(bytes[2..10].try_into().ok()?) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (bytes.len() >= header + len).then_some((opcode, header, len))
}

/// Writes one masked text frame (a zero mask: valid, and no XOR needed).
async fn ws_send(writer: &WsWriter, text: &[u8]) -> Result<(), String> {
    let mut frame = Vec::with_capacity(text.len() + 14);
    frame.push(0x81);
    match text.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text);
    writer
        .lock()
        .await
        .write_all(&frame)
        .await
        .map_err(|e| e.to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The unsigned number after `key` (for example `"n":`) in `text`.
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(text, key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

// ----------------------------------------------------------- Socket.IO bits

/// Opens a Socket.IO connection and subscribes it to `channel`.
async fn join(
    target: &Target,
    channel: &str,
    source: Option<IpAddr>,
) -> Result<(WsReader, WsWriter), String> {
    let (mut reader, writer) = open_only(target, source).await?;
    let connect = format!("40{}", json!({ "token": target.token }));
    ws_send(&writer, connect.as_bytes()).await?;
    loop {
        match reader.next_text().await {
            Some(answer) if answer.starts_with(b"40") => break,
            // socketioxide pings as soon as the transport opens.
            Some(b"2") => ws_send(&writer, b"3").await?,
            Some(answer) => {
                return Err(format!(
                    "connect refused: {}",
                    String::from_utf8_lossy(answer)
                ))
            }
            None => return Err("closed during connect".into()),
        }
    }
    let subscribe = format!(
        "420{}",
        json!(["realtime:subscribe", { "channel": channel }])
    );
    ws_send(&writer, subscribe.as_bytes()).await?;
    loop {
        match reader.next_text().await {
            Some(ack) if ack.starts_with(b"430") => {
                if find(ack, b"\"ok\":true").is_none() {
                    return Err(format!(
                        "subscribe refused: {}",
                        String::from_utf8_lossy(ack)
                    ));
                }
                return Ok((reader, writer));
            }
            Some(b"2") => ws_send(&writer, b"3").await?,
            Some(_) => continue,
            None => return Err("closed during subscribe".into()),
        }
    }
}

async fn setup_channel(target: &Target) -> Result<(), String> {
    if target.no_setup {
        return Ok(());
    }
    if target.ephemeral {
        return create_channel(target, r#"{"pattern":"bench:%","ephemeral":true}"#).await;
    }
    create_channel(target, r#"{"pattern":"bench:%"}"#).await
}

/// Creates a channel with the JSON `body` through the REST API; an existing
/// pattern (409) is fine.
async fn create_channel(target: &Target, body: &str) -> Result<(), String> {
    let (status, response) = http_request(target, "POST", "/api/realtime/channels", body).await?;
    if status == 201 || status == 409 {
        Ok(())
    } else {
        Err(format!(
            "could not create channel {body}: {status} {}",
            String::from_utf8_lossy(&response)
        ))
    }
}

/// One HTTP/1.1 request with the admin key on a connection of its own;
/// the status and the body.
async fn http_request(
    target: &Target,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    let stream = socket
        .connect(target.server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nx-api-key: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        target.server,
        target.api_key,
        body.len()
    );
    writer
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    reader
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let status = std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body_at = find(&response, b"\r\n\r\n").map_or(response.len(), |at| at + 4);
    Ok((status, response[body_at..].to_vec()))
}

/// Opens a WebSocket and reads the Engine.IO open packet, nothing more.
async fn open_only(
    target: &Target,
    source: Option<IpAddr>,
) -> Result<(WsReader, WsWriter), String> {
    let (mut reader, writer) = ws_connect(target, source).await?;
    match reader.next_text().await {
        Some(open) if open.starts_with(b"0") => Ok((reader, writer)),
        _ => Err("no open packet".into()),
    }
}

/// Opens `n` connections, `concurrency` at a time: subscribed, or only
/// opened when `websocket_only`.
async fn join_many(
    target: &Target,
    n: usize,
    concurrency: usize,
    channel_of: impl Fn(usize) -> String,
    source_of: impl Fn(usize) -> Option<IpAddr>,
    websocket_only: bool,
) -> Result<Vec<(WsReader, WsWriter)>, String> {
    let mut joined = Vec::with_capacity(n);
    let mut index = 0;
    let mut last_report = Instant::now();
    while index < n {
        let batch = concurrency.min(n - index);
        let tasks: Vec<_> = (index..index + batch)
            .map(|i| {
                let mut target = target.clone();
                if let Some(secret) = &target.users_jwt_secret {
                    target.token = user_token(secret, i);
                }
                let channel = channel_of(i);
                let source = source_of(i);
                tokio::spawn(async move {
                    if websocket_only {
                        open_only(&target, source).await
                    } else {
                        join(&target, &channel, source).await
                    }
                })
            })
            .collect();
        for task in tasks {
            joined.push(task.await.map_err(|e| e.to_string())??);
        }
        index += batch;
        if last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("connected and subscribed {index}/{n}");
            last_report = Instant::now();
        }
    }
    Ok(joined)
}

/// An `authenticated` JWT for the user of connection `i`, whose `sub` is
/// `00000000-0000-4000-8000-<i>`.
fn user_token(secret: &str, i: usize) -> String {
    let settings = realtime::config::AuthSettings {
        jwt_secret: secret.to_owned(),
        api_keys: Vec::new(),
        anon_keys: Vec::new(),
        require_exp: false,
        leeway_seconds: 0,
        disconnect_on_expiry: false,
    };
    let sub = format!("00000000-0000-4000-8000-{i:012}");
    realtime::auth::Authenticator::new(&settings).mint(
        realtime::auth::Role::Authenticated,
        &sub,
        None,
        3600,
    )
}

fn percentiles(mut values: Vec<u64>) -> serde_json::Value {
    if values.is_empty() {
        return json!(null);
    }
    values.sort_unstable();
    let at = |q: f64| values[(((values.len() - 1) as f64) * q).round() as usize];
    json!({
        "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p99.9": at(0.999), "max": values[values.len() - 1],
    })
}

/// Keeps a connection drained (answering pings) until `stop`.
fn drain(mut reader: WsReader, writer: WsWriter) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(text) = reader.next_text().await {
            if text == b"2" && ws_send(&writer, b"3").await.is_err() {
                return;
            }
        }
    })
}

// ------------------------------------------------------------------ fanout

struct SubscriberStats {
    received: u64,
    duplicated: u64,
    out_of_order: u64,
    latencies_us: Vec<u64>,
    last_at: u64,
}

async fn fanout(target: &Target, args: FanoutArgs) -> Result<String, String> {
    setup_channel(target).await?;
    let channel_of = |i: usize| format!("bench:{}", i % args.channels.max(1));
    let started = Instant::now();
    let subscribers = join_many(
        target,
        args.subscribers,
        args.connect_concurrency,
        channel_of,
        |_| None,
        false,
    )
    .await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    eprintln!("{} subscribers in {connect_seconds:.2} s", args.subscribers);
    let publish_target = Target {
        server: args.publish_server.unwrap_or(target.server),
        ..target.clone()
    };
    if !publish_target.server.ip().is_loopback() {
        return Err("--publish-server must be a loopback address".into());
    }
    let publishers = join_many(
        &publish_target,
        args.publishers,
        args.connect_concurrency,
        channel_of,
        |_| None,
        false,
    )
    .await?;

    let n_channels = args.channels.max(1);
    let per_publisher = args.messages / args.publishers.max(1);
    // Every subscriber of channel c expects the messages of the publishers of c.
    let expected_for = |channel: usize| {
        (0..args.publishers)
            .filter(|p| p % n_channels == channel)
            .count() as u64
            * per_publisher as u64
    };
    let received_total = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for (index, (mut reader, writer)) in subscribers.into_iter().enumerate() {
        let expected = expected_for(index % n_channels);
        let n_publishers = args.publishers;
        let received_total = received_total.clone();
        readers.push(tokio::spawn(async move {
            let mut stats = SubscriberStats {
                received: 0,
                duplicated: 0,
                out_of_order: 0,
                latencies_us: Vec::with_capacity(expected as usize),
                last_at: 0,
            };
            let mut next = vec![0u64; n_publishers];
            while stats.received < expected {
                let Some(text) = reader.next_text().await else {
                    break;
                };
                if text == b"2" {
                    let _ = ws_send(&writer, b"3").await;
                    continue;
                }
                if !text.starts_with(b"42[\"b\"") {
                    continue;
                }
                let now = clock();
                let (Some(s), Some(n), Some(t)) = (
                    number_after(text, b"\"s\":"),
                    number_after(text, b"\"n\":"),
                    number_after(text, b"\"t\":"),
                ) else {
                    continue;
                };
                let expected_n = &mut next[s as usize % n_publishers];
                match n.cmp(expected_n) {
                    std::cmp::Ordering::Equal => *expected_n += 1,
                    std::cmp::Ordering::Less => stats.duplicated += 1,
                    std::cmp::Ordering::Greater => {
                        stats.out_of_order += 1;
                        *expected_n = n + 1;
                    }
                }
                stats.received += 1;
                stats.latencies_us.push(now.saturating_sub(t) / 1000);
                stats.last_at = now;
                received_total.fetch_add(1, Ordering::Relaxed);
            }
            (stats, expected)
        }));
    }
    let mut drains = Vec::new();
    let mut writers = Vec::new();
    for (reader, writer) in publishers {
        writers.push(writer.clone());
        drains.push(drain(reader, writer));
    }

    let expected_total: u64 = (0..args.subscribers)
        .map(|i| expected_for(i % n_channels))
        .sum();
    let progress = {
        let received_total = received_total.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "delivered {}/{expected_total}",
                    received_total.load(Ordering::Relaxed)
                );
            }
        })
    };

    let padding = "x".repeat(args.payload);
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let send_started = clock();
    let rate_per_publisher = args.rate as f64 / args.publishers.max(1) as f64;
    let mut publishing = Vec::new();
    for (p, writer) in writers.into_iter().enumerate() {
        let channel = channel_of(p);
        let padding = padding.clone();
        publishing.push(tokio::spawn(async move {
            let start = Instant::now();
            for n in 0..per_publisher {
                if rate_per_publisher > 0.0 {
                    let due = start + Duration::from_secs_f64(n as f64 / rate_per_publisher);
                    tokio::time::sleep_until(due.into()).await;
                }
                let packet = format!(
                    r#"42["realtime:publish",{{"channel":"{channel}","event":"b","payload":{{"s":{p},"n":{n},"t":{},"p":"{padding}"}}}}]"#,
                    clock()
                );
                ws_send(&writer, packet.as_bytes()).await?;
            }
            Ok::<_, String>(())
        }));
    }
    for task in publishing {
        task.await.map_err(|e| e.to_string())??;
    }
    let mut received = 0;
    let mut duplicated = 0;
    let mut out_of_order = 0;
    let mut lost = 0;
    let mut last_at = send_started;
    let mut latencies = Vec::with_capacity(expected_total as usize);
    for reader in readers {
        let (stats, expected) = reader.await.map_err(|e| e.to_string())?;
        received += stats.received;
        duplicated += stats.duplicated;
        out_of_order += stats.out_of_order;
        lost += expected.saturating_sub(stats.received - stats.duplicated);
        last_at = last_at.max(stats.last_at);
        latencies.extend(stats.latencies_us);
    }
    let server_cpu_seconds = match (cpu_before, args.server_pid.and_then(cpu_seconds)) {
        (Some(before), Some(after)) => json!(after - before),
        _ => json!(null),
    };
    progress.abort();
    for task in drains {
        task.abort();
    }
    let seconds = (last_at - send_started) as f64 / 1e9;
    Ok(json!({
        "mode": "fanout",
        "subscribers": args.subscribers,
        "publishers": args.publishers,
        "channels": n_channels,
        "messages": per_publisher * args.publishers,
        "payload_bytes": args.payload,
        "rate": args.rate,
        "connect_subscribe_seconds": connect_seconds,
        "connects_per_second": args.subscribers as f64 / connect_seconds,
        "seconds": seconds,
        "deliveries": received,
        "deliveries_per_second": received as f64 / seconds,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "latency_us": percentiles(latencies),
        "server_cpu_seconds": server_cpu_seconds,
    })
    .to_string())
}

// ----------------------------------------------------------------- publish

async fn publish(target: &Target, args: PublishArgs) -> Result<String, String> {
    setup_channel(target).await?;
    let run = run_publishers(target, &args, |i| format!("bench:publish-{i}")).await?;
    Ok(json!({
        "mode": "publish",
        "publishers": args.publishers,
        "window": args.window,
        "payload_bytes": args.payload,
        "seconds": run.seconds,
        "acked": run.latencies.len(),
        "acked_per_second": run.latencies.len() as f64 / run.seconds,
        "failed": run.failed,
        "ack_latency_us": percentiles(run.latencies),
    })
    .to_string())
}

/// What a run of publishers measured.
struct PublishRun {
    seconds: f64,
    /// Ack latency of each acked publish, in µs.
    latencies: Vec<u64>,
    failed: u64,
}

/// `args.publishers` sockets, each on `channel_of(index)`, each keeping
/// `args.window` acked publishes in flight for `args.seconds`.
async fn run_publishers(
    target: &Target,
    args: &PublishArgs,
    channel_of: impl Fn(usize) -> String + Copy,
) -> Result<PublishRun, String> {
    let joined = join_many(target, args.publishers, 50, channel_of, |_| None, false).await?;
    let padding = "x".repeat(args.payload);
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, (mut reader, writer)) in joined.into_iter().enumerate() {
        let channel = channel_of(index);
        let padding = padding.clone();
        let window = args.window.max(1);
        tasks.push(tokio::spawn(async move {
            let mut sent_at = std::collections::HashMap::new();
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            let mut next_id = 1u64;
            loop {
                while sent_at.len() < window && Instant::now() < until {
                    let packet = format!(
                        r#"42{next_id}["realtime:publish",{{"channel":"{channel}","event":"p","payload":{{"p":"{padding}"}}}}]"#
                    );
                    sent_at.insert(next_id, clock());
                    ws_send(&writer, packet.as_bytes()).await?;
                    next_id += 1;
                }
                if sent_at.is_empty() {
                    break;
                }
                let Some(text) = reader.next_text().await else { break };
                if text == b"2" {
                    ws_send(&writer, b"3").await?;
                } else if text.starts_with(b"43") {
                    let digits = text[2..].iter().take_while(|b| b.is_ascii_digit()).count();
                    let id: u64 = std::str::from_utf8(&text[2..2 + digits]).unwrap_or("0").parse().unwrap_or(0);
                    if let Some(at) = sent_at.remove(&id) {
                        if find(text, b"\"ok\":true").is_some() {
                            latencies.push((clock() - at) / 1000);
                        } else {
                            failed += 1;
                        }
                    }
                }
            }
            Ok::<_, String>((latencies, failed))
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (task_latencies, task_failed) = task.await.map_err(|e| e.to_string())??;
        latencies.extend(task_latencies);
        failed += task_failed;
    }
    Ok(PublishRun {
        seconds: started.elapsed().as_secs_f64(),
        latencies,
        failed,
    })
}

// ---------------------------------------------------------------- webhooks

/// Requests a [`Receiver`] answered, and when the first and last came.
#[derive(Default)]
struct ReceiverCounts {
    requests: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// A minimal HTTP/1.1 receiver on loopback, keep-alive, answering 200 to
/// every request (or never, with `hang`).
async fn start_receiver(hang: bool) -> Result<(SocketAddr, Arc<ReceiverCounts>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let counts = Arc::new(ReceiverCounts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = shared.clone();
            tokio::spawn(async move {
                let _ = serve_receiver(stream, hang, &counts).await;
            });
        }
    });
    Ok((address, counts))
}

async fn serve_receiver(
    mut stream: tokio::net::TcpStream,
    hang: bool,
    counts: &ReceiverCounts,
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // One request: head, then content-length bytes of body.
        let (head_end, body_len) = loop {
            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let body_len = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, body_len);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        while buffer.len() < head_end + body_len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        buffer.drain(..head_end + body_len);
        let now = clock();
        if counts.requests.fetch_add(1, Ordering::Relaxed) == 0 {
            counts.first_ns.store(now, Ordering::Relaxed);
        }
        counts.last_ns.store(now, Ordering::Relaxed);
        if hang {
            std::future::pending::<()>().await;
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

async fn webhooks(target: &Target, args: WebhooksArgs) -> Result<String, String> {
    let (url, counts) = match args.receiver.as_str() {
        "ok" | "hang" => {
            let (address, counts) = start_receiver(args.receiver == "hang").await?;
            (format!("http://{address}/hook"), counts)
        }
        "none" => (String::new(), Arc::new(ReceiverCounts::default())),
        "refuse" => {
            // A port that was free a moment ago: nothing listens on it.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let counts = Arc::new(ReceiverCounts::default());
            (format!("http://127.0.0.1:{port}/hook"), counts)
        }
        other => {
            return Err(format!(
                "--receiver must be ok, hang, refuse or none, not {other}"
            ))
        }
    };
    let run_id: u32 = rand::random();
    let channel_of = move |i: usize| format!("benchwh-{run_id}:{}", i % args.channels.max(1));
    let urls: Vec<&str> = [url.as_str()]
        .into_iter()
        .filter(|url| !url.is_empty())
        .collect();
    create_channel(
        target,
        &json!({ "pattern": format!("benchwh-{run_id}:%"), "webhookUrls": urls }).to_string(),
    )
    .await?;
    let started = clock();
    let run = run_publishers(target, &args.publish, channel_of).await?;
    let acked = run.latencies.len() as u64;
    let mut report = json!({
        "mode": "webhooks",
        "receiver": args.receiver,
        "channels": args.channels,
        "publishers": args.publish.publishers,
        "window": args.publish.window,
        "payload_bytes": args.publish.payload,
        "seconds": run.seconds,
        "acked": acked,
        "acked_per_second": acked as f64 / run.seconds,
        "failed": run.failed,
        "ack_latency_us": percentiles(run.latencies),
    });
    if args.receiver == "ok" {
        let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
        while counts.requests.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let received = counts.requests.load(Ordering::Relaxed);
        let span = (counts.last_ns.load(Ordering::Relaxed) - started) as f64 / 1e9;
        report["webhooks_received"] = json!(received);
        report["webhooks_missing"] = json!(acked.saturating_sub(received));
        report["webhooks_per_second"] = json!(received as f64 / span);
    }
    Ok(report.to_string())
}

// ------------------------------------------------------------------- conns

/// The CPU time (user + system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // In clock ticks of USER_HZ, which Linux fixes at 100 for userspace.
    Some(ticks as f64 / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn conns(target: &Target, args: ConnsArgs) -> Result<String, String> {
    setup_channel(target).await?;
    let before = args.server_pid.and_then(rss_kib);
    let sources = args.sources.max(1);
    let started = Instant::now();
    let joined = join_many(
        target,
        args.connections,
        args.connect_concurrency,
        |i| format!("bench:idle-{}", i % args.channels.max(1)),
        |i| {
            Some(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % sources as usize) as u8,
            )))
        },
        args.websocket_only,
    )
    .await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let drains: Vec<_> = joined
        .into_iter()
        .map(|(reader, writer)| drain(reader, writer))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    let after = args.server_pid.and_then(rss_kib);
    let inspect = inspect_actors(target, args.channels.max(1), args.inspect_rounds).await?;
    let per_connection = match (before, after) {
        (Some(before), Some(after)) => {
            json!((after.saturating_sub(before) * 1024) as f64 / args.connections as f64)
        }
        _ => json!(null),
    };
    for task in drains {
        task.abort();
    }
    Ok(json!({
        "mode": "conns",
        "connections": args.connections,
        "sources": sources,
        "channels": args.channels.max(1),
        "websocket_only": args.websocket_only,
        "connect_subscribe_seconds": connect_seconds,
        "connects_per_second": args.connections as f64 / connect_seconds,
        "server_rss_before_kib": before,
        "server_rss_after_kib": after,
        "server_bytes_per_connection": per_connection,
        "inspect": inspect,
    })
    .to_string())
}

/// Lists the live channel actors `rounds` times: how long each listing
/// took, how many entries it had and how many were stale.
async fn inspect_actors(
    target: &Target,
    channels: usize,
    rounds: usize,
) -> Result<serde_json::Value, String> {
    if rounds == 0 {
        return Ok(json!(null));
    }
    let path = format!("/api/realtime/actors?limit={channels}");
    let mut millis = Vec::with_capacity(rounds);
    let (mut entries, mut stale) = (0, 0);
    for _ in 0..rounds {
        let started = Instant::now();
        let (status, body) = http_request(target, "GET", &path, "").await?;
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
        if status != 200 {
            return Err(format!("GET {path}: {status}"));
        }
        let list: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("GET {path}: {e}"))?;
        let list = list.as_array().cloned().unwrap_or_default();
        entries = list.len();
        stale = list.iter().filter(|entry| entry["stale"] == true).count();
    }
    millis.sort_by(f64::total_cmp);
    Ok(json!({
        "rounds": rounds,
        "entries": entries,
        "stale": stale,
        "median_ms": millis[millis.len() / 2],
        "max_ms": millis[millis.len() - 1],
    }))
}
