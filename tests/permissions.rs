//! Permissions on a real PostgreSQL, evaluated as InsForge evaluates them:
//! row-level-security policies on `realtime.channels` decide subscribes,
//! on `realtime.messages` publishes; decisions are dropped when a policy
//! changes; a failing policy denies only its caller.

mod common;

use std::time::{Duration, Instant};

use common::wire::SioClient;
use common::{postgres_skipped, Backend, TestServer, ANON_KEY};
use realtime::auth::Role;
use serde_json::{json, Value};

const ALICE: &str = "00000000-0000-0000-0000-00000000a11c";
const BOB: &str = "00000000-0000-0000-0000-000000000b0b";

/// Runs policy DDL and waits until the server heard of it (the event
/// trigger's notification): from then on its answers follow the change.
async fn change_policies(server: &TestServer, statements: &str) {
    let before = server.realtime.permissions.generation();
    server.sql(statements).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.realtime.permissions.generation() == before {
        assert!(
            Instant::now() < deadline,
            "the policy change was not noticed"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn create_channel(server: &TestServer, pattern: &str) {
    let (status, body) = server
        .admin(
            "POST",
            "/api/realtime/channels",
            Some(json!({ "pattern": pattern })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn user(server: &TestServer, sub: &str) -> SioClient {
    let token = server.token(Role::Authenticated, sub);
    SioClient::connect(&server.base_url, json!({ "token": token })).await
}

async fn anon(server: &TestServer) -> SioClient {
    SioClient::connect(&server.base_url, json!({ "token": ANON_KEY })).await
}

async fn subscribe(client: &mut SioClient, channel: &str) -> Value {
    client
        .call("realtime:subscribe", json!({ "channel": channel }))
        .await
}

async fn publish(client: &mut SioClient, channel: &str, n: i64) -> Value {
    client
        .call(
            "realtime:publish",
            json!({ "channel": channel, "event": "said", "payload": { "n": n } }),
        )
        .await
}

fn assert_unauthorized(answer: &Value) {
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["code"], "REALTIME_UNAUTHORIZED", "{answer}");
}

/// The InsForge documentation's example: a user subscribes only to
/// `order:<id>` of orders they own, looked up in the user's own table.
#[actix_rt::test]
async fn users_subscribe_only_to_their_own_orders() {
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    create_channel(&server, "order:%").await;
    // One transaction: the server hears of all of it at once.
    change_policies(
        &server,
        &format!(
            "CREATE TABLE public.orders (id int PRIMARY KEY, user_id uuid NOT NULL);
             INSERT INTO public.orders VALUES (1, '{ALICE}'), (2, '{BOB}');
             GRANT SELECT ON public.orders TO authenticated;
             ALTER TABLE realtime.channels ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_orders ON realtime.channels FOR SELECT TO authenticated
               USING (EXISTS (SELECT 1 FROM public.orders o
                               WHERE 'order:' || o.id = realtime.channel_name()
                                 AND o.user_id = auth.uid()));"
        ),
    )
    .await;
    let mut alice = user(&server, ALICE).await;
    let mut bob = user(&server, BOB).await;
    let mut nobody = anon(&server).await;
    assert_eq!(subscribe(&mut alice, "order:1").await["ok"], true);
    assert_unauthorized(&subscribe(&mut alice, "order:2").await);
    assert_eq!(subscribe(&mut bob, "order:2").await["ok"], true);
    assert_unauthorized(&subscribe(&mut bob, "order:1").await);
    // No policy for anon: row-level security denies.
    assert_unauthorized(&subscribe(&mut nobody, "order:1").await);
    // A refused socket stays connected and can subscribe where allowed.
    assert_eq!(subscribe(&mut bob, "order:2").await["ok"], true);
}

/// Only `authenticated` may publish; `anon` may subscribe but its publish
/// is refused and writes nothing. Dropping the policy (in SQL, not through
/// the server) takes effect for a socket that was allowed a moment ago,
/// although its decision would otherwise be kept for a minute.
#[actix_rt::test]
async fn publish_is_allowed_by_role_and_a_policy_change_takes_effect_at_once() {
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start_with(
        Backend::Postgres,
        "[permissions]\npublish_cache_ms = 60000\n",
    )
    .await;
    create_channel(&server, "chat:%").await;
    change_policies(
        &server,
        "ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
         CREATE POLICY members_publish ON realtime.messages FOR INSERT TO authenticated
           WITH CHECK (true);",
    )
    .await;
    let mut alice = user(&server, ALICE).await;
    let mut nobody = anon(&server).await;
    assert_eq!(subscribe(&mut alice, "chat:1").await["ok"], true);
    assert_eq!(subscribe(&mut nobody, "chat:1").await["ok"], true);
    for n in 0..3 {
        let ack = publish(&mut alice, "chat:1", n).await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    assert_unauthorized(&publish(&mut nobody, "chat:1", 99).await);
    // Without an ack, the refusal is a realtime:error.
    nobody
        .emit(
            "realtime:publish",
            json!({ "channel": "chat:1", "event": "said", "payload": { "n": 98 } }),
        )
        .await;
    let error = loop {
        let (event, body) = tokio::time::timeout(Duration::from_secs(5), nobody.next_event())
            .await
            .unwrap()
            .unwrap();
        if event == "realtime:error" {
            break body;
        }
    };
    assert_eq!(error["code"], "REALTIME_UNAUTHORIZED", "{error}");
    assert_eq!(
        server
            .scalar("SELECT count(*) FROM realtime.messages")
            .await,
        3,
        "refused publishes (and the checks themselves) store nothing"
    );

    // Dropped behind the server's back: the event trigger tells it.
    change_policies(&server, "DROP POLICY members_publish ON realtime.messages").await;
    assert_unauthorized(&publish(&mut alice, "chat:1", 10).await);
}

/// A policy that raises an error denies the user it fails for, and only
/// them; the failure is counted.
#[actix_rt::test]
async fn a_failing_policy_denies_only_its_caller() {
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    create_channel(&server, "room:%").await;
    change_policies(
        &server,
        &format!(
            "ALTER TABLE realtime.channels ENABLE ROW LEVEL SECURITY;
             CREATE POLICY fragile ON realtime.channels FOR SELECT TO authenticated
               USING (1 / (CASE WHEN auth.uid() = '{BOB}' THEN 0 ELSE 1 END) = 1);"
        ),
    )
    .await;
    let mut bob = user(&server, BOB).await;
    let mut alice = user(&server, ALICE).await;
    assert_unauthorized(&subscribe(&mut bob, "room:1").await);
    assert_eq!(subscribe(&mut alice, "room:1").await["ok"], true);
    // Alice's channel still works end to end.
    let ack = publish(&mut alice, "room:1", 1).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let (_, metrics) = server.get_text("/metrics").await;
    let failed = metrics
        .lines()
        .find_map(|line| line.strip_prefix("realtime_permission_policy_errors_total "))
        .unwrap();
    assert_eq!(failed, "1", "{metrics}");
}

/// With row-level security off (the default) the hook answers from the
/// policies' state, without a query; once it is on, every answer needs the
/// database; a role without the privilege is denied outright.
#[actix_rt::test]
async fn quick_answers_follow_the_policies_state() {
    use realtime::auth::Principal;
    use realtime::permissions::{Action, Decision, PermissionHook, PostgresPolicies};
    if postgres_skipped() {
        return;
    }
    let server = TestServer::start(Backend::Postgres).await;
    let settings = common::test_settings(&server.database_url, "");
    let hook = PostgresPolicies::open(&settings.database, &settings.permissions)
        .await
        .unwrap();
    let anon = Principal::AnonKey;
    assert_eq!(hook.quick(&anon, Action::Subscribe), Some(Decision::Allow));
    assert_eq!(hook.quick(&anon, Action::Publish), Some(Decision::Allow));
    let before = hook.generation();

    server
        .sql("ALTER TABLE realtime.channels ENABLE ROW LEVEL SECURITY")
        .await;
    hook.policies_changed().await;
    assert!(hook.generation() > before, "cached decisions are void");
    assert_eq!(
        hook.quick(&anon, Action::Subscribe),
        None,
        "ask the database"
    );
    assert_eq!(hook.quick(&anon, Action::Publish), Some(Decision::Allow));

    server
        .sql("REVOKE INSERT ON realtime.messages FROM anon")
        .await;
    hook.policies_changed().await;
    assert_eq!(hook.quick(&anon, Action::Publish), Some(Decision::Deny));
    assert_eq!(
        hook.quick(&Principal::ApiKey, Action::Publish),
        Some(Decision::Allow),
        "project_admin keeps its grant"
    );
}
