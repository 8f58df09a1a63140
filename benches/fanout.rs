//! The fan-out step of a channel: a message is encoded once and the same
//! bytes are handed to every subscriber. This measures that step for 1,000
//! subscribers without the sockets (the load generator measures those),
//! and the step after it: each session framing the delivery into its
//! WebSocket outbox.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use realtime::channel::encode_event;
use realtime::engineio::websocket::WsLink;
use realtime::protocol::engineio::Frame;
use serde_json::json;
use std::hint::black_box;

fn fanout(c: &mut Criterion) {
    let body = json!({
        "n": 17, "p": "x".repeat(100),
        "meta": {"channel": "bench:0", "messageId": "0190b6c2-5f1e-7cc3-9a55-3f1d2b8c9e01", "senderType": "user", "timestamp": "2026-11-27T12:00:00.000Z"}
    });
    let mut group = c.benchmark_group("fan-out");
    group.bench_function("encode one delivery", |b| {
        b.iter(|| encode_event(black_box("b"), black_box(&body)))
    });
    let mut queues: Vec<Vec<Arc<[Frame]>>> = (0..1000).map(|_| Vec::with_capacity(64)).collect();
    group.throughput(Throughput::Elements(1000));
    group.bench_function("encode once, share with 1,000 queues", |b| {
        b.iter(|| {
            let frames: Arc<[Frame]> = Arc::new([encode_event("b", &body)]);
            for queue in queues.iter_mut() {
                if queue.len() == 64 {
                    queue.clear();
                }
                queue.push(frames.clone());
            }
        })
    });
    let frames: Arc<[Frame]> = Arc::new([encode_event("b", &body)]);
    group.bench_function("frame into 1,000 idle outboxes", |b| {
        b.iter_batched(
            || {
                (0..1000)
                    .map(|_| WsLink::new(4096, b"").0)
                    .collect::<Vec<_>>()
            },
            |links| {
                for link in &links {
                    link.push(&frames).unwrap();
                }
                links
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
