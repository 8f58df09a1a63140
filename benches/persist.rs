//! The writer's group commit on SQLite: one transaction of N message rows,
//! as the `MessageWriter` hands a batch to `sqlite_batch::write`, into a
//! real database file with the server's settings and schema. Per row this
//! is the durable part of an acked publish, the part an in-memory server
//! does not pay (docs/benchmarks.md, "What durability costs a publish").
//!
//! Rows look like the load generator's: four channels, a 100-byte payload,
//! a user sender. "log copied" also runs the passive checkpoint the server
//! runs beside the writer, once every 64 batches, inside the timing; the
//! other cases truncate the log untimed at the same points.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use entity::messages;
use realtime::config::{DatabaseSettings, Settings};
use realtime::persistence::channels::{self, NewChannel};
use realtime::persistence::{connect, migrate, now, sqlite_batch};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;
use tokio::runtime::Runtime;
use uuid::Uuid;

const CHECKPOINT_EVERY: u64 = 64;

struct Database {
    db: DatabaseConnection,
    channel: Uuid,
    seq: i64,
    _dir: tempfile::TempDir,
}

impl Database {
    fn open(rt: &Runtime) -> Database {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        rt.block_on(async {
            // The server's defaults, on one connection as the writer's own
            // pool has.
            let defaults = Settings::from_toml_overlay("").expect("the defaults load");
            let db = connect(&DatabaseSettings {
                url,
                pool_size: 1,
                ..defaults.database
            })
            .await
            .expect("the database opens");
            migrate(&db).await.expect("the schema is created");
            let channel = channels::create(
                &db,
                NewChannel {
                    pattern: "bench:%".into(),
                    description: None,
                    webhook_urls: None,
                    enabled: true,
                },
            )
            .await
            .expect("the channel is created")
            .id;
            Database {
                db,
                channel,
                seq: 0,
                _dir: dir,
            }
        })
    }

    fn rows(&mut self, n: usize) -> Vec<messages::Model> {
        (0..n)
            .map(|i| {
                self.seq += 1;
                messages::Model {
                    id: Uuid::now_v7(),
                    event_name: "bench".into(),
                    channel_id: Some(self.channel),
                    channel_name: format!("bench:{}", i % 4),
                    payload: json!({"n": self.seq, "p": "x".repeat(100)}),
                    sender_type: "user".into(),
                    sender_id: Some(Uuid::now_v7()),
                    ws_audience_count: 1,
                    wh_audience_count: 0,
                    wh_delivered_count: 0,
                    created_at: now(),
                    seq: Some(self.seq),
                }
            })
            .collect()
    }

    /// Writes `iters` batches of `size` rows; the time spent writing (and
    /// copying the log, when `copy_log`).
    fn write_batches(&mut self, rt: &Runtime, size: usize, iters: u64, copy_log: bool) -> Duration {
        let mut spent = Duration::ZERO;
        for i in 1..=iters {
            let rows = self.rows(size);
            let batch: Vec<&messages::Model> = rows.iter().collect();
            let log_due = i % CHECKPOINT_EVERY == 0;
            let started = Instant::now();
            rt.block_on(sqlite_batch::write(&self.db, &batch, &[], &[]))
                .expect("the batch is written");
            if log_due && copy_log {
                self.checkpoint(rt, "PASSIVE");
            }
            spent += started.elapsed();
            if log_due && !copy_log {
                self.checkpoint(rt, "TRUNCATE");
            }
        }
        // The log starts over between samples, untimed.
        self.checkpoint(rt, "TRUNCATE");
        spent
    }

    fn checkpoint(&self, rt: &Runtime, mode: &str) {
        rt.block_on(
            self.db
                .execute_unprepared(&format!("PRAGMA wal_checkpoint({mode})")),
        )
        .expect("the log is copied");
    }
}

fn persist(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut database = Database::open(&rt);
    let mut group = c.benchmark_group("persist (SQLite)");
    for (size, copy_log) in [(1, false), (16, false), (128, false), (128, true)] {
        group.throughput(Throughput::Elements(size as u64));
        let name = if copy_log {
            format!("{size} rows per commit, log copied")
        } else {
            format!("{size} rows per commit")
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| database.write_batches(&rt, size, iters, copy_log))
        });
    }
    group.finish();
}

criterion_group!(benches, persist);
criterion_main!(benches);
