//! `Idempotency-Key` on `POST /messages`: a caller that retries a publish
//! (its connection dropped before the answer, say) with the same key gets
//! the first answer, and nothing new is stored. A retry that arrives while
//! the first is still running waits for it. Only stored messages are
//! remembered: a failed publish stored nothing, so its key may be used
//! again. Keys are kept for `server.idempotency_window_ms`, at most
//! `server.idempotency_max_keys` of them (the oldest go first), in this
//! process's memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::publish::{PublishError, PublishRequest};

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The outcome of the first publish under a key: the answer's body, or
/// why it failed.
pub type Outcome = Result<Bytes, PublishError>;

/// Publishes by idempotency key.
pub struct IdempotencyKeys {
    window: Duration,
    max_keys: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Keys in the order they came, to forget the oldest.
    order: VecDeque<(Instant, String)>,
}

struct Entry {
    at: Instant,
    /// A digest of the request, so a key reused for another request is
    /// told apart from a retry.
    request: u64,
    outcome: Arc<OnceCell<Outcome>>,
}

/// Where a request with a key stands.
pub enum Claim {
    /// Await this outcome: set by whoever runs the publish first.
    Outcome(Arc<OnceCell<Outcome>>),
    /// The key was used for a different request.
    Reused,
}

impl IdempotencyKeys {
    /// Keys kept for `window`, at most `max_keys`.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        IdempotencyKeys {
            window,
            max_keys: max_keys.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The outcome cell of `key` for `request` (a new one if the key is
    /// unknown or expired).
    pub fn claim(&self, key: &str, request: &PublishRequest) -> Claim {
        let digest = digest(request);
        let mut inner = self.inner.lock();
        let now = Instant::now();
        while let Some((at, _)) = inner.order.front() {
            if now.duration_since(*at) < self.window && inner.order.len() < self.max_keys {
                break;
            }
            // unwrap: front() just returned Some.
            let (at, old) = inner.order.pop_front().unwrap();
            if inner.entries.get(&old).is_some_and(|entry| entry.at == at) {
                inner.entries.remove(&old);
            }
        }
        if let Some(entry) = inner.entries.get(key) {
            return if entry.request == digest {
                Claim::Outcome(entry.outcome.clone())
            } else {
                Claim::Reused
            };
        }
        let outcome = Arc::new(OnceCell::new());
        inner.entries.insert(
            key.to_owned(),
            Entry {
                at: now,
                request: digest,
                outcome: outcome.clone(),
            },
        );
        inner.order.push_back((now, key.to_owned()));
        Claim::Outcome(outcome)
    }

    /// Forgets `key` (its publish failed: nothing was stored).
    pub fn forget(&self, key: &str, outcome: &Arc<OnceCell<Outcome>>) {
        let mut inner = self.inner.lock();
        if inner
            .entries
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.outcome, outcome))
        {
            inner.entries.remove(key);
        }
    }
}

/// Whether `key` is an acceptable key: 1–255 visible ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

fn digest(request: &PublishRequest) -> u64 {
    let mut hasher = DefaultHasher::new();
    request.channel.hash(&mut hasher);
    request.event.hash(&mut hasher);
    serde_json::to_string(&request.payload)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn request(event: &str) -> PublishRequest {
        PublishRequest {
            channel: "a:b".into(),
            event: event.into(),
            payload: Map::new(),
        }
    }

    #[test]
    fn a_key_names_one_request_until_it_expires_or_is_crowded_out() {
        let keys = IdempotencyKeys::new(Duration::from_millis(50), 2);
        let Claim::Outcome(first) = keys.claim("k1", &request("e")) else {
            panic!()
        };
        let Claim::Outcome(again) = keys.claim("k1", &request("e")) else {
            panic!()
        };
        assert!(Arc::ptr_eq(&first, &again));
        assert!(matches!(keys.claim("k1", &request("other")), Claim::Reused));
        // A third key crowds out the oldest.
        keys.claim("k2", &request("e"));
        keys.claim("k3", &request("e"));
        let Claim::Outcome(fresh) = keys.claim("k1", &request("other")) else {
            panic!("k1 should be forgotten")
        };
        assert!(!Arc::ptr_eq(&first, &fresh));
        // Expired keys are forgotten.
        std::thread::sleep(Duration::from_millis(60));
        let Claim::Outcome(later) = keys.claim("k1", &request("e")) else {
            panic!()
        };
        assert!(!Arc::ptr_eq(&fresh, &later));
        // A failed publish frees its key.
        keys.forget("k1", &later);
        let Claim::Outcome(after) = keys.claim("k1", &request("e")) else {
            panic!()
        };
        assert!(!Arc::ptr_eq(&later, &after));
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(is_valid_key("order-123_retry:1"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("with space"));
        assert!(!is_valid_key("é"));
        assert!(!is_valid_key(&"k".repeat(256)));
    }
}
