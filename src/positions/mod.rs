//! Positions: where each target is, *acknowledged* (SPEC §4.4).
//!
//! A target's position moves past a line only when every receiver finished with it. Each
//! target's [`TargetAcks`] is registered here; the [`PositionsTable`] collects the positions
//! that moved from every registered tracker whenever it is read for writing (or asked about one
//! target), rather than being told at each acknowledgement: at thousands of quiet targets that
//! per-acknowledgement lookup was a tenth of the relay's CPU. A tracker stays registered until
//! nothing else holds it — its tailer, the registry and every chunk in flight are gone — and
//! its last position was collected, so acknowledgements that land while the tailers are
//! already stopped and the receivers flush at shutdown are still written. A sync task
//! ([`sync`]) writes the table through the backend ([`file`](mod@file) or [`kubernetes`])
//! every `sync_period` and once more at shutdown.
//!
//! Vanished targets are forgotten after `gc_after` ([`PositionsTable::gc`]): the registry reports
//! which targets exist after every discovery set. A target absent from a report ages from that
//! moment; one already absent from the first report after loading vanished while no relay ran,
//! and ages from its last update (the last sign of life anyone saw) — so the positions of pods
//! deleted while the relay was down go as soon as that date is `gc_after` old.

pub mod file;
pub mod kubernetes;
mod record;
pub mod sync;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::cursor::Position;
use crate::cursor::TargetAcks;
use crate::target::TargetId;

/// One stored position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub position: Position,
    /// When the position last moved.
    pub updated: Timestamp,
}

/// The positions of every target, shared by tailers (writers) and the sync task (reader).
#[derive(Debug, Default)]
pub struct PositionsTable {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Hashed, not ordered: every acknowledgement looks its target up here, and a search of
    /// an ordered map compares whole target IDs (strings) a dozen times at 5,000 targets.
    /// What is written is put in order then (the copies are `BTreeMap`s).
    entries: HashMap<TargetId, Entry, foldhash::fast::RandomState>,
    /// Changed since the last write.
    dirty: bool,
    /// The acknowledgement trackers whose positions are collected (see [`Inner::collect`]);
    /// also what the lag metric looks at.
    live: HashMap<TargetId, Arc<TargetAcks>, foldhash::fast::RandomState>,
    /// The registry reported the present targets at least once since loading.
    reported: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    stored: Stored,
    /// Since when the target is absent from discovery (None: present, or not known yet).
    vanished_since: Option<Timestamp>,
}

/// A shared handle on the table.
pub type PositionsHandle = Arc<PositionsTable>;

impl Inner {
    /// Takes the positions that moved from every registered tracker, and forgets the trackers
    /// nothing else holds any more (after taking their last position).
    fn collect(&mut self) {
        let Inner { entries, live, .. } = self;
        let mut dirty = false;
        live.retain(|id, acks| {
            // Counted before the position is taken: at one, no chunk is left to acknowledge,
            // so what is taken now is the tracker's last word.
            let orphaned = Arc::strong_count(acks) == 1;
            dirty |= Inner::take_moved(entries, id, acks);
            !orphaned
        });
        self.dirty |= dirty;
    }

    /// Stores what `acks` moved to since it was last asked, if anything; true when that
    /// changed the entry of `id`.
    fn take_moved(
        entries: &mut HashMap<TargetId, Entry, foldhash::fast::RandomState>,
        id: &TargetId,
        acks: &TargetAcks,
    ) -> bool {
        acks.take_moved().is_some_and(|(position, updated)| {
            Inner::store(entries, id, Stored { position, updated })
        })
    }

    /// Stores a position; true when it changed the entry.
    fn store(
        entries: &mut HashMap<TargetId, Entry, foldhash::fast::RandomState>,
        id: &TargetId,
        stored: Stored,
    ) -> bool {
        match entries.get_mut(id) {
            Some(e) if e.stored.position == stored.position => false,
            Some(e) => {
                e.stored = stored;
                true
            }
            None => {
                entries.insert(
                    id.clone(),
                    Entry {
                        stored,
                        vanished_since: None,
                    },
                );
                true
            }
        }
    }
}

impl PositionsTable {
    /// A table holding `loaded` (from the backend), nothing dirty.
    pub fn new(loaded: BTreeMap<TargetId, Stored>) -> PositionsTable {
        let entries = loaded
            .into_iter()
            .map(|(id, stored)| {
                (
                    id,
                    Entry {
                        stored,
                        vanished_since: None,
                    },
                )
            })
            .collect();
        PositionsTable {
            inner: Mutex::new(Inner {
                entries,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored position of a target, if any, after taking what its registered tracker (if
    /// any) moved to.
    pub fn get(&self, id: &TargetId) -> Option<Position> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(acks) = inner.live.get(id) {
            inner.dirty |= Inner::take_moved(&mut inner.entries, id, acks);
        }
        inner.entries.get(id).map(|e| e.stored.position.clone())
    }

    /// Records a position (one no tracker reports).
    pub fn update(&self, id: &TargetId, position: Position) {
        let mut inner = self.lock();
        let stored = Stored {
            position,
            updated: Timestamp::now(),
        };
        if Inner::store(&mut inner.entries, id, stored) {
            inner.dirty = true;
        }
    }

    /// Takes each of `entries` that is newer (by `updated`) than the table's, or unknown to it:
    /// positions written by another replica (SPEC §7) or another writer of our ConfigMaps.
    pub fn absorb(&self, entries: BTreeMap<TargetId, Stored>) {
        let mut inner = self.lock();
        inner.collect();
        for (id, stored) in entries {
            match inner.entries.get_mut(&id) {
                Some(e) if e.stored.updated >= stored.updated => {}
                Some(e) => e.stored = stored,
                None => {
                    inner.entries.insert(
                        id,
                        Entry {
                            stored,
                            vanished_since: None,
                        },
                    );
                }
            }
            inner.dirty = true;
        }
    }

    /// A copy of every entry (for a commit outside the sync period).
    pub fn snapshot(&self) -> BTreeMap<TargetId, Stored> {
        let mut inner = self.lock();
        inner.collect();
        inner
            .entries
            .iter()
            .map(|(id, e)| (id.clone(), e.stored.clone()))
            .collect()
    }

    /// Registers a target's acknowledgement tracker: its positions are collected from now on.
    /// A tracker registered before for the same target has its position collected first.
    pub fn register(&self, acks: &Arc<TargetAcks>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(old) = inner.live.insert(acks.id().clone(), acks.clone()) {
            inner.dirty |= Inner::take_moved(&mut inner.entries, acks.id(), &old);
        }
    }

    /// Age of the oldest line read and not yet acknowledged, over every registered tracker.
    pub fn lag(&self, now: Instant) -> Duration {
        let trackers: Vec<Arc<TargetAcks>> = self.lock().live.values().cloned().collect();
        trackers
            .iter()
            .filter_map(|t| t.oldest_unacknowledged())
            .map(|at| now.saturating_duration_since(at))
            .max()
            .unwrap_or_default()
    }

    /// The discovery's current targets at `now`: absent ones start to age, present ones stop.
    pub fn present(&self, ids: &BTreeSet<&TargetId>, now: Timestamp) {
        let mut inner = self.lock();
        inner.collect();
        let first = !std::mem::replace(&mut inner.reported, true);
        for (id, e) in inner.entries.iter_mut() {
            if ids.contains(id) {
                e.vanished_since = None;
            } else if e.vanished_since.is_none() {
                // Absent at the first report: it vanished while no relay ran, after its last
                // update at the earliest. Absent later: it vanished just now.
                e.vanished_since = Some(if first { e.stored.updated } else { now });
            }
        }
    }

    /// Removes positions of targets absent for longer than `gc_after`; returns how many.
    pub fn gc(&self, now: Timestamp, gc_after: Duration) -> usize {
        let mut inner = self.lock();
        inner.collect();
        let before = inner.entries.len();
        let gc_after =
            jiff::SignedDuration::try_from(gc_after).unwrap_or(jiff::SignedDuration::MAX);
        inner.entries.retain(|_, e| match e.vanished_since {
            Some(since) => now.duration_since(since) < gc_after,
            None => true,
        });
        let removed = before - inner.entries.len();
        if removed > 0 {
            inner.dirty = true;
        }
        removed
    }

    /// A copy of every entry when something changed since the last call, for writing.
    pub fn take_dirty(&self) -> Option<BTreeMap<TargetId, Stored>> {
        let mut inner = self.lock();
        inner.collect();
        if !std::mem::take(&mut inner.dirty) {
            return None;
        }
        Some(
            inner
                .entries
                .iter()
                .map(|(id, e)| (id.clone(), e.stored.clone()))
                .collect(),
        )
    }

    /// Marks the table dirty, so the next sync writes it: after a failed write, or when what
    /// is written beside the positions (a replica's held targets) changed.
    pub fn mark_dirty(&self) {
        self.lock().dirty = true;
    }

    /// Number of stored positions.
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.collect();
        inner.entries.len()
    }

    /// True when no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::test_support::target_id as id;
    use crate::cursor::Cursor;

    fn pos(since: i64, skip: u64) -> Position {
        Position {
            container_id: Some("containerd://a".into()),
            cursor: Cursor { since, skip },
        }
    }

    /// A chunk of one 10-byte line, read now.
    fn one_line() -> crate::cursor::SentChunk {
        crate::cursor::SentChunk {
            read_at: Instant::now(),
            lines: 1,
            bytes: 10,
            last_entry: None,
        }
    }

    fn stored(since: i64, updated: Timestamp) -> Stored {
        Stored {
            position: pos(since, 0),
            updated,
        }
    }

    #[test]
    fn updates_mark_dirty_once_and_equal_updates_do_not() {
        let t = PositionsTable::default();
        t.update(&id("a"), pos(10, 2));
        assert_eq!(t.take_dirty().map(|m| m.len()), Some(1));
        assert_eq!(t.take_dirty(), None);
        t.update(&id("a"), pos(10, 2));
        assert_eq!(t.take_dirty(), None, "same position again is not a change");
        t.update(&id("a"), pos(10, 3));
        assert_eq!(t.take_dirty().unwrap()[&id("a")].position, pos(10, 3));
        assert_eq!(t.get(&id("a")), Some(pos(10, 3)));
    }

    #[test]
    fn positions_are_collected_from_trackers_and_a_late_acknowledgement_is_still_written() {
        use crate::chunk::Acknowledge;
        let t = PositionsTable::new(BTreeMap::from([(id("a"), stored(1, Timestamp::now()))]));
        let acks = TargetAcks::new(id("a"), t.get(&id("a")));
        t.register(&acks);
        assert_eq!(t.take_dirty(), None, "nothing moved yet");
        assert_eq!(t.get(&id("a")), Some(pos(1, 0)), "the stored start");

        assert_eq!(acks.send(pos(5, 0), one_line()), 1);
        assert_eq!(acks.send(pos(9, 1), one_line()), 2);
        acks.acknowledge(1);
        assert_eq!(
            t.get(&id("a")),
            Some(pos(5, 0)),
            "asked about, the table takes the tracker's position"
        );
        assert_eq!(t.take_dirty().unwrap()[&id("a")].position, pos(5, 0));
        assert_eq!(t.take_dirty(), None, "collected once");

        // The registry and the tailer let go; chunk 2 is still in a receiver (which holds the
        // tracker through the chunk), and its acknowledgement lands later.
        let in_flight: Arc<dyn Acknowledge> = acks.clone();
        drop(acks);
        assert_eq!(t.take_dirty(), None);
        assert_eq!(
            t.lock().live.len(),
            1,
            "held while a chunk can still acknowledge"
        );
        in_flight.acknowledge(2);
        drop(in_flight);
        assert_eq!(t.take_dirty().unwrap()[&id("a")].position, pos(9, 1));
        assert!(
            t.lock().live.is_empty(),
            "forgotten once its last position was taken"
        );
        assert_eq!(t.get(&id("a")), Some(pos(9, 1)), "then the table answers");
    }

    #[test]
    fn a_newer_position_absorbed_from_another_replica_wins_over_a_tracker_that_did_not_move() {
        use crate::chunk::Acknowledge;
        let t = PositionsTable::default();
        let acks = TargetAcks::new(id("a"), Some(pos(1, 0)));
        t.register(&acks);
        acks.send(pos(5, 0), one_line());
        acks.acknowledge(1);
        // Another replica tailed the target later and got further.
        let later = Timestamp::now() + jiff::SignedDuration::from_secs(60);
        t.absorb(BTreeMap::from([(id("a"), stored(9, later))]));
        assert_eq!(t.get(&id("a")), Some(pos(9, 0)));
        assert_eq!(t.take_dirty().unwrap()[&id("a")].position, pos(9, 0));
    }

    #[test]
    fn gc_removes_targets_absent_longer_than_gc_after() {
        let now = Timestamp::now();
        let hour = Duration::from_secs(3600);
        let loaded = BTreeMap::from([
            // Vanished while the relay was down, two hours ago: goes at the first GC.
            (
                id("old"),
                stored(1, now - jiff::SignedDuration::from_hours(2)),
            ),
            // Updated a minute ago, absent now: stays until it is an hour old.
            (
                id("recent"),
                stored(2, now - jiff::SignedDuration::from_mins(1)),
            ),
            // Present: stays whatever its age.
            (
                id("alive"),
                stored(3, now - jiff::SignedDuration::from_hours(5)),
            ),
        ]);
        let t = PositionsTable::new(loaded);
        let alive = id("alive");
        t.present(&BTreeSet::from([&alive]), now);
        assert_eq!(t.gc(now, hour), 1);
        assert!(t.get(&id("old")).is_none());
        assert!(t.get(&id("recent")).is_some());
        assert!(t.take_dirty().is_some(), "a removal is written");
        assert_eq!(t.gc(now + jiff::SignedDuration::from_mins(30), hour), 0);
        assert_eq!(t.gc(now + jiff::SignedDuration::from_mins(60), hour), 1);
        assert!(t.get(&id("alive")).is_some());

        // A running target idle for hours that vanishes ages from the moment it vanished, not
        // from its last update.
        let later = now + jiff::SignedDuration::from_mins(90);
        t.present(&BTreeSet::new(), later);
        assert_eq!(t.gc(later + jiff::SignedDuration::from_mins(59), hour), 0);
        // A target that comes back stops aging.
        t.present(
            &BTreeSet::from([&alive]),
            later + jiff::SignedDuration::from_mins(59),
        );
        assert_eq!(t.gc(later + jiff::SignedDuration::from_hours(10), hour), 0);
        // Gone for good: forgotten gc_after after it vanished.
        let gone = later + jiff::SignedDuration::from_hours(11);
        t.present(&BTreeSet::new(), gone);
        assert_eq!(t.gc(gone + jiff::SignedDuration::from_mins(59), hour), 0);
        assert_eq!(t.gc(gone + jiff::SignedDuration::from_mins(60), hour), 1);
        assert!(t.is_empty());
    }
}
