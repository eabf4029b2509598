//! The acknowledged position of a tailer (SPEC §4.4).
//!
//! Each chunk a tailer sends carries a sequence number; the tailer remembers the position right
//! after the chunk's last line. Receivers finish chunks independently, so acknowledgements come
//! back in any order; the acknowledged position is the one after the highest `seq` below which
//! *every* chunk is acknowledged — never past a chunk some receiver still holds. This is what the
//! positions store persists.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;

use super::read::Position;
use crate::chunk::Acknowledge;
use crate::target::TargetId;

/// Pending chunks and the acknowledged position; `P` is the position type (a cursor plus the
/// container instance it belongs to).
#[derive(Clone, Debug)]
pub struct AckTracker<P> {
    /// Chunks sent and not yet part of the acknowledged prefix, in `seq` order, with the
    /// position after each and whether it is acknowledged.
    pending: VecDeque<(u64, P, bool)>,
    acknowledged: Option<P>,
}

impl<P: Clone> AckTracker<P> {
    /// A tracker starting from `start` (the stored position, if any).
    pub fn new(start: Option<P>) -> AckTracker<P> {
        AckTracker {
            pending: VecDeque::new(),
            acknowledged: start,
        }
    }

    /// A chunk was sent; `seq`s must increase.
    pub fn sent(&mut self, seq: u64, after: P) {
        debug_assert!(self.pending.back().is_none_or(|(s, _, _)| *s < seq));
        self.pending.push_back((seq, after, false));
    }

    /// The position moved without a chunk (lines skipped or dropped by policy): it is
    /// acknowledged together with the last chunk in flight, or at once when none is.
    pub fn moved(&mut self, after: P) {
        match self.pending.back_mut() {
            Some((_, p, _)) => *p = after,
            None => self.acknowledged = Some(after),
        }
    }

    /// Chunk `seq` was acknowledged by every receiver; returns true when the acknowledged
    /// position advanced. Unknown `seq`s (already acknowledged, or from before a restart of the
    /// tracker) are ignored.
    pub fn ack(&mut self, seq: u64) -> bool {
        let Ok(i) = self.pending.binary_search_by_key(&seq, |(s, _, _)| *s) else {
            return false;
        };
        self.pending[i].2 = true;
        let mut advanced = false;
        while self.pending.front().is_some_and(|(_, _, acked)| *acked) {
            if let Some((_, p, _)) = self.pending.pop_front() {
                self.acknowledged = Some(p);
                advanced = true;
            }
        }
        advanced
    }

    /// The position after the last chunk sent (acknowledged or not).
    pub fn latest(&self) -> Option<&P> {
        self.pending
            .back()
            .map(|(_, p, _)| p)
            .or(self.acknowledged.as_ref())
    }

    /// The position after everything acknowledged so far.
    pub fn acknowledged(&self) -> Option<&P> {
        self.acknowledged.as_ref()
    }

    /// Chunks sent and not yet acknowledged (or waiting for an older one).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// The acknowledgement side of one tailer, shared with the chunks it sends (SPEC §4.4).
///
/// Receivers call [`Acknowledge::acknowledge`] on it from their own thread; it advances the
/// [`AckTracker`] and notes when the acknowledged position moved. Nobody is told at once: the
/// positions table takes the moved position when it writes ([`TargetAcks::take_moved`]) and
/// the status page reads it when asked — an acknowledgement costs one lock of this tracker, not
/// a lookup in a table of every target. It outlives the read loop, so acknowledgements that
/// arrive after the tailer stopped (receivers flushing at shutdown) still move the position.
#[derive(Debug)]
pub struct TargetAcks {
    id: TargetId,
    tracker: Mutex<Tracked>,
}

#[derive(Debug)]
struct Tracked {
    tracker: AckTracker<Position>,
    /// The last chunk sequence number handed out; continues across tailer restarts.
    last_seq: u64,
    /// When the oldest chunk in flight was read, per pending `seq` in order.
    read_at: VecDeque<(u64, Instant)>,
    /// When the acknowledged position last moved, if it moved since the last
    /// [`TargetAcks::take_moved`].
    moved_at: Option<Timestamp>,
    /// Totals over every chunk sent, for the status page.
    sent: Sent,
}

/// One chunk as its tailer sends it: when its first line was read, its size, and the
/// timestamp of its last entry.
#[derive(Clone, Copy, Debug)]
pub struct SentChunk {
    pub read_at: Instant,
    pub lines: u64,
    pub bytes: u64,
    pub last_entry: Option<Timestamp>,
}

/// Totals over every chunk a target sent (across its tailers), kept with the acknowledgement
/// bookkeeping that each chunk locks anyway rather than behind a lock of their own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub lines: u64,
    pub bytes: u64,
    /// When the first line of the last chunk was read.
    pub last_read: Option<Instant>,
    /// The timestamp of the last entry sent.
    pub last_entry: Option<Timestamp>,
}

/// A target's acknowledgement state and send totals, read together (the status page).
#[derive(Clone, Debug)]
pub struct AckView {
    /// The position after the last chunk sent (acknowledged or not), else the acknowledged
    /// or stored one.
    pub latest: Option<Position>,
    pub acknowledged: Option<Position>,
    pub in_flight: usize,
    pub sent: Sent,
}

impl TargetAcks {
    /// A tracker for `id` starting at `start` (its stored position, if any).
    pub fn new(id: TargetId, start: Option<Position>) -> Arc<TargetAcks> {
        Arc::new(TargetAcks {
            id,
            tracker: Mutex::new(Tracked {
                tracker: AckTracker::new(start),
                last_seq: 0,
                read_at: VecDeque::new(),
                moved_at: None,
                sent: Sent::default(),
            }),
        })
    }

    /// The target this tracker belongs to.
    pub fn id(&self) -> &TargetId {
        &self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A chunk leaves with the position `after` its last line: returns its sequence number.
    /// One lock for all of it: this tracker's lock is shared with the receivers' thread, so
    /// each taking of it may move its cache line between cores.
    pub fn send(&self, after: Position, chunk: SentChunk) -> u64 {
        let mut t = self.lock();
        t.last_seq += 1;
        let seq = t.last_seq;
        t.tracker.sent(seq, after);
        t.read_at.push_back((seq, chunk.read_at));
        let sent = &mut t.sent;
        sent.lines += chunk.lines;
        sent.bytes += chunk.bytes;
        sent.last_read = Some(chunk.read_at);
        if chunk.last_entry.is_some() {
            sent.last_entry = chunk.last_entry;
        }
        seq
    }

    /// The acknowledgement state and send totals, under one lock.
    pub fn view(&self) -> AckView {
        let t = self.lock();
        AckView {
            latest: t.tracker.latest().cloned(),
            acknowledged: t.tracker.acknowledged().cloned(),
            in_flight: t.tracker.in_flight(),
            sent: t.sent.clone(),
        }
    }

    /// Where a new tailer of this target resumes: after the last chunk sent (chunks still in
    /// flight will be acknowledged here; re-reading them would repeat them), else the
    /// acknowledged or stored position.
    pub fn resume_position(&self) -> Option<Position> {
        self.lock().tracker.latest().cloned()
    }

    /// The position moved without a chunk (lines skipped or dropped by policy).
    pub fn moved(&self, after: Position) {
        let mut t = self.lock();
        let before = t.tracker.acknowledged().cloned();
        t.tracker.moved(after);
        if t.tracker.acknowledged() != before.as_ref() {
            t.moved_at = Some(Timestamp::now());
        }
    }

    /// When the oldest line not yet acknowledged was read.
    pub fn oldest_unacknowledged(&self) -> Option<Instant> {
        self.lock().read_at.front().map(|(_, at)| *at)
    }

    /// The acknowledged position and when it moved, if it moved since the last call (the
    /// positions table's way of collecting what to write).
    pub fn take_moved(&self) -> Option<(Position, Timestamp)> {
        let mut t = self.lock();
        let at = t.moved_at.take()?;
        t.tracker.acknowledged().cloned().map(|p| (p, at))
    }
}

impl Acknowledge for TargetAcks {
    fn acknowledge(&self, seq: u64) {
        let mut t = self.lock();
        if !t.tracker.ack(seq) {
            return;
        }
        // Every chunk up to the acknowledged prefix is done; the rest are still in flight.
        let in_flight = t.tracker.in_flight();
        while t.read_at.len() > in_flight {
            t.read_at.pop_front();
        }
        t.moved_at = Some(Timestamp::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn advances_only_over_a_fully_acknowledged_prefix() {
        let mut t = AckTracker::new(Some("start"));
        t.sent(1, "after 1");
        t.sent(2, "after 2");
        t.sent(3, "after 3");
        assert!(!t.ack(2));
        assert_eq!(t.acknowledged(), Some(&"start"));
        assert!(!t.ack(2), "a repeated ack changes nothing");
        assert!(t.ack(1));
        assert_eq!(t.acknowledged(), Some(&"after 2"));
        assert_eq!(t.in_flight(), 1);
        assert!(t.ack(3));
        assert_eq!(t.acknowledged(), Some(&"after 3"));
        assert!(!t.ack(99));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn moves_without_chunks() {
        let mut t = AckTracker::new(None);
        t.moved("dropped 1");
        assert_eq!(t.acknowledged(), Some(&"dropped 1"));
        t.sent(1, "after 1");
        t.moved("dropped 2");
        assert_eq!(t.acknowledged(), Some(&"dropped 1"));
        t.ack(1);
        assert_eq!(t.acknowledged(), Some(&"dropped 2"));
    }

    proptest! {
        #[test]
        fn any_ack_order_ends_at_the_last_position(order in Just((1u64..=20).collect::<Vec<_>>()).prop_shuffle()) {
            let mut t = AckTracker::new(Some(0u64));
            for s in 1..=20 {
                t.sent(s, s);
            }
            let mut acked = std::collections::BTreeSet::new();
            for s in order {
                t.ack(s);
                acked.insert(s);
                // The acknowledged position is the longest acknowledged prefix.
                let prefix = (1..=20).take_while(|x| acked.contains(x)).last().unwrap_or(0);
                prop_assert_eq!(t.acknowledged(), Some(&prefix));
            }
            prop_assert_eq!(t.in_flight(), 0);
        }
    }
}
