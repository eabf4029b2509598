//! What a tailer shows about itself in `/api/v1/targets` and the status page (SPEC §8.3).
//!
//! Written by the tailer, read by the HTTP server through the registry. A plain mutex: it is
//! touched once per chunk, not per line.

use std::sync::Mutex;

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

/// A snapshot of one tailer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TailerSnapshot {
    pub state: TargetState,
    /// When the last chunk's first line was read (from the tracker, see [`TailerStatus::show`]).
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

/// Shared, updatable status of a tailer.
#[derive(Debug, Default)]
pub struct TailerStatus(Mutex<TailerSnapshot>);

impl TailerStatus {
    /// A copy of the current status.
    pub fn snapshot(&self) -> TailerSnapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The status as shown: this tailer's own fields, and what its target's acknowledgement
    /// tracker keeps (the position, chunks in flight, totals sent: the tracker's lock is taken
    /// for every chunk anyway, so they are kept there rather than under a second lock).
    pub fn show(&self, acks: &TargetAcks) -> TailerSnapshot {
        let mut s = self.snapshot();
        let AckView {
            latest,
            acknowledged,
            in_flight,
            sent,
        } = acks.view();
        if let Some(p) = &latest {
            s.cursor_since = Timestamp::from_second(p.cursor.since).ok();
            s.cursor_skip = p.cursor.skip;
        }
        s.acknowledged = acknowledged;
        s.chunks_in_flight = in_flight;
        s.lines = sent.lines;
        s.bytes = sent.bytes;
        s.last_read = sent.last_read.and_then(|at| {
            let ago = jiff::SignedDuration::try_from(at.elapsed()).ok()?;
            Timestamp::now().checked_sub(ago).ok()
        });
        s.last_entry_timestamp = sent.last_entry;
        s
    }

    /// The state alone, without copying the rest (the registry counts states of thousands of
    /// tailers every two seconds).
    pub fn state(&self) -> TargetState {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).state
    }

    /// Changes the status in place.
    pub fn update(&self, f: impl FnOnce(&mut TailerSnapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
