//! What one session knows of what its client received, to work out, from
//! the single offset a reconnecting client sends, what it missed.
//!
//! A socket's channels deliver through separate actors, so the offsets
//! (`seq`s) one socket receives do not only grow: channel B's message 103
//! may reach it after channel A's 105. "Everything after the client's
//! offset" would then replay 105 twice, or skip B's messages that were
//! still on their way. So a session logs the deliveries the client has not
//! confirmed yet, in the order it sent them: the client's offset marks how
//! far along that log it got. The client confirms everything sent before a
//! ping by answering it, so the log holds at most a ping interval of
//! deliveries (bounded; past the bound the oldest entries are dropped and
//! count as received only if the client's offset proves it).
//!
//! Per channel, a floor: every message of the channel with `seq` at or
//! below it either reached the client or came before its subscription.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::list_map::ListMap;
use crate::persistence::recovery::Missed;

/// Most single messages a recovery re-sends below their channel's floor
/// (messages a channel delivered out of `seq` order); past it the session
/// cannot be recovered.
const MAX_EXTRA: usize = 1000;

/// The log of one live session.
#[derive(Debug)]
pub struct DeliveryLog {
    max_unconfirmed: usize,
    /// The subscribed channels. A list, searched: a socket has a few
    /// (`limits.max_channels_per_socket` at most), it is looked up once
    /// per delivered batch, and the two hash maps it replaced (by name and
    /// by slot) were about 320 bytes of every idle socket's memory.
    channels: ListMap<Arc<str>, Mark>,
    next_slot: u32,
    /// `(seq, slot)` of each delivery not yet confirmed, in sending order.
    unconfirmed: VecDeque<(i64, u32)>,
    /// Deliveries logged since the start: the index the next one gets.
    n_logged: u64,
    /// `n_logged` when the ping that waits for its pong went out.
    ping_mark: Option<u64>,
    /// The index after the last entry dropped for room.
    dropped_through: u64,
    /// The `seq` of the last delivery dropped for room.
    last_dropped: Option<i64>,
    /// The `seq` of the last delivery the client confirmed.
    last_confirmed: Option<i64>,
}

#[derive(Debug)]
struct Mark {
    /// Names the channel in `unconfirmed`; never reused, so entries of a
    /// channel left are not taken for a later one's.
    slot: u32,
    floor: i64,
    /// The highest `seq` of this channel dropped for room and not yet
    /// confirmed.
    provisional: Option<i64>,
}

/// A session's log when its connection dropped: what recovery starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// Subscribed channels.
    pub channels: Vec<ChannelMark>,
    /// Unconfirmed deliveries in sending order: `(seq, index into
    /// channels)`.
    pub unconfirmed: Vec<(i64, u32)>,
    /// The `seq` of the last delivery the client confirmed.
    pub last_confirmed: Option<i64>,
}

/// One subscribed channel in a [`LogState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMark {
    /// The resolved name.
    pub name: String,
    /// Everything at or below it reached the client (or predates the
    /// subscription).
    pub floor: i64,
    /// Dropped for room, unconfirmed: reached the client only if its offset
    /// is in the log.
    pub provisional: Option<i64>,
}

impl DeliveryLog {
    /// An empty log that holds at most `max_unconfirmed` deliveries.
    pub fn new(max_unconfirmed: usize) -> Self {
        DeliveryLog {
            max_unconfirmed,
            channels: ListMap::default(),
            next_slot: 0,
            unconfirmed: VecDeque::new(),
            n_logged: 0,
            ping_mark: None,
            dropped_through: 0,
            last_dropped: None,
            last_confirmed: None,
        }
    }

    /// A log that continues a recovered one: its channels start at the
    /// given floors, and what the client confirmed stays confirmed.
    pub fn resume(max_unconfirmed: usize, floors: &[(String, i64)], last: Option<i64>) -> Self {
        let mut log = DeliveryLog::new(max_unconfirmed);
        for (name, floor) in floors {
            log.subscribed(&Arc::from(name.as_str()), *floor);
        }
        log.last_confirmed = last;
        log
    }

    /// The socket joined `name`, whose deliveries to it start after
    /// `after_seq`. Joining again (for a fresh snapshot) changes nothing.
    pub fn subscribed(&mut self, name: &Arc<str>, after_seq: i64) {
        if self.channels.contains_key(name) {
            return;
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.channels.insert(
            name.clone(),
            Mark {
                slot,
                floor: after_seq,
                provisional: None,
            },
        );
    }

    /// The socket left `name`: nothing of it is recovered.
    pub fn unsubscribed(&mut self, name: &str) {
        self.channels.remove(name);
    }

    /// Whether `name` is logged (subscribed).
    pub fn has_channel(&self, name: &str) -> bool {
        self.channels.contains_key(name)
    }

    fn mark_of_slot(&mut self, slot: u32) -> Option<&mut Mark> {
        self.channels.values_mut().find(|mark| mark.slot == slot)
    }

    /// Messages of `channel` were sent to the client, in this order.
    pub fn delivered(&mut self, channel: &str, seqs: impl IntoIterator<Item = i64>) {
        let Some(slot) = self.channels.get(channel).map(|mark| mark.slot) else {
            return;
        };
        for seq in seqs {
            self.unconfirmed.push_back((seq, slot));
            self.n_logged += 1;
        }
        // The highest dropped `seq` of each run of entries of one channel,
        // raised once per run (a full log drops one per delivery).
        let mut run: Option<(u32, i64)> = None;
        while self.unconfirmed.len() > self.max_unconfirmed {
            // unwrap: longer than the bound, so not empty.
            let (seq, slot) = self.unconfirmed.pop_front().unwrap();
            self.dropped_through = self.n_logged - self.unconfirmed.len() as u64;
            self.last_dropped = Some(seq);
            match &mut run {
                Some((run_slot, highest)) if *run_slot == slot => *highest = (*highest).max(seq),
                _ => {
                    if let Some((run_slot, highest)) = run.replace((slot, seq)) {
                        self.raise_provisional(run_slot, highest);
                    }
                }
            }
        }
        if let Some((run_slot, highest)) = run {
            self.raise_provisional(run_slot, highest);
        }
    }

    /// Messages of the channel in `slot` up to `seq` were dropped for room.
    fn raise_provisional(&mut self, slot: u32, seq: i64) {
        if let Some(mark) = self.mark_of_slot(slot) {
            mark.provisional = Some(mark.provisional.map_or(seq, |p| p.max(seq)));
        }
    }

    /// A ping went out: its pong confirms everything sent before it.
    pub fn ping_sent(&mut self) {
        self.ping_mark = Some(self.n_logged);
    }

    /// The pong of the last ping arrived; returns whether it confirmed
    /// any delivery.
    pub fn pong_received(&mut self) -> bool {
        let Some(mark) = self.ping_mark.take() else {
            return false;
        };
        let confirmed_before = self.last_confirmed;
        if mark >= self.dropped_through && self.dropped_through > 0 {
            for channel in self.channels.values_mut() {
                if let Some(provisional) = channel.provisional.take() {
                    channel.floor = channel.floor.max(provisional);
                }
            }
            if let Some(seq) = self.last_dropped.take() {
                self.last_confirmed = Some(seq);
            }
        }
        let mut front = self.n_logged - self.unconfirmed.len() as u64;
        while front < mark {
            let Some((seq, slot)) = self.unconfirmed.pop_front() else {
                break;
            };
            front += 1;
            self.last_confirmed = Some(seq);
            if let Some(channel) = self.mark_of_slot(slot) {
                channel.floor = channel.floor.max(seq);
            }
        }
        if self.unconfirmed.is_empty() {
            // An idle socket keeps no buffer.
            self.unconfirmed = VecDeque::new();
        }
        self.last_confirmed != confirmed_before
    }

    /// The log as it stands, for a later recovery.
    pub fn state(&self) -> LogState {
        let mut channels = Vec::with_capacity(self.channels.len());
        let mut index_of_slot = HashMap::with_capacity(self.channels.len());
        for (name, mark) in self.channels.iter() {
            index_of_slot.insert(mark.slot, channels.len() as u32);
            channels.push(ChannelMark {
                name: name.to_string(),
                floor: mark.floor,
                provisional: mark.provisional,
            });
        }
        let unconfirmed = self
            .unconfirmed
            .iter()
            .filter_map(|(seq, slot)| Some((*seq, *index_of_slot.get(slot)?)))
            .collect();
        LogState {
            channels,
            unconfirmed,
            last_confirmed: self.last_confirmed,
        }
    }
}

impl LogState {
    /// What the client missed, given the offset of the last message it
    /// received (`None` if it never received one); `None` when the log
    /// cannot tell (the offset is not one this session sent and still
    /// knows), which means the session cannot be recovered.
    pub fn missed(&self, offset: Option<i64>) -> Option<Missed> {
        // How far along the unconfirmed deliveries the client got: through
        // index `p`, or none of them.
        let received_through = match offset {
            Some(offset) => match self.unconfirmed.iter().rposition(|(seq, _)| *seq == offset) {
                Some(p) => Some(p),
                None if Some(offset) == self.last_confirmed => None,
                None => return None,
            },
            None if self.last_confirmed.is_none() => None,
            None => return None,
        };
        let mut floors: Vec<i64> = self.channels.iter().map(|c| c.floor).collect();
        let rest = match received_through {
            Some(p) => {
                // Dropped entries came before `p`: the client has them.
                for (floor, channel) in floors.iter_mut().zip(&self.channels) {
                    if let Some(provisional) = channel.provisional {
                        *floor = (*floor).max(provisional);
                    }
                }
                for (seq, index) in &self.unconfirmed[..=p] {
                    let floor = &mut floors[*index as usize];
                    *floor = (*floor).max(*seq);
                }
                &self.unconfirmed[p + 1..]
            }
            None => &self.unconfirmed[..],
        };
        let extra: Vec<i64> = rest
            .iter()
            .filter(|(seq, index)| *seq <= floors[*index as usize])
            .map(|(seq, _)| *seq)
            .collect();
        if extra.len() > MAX_EXTRA {
            return None;
        }
        Some(self.missed_from(floors, extra))
    }

    /// Each channel after its floor (in `channels` order), and `extra`.
    fn missed_from(&self, floors: Vec<i64>, extra: Vec<i64>) -> Missed {
        Missed {
            channels: self
                .channels
                .iter()
                .zip(floors)
                .map(|(channel, floor)| (channel.name.clone(), floor))
                .collect(),
            extra,
        }
    }

    /// What the client missed by a checkpoint's account, when its offset
    /// is one sent after the checkpoint (of channel `offset_channel`): it
    /// got everything the checkpoint logged (it received something sent
    /// later), and `offset_channel` through `offset` (a channel delivers
    /// in order). What it got of the other channels since is unknown: the
    /// caller makes sure they have nothing after their floors. `None` when
    /// the offset cannot be one sent after the checkpoint.
    pub fn missed_since_checkpoint(&self, offset: i64, offset_channel: &str) -> Option<Missed> {
        let mut floors: Vec<i64> = self
            .channels
            .iter()
            .map(|channel| channel.floor.max(channel.provisional.unwrap_or(i64::MIN)))
            .collect();
        for (seq, index) in &self.unconfirmed {
            let floor = floors.get_mut(*index as usize)?;
            *floor = (*floor).max(*seq);
        }
        let i = self
            .channels
            .iter()
            .position(|channel| channel.name == offset_channel)?;
        if offset <= floors[i] {
            return None;
        }
        floors[i] = offset;
        Some(self.missed_from(floors, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Arc<str> {
        Arc::from(text)
    }

    fn floors(missed: &Missed) -> Vec<(String, i64)> {
        let mut floors = missed.channels.clone();
        floors.sort();
        floors
    }

    #[test]
    fn the_offset_marks_how_far_along_the_sent_order_the_client_got() {
        let mut log = DeliveryLog::new(100);
        log.subscribed(&name("a"), 100);
        log.subscribed(&name("b"), 100);
        // A's 105 went out before B's 103 (separate actors).
        log.delivered("a", [101, 105]);
        log.delivered("b", [103]);
        log.delivered("a", [106]);
        let state = log.state();
        // The client got 101 and 105, not 103 nor 106.
        let missed = state.missed(Some(105)).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 105), ("b".into(), 100)]);
        assert!(missed.extra.is_empty());
        // It got everything through 103: B's floor is 103, A's 105.
        let missed = state.missed(Some(103)).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 105), ("b".into(), 103)]);
        // Without an offset it got nothing: from the subscriptions on.
        let missed = state.missed(None).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 100), ("b".into(), 100)]);
        // An offset this session never sent: cannot tell.
        assert_eq!(state.missed(Some(104)), None);
    }

    #[test]
    fn a_message_sent_after_a_later_one_of_its_channel_is_sent_again_alone() {
        let mut log = DeliveryLog::new(100);
        log.subscribed(&name("a"), 0);
        log.delivered("a", [11, 10]);
        let missed = log.state().missed(Some(11)).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 11)]);
        assert_eq!(missed.extra, [10]);
    }

    #[test]
    fn after_a_checkpoint_the_offset_s_channel_resumes_after_it_and_the_rest_after_the_log() {
        let mut log = DeliveryLog::new(100);
        log.subscribed(&name("a"), 100);
        log.subscribed(&name("b"), 100);
        log.delivered("a", [101]);
        log.delivered("b", [102]);
        let checkpoint = log.state();
        // Not in the log: sent after the checkpoint.
        assert_eq!(checkpoint.missed(Some(110)), None);
        let missed = checkpoint.missed_since_checkpoint(110, "a").unwrap();
        assert_eq!(floors(&missed), [("a".into(), 110), ("b".into(), 102)]);
        // At or below what the checkpoint logged for its channel: not one
        // sent after it.
        assert_eq!(checkpoint.missed_since_checkpoint(101, "a"), None);
        assert_eq!(checkpoint.missed_since_checkpoint(110, "c"), None);
    }

    #[test]
    fn a_pong_confirms_what_was_sent_before_its_ping() {
        let mut log = DeliveryLog::new(100);
        log.subscribed(&name("a"), 0);
        log.delivered("a", [1, 2]);
        log.ping_sent();
        log.delivered("a", [3]);
        log.pong_received();
        let state = log.state();
        assert_eq!(state.unconfirmed, [(3, 0)]);
        assert_eq!(state.last_confirmed, Some(2));
        assert_eq!(floors(&state.missed(Some(2)).unwrap()), [("a".into(), 2)]);
        assert_eq!(floors(&state.missed(Some(3)).unwrap()), [("a".into(), 3)]);
        // The client confirmed 2: it cannot claim to have nothing, nor 1.
        assert_eq!(state.missed(None), None);
        assert_eq!(state.missed(Some(1)), None);
    }

    #[test]
    fn entries_dropped_for_room_count_only_when_the_offset_proves_them() {
        let mut log = DeliveryLog::new(2);
        log.subscribed(&name("a"), 0);
        log.subscribed(&name("b"), 0);
        log.delivered("a", [1, 2]);
        log.delivered("b", [3]);
        let state = log.state();
        assert_eq!(state.unconfirmed.len(), 2);
        // The client got 3: it got the dropped 1 before it.
        let missed = state.missed(Some(3)).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 2), ("b".into(), 3)]);
        // It got nothing: the floors stay where they were.
        let missed = state.missed(None).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 0), ("b".into(), 0)]);
        // It got 1, which the log no longer holds: cannot tell.
        assert_eq!(state.missed(Some(1)), None);
        // A pong for a ping sent after the drop confirms the dropped ones.
        log.ping_sent();
        log.pong_received();
        let state = log.state();
        assert!(state.unconfirmed.is_empty());
        assert_eq!(state.last_confirmed, Some(3));
        let missed = state.missed(Some(3)).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 2), ("b".into(), 3)]);
    }

    #[test]
    fn entries_of_several_channels_dropped_at_once_raise_each_channel_s_mark() {
        let mut log = DeliveryLog::new(3);
        log.subscribed(&name("a"), 0);
        log.subscribed(&name("b"), 0);
        log.delivered("a", [2, 1]);
        log.delivered("b", [3]);
        // Drops a's 2 and 1, then b's 3: two runs in one delivery.
        log.delivered("a", [4, 5, 6]);
        let provisional = |state: &LogState, channel: &str| {
            state
                .channels
                .iter()
                .find(|mark| mark.name == channel)
                .unwrap()
                .provisional
        };
        let state = log.state();
        assert_eq!(provisional(&state, "a"), Some(2), "the highest of its run");
        assert_eq!(provisional(&state, "b"), Some(3));
        // The next delivery drops a's 4: its mark rises.
        log.delivered("b", [0]);
        let state = log.state();
        assert_eq!(provisional(&state, "a"), Some(4));
        assert_eq!(state.unconfirmed.len(), 3);
    }

    #[test]
    fn unsubscribed_channels_are_not_recovered_and_joining_again_keeps_the_floor() {
        let mut log = DeliveryLog::new(100);
        log.subscribed(&name("a"), 5);
        log.subscribed(&name("b"), 5);
        log.delivered("a", [6]);
        log.subscribed(&name("a"), 9);
        log.unsubscribed("b");
        log.delivered("b", [7]);
        let missed = log.state().missed(None).unwrap();
        assert_eq!(floors(&missed), [("a".into(), 5)]);
    }
}
