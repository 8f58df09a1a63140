//! Ephemeral messages across nodes (PostgreSQL). A channel of an ephemeral
//! channel hands each message's packet to the [`EphemeralRelay`], which
//! sends what arrived meanwhile in one statement of notifications
//! ([`crate::persistence::ephemeral`]) and tells each channel how its
//! messages went (the publishers' acks). Every node, this one included,
//! delivers them as the listener hears them: PostgreSQL delivers
//! notifications in one order to every listener, so every subscriber of a
//! channel sees its ephemeral messages in one order, whichever node it is
//! on, as it does the durable ones. While this node's listener is not
//! listening (the database went away; it connects again), a message would
//! reach no subscriber here: it is refused, as a durable one would be.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Recipient, WrapFuture};
use bytestring::ByteString;
use sea_orm::DatabaseConnection;

use crate::metrics::METRICS;
use crate::persistence::ephemeral;
use crate::publish::PublishError;

/// How often a batch waiting for the listener looks again.
const LISTENING_POLL: Duration = Duration::from_millis(20);

/// What a channel holds to relay its ephemeral messages.
#[derive(Clone)]
pub struct RelayLink {
    relay: Addr<EphemeralRelay>,
}

impl RelayLink {
    /// Starts the relay of `node` on `arbiter`; a batch that takes longer
    /// than `timeout` fails, and so does one sent while `listening` (the
    /// database listener's state) is false.
    pub fn start(
        db: DatabaseConnection,
        node: Arc<str>,
        timeout: Duration,
        listening: Arc<AtomicBool>,
        arbiter: &actix::ArbiterHandle,
    ) -> RelayLink {
        let relay = EphemeralRelay {
            db,
            node,
            timeout,
            listening,
            waiting: Vec::new(),
            sending: false,
        };
        RelayLink {
            relay: EphemeralRelay::start_in_arbiter(arbiter, move |_| relay),
        }
    }

    /// Sends `packet` to `channel`'s subscribers on every node; `done`
    /// hears how it went, in the order relayed.
    pub fn relay(&self, channel: Arc<str>, packet: ByteString, done: Recipient<RelayDone>) {
        self.relay.do_send(Relay {
            channel,
            packet,
            done,
        });
    }
}

/// How a channel's relayed messages went: the first `n` it is waiting on.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct RelayDone {
    /// How many, in the order the channel relayed them.
    pub n: usize,
    /// Sent to every node, or why not.
    pub result: Result<(), PublishError>,
}

/// Sends ephemeral messages to every node, in batches.
pub struct EphemeralRelay {
    db: DatabaseConnection,
    node: Arc<str>,
    timeout: Duration,
    /// Whether this node's listener hears notifications now.
    listening: Arc<AtomicBool>,
    /// Messages not yet sent, in order.
    waiting: Vec<Relay>,
    /// A batch is being sent.
    sending: bool,
}

impl EphemeralRelay {
    fn send(&mut self, ctx: &mut Context<Self>) {
        if self.sending || self.waiting.is_empty() {
            return;
        }
        self.sending = true;
        let batch = std::mem::take(&mut self.waiting);
        let db = self.db.clone();
        let node = self.node.clone();
        let timeout = self.timeout;
        let listening = self.listening.clone();
        let send = async move {
            // At start, or while the listener connects again, wait for it
            // as long as a publish may wait.
            let deadline = tokio::time::Instant::now() + timeout;
            while !listening.load(Ordering::Relaxed) {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(n = batch.len(), "not listening to the database (connecting again): ephemeral messages refused");
                    return (batch, Err(PublishError::RelayUnavailable));
                }
                tokio::time::sleep(LISTENING_POLL).await;
            }
            let messages: Vec<(&str, &str)> = batch
                .iter()
                .map(|relay| (&*relay.channel, &*relay.packet))
                .collect();
            // One bound for the wait and the statement together.
            let sent =
                tokio::time::timeout_at(deadline, ephemeral::relay(&db, &node, &messages)).await;
            let result = match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, n = batch.len(), "cannot relay ephemeral messages to the other nodes");
                    Err(PublishError::RelayUnavailable)
                }
                Err(_) => {
                    tracing::warn!(
                        n = batch.len(),
                        timeout_ms = timeout.as_millis() as u64,
                        "relaying ephemeral messages to the other nodes timed out"
                    );
                    Err(PublishError::RelayUnavailable)
                }
            };
            (batch, result)
        };
        ctx.spawn(send.into_actor(self).map(|(batch, result), relay, ctx| {
            relay.sending = false;
            if result.is_ok() {
                METRICS.ephemeral_relayed.add(batch.len() as u64);
            }
            // One answer per channel actor, for its messages of the batch.
            let mut answers: HashMap<Recipient<RelayDone>, usize> = HashMap::new();
            for message in batch {
                *answers.entry(message.done).or_default() += 1;
            }
            for (done, n) in answers {
                done.do_send(RelayDone {
                    n,
                    result: result.clone(),
                });
            }
            relay.send(ctx);
        }));
    }
}

impl Actor for EphemeralRelay {
    type Context = Context<Self>;
}

/// A channel's ephemeral message to send.
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Relay {
    channel: Arc<str>,
    packet: ByteString,
    done: Recipient<RelayDone>,
}

impl Handler<Relay> for EphemeralRelay {
    type Result = ();

    fn handle(&mut self, relay: Relay, ctx: &mut Context<Self>) {
        self.waiting.push(relay);
        // Sent at the end of this mailbox turn, with what else arrived.
        if !self.sending && self.waiting.len() == 1 {
            ctx.notify(Flush);
        }
    }
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for EphemeralRelay {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.send(ctx);
    }
}
