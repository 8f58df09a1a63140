//! Where sessions wait to be recovered: live ones by private id (a client
//! that comes back before its old connection timed out takes the state
//! from the old session, which closes), dropped ones in memory for the
//! recovery window, and, after a graceful shutdown, in the database
//! (`recovery_sessions`), for the clients that come back to the next
//! process.
//!
//! On PostgreSQL, where several nodes share the database, a dropped
//! session is written there as it drops (in batches, off the socket's
//! path), so its client may come back to any node: memory then holds only
//! what is not written yet, and a recovery takes the state from both.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::WeakRecipient;
use parking_lot::Mutex;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::log::LogState;
use crate::cluster::Peers;
use crate::config::DatabaseSettings;
use crate::persistence::recovery::{self as queries, SavedSession};
use crate::persistence::PersistenceError;

/// How long a live session has to hand its state over.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a recovery looks for a state another node hands over.
const HAND_OVER_POLL: Duration = Duration::from_millis(50);
/// How often dropped sessions past the window are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often dropped sessions are written, when they are shared.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Dropped sessions written per transaction.
const WRITE_CHUNK: usize = 500;

/// What a session leaves for its recovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The Socket.IO socket id, which the recovered socket keeps.
    pub sid: String,
    /// Who the session belongs to ([`identity`](crate::client)); a
    /// recovery must come with the same.
    pub identity: String,
    /// What was delivered.
    pub log: LogState,
    /// When the connection dropped, in Unix milliseconds.
    pub dropped_at_ms: i64,
    /// Set on a checkpoint: the state of a session still live on that node
    /// when it was saved (it does not know what was sent since). Recovered
    /// from only once that node does not hand the session over (it died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_on: Option<String>,
}

/// Asks a live session for its state; it answers on the sender, then
/// closes its connection without saving anything.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct HandOver(pub oneshot::Sender<SessionState>);

/// Sessions that can be recovered; one per process, shared by every
/// session.
pub struct RecoveryStore {
    db: DatabaseConnection,
    /// For the connection that saves sessions at shutdown.
    database: DatabaseSettings,
    window: Duration,
    /// Dropped sessions are written as they drop (PostgreSQL).
    shared: bool,
    /// How many other nodes are alive: a session unknown here may be live
    /// on one of them.
    peers: Peers,
    /// This node, named in its checkpoints.
    node: Arc<str>,
    /// Held while dropped sessions are written and while a recovery looks
    /// for one, so a recovery never misses a state half-way to the
    /// database, and never leaves a stale copy there.
    writing: tokio::sync::Mutex<()>,
    /// Set by [`RecoveryStore::save_all`] at shutdown: the writing task
    /// writes no more (a write cut off when the runtime stops would drop
    /// its connection outside any runtime).
    closed: std::sync::atomic::AtomicBool,
    /// Resolves once the writing task ended (its connections closed).
    writer_ended: Mutex<Option<oneshot::Receiver<()>>>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Live sessions by private id (the session's own copy of it), with
    /// their subscriber id (a session that ends only removes its own
    /// entry). Weak: a strong recipient costs allocations per idle socket,
    /// and a session that ends removes its entry anyway.
    live: HashMap<Arc<str>, (u64, WeakRecipient<HandOver>)>,
    /// Dropped sessions by private id (shared: those not written yet).
    dropped: HashMap<String, SessionState>,
    /// Shared: sessions that ended for good, whose saved state (if any)
    /// is still to be deleted.
    forgotten: HashSet<String>,
    /// Shared: checkpoints of live sessions not written yet.
    checkpoints: HashMap<String, SessionState>,
    last_prune: Instant,
}

impl RecoveryStore {
    /// A store that keeps dropped sessions for `window`, reads saved ones
    /// from `db`, and saves them at shutdown in the database of `database`.
    pub fn new(
        db: DatabaseConnection,
        database: DatabaseSettings,
        window: Duration,
        peers: Peers,
        node: Arc<str>,
    ) -> Self {
        RecoveryStore {
            peers,
            node,
            shared: db.get_database_backend() == DbBackend::Postgres,
            db,
            database,
            window,
            writing: tokio::sync::Mutex::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
            writer_ended: Mutex::new(None),
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                dropped: HashMap::new(),
                forgotten: HashSet::new(),
                checkpoints: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    /// Shared: writes dropped sessions every [`WRITE_EVERY`] (and forgets
    /// expired ones now and then) until the store is dropped.
    pub fn start_writing(self: &Arc<Self>, arbiter: &actix::ArbiterHandle) {
        if !self.shared {
            return;
        }
        let (ended, writer_ended) = oneshot::channel();
        *self.writer_ended.lock() = Some(writer_ended);
        let store = Arc::downgrade(self);
        let mut database = self.database.clone();
        database.pool_size = 2;
        // On an arbiter of its own, so a write cut off by a shutdown is
        // dropped inside a runtime.
        arbiter.spawn(async move {
            // Connections of its own, made on this (the system's) runtime:
            // the pool's may belong to HTTP workers, whose runtimes end
            // first at a shutdown, just when sessions drop by the thousand.
            let own = crate::persistence::connect(&database).await;
            if let Err(err) = &own {
                tracing::warn!(error = %err, "cannot open connections to save sessions; using the shared pool");
            }
            let mut last_expiry = Instant::now();
            loop {
                tokio::time::sleep(WRITE_EVERY).await;
                let Some(store) = store.upgrade() else {
                    return;
                };
                if store.closed.load(Ordering::Acquire) {
                    if let Ok(own) = own {
                        let _ = own.close().await;
                    }
                    let _ = ended.send(());
                    return;
                }
                let db = own.as_ref().unwrap_or(&store.db);
                if let Err(err) = store.write_dropped(db).await {
                    tracing::warn!(error = %err, "cannot save dropped sessions for recovery; retrying");
                }
                if last_expiry.elapsed() >= PRUNE_EVERY * 6 {
                    last_expiry = Instant::now();
                    if let Err(err) = store.forget_expired().await {
                        tracing::warn!(error = %err, "cannot forget expired saved sessions");
                    }
                }
            }
        });
    }

    /// Whether dropped sessions (and checkpoints) are saved for every node.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Shared: saves (soon) where live session `pid` stands.
    pub fn checkpoint(&self, pid: &str, mut state: SessionState) {
        state.live_on = Some(self.node.to_string());
        self.inner.lock().checkpoints.insert(pid.to_owned(), state);
    }

    /// Writes the dropped sessions memory holds (and deletes the forgotten
    /// ones) through `db`; returns how many were saved. What cannot be
    /// written stays in memory.
    async fn write_dropped(&self, db: &DatabaseConnection) -> Result<usize, PersistenceError> {
        let _writing = self.writing.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Ok(0);
        }
        self.write_dropped_locked(db).await
    }

    async fn write_dropped_locked(
        &self,
        db: &DatabaseConnection,
    ) -> Result<usize, PersistenceError> {
        let oldest = now_ms() - self.window.as_millis() as i64;
        let (sessions, forgotten): (Vec<(String, SessionState)>, Vec<String>) = {
            let mut inner = self.inner.lock();
            // A checkpoint is saved as a session of its own, unless the
            // session dropped or ended since.
            let mut sessions: HashMap<String, SessionState> = inner
                .dropped
                .drain()
                .filter(|(_, state)| state.dropped_at_ms >= oldest)
                .collect();
            let checkpoints: Vec<(String, SessionState)> = inner.checkpoints.drain().collect();
            for (pid, state) in checkpoints {
                if !inner.forgotten.contains(&pid) {
                    sessions.entry(pid).or_insert(state);
                }
            }
            (
                sessions.into_iter().collect(),
                inner.forgotten.drain().collect(),
            )
        };
        if sessions.is_empty() && forgotten.is_empty() {
            return Ok(0);
        }
        let saved: Vec<SavedSession> = sessions
            .iter()
            .filter_map(|(pid, state)| {
                Some(SavedSession {
                    pid: pid.clone(),
                    saved_at_ms: state.dropped_at_ms,
                    state: serde_json::to_string(state).ok()?,
                })
            })
            .collect();
        let written = async {
            for chunk in saved.chunks(WRITE_CHUNK) {
                queries::save_sessions(db, chunk).await?;
            }
            queries::forget_sessions(db, &forgotten, now_ms()).await
        };
        if let Err(err) = written.await {
            // Back in memory, unless newer news came meanwhile.
            let mut inner = self.inner.lock();
            for (pid, state) in sessions {
                if inner.forgotten.contains(&pid) {
                    continue;
                }
                if state.live_on.is_some() {
                    inner.checkpoints.entry(pid).or_insert(state);
                } else {
                    inner.dropped.entry(pid).or_insert(state);
                }
            }
            for pid in forgotten {
                if !inner.dropped.contains_key(&pid) {
                    inner.forgotten.insert(pid);
                }
            }
            return Err(err);
        }
        Ok(saved.len())
    }

    /// Forgets sessions saved by earlier processes that are past the
    /// window (at start).
    ///
    /// # Errors
    /// Database failures.
    pub async fn forget_expired(&self) -> Result<u64, PersistenceError> {
        queries::delete_sessions_before(&self.db, now_ms() - self.window.as_millis() as i64).await
    }

    /// A session with private id `pid` is live.
    pub fn register(&self, pid: Arc<str>, subscriber_id: u64, session: WeakRecipient<HandOver>) {
        self.inner.lock().live.insert(pid, (subscriber_id, session));
    }

    /// The session `subscriber_id` with private id `pid` ended after
    /// handing its state over to a recovering connection.
    pub fn release(&self, pid: &str, subscriber_id: u64) {
        let mut inner = self.inner.lock();
        inner.checkpoints.remove(pid);
        if inner
            .live
            .get(pid)
            .is_some_and(|(id, _)| *id == subscriber_id)
        {
            inner.live.remove(pid);
        }
    }

    /// Another node recovers session `pid`: if it is live here, it hands
    /// its state over (and closes), and the state is saved for that node
    /// to take.
    pub async fn hand_over_elsewhere(&self, pid: &str) {
        let live = self.inner.lock().live.remove(pid);
        let Some((_, session)) = live else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        let Some(Ok(())) = session
            .upgrade()
            .map(|session| session.try_send(HandOver(tx)))
        else {
            return;
        };
        let Ok(Ok(state)) = tokio::time::timeout(HAND_OVER_TIMEOUT, rx).await else {
            return;
        };
        let Ok(json) = serde_json::to_string(&state) else {
            return;
        };
        let saved = SavedSession {
            pid: pid.to_owned(),
            saved_at_ms: now_ms(),
            state: json,
        };
        if let Err(err) = queries::save_sessions(&self.db, &[saved]).await {
            tracing::warn!(error = %err, "cannot save a session another node recovers");
        }
    }

    /// The session `subscriber_id` with private id `pid` ended, leaving
    /// `state` to recover (`None`: the client left for good).
    pub fn end(&self, pid: &str, subscriber_id: u64, state: Option<SessionState>) {
        let mut inner = self.inner.lock();
        if inner
            .live
            .get(pid)
            .is_some_and(|(id, _)| *id == subscriber_id)
        {
            inner.live.remove(pid);
        }
        match state {
            // Also when a recovery took the live entry meanwhile: it looks
            // here once the hand-over fails.
            Some(state) => {
                inner.forgotten.remove(pid);
                inner.checkpoints.remove(pid);
                inner.dropped.insert(pid.to_owned(), state);
            }
            None => {
                inner.dropped.remove(pid);
                inner.checkpoints.remove(pid);
                if self.shared {
                    inner.forgotten.insert(pid.to_owned());
                }
            }
        }
        if inner.last_prune.elapsed() >= PRUNE_EVERY {
            inner.last_prune = Instant::now();
            let oldest = now_ms() - self.window.as_millis() as i64;
            inner
                .dropped
                .retain(|_, state| state.dropped_at_ms >= oldest);
        }
    }

    /// Puts back a state that [`Self::take`] returned but that the caller
    /// could not use (a credential of another user, a connection that
    /// closed meanwhile), for the session's next attempt. Shared, the take
    /// left a dated mark in the database that a write of the state as it
    /// dropped would not replace (it is older), so the state goes back over
    /// the mark now, stamped now; it keeps its own drop time, which is what
    /// the window counts from.
    pub async fn put_back(&self, pid: &str, state: SessionState) {
        if self.shared {
            let _writing = self.writing.lock().await;
            if let Ok(json) = serde_json::to_string(&state) {
                let saved = SavedSession {
                    pid: pid.to_owned(),
                    saved_at_ms: now_ms(),
                    state: json,
                };
                match queries::save_sessions(&self.db, &[saved]).await {
                    Ok(()) => return,
                    Err(err) => {
                        tracing::warn!(error = %err, "could not put a session back; kept in memory")
                    }
                }
            }
        }
        self.inner.lock().dropped.insert(pid.to_owned(), state);
    }

    /// Takes the state of session `pid`: from the live session (which
    /// closes), from memory, or from the database; `None` if there is none
    /// within the window.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn take(&self, pid: &str) -> Result<Option<SessionState>, PersistenceError> {
        // Shared: no write is under way while this looks (and none starts).
        let _writing = if self.shared {
            Some(self.writing.lock().await)
        } else {
            None
        };
        let (dropped, live) = {
            let mut inner = self.inner.lock();
            match inner.dropped.remove(pid) {
                Some(state) => (Some(state), None),
                None => (None, inner.live.remove(pid)),
            }
        };
        if let Some(state) = dropped {
            if self.shared {
                // An older state of the same session may be saved.
                queries::take_session(&self.db, pid, now_ms()).await?;
            }
            return Ok(self.within_window(state));
        }
        if let Some((_, session)) = live {
            let (tx, rx) = oneshot::channel();
            let handed = session
                .upgrade()
                .map(|session| session.try_send(HandOver(tx)));
            if let Some(Ok(())) = handed {
                if let Ok(Ok(state)) = tokio::time::timeout(HAND_OVER_TIMEOUT, rx).await {
                    return Ok(Some(state));
                }
            }
            // It ended on its own meanwhile, and left its state here.
            let state = self.inner.lock().dropped.remove(pid);
            return Ok(state.and_then(|state| self.within_window(state)));
        }
        let saved = parse(queries::take_session(&self.db, pid, now_ms()).await?);
        // The node a checkpoint's session was live on, when another.
        let elsewhere = saved
            .as_ref()
            .and_then(|state| state.live_on.clone())
            .filter(|node| **node != *self.node);
        let state = match (saved, elsewhere) {
            // That node hands the session over if it is alive; if it does
            // not, it died, and the checkpoint is all there is.
            (Some(checkpoint), Some(node)) => {
                if crate::persistence::nodes::is_live(&self.db, &node).await? {
                    self.take_from_another_node(pid, Some(checkpoint)).await?
                } else {
                    Some(checkpoint)
                }
            }
            (Some(state), None) => Some(state),
            // Unknown here: maybe live on another node.
            (None, _) if self.shared && self.peers.load(Ordering::Relaxed) > 0 => {
                self.take_from_another_node(pid, None).await?
            }
            (None, _) => None,
        };
        Ok(state.and_then(|state| self.within_window(state)))
    }

    /// Saves every dropped session in the database, for the next process
    /// (graceful shutdown, after the sessions closed).
    ///
    /// # Errors
    /// Database failures; the sessions are lost then.
    pub async fn save_all(&self) -> Result<usize, PersistenceError> {
        // The writing task stops: none of its writes is under way after
        // this, and it starts none.
        let writing = self.writing.lock().await;
        self.closed.store(true, Ordering::Release);
        let saved = self.save_rest().await;
        drop(writing);
        // The task sees `closed` at its next turn, closes its connections
        // and ends (before the runtime does).
        let ended = self.writer_ended.lock().take();
        if let Some(ended) = ended {
            let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
        }
        saved
    }

    /// Writes what memory still holds, on a connection of its own: at
    /// shutdown the pool's connections may belong to HTTP workers whose
    /// runtimes are already gone.
    async fn save_rest(&self) -> Result<usize, PersistenceError> {
        {
            let inner = self.inner.lock();
            if inner.dropped.is_empty() && inner.forgotten.is_empty() {
                return Ok(0);
            }
        }
        let db = crate::persistence::connect(&self.database).await?;
        let saved = self.write_dropped_locked(&db).await;
        let _ = db.close().await;
        saved
    }

    /// Asks the other nodes for session `pid`: one that holds it live
    /// hands it over and saves it, and the state is taken once saved.
    /// Without an answer, the newest checkpoint seen (`checkpoint`, or one
    /// saved meanwhile) is the answer: its node is gone.
    async fn take_from_another_node(
        &self,
        pid: &str,
        mut checkpoint: Option<SessionState>,
    ) -> Result<Option<SessionState>, PersistenceError> {
        queries::request_hand_over(&self.db, pid).await?;
        let deadline = Instant::now() + HAND_OVER_TIMEOUT;
        while Instant::now() < deadline {
            tokio::time::sleep(HAND_OVER_POLL).await;
            match parse(queries::take_session(&self.db, pid, now_ms()).await?) {
                Some(state) if state.live_on.is_none() => return Ok(Some(state)),
                Some(newer) => checkpoint = Some(newer),
                None => {}
            }
        }
        Ok(checkpoint)
    }

    fn within_window(&self, state: SessionState) -> Option<SessionState> {
        (now_ms() - state.dropped_at_ms <= self.window.as_millis() as i64).then_some(state)
    }
}

/// A saved session's state, if it can be read.
fn parse(saved: Option<SavedSession>) -> Option<SessionState> {
    match serde_json::from_str::<SessionState>(&saved?.state) {
        Ok(state) => Some(state),
        Err(err) => {
            tracing::warn!(error = %err, "a saved session could not be read; starting afresh");
            None
        }
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
