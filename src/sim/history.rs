//! The global resourceVersion counter and the watch event history (SPEC §8.5).
//!
//! One resourceVersion increases on every change, as in etcd. Every change also appends an event
//! to a bounded history, so a watch can resume from any resourceVersion still retained and gets
//! `410 Expired` for an older one, exactly as from the API server.

use std::collections::VecDeque;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

/// What a watch event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
}

/// One change, as retained for watches.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub kind: EventKind,
    /// The pod after the change (before deletion for `Deleted`).
    pub pod: Arc<Pod>,
    /// The pod before a modification, so a selector-filtered watch can tell a pod that stopped
    /// (or started) matching.
    pub before: Option<Arc<Pod>>,
}

/// A watch asked for a resourceVersion older than the retained history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    /// The requested resourceVersion.
    pub requested: u64,
    /// The oldest resourceVersion a watch can still resume from.
    pub oldest: u64,
}

/// The resourceVersion counter and the events retained for resuming watches.
#[derive(Debug)]
pub struct History {
    rv: u64,
    events: VecDeque<Arc<Event>>,
    /// The resourceVersion of the newest event dropped from the history (0 = none dropped).
    dropped_upto: u64,
}

impl Default for History {
    fn default() -> Self {
        History {
            rv: 1,
            events: VecDeque::new(),
            dropped_upto: 0,
        }
    }
}

impl History {
    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Advances the resourceVersion for a change and returns it.
    pub fn next_resource_version(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Appends `event`, then drops the oldest events beyond `cap` (at least one is kept).
    pub fn record(&mut self, event: Arc<Event>, cap: usize) {
        self.events.push_back(event);
        let cap = cap.max(1);
        while self.events.len() > cap {
            if let Some(old) = self.events.pop_front() {
                self.dropped_upto = old.rv;
            }
        }
    }

    /// Appends the retained events newer than `rv` to `out`.
    pub fn events_after(&self, rv: u64, out: &mut Vec<Arc<Event>>) -> Result<(), Expired> {
        if rv < self.dropped_upto {
            return Err(Expired {
                requested: rv,
                oldest: self.dropped_upto + 1,
            });
        }
        let start = self.events.partition_point(|e| e.rv <= rv);
        out.extend(self.events.range(start..).cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(h: &mut History, cap: usize) -> u64 {
        let rv = h.next_resource_version();
        let pod = Arc::new(Pod::default());
        h.record(
            Arc::new(Event {
                rv,
                kind: EventKind::Added,
                pod,
                before: None,
            }),
            cap,
        );
        rv
    }

    fn after(h: &History, rv: u64) -> Result<Vec<u64>, Expired> {
        let mut out = Vec::new();
        h.events_after(rv, &mut out)
            .map(|()| out.iter().map(|e| e.rv).collect())
    }

    #[test]
    fn resource_versions_only_increase_and_watches_resume_after_any_retained_one() {
        let mut h = History::default();
        let rvs: Vec<u64> = (0..5).map(|_| record(&mut h, 10)).collect();
        assert_eq!(rvs, [2, 3, 4, 5, 6]);
        assert_eq!(h.resource_version(), 6);
        assert_eq!(after(&h, 1), Ok(vec![2, 3, 4, 5, 6]));
        assert_eq!(after(&h, 4), Ok(vec![5, 6]));
        assert_eq!(after(&h, 6), Ok(vec![]));
    }

    #[test]
    fn a_resource_version_older_than_the_history_is_expired() {
        let mut h = History::default();
        for _ in 0..5 {
            record(&mut h, 3);
        }
        // Kept: 4, 5, 6; dropped up to 3. Resuming from 3 misses nothing; from 2 it would.
        assert_eq!(after(&h, 3), Ok(vec![4, 5, 6]));
        assert_eq!(
            after(&h, 2),
            Err(Expired {
                requested: 2,
                oldest: 4
            })
        );
    }
}
