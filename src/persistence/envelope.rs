//! Notification envelopes: JSON items packed, in order, into NOTIFY
//! payloads small enough for PostgreSQL (under 8000 bytes). Presence
//! changes and ephemeral messages travel between nodes this way.

/// The most bytes of one payload, below PostgreSQL's limit.
pub const MAX_ENVELOPE: usize = 7000;

/// What closes an envelope opened by a head ending in `[`.
const TAIL: &str = "]}";

/// How many bytes an item may have to fit an envelope that opens with
/// `head` (a JSON object up to its array, as `{"node":"n","changes":[`).
pub fn room(head: &str) -> usize {
    MAX_ENVELOPE - head.len() - TAIL.len()
}

/// `items` (each already JSON, each at most [`room`] bytes) packed in
/// order into as few envelopes as fit.
pub fn pack(head: &str, items: impl IntoIterator<Item = String>) -> Vec<String> {
    let room = room(head);
    let mut out = Vec::new();
    let mut body = String::new();
    for item in items {
        debug_assert!(item.len() <= room);
        if !body.is_empty() && body.len() + 1 + item.len() > room {
            out.push(format!("{head}{body}{TAIL}"));
            body.clear();
        }
        if !body.is_empty() {
            body.push(',');
        }
        body.push_str(&item);
    }
    if !body.is_empty() {
        out.push(format!("{head}{body}{TAIL}"));
    }
    out
}
