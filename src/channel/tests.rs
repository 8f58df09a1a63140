//! The channel actor driven directly: plain test actors subscribe, and a
//! real `MessageWriter` stores into a SQLite file.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, Context, Handler};
use entity::messages;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::catalog::{ChannelCatalog, ChannelDef};
use super::registry::ChannelRegistry;
use super::*;
use crate::config::DatabaseSettings;
use crate::persistence::messages::MessageFilter;
use crate::persistence::writer::{CommittedSeq, Drain, MessageWriter};
use crate::persistence::{self, channels::NewChannel};
use crate::publish::{Outgoing, Sender};
use crate::webhooks::{WebhookDispatcher, Webhooks};

const SETTINGS: ChannelSettings = ChannelSettings {
    max_pending: 1000,
    offsets: true,
    leave_grace: Duration::ZERO,
    presence_batch: Duration::ZERO,
    max_members: 10_000,
};

/// A subscriber that hands every event to the test.
struct Probe {
    events: mpsc::UnboundedSender<SubscriberEvent>,
    /// Its mailbox bound (the channel's `try_send` sees it full).
    capacity: usize,
    /// Blocks its thread this long on the first event: a slow client.
    stall_first: Option<Duration>,
}

impl Actor for Probe {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl Handler<SubscriberEvent> for Probe {
    type Result = ();

    fn handle(&mut self, event: SubscriberEvent, _: &mut Context<Self>) {
        if let Some(stall) = self.stall_first.take() {
            std::thread::sleep(stall);
        }
        let _ = self.events.send(event);
    }
}

/// A probe's end in the test.
struct Inbox {
    id: u64,
    rx: mpsc::UnboundedReceiver<SubscriberEvent>,
    addr: Addr<Probe>,
    member: Member,
}

impl Inbox {
    fn subscriber(&self) -> Subscriber {
        Subscriber {
            id: self.id,
            socket_id: format!("socket-{}", self.id).into(),
            events: self.addr.clone().recipient(),
            member: self.member.clone(),
        }
    }

    async fn next(&mut self) -> SubscriberEvent {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("no event in time")
            .expect("probe stopped")
    }

    /// The next event, which must be frames; decoded as `[event, body]`.
    async fn frames(&mut self) -> Vec<(String, Value)> {
        match self.next().await {
            SubscriberEvent::Frames(frames) => frames.iter().map(decode).collect(),
            SubscriberEvent::Messages(delivered) => delivered.frames.iter().map(decode).collect(),
            other => panic!("expected frames, got {other:?}"),
        }
    }

    async fn joined(&mut self) -> Vec<Value> {
        match self.next().await {
            SubscriberEvent::Joined(joined) => serde_json::from_str(&joined.members).unwrap(),
            other => panic!("expected joined, got {other:?}"),
        }
    }

    fn nothing_pending(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }
}

fn decode(frame: &Frame) -> (String, Value) {
    let Frame::Text(text) = frame else {
        panic!("binary frame")
    };
    let text: &str = text;
    let array: Vec<Value> = serde_json::from_str(&text[2..]).unwrap();
    (array[0].as_str().unwrap().to_owned(), array[1].clone())
}

struct Setup {
    db: sea_orm::DatabaseConnection,
    writer: Addr<MessageWriter>,
    registry: Addr<ChannelRegistry>,
    webhooks: Webhooks,
    definition: Arc<ChannelDef>,
    next_id: u64,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let settings = DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("channel.db").display()),
            // The writer, a test's stalling transaction, and one to spare.
            pool_size: 3,
            acquire_timeout_ms: 5000,
            batch_size: 64,
            batch_window_ms: 1,
            publish_timeout_ms: 5000,
            sql_publish: false,
            sql_publish_poll_ms: 1000,
        };
        let db = persistence::connect(&settings).await.unwrap();
        persistence::migrate(&db).await.unwrap();
        let row = persistence::channels::create(
            &db,
            NewChannel {
                pattern: "room:%".into(),
                description: None,
                webhook_urls: None,
                enabled: true,
            },
        )
        .await
        .unwrap();
        let writer = MessageWriter::new(
            db.clone(),
            64,
            Duration::from_millis(1),
            CommittedSeq::default(),
        )
        .start();
        let catalog = Arc::new(ChannelCatalog::load(&db).await.unwrap());
        let settings = crate::config::Settings::from_toml_overlay("").unwrap();
        let webhooks = WebhookDispatcher::start(
            settings.webhooks,
            db.clone(),
            "test-node".into(),
            catalog.clone(),
            writer.clone(),
        );
        let registry = ChannelRegistry::new(
            writer.clone(),
            webhooks.clone(),
            1,
            SETTINGS,
            CommittedSeq::default(),
            catalog.clone(),
        )
        .start();
        Setup {
            db,
            writer,
            registry,
            webhooks,
            definition: Arc::new(ChannelDef {
                id: row.id,
                pattern: row.pattern,
                webhook_urls: Vec::new(),
                ephemeral: false,
                retention: Default::default(),
            }),
            next_id: 0,
            _dir: dir,
        }
    }

    /// Takes the database's write lock until the returned transaction
    /// ends: the writer's batches wait meanwhile, as behind slow storage.
    async fn stall_writes(&self) -> sea_orm::DatabaseTransaction {
        use sea_orm::TransactionTrait;
        let txn = self.db.begin().await.unwrap();
        persistence::write_lock_first(&txn).await.unwrap();
        txn
    }

    fn channel(&self, name: &str) -> Addr<Channel> {
        self.channel_with(name, SETTINGS)
    }

    fn channel_with(&self, name: &str, settings: ChannelSettings) -> Addr<Channel> {
        Channel::new(
            name.into(),
            self.registry.clone(),
            self.writer.clone(),
            self.webhooks.clone(),
            settings,
            0,
            None,
        )
        .start()
    }

    /// A subscriber on the test's thread, or on a thread of its own when
    /// it stalls (so the channel keeps running meanwhile).
    fn probe(
        &mut self,
        presence_id: &str,
        capacity: usize,
        stall_first: Option<Duration>,
    ) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let probe = Probe {
            events: tx,
            capacity,
            stall_first,
        };
        let addr = match stall_first {
            None => probe.start(),
            Some(_) => Probe::start_in_arbiter(&Arbiter::new().handle(), |_| probe),
        };
        self.next_id += 1;
        Inbox {
            id: self.next_id,
            rx,
            addr,
            member: Member {
                presence_id: presence_id.into(),
                kind: subscriber::MemberKind::Anonymous,
            },
        }
    }

    /// A system message of `name` as stored history holds it (as the
    /// PostgreSQL listener would find it).
    fn stored_row(&self, name: &str, event: &str, payload: Value) -> messages::Model {
        messages::Model {
            id: Uuid::now_v7(),
            event_name: event.into(),
            channel_id: Some(self.definition.id),
            channel_name: name.into(),
            payload,
            sender_type: "system".into(),
            sender_id: None,
            ws_audience_count: 0,
            wh_audience_count: 0,
            wh_delivered_count: 0,
            created_at: persistence::now(),
            seq: None,
        }
    }

    fn publish(
        &self,
        channel: &Addr<Channel>,
        n: usize,
    ) -> oneshot::Receiver<Result<messages::Model, PublishError>> {
        let (tx, rx) = oneshot::channel();
        channel.do_send(Publish {
            message: Outgoing {
                event: "e".into(),
                payload: json!({ "n": n }).as_object().unwrap().clone(),
                sender: Sender::SYSTEM,
                channel: self.definition.clone(),
            },
            reply: Reply::Http(tx),
            via_registry: false,
        });
        rx
    }
}

#[actix::test]
async fn each_message_carries_its_stored_seq_as_offset_and_joins_say_where_they_start() {
    let mut setup = Setup::new().await;
    let channel = setup.channel("room:seq");
    let mut inbox = setup.probe("p1", 16, None);
    channel.do_send(Join(inbox.subscriber()));
    let SubscriberEvent::Joined(joined) = inbox.next().await else {
        panic!("expected joined")
    };
    assert_eq!(joined.after_seq, 0);
    let mut stored = Vec::new();
    for n in 0..3 {
        stored.push(setup.publish(&channel, n).await.unwrap().unwrap());
    }
    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        let SubscriberEvent::Messages(delivered) = inbox.next().await else {
            panic!("expected messages")
        };
        for (frame, seq) in delivered.frames.iter().zip(&delivered.seqs) {
            let Frame::Text(text) = frame else {
                panic!("binary")
            };
            let array: Vec<Value> = serde_json::from_str(&text[2..]).unwrap();
            // The offset is the last argument, as a string.
            assert_eq!(array.len(), 3);
            assert_eq!(array[2], json!(seq.unwrap().to_string()));
            offsets.push(seq.unwrap());
        }
    }
    let rows =
        persistence::messages::by_ids(&setup.db, &stored.iter().map(|r| r.id).collect::<Vec<_>>())
            .await
            .unwrap();
    let mut seqs: Vec<i64> = rows.iter().map(|row| row.seq.unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(offsets, seqs);
    assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]));
    // A later subscriber starts after the last delivered one.
    let mut late = setup.probe("p2", 16, None);
    channel.do_send(Join(late.subscriber()));
    loop {
        if let SubscriberEvent::Joined(joined) = late.next().await {
            assert_eq!(joined.after_seq, *offsets.last().unwrap());
            break;
        }
    }
}

#[actix::test]
async fn a_stored_audience_is_corrected_when_subscribers_change_before_delivery() {
    // Storage stalls while the subscribers below change: the messages are
    // still at the writer.
    let mut setup = Setup::new().await;
    let channel = setup.channel("room:1");
    let mut stays = setup.probe("a", 256, None);
    let mut leaves = setup.probe("b", 256, None);
    for inbox in [&mut stays, &mut leaves] {
        channel.do_send(Join(inbox.subscriber()));
        inbox.joined().await;
    }
    // Stamped with two subscribers, delivered to one; then stamped with
    // the one, delivered to it (its row is written once).
    let stall = setup.stall_writes().await;
    let fewer = setup.publish(&channel, 0);
    channel.do_send(Leave {
        subscriber_id: leaves.id,
        dropped: false,
    });
    let same = setup.publish(&channel, 1);
    channel.send(Barrier).await.unwrap();
    stall.commit().await.unwrap();
    let mut ids = Vec::new();
    for ack in [fewer, same] {
        let row = ack.await.unwrap().unwrap();
        assert_eq!(row.ws_audience_count, 1);
        ids.push(row.id);
    }
    // Stamped with one, delivered to two.
    let stall = setup.stall_writes().await;
    let more = setup.publish(&channel, 2);
    let mut joins = setup.probe("c", 256, None);
    channel.do_send(Join(joins.subscriber()));
    joins.joined().await;
    stall.commit().await.unwrap();
    let row = more.await.unwrap().unwrap();
    assert_eq!(row.ws_audience_count, 2);
    ids.push(row.id);
    setup.writer.send(Drain).await.unwrap();
    let rows = persistence::messages::by_ids(&setup.db, &ids)
        .await
        .unwrap();
    let stored: std::collections::HashMap<Uuid, i32> = rows
        .iter()
        .map(|row| (row.id, row.ws_audience_count))
        .collect();
    assert_eq!(
        ids.iter().map(|id| stored[id]).collect::<Vec<_>>(),
        [1, 1, 2],
        "the stored audiences are the sockets each message reached"
    );
}

#[actix::test]
async fn a_stored_message_goes_ahead_of_publishes_still_being_written() {
    // Storage stalls: the publishes below are all still at the writer when
    // the stored row arrives.
    let mut setup = Setup::new().await;
    let channel = setup.channel("room:1");
    let mut inbox = setup.probe("a", 256, None);
    channel.do_send(Join(inbox.subscriber()));
    inbox.joined().await;

    // A message already in history (stored by SQL or another node), so
    // with a smaller `seq` than anything published after it, handed on
    // while publishes wait for the writer: it is delivered first, and the
    // channel's order stays the `seq` order every node shows.
    let stored = setup.stored_row("room:1", "from-sql", json!({ "n": "stored" }));
    persistence::messages::insert_batch(&setup.db, [&stored])
        .await
        .unwrap();
    let stall = setup.stall_writes().await;
    let mut acks = Vec::new();
    for n in 0..25 {
        acks.push(setup.publish(&channel, n));
    }
    channel.do_send(Stored {
        row: stored.clone(),
        via_registry: false,
    });
    for n in 25..50 {
        acks.push(setup.publish(&channel, n));
    }
    channel.send(Barrier).await.unwrap();
    stall.commit().await.unwrap();
    for ack in acks {
        assert_eq!(ack.await.unwrap().unwrap().ws_audience_count, 1);
    }

    let mut seen = Vec::new();
    while seen.len() < 51 {
        seen.extend(inbox.frames().await);
    }
    let order: Vec<String> = seen.iter().map(|(_, body)| body["n"].to_string()).collect();
    let mut expected = vec!["\"stored\"".to_owned()];
    expected.extend((0..50).map(|n| n.to_string()));
    assert_eq!(order, expected);
    let (event, body) = &seen[0];
    assert_eq!(event, "from-sql");
    assert_eq!(body["meta"]["messageId"], stored.id.to_string());
    assert_eq!(body["meta"]["senderType"], "system");

    // The stored message's audience is recorded like any other.
    setup.writer.send(Drain).await.unwrap();
    let rows = persistence::messages::list(&setup.db, &MessageFilter::default(), 100, 0)
        .await
        .unwrap();
    assert_eq!(rows.len(), 51);
    assert!(
        rows.iter().all(|row| row.ws_audience_count == 1),
        "{rows:?}"
    );
}

#[actix::test]
async fn a_burst_of_joins_reaches_each_subscriber_as_one_push() {
    let mut setup = Setup::new().await;
    let channel = setup.channel("room:2");
    let mut first = setup.probe("first", 256, None);
    channel.do_send(Join(first.subscriber()));
    assert_eq!(first.joined().await.len(), 1);

    let mut burst: Vec<Inbox> = ["b", "c", "d"]
        .into_iter()
        .map(|id| setup.probe(id, 256, None))
        .collect();
    for inbox in &burst {
        channel.do_send(Join(inbox.subscriber()));
    }
    for (i, inbox) in burst.iter_mut().enumerate() {
        assert_eq!(inbox.joined().await.len(), i + 2);
    }
    // The one who was there sees all three joins in one push.
    let joins = first.frames().await;
    let ids: Vec<&Value> = joins
        .iter()
        .map(|(_, body)| &body["member"]["presenceId"])
        .collect();
    assert_eq!(ids, ["b", "c", "d"]);
    assert!(joins.iter().all(|(event, _)| event == "presence:join"));
    // Joiners see only who came after them, never themselves.
    let after_b = burst[0].frames().await;
    let ids: Vec<&Value> = after_b
        .iter()
        .map(|(_, body)| &body["member"]["presenceId"])
        .collect();
    assert_eq!(ids, ["c", "d"]);
    let after_c = burst[1].frames().await;
    assert_eq!(after_c.len(), 1);
    assert_eq!(after_c[0].1["member"]["presenceId"], "d");

    // A leave reaches the others once, and the leaver nothing more.
    let mut gone = burst.pop().unwrap();
    channel.do_send(Leave {
        subscriber_id: gone.id,
        dropped: false,
    });
    for inbox in std::iter::once(&mut first).chain(burst.iter_mut()) {
        let leave = inbox.frames().await;
        assert_eq!(leave.len(), 1);
        assert_eq!(leave[0].0, "presence:leave");
        assert_eq!(leave[0].1["member"]["presenceId"], "d");
    }
    channel.send(Barrier).await.unwrap();
    assert!(gone.nothing_pending(), "d heard nothing after it left");
}

#[actix::test]
async fn joins_gathered_over_the_batch_time_go_out_in_one_push_ahead_of_the_next_message() {
    let mut setup = Setup::new().await;
    let channel = setup.channel_with(
        "room:batch",
        ChannelSettings {
            presence_batch: Duration::from_secs(2),
            ..SETTINGS
        },
    );
    let mut first = setup.probe("first", 256, None);
    channel.do_send(Join(first.subscriber()));
    assert_eq!(first.joined().await.len(), 1);
    // Two joins in separate turns of the channel, within the batch time.
    let mut b = setup.probe("b", 256, None);
    channel.do_send(Join(b.subscriber()));
    assert_eq!(b.joined().await.len(), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = setup.probe("c", 256, None);
    channel.do_send(Join(c.subscriber()));
    assert_eq!(c.joined().await.len(), 3);
    channel.send(Barrier).await.unwrap();
    assert!(first.nothing_pending(), "the joins wait for the batch time");
    // A message goes out long before the batch time ends, and the joins
    // go ahead of it, together.
    let sent = std::time::Instant::now();
    setup.publish(&channel, 1).await.unwrap().unwrap();
    let joins = first.frames().await;
    let ids: Vec<&Value> = joins
        .iter()
        .map(|(_, body)| &body["member"]["presenceId"])
        .collect();
    assert_eq!(ids, ["b", "c"]);
    let message = first.frames().await;
    assert_eq!(message[0].0, "e");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(b.frames().await[0].1["member"]["presenceId"], "c");
    // With no message to push them out, they go when the time is up.
    let mut d = setup.probe("d", 256, None);
    channel.do_send(Join(d.subscriber()));
    d.joined().await;
    let joins = first.frames().await;
    assert_eq!(joins.len(), 1);
    assert_eq!(joins[0].1["member"]["presenceId"], "d");
}

#[actix::test]
async fn a_dropped_member_lingers_for_the_grace_and_a_return_within_it_shows_nothing() {
    let mut setup = Setup::new().await;
    let channel = Channel::new(
        "room:grace".into(),
        setup.registry.clone(),
        setup.writer.clone(),
        setup.webhooks.clone(),
        ChannelSettings {
            leave_grace: Duration::from_millis(300),
            ..SETTINGS
        },
        0,
        None,
    )
    .start();
    let mut watcher = setup.probe("watcher", 64, None);
    channel.do_send(Join(watcher.subscriber()));
    watcher.joined().await;
    let mut phone = setup.probe("phone", 64, None);
    channel.do_send(Join(phone.subscriber()));
    phone.joined().await;
    assert_eq!(watcher.frames().await[0].0, "presence:join");

    // Its connection drops, and it is back (a new socket, same member)
    // within the grace: the watcher sees nothing.
    channel.do_send(Leave {
        subscriber_id: phone.id,
        dropped: true,
    });
    let mut back = setup.probe("phone", 64, None);
    channel.do_send(Join(back.subscriber()));
    let members = back.joined().await;
    assert_eq!(members.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(watcher.nothing_pending());

    // It drops and stays away: one leave, once the grace is over.
    let dropped_at = std::time::Instant::now();
    channel.do_send(Leave {
        subscriber_id: back.id,
        dropped: true,
    });
    let leave = watcher.frames().await;
    assert!(dropped_at.elapsed() >= Duration::from_millis(300));
    assert_eq!(leave.len(), 1);
    assert_eq!(leave[0].0, "presence:leave");
    assert_eq!(leave[0].1["member"]["presenceId"], "phone");

    // Leaving on purpose is seen at once.
    let mut other = setup.probe("other", 64, None);
    channel.do_send(Join(other.subscriber()));
    other.joined().await;
    assert_eq!(watcher.frames().await[0].0, "presence:join");
    let left_at = std::time::Instant::now();
    channel.do_send(Leave {
        subscriber_id: other.id,
        dropped: false,
    });
    let leave = watcher.frames().await;
    assert!(left_at.elapsed() < Duration::from_millis(300));
    assert_eq!(leave[0].0, "presence:leave");
}

#[actix::test]
async fn an_ephemeral_burst_reaches_a_small_mailbox_in_few_pushes_and_stores_nothing() {
    let mut setup = Setup::new().await;
    let channel = setup.channel("room:typing");
    // Room for 16 events: one push per message would evict it.
    let mut inbox = setup.probe("reader", 16, None);
    channel.do_send(Join(inbox.subscriber()));
    inbox.joined().await;
    let ephemeral = Arc::new(ChannelDef {
        ephemeral: true,
        ..(*setup.definition).clone()
    });
    let mut replies = Vec::new();
    for n in 0..1000 {
        let (tx, rx) = oneshot::channel();
        channel.do_send(Publish {
            message: Outgoing {
                event: "typing".into(),
                payload: json!({ "n": n }).as_object().unwrap().clone(),
                sender: Sender::SYSTEM,
                channel: ephemeral.clone(),
            },
            reply: Reply::Http(tx),
            via_registry: false,
        });
        replies.push(rx);
    }
    for reply in replies {
        let row = reply.await.unwrap().unwrap();
        assert_eq!(row.seq, None);
    }
    let mut got = Vec::new();
    while got.len() < 1000 {
        match inbox.next().await {
            SubscriberEvent::Messages(delivered) => {
                assert!(delivered.seqs.iter().all(Option::is_none), "no offsets");
                got.extend(delivered.frames.iter().map(|f| decode(f).1["n"].clone()));
            }
            other => panic!("expected messages, got {other:?}"),
        }
    }
    assert_eq!(got, (0..1000).map(|n| json!(n)).collect::<Vec<_>>());
    let _ = setup.writer.send(Drain).await;
    let stored = persistence::messages::list(&setup.db, &MessageFilter::default(), 10, 0)
        .await
        .unwrap();
    assert!(stored.is_empty(), "ephemeral messages are never stored");
}

#[actix::test]
async fn a_full_mailbox_evicts_only_that_subscriber() {
    let mut setup = Setup::new().await;
    let channel = setup.channel("room:3");
    let mut fast = setup.probe("fast", 256, None);
    // Takes one event, then stalls its thread while two more wait.
    let mut slow = setup.probe("slow", 1, Some(Duration::from_millis(800)));
    channel.do_send(Join(fast.subscriber()));
    fast.joined().await;
    channel.do_send(Join(slow.subscriber()));
    // The slow probe's join answer is its first event: it stalls on it.
    assert_eq!(fast.frames().await[0].0, "presence:join");

    // One push per message: wait for each to be delivered.
    let mut delivered = Vec::new();
    let mut left = Vec::new();
    for n in 0..6 {
        setup.publish(&channel, n).await.unwrap().unwrap();
        while delivered.len() <= n {
            for (event, body) in fast.frames().await {
                match event.as_str() {
                    "presence:leave" => left.push(body["member"]["presenceId"].clone()),
                    _ => delivered.push(body["n"].clone()),
                }
            }
        }
    }
    // The fast subscriber got every message, in order.
    assert_eq!(delivered, (0..6).map(|n| json!(n)).collect::<Vec<_>>());
    // The slow one was evicted before the end, and told so.
    let mut n_messages = 0;
    loop {
        match slow.next().await {
            SubscriberEvent::Evicted => break,
            SubscriberEvent::Frames(frames) => n_messages += frames.len(),
            SubscriberEvent::Messages(delivered) => n_messages += delivered.frames.len(),
            SubscriberEvent::Joined(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(n_messages < 6, "evicted only after {n_messages} messages");
    // Nothing more goes to it; the others hear it left, once.
    let last = setup.publish(&channel, 99).await.unwrap().unwrap();
    assert_eq!(last.ws_audience_count, 1);
    loop {
        let frames = fast.frames().await;
        match frames[0].0.as_str() {
            "presence:leave" => left.push(frames[0].1["member"]["presenceId"].clone()),
            _ => {
                assert_eq!(frames[0].1["n"], 99);
                break;
            }
        }
    }
    assert_eq!(left, [json!("slow")]);
    channel.send(Barrier).await.unwrap();
    assert!(slow.nothing_pending());
}

#[actix::test]
async fn a_publisher_with_many_acks_waiting_is_not_taken_for_a_slow_subscriber() {
    let mut setup = Setup::new().await;
    let channel = setup.channel("room:acks");
    // Room for 16 events, and busy (its thread stalled) while 30 of its
    // own publishes are answered: one event per ack would fill it.
    let mut publisher = setup.probe("publisher", 16, Some(Duration::from_millis(1000)));
    channel.do_send(Join(publisher.subscriber()));
    let to: Arc<Recipient<SubscriberEvent>> = Arc::new(publisher.addr.clone().recipient());
    for n in 0..30u64 {
        channel.do_send(Publish {
            message: Outgoing {
                event: "e".into(),
                payload: json!({ "n": n }).as_object().unwrap().clone(),
                sender: Sender::SYSTEM,
                channel: setup.definition.clone(),
            },
            reply: Reply::Socket {
                to: to.clone(),
                ack_id: Some(n),
            },
            via_registry: false,
        });
    }
    // Delivered in order after those 30; then more rounds while the
    // publisher is still stalled (actix refuses a sender's second push
    // past the bound).
    for n in 30..33 {
        let row = setup.publish(&channel, n).await.unwrap().unwrap();
        assert_eq!(
            row.ws_audience_count, 1,
            "the publisher is still subscribed"
        );
    }

    let mut delivered = Vec::new();
    let mut acked = Vec::new();
    while delivered.len() < 33 || acked.len() < 30 {
        match publisher.next().await {
            SubscriberEvent::Joined(_) => {}
            SubscriberEvent::Messages(batch) => {
                delivered.extend(batch.frames.iter().map(|f| decode(f).1["n"].clone()))
            }
            SubscriberEvent::Published(replies) => {
                for reply in replies {
                    assert!(reply.result.is_ok());
                    acked.push(reply.ack_id.unwrap());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, (0..33).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(acked, (0..30).collect::<Vec<_>>());
}

#[actix::test]
async fn stored_messages_reach_only_live_channels() {
    use super::registry::{CountChannels, DeliverStored, JoinChannel};
    let mut setup = Setup::new().await;
    let mut inbox = setup.probe("a", 256, None);
    setup.registry.do_send(JoinChannel {
        name: "room:live".into(),
        join: Join(inbox.subscriber()),
    });
    inbox.joined().await;
    let row = |name: &str| setup.stored_row(name, "sql", json!(["not", "an", "object"]));
    // Nobody listens on room:idle: no channel is started for it.
    setup.registry.do_send(DeliverStored(Stored {
        row: row("room:idle"),
        via_registry: false,
    }));
    let live = row("room:live");
    setup.registry.do_send(DeliverStored(Stored {
        row: live.clone(),
        via_registry: false,
    }));
    let frames = inbox.frames().await;
    assert_eq!(frames.len(), 1);
    let (event, body) = &frames[0];
    assert_eq!(event, "sql");
    // A payload that is not an object adds no fields, as `{...payload}`.
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert_eq!(body["meta"]["messageId"], live.id.to_string());
    assert_eq!(setup.registry.send(CountChannels).await.unwrap(), 1);
}
