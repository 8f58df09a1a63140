//! Codec benchmarks: Engine.IO and Socket.IO decode/encode of typical and
//! large packets, and long-polling payloads.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use realtime::protocol::engineio::{self, Frame};
use realtime::protocol::socketio::{Decoder, Packet};
use serde_json::json;
use std::hint::black_box;

const PUBLISH: &str = r#"42["realtime:publish",{"channel":"order:123","event":"status","payload":{"orderId":"123","status":"paid","amount":12.5,"items":[1,2,3]}}]"#;

fn large_publish() -> String {
    let blob = "x".repeat(64 * 1024);
    format!(
        r#"42["realtime:publish",{{"channel":"order:123","event":"blob","payload":{{"data":"{blob}"}}}}]"#
    )
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(PUBLISH.len() as u64));
    group.bench_function("engineio+socketio typical publish", |b| {
        b.iter(|| {
            let packet = engineio::Packet::decode(black_box(PUBLISH)).unwrap();
            let engineio::Packet::Message(text) = packet else {
                unreachable!()
            };
            Decoder::default().text(&text).unwrap().unwrap()
        })
    });
    let large = large_publish();
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("engineio+socketio 64 KiB publish", |b| {
        b.iter(|| {
            let packet = engineio::Packet::decode(black_box(&large)).unwrap();
            let engineio::Packet::Message(text) = packet else {
                unreachable!()
            };
            Decoder::default().text(&text).unwrap().unwrap()
        })
    });
    let payload: String = (0..64)
        .map(|i| format!("42[\"e\",{{\"n\":{i}}}]"))
        .collect::<Vec<_>>()
        .join("\u{1e}");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("polling payload of 64 packets", |b| {
        b.iter(|| engineio::decode_payload(black_box(payload.as_bytes())).unwrap())
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let packet = Packet::event(
        "/",
        "status",
        [json!({"orderId": "123", "status": "paid", "meta": {"channel": "order:123"}})],
    );
    group.bench_function("socketio event", |b| {
        b.iter(|| Frame::message(&black_box(&packet).encode()))
    });
    let frames: Vec<Frame> = (0..64)
        .map(|i| Frame::message(&format!("2[\"e\",{{\"n\":{i}}}]")))
        .collect();
    group.bench_function("polling payload of 64 frames", |b| {
        b.iter(|| engineio::encode_payload(black_box(&frames)))
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
