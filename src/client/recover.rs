//! Connection state recovery on the client's side (SPEC §9b): the private
//! id a CONNECT answer carries, the delivery log, handing a session's
//! state over when its connection drops, and bringing it back: the
//! subscriptions, then every missed message from history, then live again
//! without a gap or a duplicate at the seam.
//!
//! The seam: a recovered session joins its channels first and holds the
//! live messages they send; it then reads what it missed from history, in
//! `seq` order, page by page (the last page read after every join was
//! answered, so everything committed before a join is in history, and
//! everything after it arrives live); then it sends the held messages
//! whose `seq` the replay did not already cover.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use entity::messages;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Client, ClientEvent, NAMESPACE};
use crate::auth::Principal;
use crate::channel::{open_stored, Delivered};
use crate::engineio::{CloseReason, Sid};
use crate::metrics::METRICS;
use crate::permissions::Decision;
use crate::persistence::recovery::{self as queries, Missed};
use crate::recovery::store::now_ms;
use crate::recovery::{DeliveryLog, SessionState};
use crate::socketio::{DisconnectReason, Socket};

/// How long a replay waits for the client's queue to drain before the next
/// page.
const REPLAY_BACKOFF: Duration = Duration::from_millis(10);
/// Most live messages held while a replay runs; past it the connection is
/// closed and the client recovers again from where it got to.
const MAX_HELD: usize = 4096;

/// A recovery the server can carry out.
#[derive(Debug)]
pub struct Plan {
    /// The private id, kept.
    pid: String,
    /// The socket id, kept.
    sid: String,
    /// What the client missed.
    missed: Missed,
    /// The last delivery the client confirmed.
    last_confirmed: Option<i64>,
}

/// A replay under way.
pub(super) struct Replay {
    missed: Missed,
    /// The `seq` of the last message replayed.
    cursor: i64,
    /// Channels whose join is not answered yet.
    joining: HashSet<String>,
    /// Per channel, the highest `seq` replayed.
    replayed: HashMap<String, i64>,
    /// Live messages held until the replay ends.
    held: Vec<Arc<Delivered>>,
    n_held: usize,
    /// A page is being read.
    reading: bool,
}

/// The CONNECT payload's `pid` and `offset`, if it asks for a recovery.
pub(super) fn recovery_request(auth: Option<&Value>) -> Option<(String, Option<i64>)> {
    let auth = auth?;
    let pid = auth.get("pid")?.as_str()?;
    if pid.is_empty() || pid.len() > 64 {
        return None;
    }
    // An offset that is not one of ours cannot be recovered from: treat it
    // as pointing nowhere (the log does not know it).
    let offset = match auth.get("offset") {
        None | Some(Value::Null) => None,
        Some(Value::String(offset)) => Some(offset.parse().unwrap_or(i64::MIN)),
        Some(_) => Some(i64::MIN),
    };
    Some((pid.to_owned(), offset))
}

/// Who a session belongs to: a recovery must present the same.
pub(super) fn identity(principal: &Principal) -> String {
    match principal {
        Principal::Jwt { sub, role, .. } => format!("{}:{sub}", role.as_str()),
        Principal::AnonKey => "anon-key".into(),
        Principal::ApiKey => "api-key".into(),
    }
}

/// Whether a connection that ended for `reason` may be recovered (and its
/// presence linger): it dropped, or the server closed it; not when the
/// client left.
pub(super) fn is_recoverable(reason: DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::Closed(
            CloseReason::TransportClose
                | CloseReason::PingTimeout
                | CloseReason::ServerClose
                | CloseReason::SlowClient
        )
    )
}

impl Client {
    /// Starts working out whether session `pid` can be recovered; the
    /// answer comes back as [`ClientEvent::Recovery`].
    pub(super) fn plan_recovery(
        &self,
        socket: &Socket<'_, '_, Self>,
        pid: String,
        offset: Option<i64>,
    ) {
        let Some(store) = self.hub.recovery.clone() else {
            return;
        };
        let Some(principal) = self.principal.clone() else {
            return;
        };
        let hub = self.hub.clone();
        let client = socket.address();
        actix::spawn(async move {
            let mut taken = None;
            let planned = async {
                let Some(state) = store.take(&pid).await.map_err(|err| {
                    tracing::warn!(error = %err, "could not read a saved session");
                    "the saved session could not be read"
                })?
                else {
                    return Err("no such session within the recovery window");
                };
                if state.identity != identity(&principal) {
                    store.put_back(&pid, state).await;
                    return Err("the session belongs to someone else");
                }
                taken = Some(state.clone());
                let missed = match state.log.missed(offset) {
                    Some(missed) => missed,
                    // A checkpoint (its node died) that the client got past.
                    None if state.live_on.is_some() => {
                        since_checkpoint(&hub.db, &state.log, offset).await?
                    }
                    None => return Err("the offset is not one this session can resume from"),
                };
                for (name, _) in &missed.channels {
                    let channel = hub
                        .catalog
                        .resolve(name)
                        .ok_or("a channel of the session is gone or disabled")?;
                    let decision = hub.permissions.may_subscribe(&principal, name, &channel);
                    if decision.await != Decision::Allow {
                        return Err("a channel of the session may no longer be subscribed");
                    }
                }
                let names: Vec<&str> = missed.channels.iter().map(|(n, _)| n.as_str()).collect();
                let deleted_through = queries::deleted_through(&hub.db, &names)
                    .await
                    .map_err(|_| "history could not be read")?;
                let oldest_extra = missed.extra.iter().min().map_or(i64::MAX, |seq| seq - 1);
                let holes = missed
                    .channels
                    .iter()
                    .zip(&deleted_through)
                    .any(|((_, floor), deleted)| deleted > floor || *deleted > oldest_extra);
                if holes {
                    return Err("missed messages were deleted from history");
                }
                let max = hub.recovery_settings.max_messages;
                let n_missed = queries::count_missed(&hub.db, &missed, max)
                    .await
                    .map_err(|_| "history could not be read")?;
                if n_missed > max {
                    return Err("more missed messages than recovery.max_messages");
                }
                Ok(Plan {
                    pid: pid.clone(),
                    sid: state.sid,
                    missed,
                    // The client proved it has its offset's message: a
                    // drop before anything new arrives resumes from it.
                    last_confirmed: offset.or(state.log.last_confirmed),
                })
            };
            let planned: Result<Plan, &'static str> = planned.await;
            if let Err(why) = &planned {
                let checkpoint = taken.as_ref().is_some_and(|state| state.live_on.is_some());
                tracing::debug!(
                    why,
                    ?offset,
                    checkpoint,
                    "connection not recovered; starting afresh"
                );
            }
            if !client.connected() {
                // The connection closed while its recovery was worked out:
                // the state stays for its next attempt.
                if let (Ok(_), Some(state)) = (&planned, taken) {
                    store.put_back(&pid, state).await;
                }
                return;
            }
            client.do_send(crate::engineio::SessionEvent(ClientEvent::Recovery(
                planned.map_err(|_| ()),
            )));
        });
    }

    /// Answers the CONNECT that asked for a recovery: restores the session
    /// if `plan` says how, else starts a fresh one.
    pub(super) fn on_recovery(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        plan: Result<Plan, ()>,
    ) {
        let Ok(plan) = plan else {
            METRICS.recoveries[1].inc();
            let pid = new_pid();
            if socket.accept(NAMESPACE, None, Some(&pid)).is_some() {
                self.pid = Some(pid.into());
                self.start_session(socket);
            }
            return;
        };
        METRICS.recoveries[0].inc();
        let Some(_) = socket.accept(NAMESPACE, Some(Sid::restored(&plan.sid)), Some(&plan.pid))
        else {
            return;
        };
        let max_unconfirmed = self.hub.recovery_settings.max_unconfirmed;
        self.pid = Some(plan.pid.into());
        self.start_session(socket);
        self.log = Some(DeliveryLog::resume(
            max_unconfirmed,
            &plan.missed.channels,
            plan.last_confirmed,
        ));
        let names: Vec<String> = plan
            .missed
            .channels
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        self.replay = Some(Box::new(Replay {
            missed: plan.missed,
            cursor: i64::MIN,
            joining: names.iter().cloned().collect(),
            replayed: HashMap::new(),
            held: Vec::new(),
            n_held: 0,
            reading: false,
        }));
        let Some(subscriber) = self.subscriber(socket) else {
            return;
        };
        for name in names {
            self.join(name, subscriber.clone(), Vec::new());
        }
        self.read_missed(socket);
    }

    /// A join was answered; a replay waits for all of its channels'.
    pub(super) fn on_replay_join(&mut self, socket: &mut Socket<'_, '_, Self>, name: &str) {
        let Some(replay) = &mut self.replay else {
            return;
        };
        if replay.joining.remove(name) {
            self.read_missed(socket);
        }
    }

    /// A channel of a replay refused its join (it filled up meanwhile): it
    /// is left out of the replay, and the rest goes on.
    pub(super) fn on_replay_join_refused(&mut self, socket: &mut Socket<'_, '_, Self>, name: &str) {
        if let Some(log) = &mut self.log {
            log.unsubscribed(name);
        }
        let Some(replay) = &mut self.replay else {
            return;
        };
        if replay.joining.remove(name) {
            replay
                .missed
                .channels
                .retain(|(channel, _)| channel != name);
            self.read_missed(socket);
        }
    }

    /// Holds live messages while a replay runs; returns them otherwise,
    /// without those a replay sent already.
    pub(super) fn hold_during_replay(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        delivered: Arc<Delivered>,
    ) -> Option<Arc<Delivered>> {
        let Some(replay) = &mut self.replay else {
            let Some(&through) = self.replayed_through.get(&delivered.channel) else {
                return Some(delivered);
            };
            if delivered.seqs.iter().flatten().any(|seq| *seq > through) {
                // The live flow passed the replay: nothing more to skip.
                self.replayed_through.remove(&delivered.channel);
            }
            return unsent(delivered, through);
        };
        replay.n_held += delivered.frames.len();
        replay.held.push(delivered);
        if replay.n_held > MAX_HELD {
            // The client cannot take the replay and the live flow both: it
            // comes back and recovers from where it got to.
            tracing::debug!("live messages piled up during a replay; closing");
            socket.close(CloseReason::SlowClient);
        }
        None
    }

    /// Reads the next page of missed messages once every join is answered
    /// and the client's queue has room.
    fn read_missed(&mut self, socket: &mut Socket<'_, '_, Self>) {
        let Some(replay) = &mut self.replay else {
            return;
        };
        if replay.reading || !replay.joining.is_empty() {
            return;
        }
        let batch = self.hub.replay_batch;
        if socket.queued() > batch {
            socket.run_later(REPLAY_BACKOFF, |client, socket| client.read_missed(socket));
            return;
        }
        replay.reading = true;
        let db = self.hub.db.clone();
        let missed = replay.missed.clone();
        let after = replay.cursor;
        let client = socket.address();
        actix::spawn(async move {
            let page = queries::missed_page(&db, &missed, after, batch as u64).await;
            client.do_send(crate::engineio::SessionEvent(ClientEvent::Replayed(
                page.map_err(|err| err.to_string()),
            )));
        });
    }

    /// A page of missed messages: sends it, then reads on or ends the
    /// replay.
    pub(super) fn on_replayed(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        page: Result<Vec<messages::Model>, String>,
    ) {
        let Some(replay) = &mut self.replay else {
            return;
        };
        replay.reading = false;
        let rows = match page {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "could not read missed messages; closing so the client retries");
                return socket.close(CloseReason::ServerClose);
            }
        };
        let last_page = rows.len() < self.hub.replay_batch;
        let mut frames = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(seq) = row.seq else { continue };
            frames.push(open_stored(row).seal(Some(seq)));
            replay.cursor = seq;
            let replayed = replay.replayed.entry(row.channel_name.clone()).or_default();
            *replayed = (*replayed).max(seq);
            if let Some(log) = &mut self.log {
                log.delivered(&row.channel_name, [seq]);
            }
        }
        METRICS.recovery_replayed.add(frames.len() as u64);
        socket.send_frames(&frames);
        if !last_page {
            return self.read_missed(socket);
        }
        // Caught up: what came live meanwhile, minus what the replay sent,
        // and from now on, what comes live below what it sent.
        // unwrap: checked above.
        let replay = self.replay.take().unwrap();
        self.replayed_through = replay
            .missed
            .channels
            .iter()
            .map(|(name, floor)| {
                let replayed = replay.replayed.get(name).copied().unwrap_or(i64::MIN);
                (Arc::from(name.as_str()), replayed.max(*floor))
            })
            .collect();
        for delivered in replay.held {
            if let Some(delivered) = self.hold_during_replay(socket, delivered) {
                self.send_delivered(socket, &delivered);
            }
        }
    }

    /// Sends a channel's messages and logs them.
    pub(super) fn send_delivered(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        delivered: &Delivered,
    ) {
        socket.send_frames(&delivered.frames);
        if let Some(log) = &mut self.log {
            log.delivered(&delivered.channel, delivered.seqs.iter().flatten().copied());
        }
    }

    /// Another connection recovers this session: hand the state over and
    /// close (the client reconnects if it is in fact alive, and recovers
    /// in turn).
    pub(super) fn on_hand_over(
        &mut self,
        socket: &mut Socket<'_, '_, Self>,
        to: oneshot::Sender<SessionState>,
    ) {
        if let Some(state) = self.session_state() {
            let _ = to.send(state);
        }
        self.handed_over = true;
        socket.close(CloseReason::ServerClose);
    }

    /// Shared recovery (PostgreSQL): saves where this live session stands
    /// (its channels, what the client confirmed), so a client whose node
    /// dies can recover on another ([`SessionState::live_on`]). Called when
    /// its channels change and when a pong confirmed deliveries.
    pub(super) fn checkpoint(&self) {
        let (Some(store), Some(pid)) = (&self.hub.recovery, &self.pid) else {
            return;
        };
        if store.is_shared() {
            if let Some(state) = self.session_state() {
                store.checkpoint(pid, state);
            }
        }
    }

    /// What a later recovery of this session needs, if it can have one.
    fn session_state(&self) -> Option<SessionState> {
        let log = self.log.as_ref()?;
        if let Some(replay) = &self.replay {
            // Messages of a replay not yet sent that lie below their
            // channel's floor would be lost to the next recovery.
            if replay.missed.extra.iter().any(|seq| *seq > replay.cursor) {
                return None;
            }
        }
        Some(SessionState {
            sid: self.socket_id.to_string(),
            identity: identity(self.principal.as_ref()?),
            log: log.state(),
            dropped_at_ms: now_ms(),
            live_on: None,
        })
    }

    /// The connection ended for `reason`: leaves what a recovery needs, or
    /// forgets the session when the client left for good.
    pub(super) fn end_session(&mut self, reason: DisconnectReason) {
        let (Some(store), Some(pid)) = (&self.hub.recovery, &self.pid) else {
            return;
        };
        if self.handed_over {
            // Its state went to the connection that recovers it.
            store.release(pid, self.subscriber_id);
            return;
        }
        let state = if is_recoverable(reason) {
            self.session_state()
        } else {
            None
        };
        store.end(pid, self.subscriber_id, state);
    }
}

/// `delivered` without the messages at or below `through` (`None` if
/// nothing is left).
fn unsent(delivered: Arc<Delivered>, through: i64) -> Option<Arc<Delivered>> {
    let fresh: Vec<usize> = (0..delivered.frames.len())
        .filter(|&i| delivered.seqs[i].is_none_or(|seq| seq > through))
        .collect();
    if fresh.len() == delivered.frames.len() {
        return Some(delivered);
    }
    if fresh.is_empty() {
        return None;
    }
    Some(Arc::new(Delivered {
        channel: delivered.channel.clone(),
        frames: fresh.iter().map(|&i| delivered.frames[i].clone()).collect(),
        seqs: fresh.iter().map(|&i| delivered.seqs[i]).collect(),
    }))
}

/// What a client missed by a checkpoint it got past (ARCHITECTURE.md,
/// "Several nodes"): exact only when, besides its offset's channel, no
/// channel of the session has messages after the checkpoint (what the
/// client got of them since cannot be known); otherwise not recoverable.
async fn since_checkpoint(
    db: &sea_orm::DatabaseConnection,
    log: &crate::recovery::LogState,
    offset: Option<i64>,
) -> Result<Missed, &'static str> {
    let offset = offset.ok_or("the offset is not one this session can resume from")?;
    let unreadable = |_| "history could not be read";
    let channel = queries::channel_of(db, offset)
        .await
        .map_err(unreadable)?
        .ok_or("the offset is not in history")?;
    let missed = log
        .missed_since_checkpoint(offset, &channel)
        .ok_or("the offset is not one this session can resume from")?;
    let others = Missed {
        channels: missed
            .channels
            .iter()
            .filter(|(name, _)| *name != channel)
            .cloned()
            .collect(),
        extra: Vec::new(),
    };
    if queries::count_missed(db, &others, 1)
        .await
        .map_err(unreadable)?
        > 0
    {
        return Err("the session's node died while other channels had messages for it");
    }
    Ok(missed)
}

/// A new private session id: 128 random bits, unguessable.
pub(super) fn new_pid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
