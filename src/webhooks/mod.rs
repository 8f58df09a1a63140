//! Webhooks (SPEC §7): every durable message is POSTed to each webhook URL
//! of its channel, by the `WebhookDispatcher` actor on a thread of its own.
//!
//! - **Durable.** A message with webhook URLs enters the `webhook_pending`
//!   backlog in the same write as the message itself, and leaves it once
//!   every URL answered or gave up (recorded in batches, with the
//!   `whAudienceCount`/`whDeliveredCount` counts). After a crash, the
//!   dispatcher reads the backlog at start and sends what is left: at least
//!   once, so receivers deduplicate by `webhook-id`.
//! - **Once per message across nodes.** A backlog entry names the node
//!   whose writer stored the message; a dispatcher reads only its own
//!   node's entries, and takes over (claims) those of nodes that are gone,
//!   at start and when the [`crate::cluster`] agent sees a node go.
//! - **Isolated and bounded.** Channels hand messages over with `try_send`
//!   and never wait. Each URL has its own queue with a bounded number of
//!   requests in flight, so a slow receiver only slows itself. At most
//!   `webhooks.max_queued` deliveries are held in memory; past that, new
//!   messages stay in the backlog and are read back as room frees up.
//! - **Retries.** A connection failure or a timeout is retried after each
//!   of `webhooks.retry_delays_ms`; an HTTP answer is final (2xx counts as
//!   delivered). A receiver that fails three times in a row is paused and
//!   probed, one request at a time, with a doubling pause.
//! - **Signed** the Standard Webhooks way when a secret is configured.
//! - **Batched**, for URLs that opt in (`[[webhooks.batch]]`).
//!
//! # Layout
//! - [`address`]: which addresses may be posted to.
//! - [`signing`]: Standard Webhooks signatures.

pub mod address;
pub mod signing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, ResponseFuture, SpawnHandle,
    WrapFuture,
};
use actix_tls::connect::{Connector as TcpConnector, Resolver};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::messages;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::channel::catalog::{ChannelCatalog, ChannelDef};
use crate::config::{WebhookBatch, WebhookSettings};
use crate::metrics::METRICS;
use crate::persistence::messages::by_ids as messages_by_id;
use crate::persistence::webhooks::{self as queries, WebhookOutcome};
use crate::persistence::writer::{MessageWriter, RecordWebhooks, WebhooksRecorded};

/// A durable message on its way to its channel's webhook URLs.
#[derive(Debug)]
pub struct WebhookMessage {
    /// The message id: `X-InsForge-Message-Id` and `webhook-id`.
    pub id: Uuid,
    /// The resolved channel name (`X-InsForge-Channel`).
    pub channel: Arc<str>,
    /// The event name (`X-InsForge-Event`).
    pub event: String,
    /// The payload as published, serialized once: the request body.
    pub body: Bytes,
}

impl WebhookMessage {
    /// The message of a stored row.
    pub fn from_row(row: &messages::Model) -> WebhookMessage {
        WebhookMessage {
            id: row.id,
            channel: row.channel_name.as_str().into(),
            event: row.event_name.clone(),
            // unwrap: a JSON value always serializes.
            body: serde_json::to_vec(&row.payload).unwrap().into(),
        }
    }
}

/// What channels hold to hand messages to the dispatcher without waiting.
#[derive(Clone)]
pub struct Webhooks {
    addr: Addr<WebhookDispatcher>,
    /// Set when a message could not be handed over (the dispatcher's
    /// mailbox or memory was full): it waits in the backlog, and the
    /// dispatcher reads the backlog again.
    overflowed: Arc<AtomicBool>,
}

impl Webhooks {
    /// Hands a durable message over for `definition`'s URLs, or leaves it
    /// in the backlog. While the dispatcher is full (a dead receiver, say),
    /// messages are not even sent: it reads them from the backlog once it
    /// has room, and the publishing path pays nothing for it meanwhile.
    pub fn dispatch(&self, message: WebhookMessage, definition: Arc<ChannelDef>) {
        if self.is_overflowed()
            || self
                .addr
                .try_send(Dispatch(Arc::new(message), definition))
                .is_err()
        {
            self.defer();
        }
    }

    /// Whether messages are being left in the backlog for now: channels
    /// then do not prepare them for the dispatcher at all (no copy of the
    /// payload), and call [`Webhooks::defer`] once they are durable.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Leaves a durable message in the backlog, for the dispatcher to read
    /// once it has room.
    pub fn defer(&self) {
        self.overflowed.store(true, Ordering::Relaxed);
        METRICS.webhook_deferred.inc();
    }

    /// Takes over the deliveries of nodes that are gone, and sends them
    /// (the cluster agent saw a node stop or die).
    pub fn claim_orphans(&self) {
        self.addr.do_send(ClaimOrphans);
    }

    /// Starts no new request from now on (the server got SIGTERM): what
    /// is in flight finishes, the rest stays in the backlog for the next
    /// start. [`Webhooks::shutdown`] follows once the pipeline drained.
    pub fn stop_starting(&self) {
        self.addr.do_send(StopStarting);
    }

    /// Lets requests in flight finish (up to `grace`), records what
    /// finished, and stops sending; what is left stays in the backlog for
    /// the next start.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.addr.send(Shutdown(grace)).await;
    }
}

/// A message for the dispatcher, with the definition whose URLs get it
/// (channels use [`Webhooks::dispatch`]).
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Dispatch(Arc<WebhookMessage>, Arc<ChannelDef>);

/// See [`Webhooks::shutdown`].
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Shutdown(Duration);

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Any other HTTP answer: final.
    HttpError(u16),
    /// No connection, or it broke: retried.
    NetworkError(String),
    /// No answer in time: retried.
    Timeout,
    /// The address may not be posted to, or does not resolve: final.
    Refused(String),
}

impl Attempt {
    fn metric_index(&self) -> usize {
        match self {
            Attempt::Delivered => 0,
            Attempt::HttpError(_) => 1,
            Attempt::NetworkError(_) | Attempt::Refused(_) => 2,
            Attempt::Timeout => 3,
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self, Attempt::NetworkError(_) | Attempt::Timeout)
    }
}

/// One message for one URL. Only the first [`LOADED_PER_URL`] deliveries
/// waiting for a URL keep the message itself; the others keep its id, and
/// the body is read back from history shortly before it is sent. A dead
/// receiver then costs a few bytes per waiting message, not a copy of each
/// (holding thousands of copies made the allocator a fifth of the
/// publishing path's cost).
struct Delivery {
    id: Uuid,
    /// The message, while held in memory.
    message: Option<Arc<WebhookMessage>>,
    /// 0 for the first attempt.
    attempt: usize,
}

/// The deliveries of one URL.
#[derive(Default)]
struct UrlQueue {
    waiting: VecDeque<Delivery>,
    /// How many of `waiting` hold their message.
    loaded: usize,
    /// Messages of `waiting` are being read back from history.
    loading: bool,
    /// Requests in flight (a batch is one).
    in_flight: usize,
    /// Set for URLs that take batches (`[[webhooks.batch]]`).
    batch: Option<WebhookBatch>,
    /// The oldest waiting delivery has waited `max_wait_ms`: send a batch
    /// even if it is not full.
    due: bool,
    /// The timer that makes the queue due.
    timer: Option<SpawnHandle>,
    /// Connection failures and timeouts in a row; any HTTP answer resets.
    failures: u32,
    /// Probes that failed since the receiver went down: each doubles the
    /// next pause.
    failed_probes: u32,
    /// While the receiver looks down: no request before this, then one
    /// probe at a time until it answers.
    down_until: Option<Instant>,
    /// The timer that ends `down_until`.
    down_timer: Option<SpawnHandle>,
}

impl UrlQueue {
    /// After [`DOWN_AFTER`] failures in a row, the receiver counts as down:
    /// the next probe waits 1 s, doubling with each failure, up to 30 s.
    /// A dead receiver then costs one request per pause, not a stream of
    /// connection attempts.
    fn note(&mut self, attempt: &Attempt) {
        if attempt.is_retryable() {
            // A probe is what was sent once a pause ended (requests that
            // were already in flight when it went down do not count).
            if self.failures >= DOWN_AFTER && self.down_until.is_none() {
                self.failed_probes += 1;
            }
            self.failures += 1;
            if self.failures >= DOWN_AFTER {
                let pause = Duration::from_secs(1 << self.failed_probes.min(5)).min(MAX_DOWN_PAUSE);
                self.down_until = Some(Instant::now() + pause);
            }
        } else if !matches!(attempt, Attempt::Refused(_)) {
            self.failures = 0;
            self.failed_probes = 0;
            self.down_until = None;
        }
    }

    /// How many requests may be in flight now.
    fn bound(&self, max_in_flight: usize) -> usize {
        if self.failures >= DOWN_AFTER {
            1
        } else {
            max_in_flight
        }
    }
}

/// A message some of whose URLs have not finished.
struct Tracked {
    audience: i32,
    delivered: i32,
    remaining: usize,
}

/// Where the read of the backlog stands.
#[derive(Default)]
struct Scan {
    /// A page is being read.
    running: bool,
    /// Claim the deliveries of nodes gone before the next pass (at start,
    /// and when a node went).
    claim: bool,
    /// The last row of the previous page, while a pass is under way.
    cursor: Option<(DateTime<Utc>, Uuid)>,
    /// Another pass is wanted (start-up, or an overflow during a pass).
    wanted: bool,
}

/// Rows read from the backlog per query.
const SCAN_PAGE: usize = 500;
/// Waiting deliveries per URL that keep their message in memory.
const LOADED_PER_URL: usize = 64;
/// Failures in a row after which a receiver counts as down.
const DOWN_AFTER: u32 = 3;
/// The longest pause before probing a receiver that is down.
const MAX_DOWN_PAUSE: Duration = Duration::from_secs(30);
/// How often the dispatcher looks at the backlog, its flag and gauges.
const TICK: Duration = Duration::from_secs(1);
/// Messages the dispatcher's mailbox holds before `try_send` fails.
const MAILBOX_CAPACITY: usize = 4096;
/// Most of a response body read (and thrown away) to keep the connection.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Sends webhooks; see the module documentation.
pub struct WebhookDispatcher {
    settings: WebhookSettings,
    /// The signing key, when requests are signed.
    key: Option<Arc<[u8]>>,
    db: DatabaseConnection,
    /// This node: the owner of the backlog entries it reads.
    node: Arc<str>,
    catalog: Arc<ChannelCatalog>,
    writer: Addr<MessageWriter>,
    /// Made on the dispatcher's own thread at the first request (an
    /// `awc::Client` is not `Send`).
    client: Option<awc::Client>,
    overflowed: Arc<AtomicBool>,
    /// Per URL, while it has deliveries; removed when it has none.
    urls: HashMap<String, UrlQueue>,
    /// Messages with deliveries in memory, by id.
    tracked: HashMap<Uuid, Tracked>,
    /// Deliveries queued, in flight or waiting for a retry.
    n_held: usize,
    /// Finished messages not yet handed to the writer.
    finished: Vec<WebhookOutcome>,
    /// Handed to the writer, not yet written: still in the backlog, so a
    /// scan must not load them again.
    recording: HashSet<Uuid>,
    scan: Scan,
    /// Set by [`Shutdown`]: start nothing new.
    stopping: bool,
    /// Who waits for the requests in flight to end.
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

impl WebhookDispatcher {
    /// Starts the dispatcher on a thread of its own and returns the handle
    /// channels use. It reads the backlog first: deliveries a crash or a
    /// shutdown left are sent again.
    ///
    /// # Panics
    /// If `settings.signing_secret` is invalid (the configuration check
    /// refuses it before).
    pub fn start(
        settings: WebhookSettings,
        db: DatabaseConnection,
        node: Arc<str>,
        catalog: Arc<ChannelCatalog>,
        writer: Addr<MessageWriter>,
    ) -> Webhooks {
        let key = settings
            .signing_key()
            .expect("webhooks.signing_secret was validated")
            .map(Arc::from);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let addr =
            WebhookDispatcher::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| {
                WebhookDispatcher {
                    settings,
                    key,
                    db,
                    node,
                    catalog,
                    writer,
                    client: None,
                    overflowed: flag,
                    urls: HashMap::new(),
                    tracked: HashMap::new(),
                    n_held: 0,
                    finished: Vec::new(),
                    recording: HashSet::new(),
                    scan: Scan {
                        wanted: true,
                        claim: true,
                        ..Scan::default()
                    },
                    stopping: false,
                    shutdown_waiters: Vec::new(),
                }
            });
        Webhooks { addr, overflowed }
    }

    fn build_client(&self) -> awc::Client {
        let resolver = Resolver::custom(address::GuardedResolver {
            block_private: self.settings.block_private_addresses,
        });
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let connector = awc::Connector::new()
            .connector(TcpConnector::new(resolver).service())
            .limit(self.settings.max_connections)
            .timeout(timeout.min(Duration::from_secs(5)));
        awc::Client::builder()
            .connector(connector)
            .timeout(timeout)
            // A redirect is an answer (not 2xx), never a second address.
            .disable_redirects()
            .add_default_header(("user-agent", "realtime-webhooks"))
            .finish()
    }

    fn is_known(&self, id: &Uuid) -> bool {
        self.tracked.contains_key(id) || self.recording.contains(id)
    }

    /// Takes a message's deliveries into memory, one per URL of
    /// `definition` (it has some).
    fn track(
        &mut self,
        message: Arc<WebhookMessage>,
        definition: &ChannelDef,
        ctx: &mut Context<Self>,
    ) {
        let urls = &definition.webhook_urls;
        self.tracked.insert(
            message.id,
            Tracked {
                audience: urls.len() as i32,
                delivered: 0,
                remaining: urls.len(),
            },
        );
        for url in urls {
            self.n_held += 1;
            let queue = self.queue(url);
            let keep = queue.loaded < LOADED_PER_URL;
            queue.loaded += usize::from(keep);
            queue.waiting.push_back(Delivery {
                id: message.id,
                message: keep.then(|| message.clone()),
                attempt: 0,
            });
            self.pump(url, ctx);
        }
        METRICS.webhook_in_memory.set(self.tracked.len() as u64);
    }

    /// Reads back the messages of the first waiting deliveries of `url`
    /// that hold only an id, then sends what is ready.
    fn load(&mut self, url: &str, ctx: &mut Context<Self>) {
        let Some(queue) = self.urls.get_mut(url) else {
            return;
        };
        if queue.loading {
            return;
        }
        let ids: Vec<Uuid> = queue
            .waiting
            .iter()
            .take(LOADED_PER_URL)
            .filter(|delivery| delivery.message.is_none())
            .map(|delivery| delivery.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        queue.loading = true;
        let db = self.db.clone();
        let url = url.to_owned();
        let read = async move { messages_by_id(&db, &ids).await.map(|rows| (ids, rows)) };
        ctx.spawn(read.into_actor(self).map(move |read, dispatcher, ctx| {
            let Some(queue) = dispatcher.urls.get_mut(&url) else {
                return;
            };
            queue.loading = false;
            let (ids, rows) = match read {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(error = %err, "could not read webhook messages back; retrying");
                    ctx.run_later(TICK, move |dispatcher, ctx| dispatcher.pump(&url, ctx));
                    return;
                }
            };
            let mut found: HashMap<Uuid, Arc<WebhookMessage>> = rows
                .iter()
                .map(|row| (row.id, Arc::new(WebhookMessage::from_row(row))))
                .collect();
            let mut gone = Vec::new();
            for delivery in queue.waiting.iter_mut() {
                if delivery.message.is_some() || !ids.contains(&delivery.id) {
                    continue;
                }
                match found.remove(&delivery.id) {
                    Some(message) => {
                        delivery.message = Some(message);
                        queue.loaded += 1;
                    }
                    // Deleted from history meanwhile: nothing to send.
                    None => gone.push(delivery.id),
                }
            }
            queue
                .waiting
                .retain(|delivery| !gone.contains(&delivery.id));
            for id in gone {
                dispatcher.finish_one(id, false, ctx);
            }
            dispatcher.pump(&url, ctx);
        }));
    }

    /// The queue of `url`, made (with its batch rule) if it has none.
    fn queue(&mut self, url: &str) -> &mut UrlQueue {
        if !self.urls.contains_key(url) {
            let batch = self
                .settings
                .batch
                .iter()
                .find(|rule| url.starts_with(&rule.url_prefix))
                .cloned();
            self.urls.insert(
                url.to_owned(),
                UrlQueue {
                    batch,
                    ..UrlQueue::default()
                },
            );
        }
        // unwrap: inserted just above if it was missing.
        self.urls.get_mut(url).unwrap()
    }

    /// Starts as many waiting requests of `url` as its bound allows: one
    /// delivery each, or for a batched URL one batch each, once full or
    /// due.
    fn pump(&mut self, url: &str, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let max_in_flight = self.settings.max_in_flight_per_url;
        loop {
            let Some(queue) = self.urls.get_mut(url) else {
                return;
            };
            if queue.waiting.is_empty() {
                queue.due = false;
                if let Some(timer) = queue.timer.take() {
                    ctx.cancel_future(timer);
                }
                // An idle queue is forgotten, unless it remembers that its
                // receiver is down.
                if queue.in_flight == 0 && queue.failures < DOWN_AFTER {
                    self.urls.remove(url);
                }
                return;
            }
            if queue.in_flight >= queue.bound(max_in_flight) {
                return;
            }
            if let Some(until) = queue.down_until {
                if Instant::now() < until {
                    if queue.down_timer.is_none() {
                        let owned = url.to_owned();
                        let wait = until - Instant::now();
                        queue.down_timer = Some(ctx.run_later(wait, move |dispatcher, ctx| {
                            if let Some(queue) = dispatcher.urls.get_mut(&owned) {
                                queue.down_timer = None;
                            }
                            dispatcher.pump(&owned, ctx);
                        }));
                    }
                    return;
                }
                // Time for a probe (in flight is bounded to one).
                queue.down_until = None;
            }
            let take = match &queue.batch {
                None => 1,
                Some(rule) if queue.waiting.len() >= rule.max_events || queue.due => {
                    rule.max_events.min(queue.waiting.len())
                }
                Some(rule) => {
                    if queue.timer.is_none() {
                        let wait = Duration::from_millis(rule.max_wait_ms);
                        let owned = url.to_owned();
                        queue.timer = Some(ctx.run_later(wait, move |dispatcher, ctx| {
                            if let Some(queue) = dispatcher.urls.get_mut(&owned) {
                                queue.timer = None;
                                queue.due = true;
                            }
                            dispatcher.pump(&owned, ctx);
                        }));
                    }
                    return;
                }
            };
            if queue.waiting.iter().take(take).any(|d| d.message.is_none()) {
                // Read the messages back first; `load` pumps again.
                return self.load(url, ctx);
            }
            let batched = queue.batch.is_some();
            let deliveries: Vec<Delivery> = queue.waiting.drain(..take).collect();
            queue.loaded -= deliveries.len();
            queue.in_flight += 1;
            self.send(url.to_owned(), deliveries, batched, ctx);
        }
    }

    /// Sends one request (one delivery, or a batch) and handles its
    /// outcome when it ends.
    fn send(
        &mut self,
        url: String,
        deliveries: Vec<Delivery>,
        batched: bool,
        ctx: &mut Context<Self>,
    ) {
        if self.client.is_none() {
            self.client = Some(self.build_client());
        }
        // unwrap: set just above.
        let client = self.client.as_ref().unwrap();
        // Every delivery here holds its message: pump loads them first.
        let messages: Vec<&WebhookMessage> = deliveries
            .iter()
            .filter_map(|delivery| delivery.message.as_deref())
            .collect();
        let request = prepare(
            client,
            &url,
            &messages,
            batched,
            self.key.as_deref(),
            &self.settings,
        );
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let started = Instant::now();
        let attempt = async move {
            match request {
                Err(refused) => Attempt::Refused(refused),
                Ok((request, body)) => {
                    let sent = tokio::time::timeout(timeout, async move {
                        let response = request.send_body(body).await;
                        match response {
                            Ok(mut response) => {
                                // Read the (small) answer so the connection
                                // can be reused; its content is not used.
                                let _ = response.body().limit(MAX_RESPONSE_BODY).await;
                                let status = response.status();
                                if status.is_success() {
                                    Attempt::Delivered
                                } else {
                                    Attempt::HttpError(status.as_u16())
                                }
                            }
                            Err(err) => classify(err),
                        }
                    })
                    .await;
                    sent.unwrap_or(Attempt::Timeout)
                }
            }
        };
        // A task of its own on this thread, not a future of the actor's
        // context: actix polls every future of a context whenever the actor
        // wakes, and requests hanging at a dead receiver made each wake-up
        // cost a poll of each of them.
        let dispatcher = ctx.address();
        actix_rt::spawn(async move {
            let attempt = attempt.await;
            METRICS.webhook_latency.observe(started.elapsed());
            dispatcher.do_send(Attempted {
                url,
                deliveries,
                attempt,
            });
        });
    }

    fn on_attempt(
        &mut self,
        url: String,
        deliveries: Vec<Delivery>,
        attempt: Attempt,
        ctx: &mut Context<Self>,
    ) {
        METRICS.webhook_requests[attempt.metric_index()].inc();
        if let Some(queue) = self.urls.get_mut(&url) {
            queue.in_flight -= 1;
            queue.note(&attempt);
        }
        let n_messages = deliveries.len();
        let n_retries = self.settings.retry_delays_ms.len();
        let mut retry = Vec::new();
        for mut delivery in deliveries {
            if attempt.is_retryable() && delivery.attempt < n_retries && !self.stopping {
                delivery.attempt += 1;
                retry.push(delivery);
            } else if self.stopping && attempt.is_retryable() {
                // Shutting down: left in the backlog for the next start.
                self.n_held -= 1;
            } else {
                self.finish_one(delivery.id, attempt == Attempt::Delivered, ctx);
            }
        }
        if retry.is_empty() && attempt != Attempt::Delivered {
            tracing::warn!(%url, n_messages, ?attempt, "webhook not delivered");
        }
        if let Some(first) = retry.first() {
            tracing::debug!(%url, n_messages, ?attempt, "webhook failed; retrying");
            let delay = Duration::from_millis(self.settings.retry_delays_ms[first.attempt - 1]);
            METRICS.webhook_retries.inc();
            ctx.run_later(delay, move |dispatcher, ctx| {
                let queue = dispatcher.queue(&url);
                // Back at the front, in their order, messages kept.
                queue.loaded += retry.len();
                for delivery in retry.into_iter().rev() {
                    queue.waiting.push_front(delivery);
                }
                queue.due = true;
                dispatcher.pump(&url, ctx);
            });
        } else {
            self.pump(&url, ctx);
        }
        self.check_shutdown(ctx);
        self.next_scan(ctx);
    }

    /// A message is done: its outcome goes to the writer with the others
    /// of this turn.
    fn finish(&mut self, outcome: WebhookOutcome, ctx: &mut Context<Self>) {
        self.recording.insert(outcome.message_id);
        self.finished.push(outcome);
        if self.finished.len() == 1 {
            ctx.notify(RecordFinished);
        }
    }

    /// One URL of a message is done; the message is once all are.
    fn finish_one(&mut self, id: Uuid, delivered: bool, ctx: &mut Context<Self>) {
        self.n_held -= 1;
        let Some(tracked) = self.tracked.get_mut(&id) else {
            return;
        };
        tracked.delivered += i32::from(delivered);
        tracked.remaining -= 1;
        if tracked.remaining > 0 {
            return;
        }
        // unwrap: looked up just above.
        let tracked = self.tracked.remove(&id).unwrap();
        METRICS.webhook_in_memory.set(self.tracked.len() as u64);
        let outcome = WebhookOutcome {
            message_id: id,
            audience: tracked.audience,
            delivered: tracked.delivered,
        };
        self.finish(outcome, ctx);
    }

    /// Reads the next page of the backlog if a pass is wanted and memory
    /// has room for it.
    fn next_scan(&mut self, ctx: &mut Context<Self>) {
        if self.scan.running || self.stopping {
            return;
        }
        let room = self.settings.max_queued.saturating_sub(self.n_held);
        if room < self.settings.max_queued / 2 {
            // Not now (the flag stays as it is, so channels keep leaving
            // messages in the backlog): a tick or a finished delivery
            // comes back here.
            return;
        }
        if self.scan.cursor.is_none() {
            if !self.scan.wanted && !self.overflowed.load(Ordering::Relaxed) {
                return;
            }
            // A pass starts: overflows from now on ask for the next one.
            self.scan.wanted = false;
            self.overflowed.store(false, Ordering::Relaxed);
        }
        self.scan.running = true;
        let db = self.db.clone();
        let node = self.node.clone();
        let after = self.scan.cursor;
        let limit = SCAN_PAGE.min(room);
        // A claim starts a pass, so the pass reads what it claimed.
        let claim = after.is_none() && std::mem::take(&mut self.scan.claim);
        let read = async move {
            if claim {
                match crate::persistence::nodes::claim_webhooks(&db, &node).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(n, "took over webhook deliveries of nodes that are gone")
                    }
                    Err(err) => {
                        return Err((err, true));
                    }
                }
            }
            queries::pending_page(&db, &node, after, limit as u64)
                .await
                .map_err(|err| (err, false))
        };
        ctx.spawn(read.into_actor(self).map(move |page, dispatcher, ctx| {
            dispatcher.scan.running = false;
            match page {
                Ok(rows) => dispatcher.on_page(rows, limit, ctx),
                Err((err, claiming)) => {
                    // Tried again at the next tick.
                    dispatcher.scan.claim |= claiming;
                    dispatcher.scan.wanted |= claiming;
                    tracing::warn!(error = %err, "could not read the webhook backlog; retrying");
                }
            }
        }));
    }

    fn on_page(&mut self, rows: Vec<messages::Model>, limit: usize, ctx: &mut Context<Self>) {
        let last_page = rows.len() < limit;
        for row in rows {
            self.scan.cursor = Some((row.created_at, row.id));
            if self.is_known(&row.id) {
                continue;
            }
            // The URLs are the channel's as they are now.
            match row.channel_id.and_then(|id| self.catalog.by_id(id)) {
                Some(definition) if !definition.webhook_urls.is_empty() => {
                    let message = WebhookMessage::from_row(&row);
                    self.track(Arc::new(message), &definition, ctx);
                }
                // The channel was deleted, disabled, or lost its URLs:
                // nothing to send; the message counts as not delivered.
                _ => self.finish(
                    WebhookOutcome {
                        message_id: row.id,
                        audience: row.wh_audience_count,
                        delivered: 0,
                    },
                    ctx,
                ),
            }
        }
        if last_page {
            self.scan.cursor = None;
            // Overflows during the pass ask for another one.
        }
        self.next_scan(ctx);
    }

    fn in_flight(&self) -> usize {
        self.urls.values().map(|queue| queue.in_flight).sum()
    }

    fn check_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.stopping && self.in_flight() == 0 && !self.shutdown_waiters.is_empty() {
            self.record_finished(ctx);
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn record_finished(&mut self, ctx: &mut Context<Self>) {
        if self.finished.is_empty() {
            return;
        }
        self.writer.do_send(RecordWebhooks {
            outcomes: std::mem::take(&mut self.finished),
            notify: ctx.address().recipient(),
        });
    }
}

/// Builds a request with its headers and body, or says why `url` may not
/// be used. One message is posted as its payload, with its event, channel
/// and id in headers; a batch as `{"messages": [{id, channel, event,
/// payload}, …]}`.
fn prepare(
    client: &awc::Client,
    url: &str,
    messages: &[&WebhookMessage],
    batched: bool,
    key: Option<&[u8]>,
    settings: &WebhookSettings,
) -> Result<(awc::ClientRequest, Bytes), String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("invalid url: {err}"))?;
    let host = parsed.host_str().unwrap_or_default();
    if let Some(reason) = address::refuse_literal(host, settings.block_private_addresses) {
        return Err(reason);
    }
    let first = messages.first().ok_or("no message")?;
    let mut request = client
        .post(url)
        .insert_header(("content-type", "application/json"));
    let (id, body) = if batched {
        request = request.insert_header(("x-insforge-batch-size", messages.len().to_string()));
        (format!("batch_{}", first.id), batch_body(messages))
    } else {
        let id = first.id.to_string();
        request = request
            .insert_header(("x-insforge-event", first.event.as_str()))
            .insert_header(("x-insforge-channel", &*first.channel))
            .insert_header(("x-insforge-message-id", id.as_str()));
        (id, first.body.clone())
    };
    if let Some(key) = key {
        // Computed at each attempt: a retry, or a delivery resumed after a
        // restart, is within the receivers' timestamp tolerance.
        let timestamp = Utc::now().timestamp();
        request = request
            .insert_header(("webhook-id", id.as_str()))
            .insert_header(("webhook-timestamp", timestamp.to_string()))
            .insert_header((
                "webhook-signature",
                signing::signature(key, &id, timestamp, &body),
            ));
    }
    Ok((request, body))
}

/// `{"messages":[{"id","channel","event","payload"},…]}`, with each payload
/// spliced in as it was serialized for single requests.
fn batch_body(messages: &[&WebhookMessage]) -> Bytes {
    let mut body = Vec::with_capacity(
        16 + messages
            .iter()
            .map(|message| message.body.len() + 96)
            .sum::<usize>(),
    );
    body.extend_from_slice(b"{\"messages\":[");
    for (index, message) in messages.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        // unwrap: strings always serialize.
        let head = format!(
            r#"{{"id":"{}","channel":{},"event":{},"payload":"#,
            message.id,
            serde_json::to_string(&*message.channel).unwrap(),
            serde_json::to_string(&message.event).unwrap(),
        );
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&message.body);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    body.into()
}

/// Sorts a failed request into retried and final failures.
fn classify(err: awc::error::SendRequestError) -> Attempt {
    use awc::error::{ConnectError, SendRequestError};
    match err {
        SendRequestError::Timeout => Attempt::Timeout,
        SendRequestError::Connect(ConnectError::Timeout) => Attempt::Timeout,
        SendRequestError::Connect(ConnectError::Resolver(err)) => Attempt::Refused(err.to_string()),
        SendRequestError::Connect(ConnectError::NoRecords) => {
            Attempt::Refused("no DNS records".into())
        }
        SendRequestError::Url(err) => Attempt::Refused(err.to_string()),
        other => Attempt::NetworkError(other.to_string()),
    }
}

impl Actor for WebhookDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(TICK, |dispatcher, ctx| dispatcher.next_scan(ctx));
        // Counted once; the writer and `WebhooksRecorded` keep it after.
        let db = self.db.clone();
        ctx.spawn(
            async move { queries::count_pending(&db).await }
                .into_actor(self)
                .map(|count, _, _| {
                    if let Ok(count) = count {
                        METRICS.webhook_backlog.set(count);
                    }
                }),
        );
        self.next_scan(ctx);
    }
}

impl Handler<Dispatch> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, Dispatch(message, definition): Dispatch, ctx: &mut Context<Self>) {
        if self.is_known(&message.id) {
            return;
        }
        let n_urls = definition.webhook_urls.len();
        if self.stopping || self.n_held + n_urls > self.settings.max_queued {
            // Durable already: it waits in the backlog for room.
            self.overflowed.store(true, Ordering::Relaxed);
            METRICS.webhook_deferred.inc();
            return;
        }
        self.track(message, &definition, ctx);
    }
}

/// A request ended (sent by the task that made it).
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Attempted {
    url: String,
    deliveries: Vec<Delivery>,
    attempt: Attempt,
}

impl Handler<Attempted> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, attempted: Attempted, ctx: &mut Context<Self>) {
        let Attempted {
            url,
            deliveries,
            attempt,
        } = attempted;
        self.on_attempt(url, deliveries, attempt, ctx);
    }
}

/// Hands the finished messages to the writer (the dispatcher notifies
/// itself once per turn).
#[derive(actix::Message)]
#[rtype(result = "()")]
struct RecordFinished;

impl Handler<RecordFinished> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, _: RecordFinished, ctx: &mut Context<Self>) {
        self.record_finished(ctx);
    }
}

impl Handler<WebhooksRecorded> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, WebhooksRecorded(ids): WebhooksRecorded, ctx: &mut Context<Self>) {
        METRICS.webhook_backlog.sub(ids.len() as u64);
        for id in ids {
            self.recording.remove(&id);
        }
        self.next_scan(ctx);
    }
}

/// See [`Webhooks::claim_orphans`].
#[derive(actix::Message)]
#[rtype(result = "()")]
struct ClaimOrphans;

impl Handler<ClaimOrphans> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, _: ClaimOrphans, ctx: &mut Context<Self>) {
        self.scan.claim = true;
        self.scan.wanted = true;
        self.next_scan(ctx);
    }
}

/// See [`Webhooks::stop_starting`].
#[derive(actix::Message)]
#[rtype(result = "()")]
struct StopStarting;

impl Handler<StopStarting> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, _: StopStarting, _: &mut Context<Self>) {
        self.stopping = true;
    }
}

impl Handler<Shutdown> for WebhookDispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Shutdown(grace): Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let (tx, rx) = oneshot::channel();
        self.shutdown_waiters.push(tx);
        self.check_shutdown(ctx);
        Box::pin(async move {
            let _ = tokio::time::timeout(grace, rx).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn message(event: &str, payload: Value) -> WebhookMessage {
        WebhookMessage {
            id: Uuid::now_v7(),
            channel: "order:\"1\"".into(),
            event: event.to_owned(),
            body: serde_json::to_vec(&payload).unwrap().into(),
        }
    }

    #[test]
    fn a_batch_body_is_json_with_each_message_whole() {
        let first = message("a", json!({ "x": [1, { "y": "}" }] }));
        let second = message("b \"quoted\"", json!({}));
        let body: Value = serde_json::from_slice(&batch_body(&[&first, &second])).unwrap();
        assert_eq!(
            body,
            json!({ "messages": [
                { "id": first.id.to_string(), "channel": "order:\"1\"", "event": "a", "payload": { "x": [1, { "y": "}" }] } },
                { "id": second.id.to_string(), "channel": "order:\"1\"", "event": "b \"quoted\"", "payload": {} },
            ] })
        );
    }
}
