//! A SQLite file that cannot grow (the disk is full): publishes are
//! refused with `DATABASE_UNAVAILABLE`, everything acknowledged is stored,
//! nothing refused is, the file stays intact, and once there is room again
//! the server goes on by itself, without a restart.
//!
//! The full disk is the server process's file size limit
//! (`RLIMIT_FSIZE`, set with `prlimit`, with `SIGXFSZ` ignored): a write
//! past it fails as on a full disk, and raising it frees the room.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::ServerProcess;
use common::{wait_until, Backend};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::json;

/// Sets the soft limit on the size of the files `pid` writes (`None`: no
/// limit).
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = bytes.map_or("unlimited".to_owned(), |bytes| bytes.to_string());
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={limit}:"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed");
}

fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

#[actix_rt::test]
async fn a_full_disk_refuses_publishes_and_loses_nothing() {
    let (url, dir) = common::fresh_database(Backend::Sqlite).await;
    let folder = dir.as_ref().unwrap().path().to_owned();
    // The shell ignores SIGXFSZ, and the server it becomes inherits that:
    // a write past the limit then fails (EFBIG) instead of killing it.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_realtime"));
    let server = ServerProcess::start(
        command,
        &url,
        common::free_port(),
        &[
            ("REALTIME__DATABASE__PUBLISH_TIMEOUT_MS", "1500"),
            ("REALTIME__DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
            ("REALTIME__LOG__LEVEL", "warn"),
        ],
    )
    .await;
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            json!({ "pattern": "full" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let database = folder.join("realtime.db");
    let wal = folder.join("realtime.db-wal");
    let room = file_size(&database).max(file_size(&wal)) + 256 * 1024;
    limit_file_size(server.child.id(), Some(room));
    let text = "x".repeat(4096);
    let mut acknowledged = 0;
    let mut refused = None;
    // 4 KiB messages fill 256 KiB of room well before 1,000.
    for n in 0..1000 {
        let (status, body) = server
            .admin(
                "POST",
                "/api/realtime/messages",
                json!({ "channel": "full", "event": "fill", "payload": { "n": n, "text": text } }),
            )
            .await;
        if status == 201 {
            acknowledged += 1;
        } else {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.unwrap_or_else(|| panic!("1,000 publishes fit in {room} bytes"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "DATABASE_UNAVAILABLE", "{body}");
    let (status, health) = server.get("/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["database"], "not writable", "{health}");

    // Room again: the server notices by itself and takes publishes.
    limit_file_size(server.child.id(), None);
    wait_until("health recovers", Duration::from_secs(20), || async {
        server.get("/health").await.0 == 200
    })
    .await;
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/messages",
            json!({ "channel": "full", "event": "after", "payload": {} }),
        )
        .await;
    assert_eq!(status, 201, "{body}: {}", server.log_tail());

    let db = Database::connect(&url).await.unwrap();
    let query = |sql: &str| Statement::from_string(sea_orm::DbBackend::Sqlite, sql);
    let stored: i64 = db
        .query_one(query(
            "SELECT COUNT(*) FROM messages WHERE event_name = 'fill'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged message is stored, the refused one is not"
    );
    let check: String = db
        .query_one(query("PRAGMA integrity_check"))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    assert_eq!(check, "ok");
}
