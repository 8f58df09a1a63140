//! The socketioxide peer of the benchmarks: a plain socketioxide server
//! doing the same fan-out as the realtime server and the Node peer
//! (subscribe = join a room, publish = emit to the room with `meta`, the
//! publisher included, then ack), in memory: no storage, presence or
//! permissions, so it is the best case for socketioxide.
//!
//!   socketioxide-peer [port]

use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::SocketIo;

#[derive(Deserialize)]
struct Subscribe {
    channel: String,
}

#[derive(Deserialize)]
struct Publish {
    channel: String,
    event: String,
    #[serde(default)]
    payload: serde_json::Map<String, Value>,
}

async fn on_connect(socket: SocketRef) {
    socket.on(
        "realtime:subscribe",
        async |socket: SocketRef, Data(subscribe): Data<Subscribe>, ack: AckSender| {
            socket.join(subscribe.channel.clone());
            let answer = json!({ "ok": true, "channel": subscribe.channel, "presence": { "members": [] } });
            ack.send(&answer).ok();
        },
    );
    socket.on(
        "realtime:unsubscribe",
        async |socket: SocketRef, Data(subscribe): Data<Subscribe>| {
            socket.leave(subscribe.channel);
        },
    );
    socket.on(
        "realtime:publish",
        async |io: SocketIo, Data(publish): Data<Publish>, ack: AckSender| {
            let message_id = uuid::Uuid::new_v4().to_string();
            let mut body = publish.payload;
            body.insert(
                "meta".into(),
                json!({
                    "channel": publish.channel,
                    "messageId": message_id,
                    "senderType": "user",
                    "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                }),
            );
            io.to(publish.channel).emit(&publish.event, &body).await.ok();
            ack.send(&json!({ "ok": true, "messageId": message_id })).ok();
        },
    );
}

// One thread, as it runs pinned to one core: socketioxide spawns a task
// per incoming event, and tokio's multi-thread scheduler runs the newest
// spawned task first (its LIFO slot), which reorders one publisher's
// messages; the current-thread scheduler runs them in order.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map_or(Ok(7132), |port| port.parse())?;
    // A client may fall 4,096 packets behind before it loses messages, as
    // on the realtime server (`engine.max_buffered_packets`); the default
    // (128) drops deliveries to subscribers of a fast fan-out.
    let (layer, io) = SocketIo::builder().max_buffer_size(4096).build_layer();
    io.ns("/", on_connect);
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("socketioxide peer listening on {port}");
    axum::serve(listener, app).await?;
    Ok(())
}
