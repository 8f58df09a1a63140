//! The heartbeat of every session of one endpoint: when each session is
//! due its next ping, and when the pong of a ping it sent is overdue.
//!
//! Deadlines wait in one queue per kind, in due order. Each kind has one
//! delay for the whole endpoint (`ping_delay`, `ping_timeout`), so a new
//! deadline goes last (its binary search ends at the back). One thread sleeps
//! until the earliest deadline and tells the sessions whose time came
//! ([`Beat`]). A timer per session instead cost each idle socket about
//! 140 bytes (actix's boxed timer around a tokio `Sleep`); a deadline here
//! is 32.
//!
//! Deadlines are never taken back: a session counts its deadlines and
//! ignores a beat that is not its latest, and one that ended is skipped.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::{Message, WeakAddr};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::session::Session;
use super::EngineHandler;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heartbeat {
    /// The session sends its next ping.
    NextPing,
    /// The session closes: the pong of its last ping did not come.
    PongDue,
}

/// A session's deadline came; `beat` says which one.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Beat {
    pub(crate) kind: Heartbeat,
    pub(crate) beat: u32,
}

struct Deadline<H: EngineHandler> {
    due: Instant,
    session: WeakAddr<Session<H>>,
    beat: u32,
}

struct Queues<H: EngineHandler> {
    pings: VecDeque<Deadline<H>>,
    pongs: VecDeque<Deadline<H>>,
    /// The thread that fires deadlines runs (started with the first).
    running: bool,
}

/// The deadlines of one endpoint's sessions.
pub(crate) struct Heartbeats<H: EngineHandler> {
    queues: Mutex<Queues<H>>,
    /// Wakes the thread when a deadline comes before those it sleeps
    /// towards, and when the endpoint is gone.
    wake: Arc<Notify>,
}

impl<H: EngineHandler> Default for Heartbeats<H> {
    fn default() -> Self {
        Heartbeats {
            queues: Mutex::new(Queues {
                pings: VecDeque::new(),
                pongs: VecDeque::new(),
                running: false,
            }),
            wake: Arc::new(Notify::new()),
        }
    }
}

impl<H: EngineHandler> Drop for Heartbeats<H> {
    fn drop(&mut self) {
        // The thread sees the endpoint gone and ends.
        self.wake.notify_one();
    }
}

impl<H: EngineHandler> Heartbeats<H> {
    /// `session` is told `Beat { kind, beat }` after `delay`.
    pub(crate) fn schedule(
        self: &Arc<Self>,
        kind: Heartbeat,
        delay: Duration,
        session: WeakAddr<Session<H>>,
        beat: u32,
    ) {
        let mut queues = self.queues.lock();
        // Taken under the lock, so deadlines of one delay queue in order.
        let due = Instant::now() + delay;
        let queue = match kind {
            Heartbeat::NextPing => &mut queues.pings,
            Heartbeat::PongDue => &mut queues.pongs,
        };
        // Last, unless the endpoint's delays changed under it.
        let at = queue.partition_point(|deadline| deadline.due <= due);
        queue.insert(at, Deadline { due, session, beat });
        if !queues.running {
            queues.running = self.start_thread();
        } else if at == 0 {
            self.wake.notify_one();
        }
    }

    fn start_thread(self: &Arc<Self>) -> bool {
        let heartbeats = Arc::downgrade(self);
        let wake = self.wake.clone();
        let started = std::thread::Builder::new()
            .name("realtime-heartbeat".into())
            .spawn(move || run(&heartbeats, &wake));
        match started {
            Ok(_) => true,
            Err(err) => {
                // Tried again with the next deadline.
                tracing::error!(error = %err, "cannot start the heartbeat thread");
                false
            }
        }
    }

    /// Tells the sessions whose deadline came; returns the next deadline.
    fn fire_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut queues = self.queues.lock();
            let Queues { pings, pongs, .. } = &mut *queues;
            for (kind, queue) in [(Heartbeat::NextPing, pings), (Heartbeat::PongDue, pongs)] {
                while let Some(deadline) = queue.pop_front() {
                    if deadline.due > now {
                        queue.push_front(deadline);
                        break;
                    }
                    due.push((kind, deadline));
                }
                if queue.capacity() > 64 && queue.len() < queue.capacity() / 4 {
                    // A crowd of sessions left: give their room back.
                    queue.shrink_to(queue.len() * 2);
                }
            }
            [queues.pings.front(), queues.pongs.front()]
                .into_iter()
                .flatten()
                .map(|deadline| deadline.due)
                .min()
        };
        for (kind, deadline) in due {
            if let Some(session) = deadline.session.upgrade() {
                // Sent past the mailbox's bound: a heartbeat is never dropped.
                session.do_send(Beat {
                    kind,
                    beat: deadline.beat,
                });
            }
        }
        next
    }
}

/// The heartbeat thread: fires deadlines until the endpoint is gone.
fn run<H: EngineHandler>(heartbeats: &Weak<Heartbeats<H>>, wake: &Notify) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the heartbeat thread's timer");
            return;
        }
    };
    runtime.block_on(async {
        loop {
            let Some(next) = heartbeats.upgrade().map(|heartbeats| heartbeats.fire_due()) else {
                return;
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    });
}
