//! PostgreSQL's schema objects (SPEC §6, §8): the roles, the helpers that
//! policies call and `realtime.publish`, on a fresh database and on one
//! that InsForge set up first (which must keep its own definitions).

mod common;

use common::{Backend, TestServer};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait};
use serde_json::json;

/// One value from a query.
async fn value<C: ConnectionTrait, T: sea_orm::TryGetable>(db: &C, sql: &str) -> T {
    db.query_one(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

#[actix_rt::test]
async fn roles_helpers_and_publish_exist_and_behave() {
    if common::postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    let db = &server.db;
    let (status, channel) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "order:%" })),
        )
        .await;
    assert_eq!(status, 201);
    server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": "order:vip" })),
        )
        .await;

    for role in ["anon", "authenticated", "project_admin"] {
        let can_login: bool = value(
            db,
            &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'"),
        )
        .await;
        assert!(!can_login, "{role} is NOLOGIN");
    }

    // realtime.publish resolves like the server and stores a system message.
    let id: uuid::Uuid = value(
        db,
        r#"SELECT realtime.publish('order:42', 'status_changed', '{"state":"paid"}')"#,
    )
    .await;
    let (_, rows) = server.admin("GET", "/api/realtime/messages", None).await;
    let row = &rows[0];
    assert_eq!(row["id"], id.to_string());
    assert_eq!(row["channelName"], "order:42");
    assert_eq!(row["channelId"], channel["id"]);
    assert_eq!(row["senderType"], "system");
    assert_eq!(row["payload"], json!({ "state": "paid" }));
    let exact: uuid::Uuid = value(db, "SELECT realtime.publish('order:vip', 'e', '{}')").await;
    let (_, rows) = server
        .admin("GET", "/api/realtime/messages?limit=1", None)
        .await;
    assert_eq!(rows[0]["id"], exact.to_string());
    assert_ne!(
        rows[0]["channelId"], channel["id"],
        "the exact pattern wins"
    );
    let none: Option<uuid::Uuid> =
        value(db, "SELECT realtime.publish('nothing:1', 'e', '{}')").await;
    assert_eq!(none, None, "no enabled channel: NULL, and nothing stored");

    // Nobody but the owner may call it.
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL ROLE authenticated")
        .await
        .unwrap();
    let refused = txn
        .execute_unprepared("SELECT realtime.publish('order:1', 'e', '{}')")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    txn.rollback().await.unwrap();

    // The helpers read the transaction's settings.
    let txn = db.begin().await.unwrap();
    let user = uuid::Uuid::new_v4();
    txn.execute_unprepared(&format!(
        r#"SELECT set_config('request.jwt.claims', '{{"sub":"{user}","role":"authenticated","org":7}}', true),
                  set_config('realtime.channel_name', 'order:42', true)"#
    ))
    .await
    .unwrap();
    let uid: uuid::Uuid = value(&txn, "SELECT auth.uid()").await;
    assert_eq!(uid, user);
    let role: String = value(&txn, "SELECT auth.role()").await;
    assert_eq!(role, "authenticated");
    let org: i64 = value(&txn, "SELECT (auth.jwt() ->> 'org')::bigint").await;
    assert_eq!(org, 7);
    let name: String = value(&txn, "SELECT realtime.channel_name()").await;
    assert_eq!(name, "order:42");
    txn.execute_unprepared(
        r#"SELECT set_config('request.jwt.claims', '{"sub":"not-a-uuid","role":"anon"}', true),
                  set_config('realtime.channel_name', '', true)"#,
    )
    .await
    .unwrap();
    let uid: Option<uuid::Uuid> = value(&txn, "SELECT auth.uid()").await;
    assert_eq!(uid, None, "a sub that is not a uuid is no user");
    let name: Option<String> = value(&txn, "SELECT realtime.channel_name()").await;
    assert_eq!(name, None, "empty means unset");
    txn.rollback().await.unwrap();
    let unset: Option<serde_json::Value> = value(db, "SELECT auth.jwt()").await;
    assert_eq!(unset, None);

    // Row-level security stays off, as in InsForge.
    let rls: bool = value(
        db,
        "SELECT relrowsecurity FROM pg_class WHERE oid = 'realtime.channels'::regclass",
    )
    .await;
    assert!(!rls);
}

/// A database as InsForge leaves it: its schema, roles and a
/// `realtime.publish` of its own.
async fn insforge_shaped() -> String {
    let (url, _) = common::fresh_database(Backend::Postgres).await;
    let db: DatabaseConnection = Database::connect(&url).await.unwrap();
    for statement in [
        "CREATE SCHEMA realtime",
        "CREATE TABLE realtime.channels (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), pattern TEXT NOT NULL UNIQUE, description TEXT, webhook_urls TEXT[], enabled BOOLEAN NOT NULL DEFAULT TRUE, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW())",
        "CREATE TABLE realtime.messages (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), event_name TEXT NOT NULL, channel_id UUID REFERENCES realtime.channels(id) ON DELETE SET NULL, channel_name TEXT NOT NULL, payload JSONB NOT NULL DEFAULT '{}'::jsonb, sender_type TEXT NOT NULL DEFAULT 'system' CHECK (sender_type IN ('system', 'user')), sender_id UUID, ws_audience_count INTEGER NOT NULL DEFAULT 0, wh_audience_count INTEGER NOT NULL DEFAULT 0, wh_delivered_count INTEGER NOT NULL DEFAULT 0, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW())",
        "CREATE TABLE realtime.config (id INTEGER PRIMARY KEY DEFAULT 1 CHECK (id = 1), retention_days INTEGER, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW())",
        "INSERT INTO realtime.config (id, retention_days) VALUES (1, 7)",
        "INSERT INTO realtime.channels (pattern, description) VALUES ('order:%', 'from InsForge')",
        "CREATE INDEX idx_realtime_messages_created_at ON realtime.messages (created_at DESC)",
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF; END $$",
        "CREATE SCHEMA auth",
        "CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT '00000000-0000-0000-0000-000000000001'::uuid $$",
        "CREATE FUNCTION realtime.publish(p_channel_name text, p_event_name text, p_payload jsonb) RETURNS uuid LANGUAGE sql AS $$ SELECT '00000000-0000-0000-0000-0000000000ff'::uuid $$",
        // InsForge notifies every insert; its history predates `seq`.
        "CREATE FUNCTION realtime.notify_on_message_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('realtime_message', NEW.id::text); RETURN NEW; END $$",
        "CREATE TRIGGER trg_message_notify AFTER INSERT ON realtime.messages FOR EACH ROW EXECUTE FUNCTION realtime.notify_on_message_insert()",
        "INSERT INTO realtime.messages (event_name, channel_name, created_at) VALUES ('second', 'order:1', '2025-01-02'), ('third', 'order:1', '2025-01-03'), ('first', 'order:1', '2025-01-01')",
    ] {
        db.execute_unprepared(statement).await.unwrap();
    }
    db.close().await.unwrap();
    url
}

#[actix_rt::test]
async fn an_insforge_database_migrates_cleanly_and_keeps_its_own() {
    if common::postgres_skipped() {
        return;
    }
    let url = insforge_shaped().await;
    let settings = common::test_settings(&url, "");
    // Twice: starting again on a migrated database changes nothing either.
    for _ in 0..2 {
        let state = realtime::server::AppState::open(settings.clone())
            .await
            .expect("the InsForge database migrates");
        let db = &state.db;
        let kept: uuid::Uuid = value(db, "SELECT realtime.publish('order:1', 'e', '{}')").await;
        assert_eq!(kept.to_string(), "00000000-0000-0000-0000-0000000000ff");
        let uid: uuid::Uuid = value(db, "SELECT auth.uid()").await;
        assert_eq!(uid.to_string(), "00000000-0000-0000-0000-000000000001");
        // What was missing was added.
        let name: Option<String> = value(db, "SELECT realtime.channel_name()").await;
        assert_eq!(name, None);
        let retention: i32 = value(db, "SELECT retention_days FROM realtime.config").await;
        assert_eq!(retention, 7, "InsForge's rows are kept");
        let description: String = value(
            db,
            "SELECT description FROM realtime.channels WHERE pattern = 'order:%'",
        )
        .await;
        assert_eq!(description, "from InsForge");
        // The history got its sequence once, oldest first; InsForge's
        // notify trigger is still there beside ours.
        let order: String = value(
            db,
            "SELECT string_agg(event_name || '=' || seq, ',' ORDER BY seq) FROM realtime.messages WHERE seq <= 3",
        )
        .await;
        assert_eq!(order, "first=1,second=2,third=3");
        let triggers: String = value(
            db,
            "SELECT string_agg(tgname::text, ',' ORDER BY tgname) FROM pg_trigger
              WHERE tgrelid = 'realtime.messages'::regclass AND NOT tgisinternal",
        )
        .await;
        assert_eq!(triggers, "trg_message_notify,trg_realtime_message_arrival");
        db.clone().close().await.unwrap();
    }
}
