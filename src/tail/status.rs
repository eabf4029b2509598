//! What a tailer shows about itself in `/api/v1/targets` and the status page (SPEC §8.3).
//!
//! Written by the tailer when its state changes, read by the HTTP server through the registry
//! together with what the target's acknowledgement tracker keeps per chunk. Each state change
//! is also counted in a [`StateTally`] shared by all of a registry's tailers, so the
//! `kube_log_relay_targets` gauge is read from five counters, not from thousands of tailers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::Serialize;

use crate::cursor::{AckView, Position, TargetAcks};
use crate::telemetry::TargetsState;

/// A target's life cycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Waiting for the container to start (API answered "waiting to start").
    #[default]
    Waiting,
    /// A stream is open and being read.
    Running,
    /// The last stream failed; reopening after a backoff.
    Backoff,
    /// The pod is gone or the target vanished: reading what is left.
    Draining,
    /// The container terminated for good, or the target was stopped.
    Finished,
}

impl TargetState {
    /// Every state.
    pub const ALL: [TargetState; 5] = [
        TargetState::Waiting,
        TargetState::Running,
        TargetState::Backoff,
        TargetState::Draining,
        TargetState::Finished,
    ];

    /// The label value used in `kube_log_relay_targets{state}`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Running => "running",
            TargetState::Backoff => "backoff",
            TargetState::Draining => "draining",
            TargetState::Finished => "finished",
        }
    }
}

impl From<TargetState> for TargetsState {
    fn from(state: TargetState) -> TargetsState {
        match state {
            TargetState::Waiting => TargetsState::Waiting,
            TargetState::Running => TargetsState::Running,
            TargetState::Backoff => TargetsState::Backoff,
            TargetState::Draining => TargetsState::Draining,
            TargetState::Finished => TargetsState::Finished,
        }
    }
}

/// A snapshot of one tailer, as [`TailerStatus::show`] builds it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TailerSnapshot {
    pub state: TargetState,
    /// When the last chunk's first line was read (from the tracker).
    pub last_read: Option<Timestamp>,
    /// The timestamp of the last entry sent (from the tracker).
    pub last_entry_timestamp: Option<Timestamp>,
    pub last_error: Option<String>,
    /// The cursor after the last chunk sent, `since` as RFC 3339 and `skip` (from the tracker).
    pub cursor_since: Option<Timestamp>,
    pub cursor_skip: u64,
    pub container_id: Option<String>,
    /// The position every receiver acknowledged (what positions persist, SPEC §4.4; from the
    /// tracker).
    pub acknowledged: Option<Position>,
    /// Chunks sent and not yet acknowledged (from the tracker).
    pub chunks_in_flight: usize,
    /// Lines and bytes sent (from the tracker).
    pub lines: u64,
    pub bytes: u64,
    pub reconnects: u64,
}

/// What a tailer writes about itself (state changes, errors, a new container instance, stream
/// opens); the rest of its [`TailerSnapshot`] comes from its target's acknowledgement tracker.
#[derive(Clone, Debug, Default)]
pub struct OwnStatus {
    pub state: TargetState,
    pub last_error: Option<String>,
    pub container_id: Option<String>,
    pub reconnects: u64,
}

/// How many tailer statuses are in each state: kept up to date by the statuses themselves.
#[derive(Debug, Default)]
pub struct StateTally([AtomicUsize; TargetState::ALL.len()]);

impl StateTally {
    /// The statuses in `state` now.
    pub fn count(&self, state: TargetState) -> usize {
        self.0[state as usize].load(Ordering::Relaxed)
    }

    fn add(&self, state: TargetState) {
        self.0[state as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&self, state: TargetState) {
        self.0[state as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Shared, updatable status of a tailer, counted in its registry's [`StateTally`] from its
/// creation until it is dropped.
#[derive(Debug)]
pub struct TailerStatus {
    own: Mutex<OwnStatus>,
    tally: Arc<StateTally>,
}

impl Default for TailerStatus {
    /// A status counted in a tally of its own.
    fn default() -> TailerStatus {
        TailerStatus::new(Arc::default())
    }
}

impl Drop for TailerStatus {
    fn drop(&mut self) {
        self.tally.remove(self.lock().state);
    }
}

impl TailerStatus {
    /// A new status (waiting), counted in `tally`.
    pub fn new(tally: Arc<StateTally>) -> TailerStatus {
        let own = OwnStatus::default();
        tally.add(own.state);
        TailerStatus {
            own: Mutex::new(own),
            tally,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnStatus> {
        self.own.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status as shown: this tailer's own fields, and what its target's acknowledgement
    /// tracker keeps (the position, chunks in flight, totals sent: the tracker's lock is taken
    /// for every chunk anyway, so they are kept there rather than under a second lock).
    pub fn show(&self, acks: &TargetAcks) -> TailerSnapshot {
        let OwnStatus {
            state,
            last_error,
            container_id,
            reconnects,
        } = self.lock().clone();
        let AckView {
            latest,
            acknowledged,
            in_flight,
            sent,
        } = acks.view();
        let cursor = latest.map(|p| p.cursor);
        TailerSnapshot {
            state,
            last_read: sent.last_read.and_then(|at| {
                let ago = jiff::SignedDuration::try_from(at.elapsed()).ok()?;
                Timestamp::now().checked_sub(ago).ok()
            }),
            last_entry_timestamp: sent.last_entry,
            last_error,
            cursor_since: cursor.and_then(|c| Timestamp::from_second(c.since).ok()),
            cursor_skip: cursor.map_or(0, |c| c.skip),
            container_id,
            acknowledged,
            chunks_in_flight: in_flight,
            lines: sent.lines,
            bytes: sent.bytes,
            reconnects,
        }
    }

    /// The container instance the tailer follows, as last shown.
    pub fn container_id(&self) -> Option<String> {
        self.lock().container_id.clone()
    }

    /// Changes the tailer's own fields in place.
    pub fn update(&self, f: impl FnOnce(&mut OwnStatus)) {
        let mut own = self.lock();
        let before = own.state;
        f(&mut own);
        if own.state != before {
            self.tally.remove(before);
            self.tally.add(own.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_each_status_in_its_state_until_the_status_is_dropped() {
        let tally = Arc::new(StateTally::default());
        let a = TailerStatus::new(tally.clone());
        let b = TailerStatus::new(tally.clone());
        let counts = || TargetState::ALL.map(|s| tally.count(s));
        assert_eq!(counts(), [2, 0, 0, 0, 0]);
        a.update(|s| s.state = TargetState::Running);
        b.update(|s| s.last_error = Some("boom".into()));
        assert_eq!(counts(), [1, 1, 0, 0, 0]);
        b.update(|s| s.state = TargetState::Backoff);
        a.update(|s| s.state = TargetState::Finished);
        assert_eq!(counts(), [0, 0, 1, 0, 1]);
        drop(a);
        assert_eq!(counts(), [0, 0, 1, 0, 0]);
        drop(b);
        assert_eq!(counts(), [0; 5]);
    }
}
