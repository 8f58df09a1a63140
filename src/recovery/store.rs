//! Where sessions wait to be recovered: live ones by private id (a client
//! that comes back before its old connection timed out takes the state
//! from the old session, which closes), dropped ones in memory for the
//! recovery window, and, after a graceful shutdown, in the database
//! (`recovery_sessions`), for the clients that come back to the next
//! process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::Recipient;
use parking_lot::Mutex;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::log::LogState;
use crate::config::DatabaseSettings;
use crate::persistence::recovery::{self as queries, SavedSession};
use crate::persistence::PersistenceError;

/// How long a live session has to hand its state over.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often dropped sessions past the window are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

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
    inner: Mutex<Inner>,
}

struct Inner {
    /// Live sessions by private id, with their subscriber id (a session
    /// that ends only removes its own entry).
    live: HashMap<String, (u64, Recipient<HandOver>)>,
    /// Dropped sessions by private id.
    dropped: HashMap<String, SessionState>,
    last_prune: Instant,
}

impl RecoveryStore {
    /// A store that keeps dropped sessions for `window`, reads saved ones
    /// from `db`, and saves them at shutdown in the database of `database`.
    pub fn new(db: DatabaseConnection, database: DatabaseSettings, window: Duration) -> Self {
        RecoveryStore {
            db,
            database,
            window,
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                dropped: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
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
    pub fn register(&self, pid: &str, subscriber_id: u64, session: Recipient<HandOver>) {
        self.inner
            .lock()
            .live
            .insert(pid.to_owned(), (subscriber_id, session));
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
                inner.dropped.insert(pid.to_owned(), state);
            }
            None => {
                inner.dropped.remove(pid);
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
    /// could not use (a credential of another user).
    pub fn put_back(&self, pid: &str, state: SessionState) {
        self.inner.lock().dropped.insert(pid.to_owned(), state);
    }

    /// Takes the state of session `pid`: from the live session (which
    /// closes), from memory, or from the database; `None` if there is none
    /// within the window.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn take(&self, pid: &str) -> Result<Option<SessionState>, PersistenceError> {
        let live = {
            let mut inner = self.inner.lock();
            if let Some(state) = inner.dropped.remove(pid) {
                return Ok(self.within_window(state));
            }
            inner.live.remove(pid)
        };
        if let Some((_, session)) = live {
            let (tx, rx) = oneshot::channel();
            if session.try_send(HandOver(tx)).is_ok() {
                if let Ok(Ok(state)) = tokio::time::timeout(HAND_OVER_TIMEOUT, rx).await {
                    return Ok(Some(state));
                }
            }
            // It ended on its own meanwhile, and left its state here.
            let state = self.inner.lock().dropped.remove(pid);
            return Ok(state.and_then(|state| self.within_window(state)));
        }
        let Some(saved) = queries::take_session(&self.db, pid).await? else {
            return Ok(None);
        };
        match serde_json::from_str::<SessionState>(&saved.state) {
            Ok(state) => Ok(self.within_window(state)),
            Err(err) => {
                tracing::warn!(error = %err, "a saved session could not be read; starting afresh");
                Ok(None)
            }
        }
    }

    /// Saves every dropped session in the database, for the next process
    /// (graceful shutdown, after the sessions closed).
    ///
    /// # Errors
    /// Database failures; the sessions are lost then.
    pub async fn save_all(&self) -> Result<usize, PersistenceError> {
        let oldest = now_ms() - self.window.as_millis() as i64;
        let sessions: Vec<SavedSession> = {
            let mut inner = self.inner.lock();
            inner
                .dropped
                .drain()
                .filter(|(_, state)| state.dropped_at_ms >= oldest)
                .filter_map(|(pid, state)| {
                    Some(SavedSession {
                        pid,
                        saved_at_ms: state.dropped_at_ms,
                        state: serde_json::to_string(&state).ok()?,
                    })
                })
                .collect()
        };
        if sessions.is_empty() {
            return Ok(0);
        }
        // A connection of its own: at shutdown the pool's connections may
        // belong to HTTP workers whose runtimes are already gone.
        let db = crate::persistence::connect(&self.database).await?;
        for chunk in sessions.chunks(500) {
            queries::save_sessions(&db, chunk).await?;
        }
        let _ = db.close().await;
        Ok(sessions.len())
    }

    fn within_window(&self, state: SessionState) -> Option<SessionState> {
        (now_ms() - state.dropped_at_ms <= self.window.as_millis() as i64).then_some(state)
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
