//! Channel-name resolution over 10,000 patterns.

use criterion::{criterion_group, criterion_main, Criterion};
use realtime::pattern::PatternIndex;
use std::hint::black_box;

fn resolve(c: &mut Criterion) {
    // 5,000 exact patterns and 5,000 wildcards over 500 tenants.
    let patterns = (0..5_000)
        .map(|i| format!("room:{i}"))
        .chain((0..5_000).map(|i| format!("tenant-{}:%:orders-{}", i % 500, i)));
    let index = PatternIndex::new(patterns.map(|p| (p, ())));
    assert_eq!(index.len(), 10_000);
    let mut group = c.benchmark_group("resolve among 10,000 patterns");
    group.bench_function("exact", |b| {
        b.iter(|| index.resolve(black_box("room:4999")).unwrap())
    });
    group.bench_function("wildcard", |b| {
        b.iter(|| index.resolve(black_box("tenant-7:eu:orders-4507")).unwrap())
    });
    group.bench_function("miss", |b| {
        b.iter(|| index.resolve(black_box("tenant-7:eu:none")))
    });
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
